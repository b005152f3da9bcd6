"""The Tools page of a cluster: two real hubs on one real Redis (docs/cluster.md), the console on an
edge beside the second, showing which node holds a tool's endpoint and which others serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from services.common.config import Config
from services.hub.app import Hub
from tests.console.conftest import WAIT_MS, expect, serve_edge
from tests.helpers import grpc_tool
from tests.hub.test_cluster_routing import Stubs, register, server_named
from tests.library.test_redis_registry import shared_cfg


async def test_the_tools_page_shows_each_tools_node_and_its_replicas_on_other_nodes(
    cfg: Config, root: Path, redis_server: Any, start_tool_server: Any, open_console: Any
) -> None:
    c1, c2 = (shared_cfg(cfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    served: list[str] = []
    async with Hub(c1) as h1, Hub(c2) as h2:
        # `rep` on a Unix socket of each node, registered through each node's hub: one tool, two
        # copies; `solo` on hub 1's node only.
        _, ep_a = await start_tool_server({"rep": server_named("a", served)}, name="a")
        _, ep_b = await start_tool_server({"rep": server_named("b", served)}, name="b")
        _, ep_solo = await start_tool_server({"solo": server_named("s", served)}, name="solo")
        async with (
            grpc.aio.insecure_channel(h1.uds_target or "") as ch1,
            grpc.aio.insecure_channel(h2.uds_target or "") as ch2,
        ):
            one, two = Stubs(ch1), Stubs(ch2)
            await register(h1, one, [h2], grpc_tool("rep", ep_a))
            await register(h1, one, [h2], grpc_tool("solo", ep_solo))
            await register(h2, two, [h1], grpc_tool("rep", ep_b))
        async with serve_edge(c2, h2) as edge:  # the console's edge is beside hub 2
            console = await open_console(edge, "/ui/#/tools")
            page = console.page
            rep = page.locator('tr[data-tool-id="rep"]')
            await expect(rep.locator("td.node")).to_have_text("hub1", timeout=WAIT_MS)
            replica = rep.locator("td.replicas li")
            await expect(replica).to_have_count(1)
            await expect(replica).to_have_attribute("data-node", "hub2")
            await expect(replica).to_contain_text(ep_b)
            solo = page.locator('tr[data-tool-id="solo"]')
            await expect(solo.locator("td.node")).to_have_text("hub1")
            await expect(solo.locator("td.replicas")).to_have_text("\u2013")  # none
            await console.screenshot("tools-cluster")
            assert await console.axe() == []

            await page.goto(edge.url + "/ui/#/tools/rep")
            summary = page.locator("dl.summary")
            await expect(summary.locator("li[data-node=hub2]")).to_contain_text(ep_b, timeout=WAIT_MS)
            await expect(summary).to_contain_text("Nodehub1")
            console.done()
