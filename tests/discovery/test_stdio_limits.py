"""A stdio server that breaks the line protocol after its handshake (a line over `max_line_bytes`,
more than `max_invalid_lines` lines that are not JSON-RPC) is cut off and restarted, its caller gets
the reason, and a server next to it notices nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from toolscore.v1 import tool_pb2

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex
from tests.discovery.test_sandbox import Calls, publish
from tests.helpers import deadline

UNHEALTHY, HEALTHY = tool_pb2.HEALTH_STATUS_UNHEALTHY, tool_pb2.HEALTH_STATUS_HEALTHY
# a ping that a loaded machine answers late must not pass for the calm server being disturbed
PATIENT = {"health_timeout_s": 20.0}


@dataclass
class Pair:
    """An unruly server and a calm one, installed on one hub, with the health changes of each."""

    hub: Hub
    unruly: Calls
    calm: Calls
    health: dict[str, list[int]] = field(default_factory=dict)
    back: asyncio.Event = field(default_factory=asyncio.Event)  # the unruly one went down, then up

    def pid(self, calls: Calls) -> int | None:
        return self.hub.discovery.runners[calls.tool_id].transport.pid  # type: ignore[union-attr]

    def restarts(self, calls: Calls) -> int:
        return self.hub.discovery.runners[calls.tool_id].restarts


@asynccontextmanager
async def unruly_and_calm(
    cfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> AsyncIterator[Pair]:
    unruly = publish(pkg_index, root, catalog_dir, "ts-unruly-mcp")
    calm = publish(pkg_index, root, catalog_dir, "ts-calm-mcp")
    async with Hub(cfg) as hub:
        unruly_id = (await hub.discovery.install(unruly)).server.tool_id
        calm_id = (await hub.discovery.install(calm)).server.tool_id
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            pair = Pair(hub, Calls(ch, unruly_id), Calls(ch, calm_id))

            def on_event(ev: tool_pb2.ToolEvent) -> None:
                if ev.type == tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED:
                    seen = pair.health.setdefault(ev.tool.tool_id, [])
                    seen.append(ev.tool.health)
                    if ev.tool.tool_id == unruly_id and UNHEALTHY in seen and seen[-1] == HEALTHY:
                        pair.back.set()

            hub.registry.listeners.append(on_event)
            yield pair


async def assert_cut_off_alone(pair: Pair, calm_pid: int | None) -> None:
    """The unruly server comes back as a new process; the calm one never changed."""
    async with deadline(20, "the cut-off server to go unhealthy, then healthy again"):
        await pair.back.wait()
    assert pair.restarts(pair.unruly) >= 1
    echo = await pair.unruly.call("echo", text="back")
    assert echo.content[0].text.text == "back"
    assert pair.health.get(pair.calm.tool_id) is None  # not one health change
    assert pair.pid(pair.calm) == calm_pid and pair.restarts(pair.calm) == 0
    assert (await pair.calm.call("echo", text="calm")).content[0].text.text == "calm"


async def test_a_server_writing_a_line_over_max_line_bytes_is_cut_off_and_restarted_and_no_other_notices(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    cfg = config_mod.replace(dcfg, discovery={"max_line_bytes": 256 << 10, **PATIENT})
    async with unruly_and_calm(cfg, pkg_index, root, catalog_dir) as pair:
        calm_pid, unruly_pid = pair.pid(pair.calm), pair.pid(pair.unruly)
        # under the bound (and over asyncio's 64 KiB default): answered whole
        fits = await pair.unruly.attempt("big", "128")
        assert not fits.is_error and len(fits.content[0].text.text) == 128 << 10

        over = await pair.unruly.attempt("big", "512")  # its answer is one 512 KiB line
        assert over.is_error and over.error.type == tool_pb2.ERROR_TYPE_SYSTEM, str(over)[:300]
        assert "wrote a line longer than 262144 bytes to stdout" in over.error.message, over.error.message
        await assert_cut_off_alone(pair, calm_pid)
        assert pair.pid(pair.unruly) != unruly_pid


async def test_a_server_writing_more_than_max_invalid_lines_of_garbage_is_cut_off_and_no_other_notices(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    cfg = config_mod.replace(dcfg, discovery={"max_invalid_lines": 20, **PATIENT})
    async with unruly_and_calm(cfg, pkg_index, root, catalog_dir) as pair:
        calm_pid, unruly_pid = pair.pid(pair.calm), pair.pid(pair.unruly)
        tolerated = await pair.unruly.attempt("babble", "20")  # up to the bound: skipped, answered
        assert not tolerated.is_error and tolerated.content[0].text.text == "babbled 20 lines"
        assert pair.pid(pair.unruly) == unruly_pid

        over = await pair.unruly.attempt("babble", "1")  # the 21st line on this connection
        assert over.is_error and over.error.type == tool_pb2.ERROR_TYPE_SYSTEM, str(over)[:300]
        assert "more than 20 lines to stdout that are not JSON-RPC" in over.error.message, over.error.message
        await assert_cut_off_alone(pair, calm_pid)
        assert pair.pid(pair.unruly) != unruly_pid
