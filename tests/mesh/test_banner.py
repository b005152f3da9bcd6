"""The one banner `make run` prints when the mesh is ready: every address, and the token's state."""

from __future__ import annotations

import re

from edge import banner
from services.common import config as config_mod
from services.hub.app import Hub
from tests.conftest import REPO


async def test_the_mesh_prints_one_banner_with_every_address_when_it_is_ready(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    mesh = await mesh_factory({"TOOLSCORE_AUTH__ADMIN_TOKEN": "banner-secret-token"})
    url = await mesh.edge_url()
    await mesh.output.wait_for(r"^ToolScore Mesh is ready \(\d+ tools registered\)", "the banner")
    lines = mesh.output.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("ToolScore Mesh is ready"))
    text = "".join(lines[start : start + 7])
    ws = "ws" + url.removeprefix("http")
    for expected in (
        rf"console +{url}/ui/\n",
        rf"REST +{url}/api/v1 ",
        rf"MCP +{url}/mcp  \(Streamable HTTP\), {ws}/ws/mcp  \(WebSocket\)\n",
        rf"events +{ws}/api/v1/events/tools\n",
        # The hub's configured port is 0: the banner names the one it got.
        rf"gRPC +{re.escape(mesh.tcp)}  \(TCP\), unix://{mesh.root}/run/toolscore\.sock  \(socket\)\n",
        r"admin token +set: admin actions need it",
    ):
        assert re.search(expected, text), (expected, text)
    assert mesh.tcp != "127.0.0.1:0" and url.rpartition(":")[2] != "0"
    assert "banner-secret-token" not in mesh.log()
    assert sum(line.startswith("ToolScore Mesh is ready") for line in mesh.output.lines) == 1


def test_the_banner_says_when_no_admin_token_is_set() -> None:
    cfg = config_mod.load(REPO / "config" / "toolscore.toml", env={})
    text = banner.text(cfg, 8082, 3)
    assert text.startswith("ToolScore Mesh is ready (3 tools registered)\n")
    assert "  console      http://127.0.0.1:8082/ui/\n" in text
    assert "admin token  not set: loopback only, everything open" in text
    assert "gRPC         127.0.0.1:50051  (TCP), unix://" in text


def test_the_banner_names_only_the_grpc_listeners_the_hub_has() -> None:
    cfg = config_mod.load(REPO / "config" / "toolscore.toml", env={})
    socket_only = banner.text(config_mod.replace(cfg, hub={"tcp": ""}), 8082, 0)
    assert re.search(r"\n  gRPC +unix://\S+/run/toolscore\.sock  \(socket\)\n", socket_only), socket_only
    tcp_only = banner.text(config_mod.replace(cfg, hub={"uds": ""}), 8082, 0)
    assert "\n  gRPC         127.0.0.1:50051  (TCP)\n" in tcp_only and "unix://" not in tcp_only, tcp_only


async def test_the_banner_names_the_addresses_the_hub_bound_when_the_edge_follows_that_hub(
    cfg: config_mod.Config,
) -> None:
    cfg = config_mod.replace(cfg, hub={"tcp": "127.0.0.1:0"})
    async with Hub(cfg) as hub:
        assert hub.tcp_target and not hub.tcp_target.endswith(":0")
        text = banner.text(cfg, 8082, 0, banner.bound_hub(cfg, cfg.hub_target()))
        assert f"\n  gRPC         {hub.tcp_target}  (TCP), {hub.uds_target}  (socket)\n" in text, text
        # An edge following another hub does not take this one's addresses for its own.
        assert banner.bound_hub(cfg, "127.0.0.1:1") is None
    assert banner.bound_hub(cfg, cfg.hub_target()) is None  # the record went with the hub
