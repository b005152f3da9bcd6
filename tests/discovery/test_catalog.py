"""Catalog entries (server.json), ranking, policy, mapping, and the remote registry client."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import mcp_types as types
import pytest
from toolscore.v1 import tool_pb2

from services.common.config import REPO_ROOT, DiscoveryConfig
from services.common.errors import InvalidRequest
from services.discovery import catalog, mapping, policy, ranking
from services.discovery.remote_registry import RegistryUnreachable, RemoteRegistry
from services.library.validation import check_tool
from tests.discovery.conftest import NS, PackageIndex, server_json

CURATED = catalog.load_dir(REPO_ROOT / "config" / "catalog")


def test_the_curated_catalog_holds_the_six_servers_with_pinned_versions() -> None:
    by_pkg = {s.packages[0].identifier: s for s in CURATED}
    assert set(by_pkg) == {
        "mcp-server-time",
        "mcp-server-git",
        "mcp-server-calculator",
        "@modelcontextprotocol/server-everything",
        "@modelcontextprotocol/server-memory",
        "@modelcontextprotocol/server-filesystem",
    }
    for s in CURATED:
        pkg = s.packages[0]
        assert (
            catalog.is_exact_version(pkg.version) and pkg.transport_type == "stdio" and s.source == "curated"
        )
        assert s.tools and catalog.NAME.match(s.name)
        assert not policy.denial(DiscoveryConfig(), s)


def test_a_server_json_document_is_parsed_with_packages_remotes_and_publisher_tools() -> None:
    doc = {
        "name": "io.example/weather",
        "description": "Weather",
        "version": "1.0.0",
        "repository": {"url": "https://github.com/example/weather", "source": "github"},
        "packages": [
            {
                "registryType": "npm",
                "identifier": "@example/weather",
                "version": "1.0.0",
                "runtimeHint": "npx",
                "transport": {"type": "stdio"},
                "environmentVariables": [{"name": "API_KEY", "isRequired": True, "isSecret": True}],
                "packageArguments": [
                    {"type": "positional", "value": "--stdio"},
                    {"type": "named", "name": "--port", "value": "1"},
                ],
            }
        ],
        "remotes": [{"type": "streamable-http", "url": "https://weather.example/mcp"}],
        "_meta": {catalog.PUBLISHER_META: {"tools": [{"name": "forecast", "description": "Forecast"}]}},
    }
    s = catalog.parse_server(doc, "https://registry.example")
    pkg = s.packages[0]
    assert (pkg.registry_type, pkg.identifier, pkg.runtime_hint, list(pkg.package_arguments)) == (
        "npm",
        "@example/weather",
        "npx",
        ["--stdio"],
    )
    assert pkg.environment_variables[0].is_secret and pkg.environment_variables[0].is_required
    assert s.remotes[0].url == "https://weather.example/mcp" and s.tools[0].name == "forecast"
    assert s.repository_url == "https://github.com/example/weather"


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "no-namespace"},
        {"name": ""},
        [],
        {"description": "x"},
        # A dot segment: the name is a path in /api/v1/tools/servers/{name}, which URL parsers
        # resolve (`../builtin` is DELETE /api/v1/tools/builtin from the console's Uninstall).
        {"name": "../builtin"},
        {"name": "./builtin"},
        {"name": "io.github.x/.."},
        {"name": "io.github.x/."},
    ],
)
def test_an_unusable_server_json_is_rejected_with_a_reason(doc: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        catalog.parse_server(doc, "x")  # type: ignore[arg-type]
    assert err.value.reason == "INVALID_CATALOG_ENTRY"


def test_a_name_with_dots_that_are_not_a_whole_segment_stays_valid() -> None:
    for name in ("io.github.x/time", "a.b-c/d.e_f", "x/..time", "..x/time", "x/.hidden"):
        assert catalog.parse_server({"name": name}, "x").name == name


def test_a_bad_catalog_file_is_skipped_and_the_rest_load(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(server_json(f"{NS}/good", "Good", "pypi", "good", "1.0")))
    (tmp_path / "bad.json").write_text("{not json")
    assert [s.name for s in catalog.load_dir(tmp_path)] == [f"{NS}/good"]


@pytest.mark.parametrize(
    ("version", "exact"),
    [
        ("1.2.3", True),
        ("2026.10.19", True),
        ("1.0.0-rc.1", True),
        ("latest", False),
        (">=1.0", False),
        ("^1.2", False),
        ("", False),
    ],
)
def test_only_exact_versions_count_as_pinned(version: str, exact: bool) -> None:
    assert catalog.is_exact_version(version) is exact


def test_ranking_prefers_names_and_tools_and_says_why() -> None:
    ranked, total = ranking.rank("git commit history", CURATED)
    assert total >= 1 and ranked[0].server.name == "io.github.modelcontextprotocol/git"
    assert any(w.startswith("git (") and "name" in w for w in ranked[0].why)
    ranked, _ = ranking.rank("remember facts in a knowledge graph", CURATED)
    assert ranked[0].server.name == "io.github.modelcontextprotocol/memory"
    assert ranking.rank("", CURATED) == ([], 0)


def test_policy_refuses_unlisted_registry_packages_and_non_stdio_transports() -> None:
    cfg = DiscoveryConfig(allowed_packages=("pypi:good-*",))
    remote = catalog.parse_server(server_json(f"{NS}/x", "x", "pypi", "evil-pkg", "1.0"), "https://reg")
    assert "allowed_packages" in policy.denial(cfg, remote)
    ok = catalog.parse_server(server_json(f"{NS}/y", "y", "pypi", "good-pkg", "1.0"), "https://reg")
    assert policy.denial(cfg, ok) == ""
    assert "npm" in policy.denial(DiscoveryConfig(allowed_registry_types=("npm",)), ok)
    assert policy.denial(DiscoveryConfig(allow_any=True), remote) == ""


def test_mcp_tools_become_one_valid_tool_with_a_capability_each() -> None:
    tools = [
        types.Tool(name="get weather/now", description="Now", input_schema={"type": "object"}),
        types.Tool(
            name="forecast",
            input_schema={"type": "object", "properties": {"days": {"type": "integer"}}},
            output_schema={"type": "object"},
        ),
    ]
    tool, names = mapping.tool_definition("io.example.weather", "Weather", "desc", "1.0", tools)
    check_tool(tool)
    assert tool.kind == tool_pb2.TOOL_KIND_MCP_SERVER and tool.endpoint == "mcp://io.example.weather"
    assert names == {"get_weather_now": "get weather/now", "forecast": "forecast"}
    assert tool.capabilities[1].HasField("output_schema")


def test_mcp_results_map_to_content_blocks_structured_and_errors() -> None:
    png = base64.b64encode(b"\x89PNG").decode()
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="hi"),
            types.ImageContent(type="image", data=png, mime_type="image/png"),
            types.ResourceLink(type="resource_link", uri="file:///x", name="x"),
        ],
        structured_content={"n": 1},
    )
    resp = mapping.to_response(result)
    assert resp.content[0].text.text == "hi" and resp.content[1].image.data == b"\x89PNG"
    assert resp.content[2].resource_link.uri == "file:///x" and resp.content[2].resource_link.name == "x"
    assert resp.structured["n"] == 1 and not resp.is_error
    err = mapping.to_response(
        types.CallToolResult(content=[types.TextContent(type="text", text="boom")], is_error=True)
    )
    assert err.is_error and err.error.type == tool_pb2.ERROR_TYPE_TOOL_ERROR and err.error.message == "boom"


def test_blocks_whose_base64_is_not_travel_as_their_json_and_the_others_as_their_own_kind() -> None:
    result = types.CallToolResult(
        content=[
            types.AudioContent(type="audio", data="not base64!", mime_type="audio/wav"),
            types.EmbeddedResource(
                type="resource", resource=types.BlobResourceContents(uri="x://b", blob="%%")
            ),
            types.EmbeddedResource(
                type="resource", resource=types.TextResourceContents(uri="x://t", text="t")
            ),
        ]
    )
    resp = mapping.to_response(result)
    assert [b.WhichOneof("block") for b in resp.content] == ["json", "json", "resource"]
    assert resp.content[0].json.value.struct_value["data"] == "not base64!"
    assert (
        not resp.content[1].HasField("annotations")
        and resp.content[1].json.value.struct_value["type"] == "resource"
    )
    assert resp.content[2].resource.text == "t" and not resp.content[2].resource.HasField("mime_type")


def test_tools_whose_names_map_to_one_action_each_get_their_own_in_any_order() -> None:
    seen = []
    for order in (["look up", "look_up", "look/up"], ["look/up", "look up", "look_up"]):
        tools = [types.Tool(name=n, input_schema={"type": "object"}) for n in order]
        tool, names = mapping.tool_definition("io.example.x", "X", "", "1.0", tools)
        check_tool(tool)
        assert sorted(names.values()) == sorted(order) and len(tool.capabilities) == 3
        assert names["look_up"] == "look_up"  # a name an action can hold keeps it
        assert all(a.startswith("look_up-") for a, n in names.items() if n != "look_up")
        seen.append(names)
    assert seen[0] == seen[1]
    mapped = [mapping.action_names(order) for order in (["a b", "a/b"], ["a/b", "a b"])]
    assert mapped[0] == mapped[1] and len(set(mapped[0].values())) == 2  # neither takes `a_b` first


async def test_the_registry_client_follows_cursors_and_serves_a_stale_answer_when_the_registry_goes_away(
    pkg_index: PackageIndex,
) -> None:
    for i in range(5):
        pkg_index.servers.append(server_json(f"{NS}/srv-{i}", f"server {i}", "pypi", f"ts-srv-{i}", "1.0.0"))
    async with aiohttp.ClientSession() as http:
        reg = RemoteRegistry(pkg_index.url, http, timeout_s=2, cache_s=0)
        found = await reg.search("srv")
        assert [s.name for s in found] == [f"{NS}/srv-{i}" for i in range(5)]
        assert [r.get("cursor") for r in pkg_index.registry_requests] == [None, "2", "4"]
        assert all(r["version"] == "latest" and r["search"] == "srv" for r in pkg_index.registry_requests)
        await pkg_index.stop()  # the registry goes away
        assert [s.name for s in await reg.search("srv")] == [s.name for s in found]
        with pytest.raises(RegistryUnreachable):
            await reg.search("never-asked")


async def test_search_still_answers_from_the_curated_catalog_when_a_registry_is_down(cfg, dead_port) -> None:  # type: ignore[no-untyped-def]
    import grpc
    from toolscore.v1 import discovery_pb2 as pb
    from toolscore.v1 import toolscore_pb2_grpc

    from services.common import config as config_mod
    from services.hub.app import Hub

    dead = f"http://127.0.0.1:{dead_port}"
    c = config_mod.replace(
        cfg,
        discovery={
            "catalog_dir": str(REPO_ROOT / "config" / "catalog"),
            "registries": (dead,),
            "registry_timeout_s": 2.0,
        },
    )
    async with Hub(c) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).SearchServers(
                pb.SearchServersRequest(query="calculate a math expression", page_size=2), timeout=10
            )
    assert list(resp.unreachable_registries) == [dead]
    assert resp.candidates[0].server.name == "io.github.githejie/calculator" and len(resp.candidates) <= 2
