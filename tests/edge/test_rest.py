"""The edge's REST API: the original routes with their shapes, the clean /api/v1 API, errors as JSON."""

from __future__ import annotations

import asyncio
import io

import pytest

from tests.edge.conftest import EdgeHandle, echo_spec


async def test_health_and_status_report_a_connected_hub(edge: EdgeHandle):
    status, body = await edge.get("/health")
    assert status == 200 and body["status"] == "healthy" and body["message"]
    status, body = await edge.get("/status")
    assert status == 200 and body["status"] == "running" and body["tool_library_initialized"] is True
    assert body["stats"]["total_tools"] >= 1  # the hub's built-in function tool
    status, body = await edge.get("/api/v1/health")
    assert status == 200 and body["hub_connected"] is True


async def test_original_tool_routes_keep_their_shapes(edge: EdgeHandle, registered_echo: str):
    status, body = await edge.get("/tools")
    assert status == 200 and body["status"] == "success" and body["total_count"] == len(body["tools"])
    echo = next(t for t in body["tools"] if t["tool_id"] == "echo")
    assert set(echo) >= {
        "tool_id",
        "name",
        "description",
        "tool_type",
        "enabled",
        "capabilities_count",
        "capabilities",
    }
    assert echo["tool_type"] == "mcp_server" and echo["capabilities_count"] == 3
    assert echo["capabilities"][0]["parameters"]["text"] == {
        "type": "string",
        "description": "",
        "required": True,
    }

    status, body = await edge.get("/tools/echo")
    assert status == 200 and body["status"] == "success"
    assert set(body["tool"]) >= {
        "tool_id",
        "name",
        "description",
        "tool_type",
        "enabled",
        "tags",
        "capabilities",
        "endpoint",
    }

    status, body = await edge.get("/api/v1/tools/available")
    assert status == 200 and body["status"] == "success" and body["timestamp"]
    item = next(t for t in body["available_tools"] if t["tool_id"] == "echo")
    assert set(item) == {"tool_id", "name", "description", "tool_type", "capabilities", "tags", "endpoint"}
    assert set(item["capabilities"][0]) == {"name", "description", "parameters"}

    status, body = await edge.get("/stats")
    assert status == 200 and body["status"] == "success" and body["stats"]["total_tools"] >= 2


async def test_unknown_tool_is_a_404_json_error_on_every_route(edge: EdgeHandle):
    for path in ("/tools/nope", "/api/v1/tools/nope"):
        status, body = await edge.get(path)
        assert status == 404
        assert body["reason"] == "TOOL_NOT_FOUND" and body["status"] == "error" and body["success"] is False
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "nope", "action": "x", "parameters": {}}
    )
    assert status == 404 and body["success"] is False and "nope" in body["error"]


async def test_execute_returns_the_original_result_shape(edge: EdgeHandle, registered_echo: str):
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "hi"}}
    )
    assert status == 200
    assert set(body) == {"success", "result", "output", "error", "error_type", "processing_time_ms"}
    assert body["success"] is True and body["result"] == {"text": "hi"} and body["error"] is None
    assert body["error_type"] is None and body["processing_time_ms"] > 0


async def test_a_failing_tool_is_a_200_with_success_false_and_its_error_type(
    edge: EdgeHandle, registered_echo: str
):
    status, body = await edge.post("/api/v1/tools/execute", {"tool_id": "echo", "action": "fail"})
    assert status == 200
    assert body["success"] is False and body["error_type"] == "ToolError" and "on purpose" in body["error"]


async def test_schema_violating_arguments_are_an_invalid_input_result_naming_each_violation(
    edge: EdgeHandle, registered_echo: str
):
    # The tool's failure, not the request's (services/router/failures.py): a 200 result the caller
    # reads to correct the call, as the original REST API answered; the tool server never sees it.
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": 5}}
    )
    assert status == 200 and body["success"] is False and body["error_type"] == "InvalidInput", body
    assert "arguments.text: 5 is not of type 'string'" in body["error"], body
    status, body = await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": {}})
    assert status == 200 and body["is_error"] is True and body["error"]["type"] == "InvalidInput", body
    assert "'text' is a required property" in body["error"]["message"], body


async def test_every_rest_route_reads_its_body_by_one_rule(edge: EdgeHandle, registered_echo: str):
    # edge/json_body.py: not JSON, JSON that is not an object (an empty body included) and a blank
    # required field are the same 400 on every route that takes a body, original, v1 and discovery.
    routes = ["/api/v1/tools/execute", "/api/v1/tools/echo/call", "/api/v1/tools", "/mcp/search"]
    routes += ["/admin/tools/register", "/admin/mcp/register"]
    for path in routes:
        for body, data, reason in [
            (None, b"{not json", "INVALID_JSON"),
            ([1, 2], None, "INVALID_BODY"),
            (None, None, "INVALID_BODY"),
        ]:
            status, answer = await edge.post(path, body, data=data)
            assert (status, answer["reason"], answer["success"]) == (400, reason, False), (path, body, data)
    for path, body, field in [
        ("/api/v1/tools/execute", {"tool_id": " ", "action": "echo"}, "tool_id"),
        ("/api/v1/tools/echo/call", {"action": "  "}, "action"),
        ("/mcp/search", {"query": " "}, "query"),
    ]:
        status, answer = await edge.post(path, body)
        assert (status, answer["reason"], answer["metadata"]) == (400, "MISSING_FIELD", {"field": field})


async def test_bad_bodies_get_clear_400s_and_the_edge_keeps_serving(edge: EdgeHandle, registered_echo: str):
    status, body = await edge.post("/api/v1/tools/execute", data=b"{not json")
    assert status == 400 and body["reason"] == "INVALID_JSON"
    status, body = await edge.post("/api/v1/tools/execute", [1, 2])
    assert status == 400 and body["reason"] == "INVALID_BODY"
    status, body = await edge.post("/api/v1/tools/execute", {"action": "echo"})
    assert status == 400 and body["reason"] == "MISSING_FIELD" and body["metadata"] == {"field": "tool_id"}
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": "text"}
    )
    assert status == 400 and body["reason"] == "INVALID_ARGUMENTS_TYPE"
    status, body = await edge.post("/api/v1/tools/execute", {"tool_id": "echo", "action": "nope"})
    assert status == 400 and body["reason"] == "UNKNOWN_ACTION"
    status, body = await edge.post("/api/v1/tools/execute", data=io.BytesIO(b"x" * (5 * 1024 * 1024)))
    assert status == 413 and body["status"] == "error"
    status, body = await edge.get("/no/such/route")
    assert status == 404 and body["message"] == "no such route"
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "still ok"}}
    )
    assert status == 200 and body["result"] == {"text": "still ok"}


async def test_admin_register_and_deregister_go_through_the_hub(edge: EdgeHandle, hub, echo_server: str):
    status, body = await edge.post("/admin/tools/register", {"tool_spec": echo_spec("echo2", echo_server)})
    assert status == 200 and body == {
        "success": True,
        "tool_id": "echo2",
        "message": "tool echo2 registered",
        "revision": body["revision"],
    }
    assert hub.registry.entry("echo2") is not None  # the hub is the source of truth
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo2", "action": "echo", "parameters": {"text": "x"}}
    )
    assert body["success"] is True  # read-your-writes: callable as soon as registration returns
    status, body = await edge.post("/admin/tools/register", {"tool_spec": echo_spec("echo2", echo_server)})
    assert body["message"] == "tool echo2 already registered, unchanged"
    status, body = await edge.delete("/admin/tools/echo2")
    assert status == 200 and body["success"] is True and hub.registry.entry("echo2") is None
    assert "echo2" not in edge.registry.entries
    status, body = await edge.delete("/admin/tools/echo2")
    assert status == 404 and body["success"] is False


async def test_invalid_registrations_are_refused_by_the_hub_with_its_reason(
    edge: EdgeHandle, echo_server: str
):
    spec = echo_spec("bad id!", echo_server)
    status, body = await edge.post("/admin/tools/register", {"tool_spec": spec})
    assert status == 400 and body["reason"] == "INVALID_TOOL_ID"
    spec = echo_spec("noendpoint", "")
    status, body = await edge.post("/admin/tools/register", {"tool_spec": spec})
    assert status == 400 and body["reason"] == "INVALID_ENDPOINT"
    status, body = await edge.post("/admin/tools/register", {"spec": {}})
    assert status == 400 and body["reason"] == "MISSING_FIELD"


async def test_mcp_register_accepts_grpc_endpoints_and_refuses_http_urls_for_now(
    edge: EdgeHandle, echo_server: str
):
    status, body = await edge.post("/admin/mcp/register", {"server_spec": echo_spec("echo3", echo_server)})
    assert status == 200 and body["success"] is True and body["tool_id"] == "echo3"
    assert edge.registry.entries["echo3"].tool.kind == 2  # TOOL_KIND_GRPC_SERVER
    spec = echo_spec("remote", "https://example.invalid/mcp")
    status, body = await edge.post("/admin/mcp/register", {"server_spec": spec})
    assert (
        status == 400 and body["reason"] == "MCP_HTTP_NOT_SUPPORTED" and "remote" not in edge.registry.entries
    )


async def test_clean_api_registers_lists_calls_and_deregisters(edge: EdgeHandle, echo_server: str):
    spec = {
        "tool_id": "echo4",
        "endpoint": echo_server,
        "kind": "grpc_server",
        "capabilities": [
            {"name": "echo", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}
        ],
    }
    status, body = await edge.post("/api/v1/tools", spec)
    assert status == 201 and body["created"] is True and body["tool"]["kind"] == "grpc_server"
    status, body = await edge.get("/api/v1/tools?kind=grpc_server")
    assert status == 200 and [t["tool_id"] for t in body["tools"]] == ["echo4"] and body["revision"] > 0
    status, body = await edge.get("/api/v1/tools/echo4")
    assert status == 200 and body["capabilities"][0]["input_schema"]["properties"]["text"] == {
        "type": "string"
    }
    status, body = await edge.post(
        "/api/v1/tools/echo4/call", {"action": "echo", "arguments": {"text": "clean"}, "timeout_s": 5}
    )
    assert status == 200 and body["is_error"] is False and body["structured"] == {"text": "clean"}
    assert body["content"][0]["type"] == "text" and body["error"] is None
    status, body = await edge.post("/api/v1/tools/echo4/call", {"action": "echo", "timeout_s": -1})
    assert status == 400 and body["metadata"] == {"field": "timeout_s"}
    status, body = await edge.delete("/api/v1/tools/echo4")
    assert status == 200 and body["tool"]["tool_id"] == "echo4"


async def test_calls_are_counted_in_the_hub_registry_whatever_the_path(
    edge: EdgeHandle, hub, registered_echo: str
):
    for text in ("a", "b"):
        await edge.post(
            "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": text}}
        )
    await edge.post("/api/v1/tools/execute", {"tool_id": "echo", "action": "fail"})
    await edge.gateway.usage.flush()
    entry = hub.registry.entry("echo")
    assert (entry.calls, entry.successes) == (3, 2)


async def test_schema_violating_arguments_of_a_tool_the_edge_relays_are_an_invalid_input_result_too(
    edge: EdgeHandle,
):
    # `builtin` runs in the hub's process: the edge checks the call before the hop (Router.precheck)
    # and answers it as the hub would, with the same result.
    assert not edge.gateway.router.reaches(edge.registry.entries["builtin"])
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "builtin", "action": "add", "parameters": {"a": "one", "b": 2}}
    )
    assert status == 200 and body["success"] is False and body["error_type"] == "InvalidInput", body
    assert "arguments.a" in body["error"], body


async def test_a_tool_that_times_out_is_a_timeout_result_and_other_calls_go_on(
    edge: EdgeHandle, registered_echo: str
):
    slow = asyncio.create_task(
        edge.post(
            "/api/v1/tools/echo/call", {"action": "slow", "arguments": {"seconds": 5}, "timeout_s": 0.3}
        )
    )
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "meanwhile"}}
    )
    assert body["result"] == {"text": "meanwhile"}
    status, body = await slow
    assert status == 200 and body["is_error"] is True, body
    assert body["error"] == {"type": "TimeoutError", "message": "tool did not answer within 0.3s"}, body


async def test_openapi_document_describes_every_http_route(edge: EdgeHandle):
    status, doc = await edge.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    served = set()
    for route in edge.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method in ("HEAD", "*") or path in ("/api/v1/events/tools", "/websocket") or not path:
            continue
        if path in ("/mcp", "/ws/mcp", "/mcp/servers/{server}", "/ws/mcp/servers/{server}"):
            continue  # the MCP transports (and their virtual servers') are documented in docs/mcp.md
        served.add((path, route.method.lower()))
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert served == documented


async def test_metrics_count_calls_errors_and_latency_per_tool_and_route(
    edge: EdgeHandle, registered_echo: str
):
    await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "m"}}
    )
    await edge.post("/api/v1/tools/execute", {"tool_id": "echo", "action": "fail"})
    await edge.post("/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {}})
    async with edge.http.get(edge.url + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert 'toolscore_edge_tool_calls_total{tool_id="echo"} 3' in text
    # A failing tool and arguments its schema refuses are both the tool's failures (results).
    assert 'toolscore_edge_tool_errors_total{tool_id="echo",kind="tool_error"} 2' in text
    assert 'toolscore_edge_tool_call_duration_seconds_count{tool_id="echo"} 3' in text
    assert (
        'toolscore_edge_http_requests_total{method="POST",route="/api/v1/tools/execute",status="200"} 3'
        in text
    )
    bucket = 'toolscore_edge_http_request_duration_seconds_bucket{method="POST",route="/api/v1/tools/execute"'
    assert bucket + ',le="+Inf"} 3' in text
    assert "toolscore_edge_websocket_connections_total" in text and "toolscore_edge_events_sent_total" in text


async def test_when_the_hub_is_gone_calls_and_changes_fail_with_503_json(cfg, start_edge):
    from services.hub.app import Hub
    from tests.edge.conftest import edge_config

    async with Hub(cfg) as hub:
        edge = await start_edge(edge_config(cfg, hub))
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "builtin", "action": "echo", "parameters": {"text": "x"}}
    )
    assert status == 503 and body["reason"] == "HUB_UNAVAILABLE"
    status, body = await edge.post(
        "/admin/tools/register", {"tool_spec": {"tool_id": "x", "endpoint": "h:1"}}
    )
    assert status == 503 and body["success"] is False


async def test_a_rest_client_vanishing_mid_call_leaves_the_edge_serving(
    edge: EdgeHandle, registered_echo: str
):
    import aiohttp

    async with aiohttp.ClientSession() as impatient:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await impatient.post(
                    edge.url + "/api/v1/tools/echo/call", json={"action": "slow", "arguments": {"seconds": 1}}
                )
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "next"}}
    )
    assert status == 200 and body["result"] == {"text": "next"}


async def test_task_routes_say_clearly_when_no_llm_is_configured(edge: EdgeHandle):
    status, body = await edge.post("/api/v1/tasks", {"input": "anything"})
    assert status == 503 and body["reason"] == "NO_LLM_CONFIGURED" and "OPENAI_BASE_URL" in body["message"]


async def test_discovery_routes_are_served_by_the_edge(edge: EdgeHandle):
    status, body = await edge.post(
        "/mcp/search", {"query": "current time in a timezone", "max_candidates": 3}
    )
    assert status == 200 and body["candidates"][0]["name"] == "io.github.modelcontextprotocol/time"


async def test_a_registration_over_a_size_bound_is_400_naming_the_bound(edge: EdgeHandle, echo_server: str):
    spec = echo_spec("echo-huge", echo_server)
    spec["description"] = "x" * 100_000
    status, body = await edge.post("/api/v1/tools", spec)
    assert status == 400 and body["reason"] == "DESCRIPTION_TOO_LARGE", body
    assert body["metadata"] == {"field": "tool.description", "size": "100000", "limit": "65536"}, body
    status, body = await edge.get("/api/v1/tools/echo-huge")
    assert status == 404


async def test_a_tool_on_one_hub_says_it_has_no_node_and_no_replicas(edge: EdgeHandle, registered_echo: str):
    status, body = await edge.get("/api/v1/tools/echo")
    assert status == 200, body
    assert (body["node_id"], body["replicas"]) == ("", [])


def test_a_tools_node_and_replicas_are_in_its_json() -> None:
    from toolscore.v1 import tool_pb2

    from edge.rest.shapes import tool_json

    tool = tool_pb2.Tool(tool_id="t", endpoint="unix:///a.sock", node_id="node-a")
    tool.replicas.add(endpoint="unix:///a.sock", node_id="node-a")
    tool.replicas.add(endpoint="unix:///b.sock", node_id="node-b", health=tool_pb2.HEALTH_STATUS_UNHEALTHY)
    got = tool_json(tool)
    assert got["node_id"] == "node-a"
    assert got["replicas"] == [
        {"endpoint": "unix:///a.sock", "node_id": "node-a", "health": "unknown"},
        {"endpoint": "unix:///b.sock", "node_id": "node-b", "health": "unhealthy"},
    ]
