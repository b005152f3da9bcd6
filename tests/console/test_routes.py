"""The console's HTTP side on a real edge: its pages' security headers, the browser guard on /ui,
the assets' discipline (no inline script or style, no HTML sinks), and the calls feed."""

from __future__ import annotations

import re
from pathlib import Path

from edge.console import calls, pages
from tests.edge.conftest import EdgeHandle

STATIC = Path(pages.__file__).parent / "static"


async def test_the_page_and_every_asset_carry_a_csp_that_allows_no_inline_script_or_style(
    edge: EdgeHandle,
) -> None:
    for path, kind in (
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/console.css", "text/css"),
    ):
        async with edge.http.get(edge.url + path) as r:
            assert r.status == 200 and r.content_type == kind, (path, r.status)
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self';" in csp and "style-src 'self';" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
            assert "require-trusted-types-for 'script'; trusted-types 'none'" in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
    async with edge.http.get(edge.url + "/ui", allow_redirects=False) as r:
        assert r.status == 308 and r.headers["Location"] == "/ui/"
        assert "Content-Security-Policy" in r.headers


async def test_an_unknown_asset_is_a_404_in_the_edge_error_shape(edge: EdgeHandle) -> None:
    for path in ("/ui/nope.js", "/ui/vendor/README.md", "/ui/vendor/uPlot.LICENSE", "/ui/%2e%2e/app.py"):
        status, body = await edge.get(path)
        assert status == 404 and body["success"] is False, (path, body)


async def test_the_browser_guard_protects_the_console_like_every_route(edge: EdgeHandle) -> None:
    status, body = await edge.get("/ui/", headers={"Origin": "http://evil.example"})
    assert status == 403 and body["reason"] == "FORBIDDEN_ORIGIN"
    status, body = await edge.get("/ui/app.js", headers={"Host": "evil.example"})
    assert status == 403 and body["reason"] == "FORBIDDEN_HOST"
    async with edge.http.get(edge.url + "/ui/", headers={"Origin": edge.url}) as r:
        assert r.status == 200  # the console's own origin


def test_the_console_has_no_inline_script_or_style_and_renders_no_html() -> None:
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
    own = [p for p in STATIC.rglob("*.js") if "vendor" not in p.parts]
    assert len(own) >= 10
    for path in own:
        text = path.read_text()
        assert not sinks.search(text), path
        # The admin token goes in one header; never in a URL, the page or a log.
        if re.search(r"\btoken\.|Authorization|sessionStorage", text) and path.name not in (
            "api.js",
            "app.js",
        ):
            raise AssertionError(f"{path} handles the admin token")
    assert "sessionStorage" in (STATIC / "api.js").read_text()
    assert "localStorage" not in "".join(p.read_text() for p in own)


async def test_the_calls_feed_records_from_its_first_read_and_resumes_after_a_sequence_number(
    edge: EdgeHandle, registered_echo: str
) -> None:
    await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": "before"}})
    status, first = await edge.get("/api/v1/calls")
    assert status == 200 and first["calls"] == [] and first["last_seq"] == 0
    assert first["capacity"] == calls.CAPACITY and first["recording_since"] > 0

    await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": "hi"}})
    await edge.post("/api/v1/tools/echo/call", {"action": "fail", "arguments": {}})
    await edge.post("/api/v1/tools/nope/call", {"action": "x", "arguments": {}})
    status, page = await edge.get("/api/v1/calls")
    assert status == 200 and page["last_seq"] == 3
    assert [
        (c["seq"], c["tool_id"], c["action"], c["caller"], c["outcome"], c["is_error"]) for c in page["calls"]
    ] == [
        (1, "echo", "echo", "admin", "ok", False),  # no admin token configured: every caller is one
        (2, "echo", "fail", "admin", "tool_error", True),
        (3, "_unknown", "x", "admin", "TOOL_NOT_FOUND", True),
    ]
    assert all(c["duration_ms"] >= 0 and c["at"] >= first["recording_since"] for c in page["calls"])
    _, after = await edge.get("/api/v1/calls?after=2")
    assert [c["seq"] for c in after["calls"]] == [3]
    _, newest = await edge.get("/api/v1/calls?limit=1")
    assert [c["seq"] for c in newest["calls"]] == [3]


async def test_the_calls_feed_refuses_bad_parameters_with_a_clear_400(edge: EdgeHandle) -> None:
    for query, field in (("after=x", "after"), ("after=-1", "after"), ("limit=100000", "limit")):
        status, body = await edge.get(f"/api/v1/calls?{query}")
        assert status == 400 and body["reason"] == "INVALID_FIELD", body
        assert body["metadata"]["field"] == field and field in body["message"]


async def test_the_calls_feed_holds_at_most_its_capacity_newest_first_kept(edge: EdgeHandle) -> None:
    recent = calls.RecentCalls(edge.gateway, capacity=5)
    for i in range(8):
        recent.record(f"t{i}", "a", "ok", 0.001)
    assert [c["tool_id"] for c in recent.after(0, 100)] == ["t3", "t4", "t5", "t6", "t7"]
    assert recent.last_seq == 8 and recent.after(8, 100) == []


async def test_the_calls_feed_keeps_at_most_an_actions_longest_name_of_what_a_caller_sent(
    edge: EdgeHandle, registered_echo: str
) -> None:
    # The action is the caller's string, recorded even when it names nothing: unbounded, a caller
    # would park CAPACITY request bodies in the ring and in every console's page.
    await edge.get("/api/v1/calls")  # recording starts
    huge = "a" * 500_000
    for tool_id in ("nope", "echo"):
        await edge.post(f"/api/v1/tools/{tool_id}/call", {"action": huge, "arguments": {}})
    status, page = await edge.get("/api/v1/calls")
    assert status == 200 and [c["outcome"] for c in page["calls"]] == ["TOOL_NOT_FOUND", "UNKNOWN_ACTION"]
    assert [c["action"] for c in page["calls"]] == [huge[: calls.MAX_ACTION_CHARS]] * 2
