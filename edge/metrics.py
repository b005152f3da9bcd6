"""The edge's figures: what `/metrics` renders (the Prometheus text format, version 0.0.4), and
the calls of the direct path counted for the hub (`UsageCounts`, which edge.usage reports).

Written here rather than pulled in with prometheus_client: a few counters and
histograms, cheap to update on every call (a dict lookup and a bisect). Every
figure a call updates is here, so its way back crosses one file for them.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from services.library.registry import Entry

# Seconds; tuned for calls from 0.2 ms to tens of seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds


@dataclass
class ToolUsage:
    """One tool's calls on the direct path since the last report."""

    calls: int = 0
    successes: int = 0
    seconds: float = 0.0
    last_used: float = 0.0


class UsageCounts:
    """Calls counted per tool on the edge's direct path, until the usage reporter (edge.usage)
    takes them for a report to the hub; `record` is the router's recorder on the edge."""

    def __init__(self) -> None:
        self.pending: dict[str, ToolUsage] = {}

    def record(self, entry: Entry, ok: bool, seconds: float) -> None:
        """Count one call of `entry`, here and in the entry's own figures (those /api/v1/stats
        and the tool listings show). Cheap: it runs on every call of the direct path."""
        now = time.time()
        tool_id = entry.tool.tool_id
        u = self.pending.get(tool_id)
        if u is None:
            u = self.pending[tool_id] = ToolUsage()
        u.calls += 1
        u.successes += ok
        u.seconds += seconds
        u.last_used = now
        # The entry's counting (Entry.record's), done here: one call of the hot path, not two.
        entry.calls += 1
        entry.successes += ok
        entry.total_seconds += seconds
        entry.last_used = now
        entry.dirty = True

    def take(self) -> dict[str, ToolUsage]:
        """What was counted since the last take (for a report), counting afresh from now."""
        batch, self.pending = self.pending, {}
        return batch

    def give_back(self, batch: dict[str, ToolUsage]) -> None:
        """A batch whose report failed: counted again with what came since, for the next one."""
        for k, u in batch.items():
            mine = self.pending.setdefault(k, ToolUsage())
            mine.calls += u.calls
            mine.successes += u.successes
            mine.seconds += u.seconds
            mine.last_used = max(mine.last_used, u.last_used)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class EdgeMetrics:
    """Every figure /metrics reports."""

    def __init__(self) -> None:
        self.http_requests: dict[tuple[str, str, int], int] = {}
        self.http_latency: dict[tuple[str, str], Histogram] = {}
        self.tool_calls: dict[str, int] = {}
        self.tool_errors: dict[tuple[str, str], int] = {}
        self.tool_latency: dict[str, Histogram] = {}
        self.ws_open: dict[str, int] = {}
        self.ws_total: dict[str, int] = {}
        self.events_sent = 0
        self.slow_consumers_closed = 0

    def observe_http(self, method: str, route: str, status: int, seconds: float | None) -> None:
        key = (method, route, status)
        self.http_requests[key] = self.http_requests.get(key, 0) + 1
        if seconds is not None:
            h = self.http_latency.get((method, route))
            if h is None:
                h = self.http_latency[(method, route)] = Histogram()
            h.observe(seconds)

    def observe_call(self, tool_id: str, action: str, outcome: str, seconds: float) -> None:
        """outcome: `ok`, `tool_error` (an is_error result) or a protocol fault's reason; the action
        is not a label (one series per tool keeps the figures' count bounded by the registry's)."""
        self.tool_calls[tool_id] = self.tool_calls.get(tool_id, 0) + 1
        if outcome != "ok":
            key = (tool_id, outcome)
            self.tool_errors[key] = self.tool_errors.get(key, 0) + 1
        h = self.tool_latency.get(tool_id)
        if h is None:
            h = self.tool_latency[tool_id] = Histogram()
        h.observe(seconds)

    def ws_opened(self, route: str) -> None:
        self.ws_open[route] = self.ws_open.get(route, 0) + 1
        self.ws_total[route] = self.ws_total.get(route, 0) + 1

    def ws_closed(self, route: str) -> None:
        self.ws_open[route] = self.ws_open.get(route, 1) - 1

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("toolscore_edge_http_requests_total", "counter", "HTTP requests by method, route and status.")
        for (m, r, s), n in sorted(self.http_requests.items()):
            labels = _labels([("method", m), ("route", r), ("status", str(s))])
            out.append(f"toolscore_edge_http_requests_total{labels} {n}")
        family("toolscore_edge_http_request_duration_seconds", "histogram", "HTTP request latency by route.")
        for (m, r), h in sorted(self.http_latency.items()):
            _histogram(out, "toolscore_edge_http_request_duration_seconds", [("method", m), ("route", r)], h)
        family("toolscore_edge_tool_calls_total", "counter", "Tool calls through the edge, by tool.")
        for t, n in sorted(self.tool_calls.items()):
            out.append(f"toolscore_edge_tool_calls_total{_labels([('tool_id', t)])} {n}")
        family(
            "toolscore_edge_tool_errors_total",
            "counter",
            "Failed tool calls by tool and kind (tool_error: an is_error result; else the fault's reason).",
        )
        for (t, k), n in sorted(self.tool_errors.items()):
            out.append(f"toolscore_edge_tool_errors_total{_labels([('tool_id', t), ('kind', k)])} {n}")
        family("toolscore_edge_tool_call_duration_seconds", "histogram", "Tool call latency by tool.")
        for t, h in sorted(self.tool_latency.items()):
            _histogram(out, "toolscore_edge_tool_call_duration_seconds", [("tool_id", t)], h)
        family("toolscore_edge_websocket_connections", "gauge", "Open WebSocket connections by route.")
        for r, n in sorted(self.ws_open.items()):
            out.append(f"toolscore_edge_websocket_connections{_labels([('route', r)])} {n}")
        family(
            "toolscore_edge_websocket_connections_total",
            "counter",
            "WebSocket connections accepted by route.",
        )
        for r, n in sorted(self.ws_total.items()):
            out.append(f"toolscore_edge_websocket_connections_total{_labels([('route', r)])} {n}")
        family(
            "toolscore_edge_events_sent_total", "counter", "Registry events sent to events WebSocket clients."
        )
        out.append(f"toolscore_edge_events_sent_total {self.events_sent}")
        family(
            "toolscore_edge_slow_consumers_closed_total",
            "counter",
            "Events WebSocket clients closed because their queue overflowed.",
        )
        out.append(f"toolscore_edge_slow_consumers_closed_total {self.slow_consumers_closed}")
        return "\n".join(out) + "\n"


def _histogram(out: list[str], name: str, labels: list[tuple[str, str]], h: Histogram) -> None:
    running = 0
    for bound, n in zip(BUCKETS, h.counts, strict=False):
        running += n
        out.append(f"{name}_bucket{_labels([*labels, ('le', repr(bound))])} {running}")
    out.append(f"{name}_bucket{_labels([*labels, ('le', '+Inf')])} {h.count}")
    out.append(f"{name}_sum{_labels(labels)} {h.total}")
    out.append(f"{name}_count{_labels(labels)} {h.count}")


METRICS = web.AppKey("metrics", EdgeMetrics)


async def metrics_page(request: web.Request) -> web.Response:
    """GET /metrics."""
    return web.Response(
        text=request.app[METRICS].render(),
        content_type="text/plain",
        headers={"X-Content-Type-Options": "nosniff"},
        charset="utf-8",
    )


def mount(app: web.Application) -> EdgeMetrics:
    """The edge's figures (app[METRICS]), served at `/metrics`."""
    metrics = app[METRICS] = EdgeMetrics()
    app.router.add_get("/metrics", metrics_page)
    return metrics
