"""Install progress on the events WebSocket (edge.install_feed): a real edge on a real hub installing
from the test's package index, its download held so the install is seen under way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from edge.install_feed import INSTALLS
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex
from tests.discovery.test_rest_routes import _publish
from tests.edge.conftest import edge_config, start_edge  # noqa: F401 (fixture)
from tests.edge.test_events_ws import connect, recv, recv_type


async def steps_until(ws: Any, done: Any, within_s: float = 60.0) -> list[dict[str, Any]]:
    """The install_progress messages received until one satisfies `done` (that one included)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        while not seen or not done(seen[-1]):
            seen.append(await recv_type(ws, "install_progress", within_s))
    return seen


async def test_a_subscriber_that_asks_sees_each_install_step_as_it_happens_to_the_end(
    dcfg: Config,
    pkg_index: PackageIndex,
    root: Path,
    catalog_dir: Path,
    start_edge: Any,  # noqa: F811
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    pkg_index.hold = asyncio.Event()
    async with Hub(dcfg) as hub, aiohttp.ClientSession() as http:
        edge = await start_edge(edge_config(dcfg, hub))
        async with connect(edge, "?installs=1") as ws, connect(edge) as plain:
            assert (await recv(ws))["type"] == "welcome"
            async with asyncio.timeout(10):
                await edge.app[INSTALLS].watching.wait()  # the edge follows the hub's installs

            async def install() -> dict[str, Any]:
                async with http.post(edge.url + "/mcp/install", json={"name": name}) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()  # type: ignore[no-any-return]

            answer = asyncio.create_task(install())
            # The download is held: the steps so far arrive while the install is under way.
            early = await steps_until(ws, lambda m: m["message"].startswith("pip install"))
            assert not answer.done()
            assert all(m["name"] == name and m["state"] == "installing" for m in early)
            assert 0 < early[-1]["progress"] < 1 and early[-1]["server"]["name"] == name

            # Who asks later is told first where the install under way stands.
            async with connect(edge) as late:
                assert (await recv(late))["type"] == "welcome"
                await late.send('{"type": "subscribe", "installs": true}')
                now = await recv_type(late, "install_progress")
                assert (now["name"], now["message"]) == (name, early[-1]["message"])
                assert (await recv_type(late, "subscribed"))["installs"] is True

            pkg_index.hold.set()
            rest = await steps_until(ws, lambda m: m["state"] in ("running", "stopped"))
            assert rest[-1]["state"] == "running" and rest[-1]["progress"] == 1.0
            body = await answer
            streamed = [m["message"] for m in early + rest]
            assert [p["message"] for p in body["progress"]] == streamed  # every step, in order
            assert not edge.app[INSTALLS].under_way  # nothing kept once it ended

            # A subscriber that did not ask got none of it (all it was sent came before its pong).
            await plain.send('{"type": "ping"}')
            kinds: list[str] = []
            async with asyncio.timeout(10):
                while not kinds or kinds[-1] != "pong":
                    kinds.append((await recv(plain))["type"])
            assert "tool_installed" in kinds and "install_progress" not in kinds, kinds
