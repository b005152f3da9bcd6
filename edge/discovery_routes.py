"""REST routes of discovery, for the edge: search, install, list, uninstall, gap analysis.

Mount with `add_routes(app, DiscoveryClient(channel))` (the edge: `GatewayDiscoveryClient(gateway)`).
Handlers only translate JSON <-> the discovery RPCs; the hub decides everything, including
auth (the caller's `Authorization` header is forwarded as gRPC metadata); installs for a need follow
discovery's auto-install policy (services/discovery/auto_install.py), as the runtime's do.
Bodies are read by edge.json_body (one JSON object, typed fields). Handlers raise MeshError;
edge.errors_http answers it as HTTP 4xx/5xx JSON `{success: false, error,
code, reason, message}` (the edge's middleware, or `errors_http.middleware` on a bare app).

    POST   /mcp/search                          {query, max_candidates}
    POST   /mcp/install                         {name, version?} (or {candidate: {name, version?}})
    GET    /api/v1/tools/servers
    DELETE /api/v1/tools/servers/{name}
    GET    /api/v1/tools/servers/{name}/log?max_bytes=
    POST   /api/v1/tools/analyze-gap            {task_description, current_tools, context}
    POST   /api/v1/tools/request-capability     {task_description, required_capabilities, current_tools,
                                                 auto_install, security_level}
    POST   /api/v1/tools/search-and-install     {task_description, required_capabilities, reason}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1.tool_library_pb2_grpc import ToolLibraryServiceStub
from toolscore.v1.toolscore_pb2_grpc import ToolScoreServiceStub

from edge.gateway import HubGateway
from edge.json_body import JsonBody
from services.common.errors import InvalidRequest
from services.discovery import auto_install
from services.discovery.client import DiscoveryClient

log = logging.getLogger(__name__)
CLIENT = web.AppKey("discovery_client", DiscoveryClient)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, client: DiscoveryClient) -> None:
    """Mount the discovery routes on `app`, calling the hub through `client`."""
    app[CLIENT] = client
    app.router.add_post("/mcp/search", _json(search))
    app.router.add_post("/mcp/install", _json(install))
    app.router.add_get("/api/v1/tools/servers", _json(list_servers))
    app.router.add_delete("/api/v1/tools/servers/{name:.+}", _json(uninstall))
    app.router.add_get("/api/v1/tools/servers/{name:.+}/log", _json(server_log))
    app.router.add_post("/api/v1/tools/analyze-gap", _json(analyze_gap))
    app.router.add_post("/api/v1/tools/request-capability", _json(request_capability))
    app.router.add_post("/api/v1/tools/search-and-install", _json(search_and_install))


class GatewayDiscoveryClient(DiscoveryClient):
    """The discovery client over the edge gateway's channel to the hub (which exists once the app starts)."""

    def __init__(self, gateway: HubGateway) -> None:
        self._gateway = gateway
        self.timeout_s, self.install_timeout_s = 30.0, 600.0

    @property
    def _stub(self) -> ToolScoreServiceStub:
        return self._gateway.toolscore

    @property
    def _library(self) -> ToolLibraryServiceStub:
        return self._gateway.library


def _json(fn: Callable[[web.Request, DiscoveryClient], Awaitable[dict[str, Any]]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(await fn(request, request.app[CLIENT]))  # errors: edge.errors_http

    return handler


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _auth(request: web.Request) -> str | None:
    return request.headers.get("Authorization")


# -- JSON views of the messages ------------------------------------------------------


def candidate_json(c: pb.ServerCandidate) -> dict[str, Any]:
    s = c.server
    method = s.packages[0].registry_type if s.packages else ("remote" if s.remotes else "")
    namespace = s.name.partition("/")[0]
    return {
        "name": s.name,
        "title": s.title,
        "description": s.description,
        "version": s.version,
        "author": namespace.rpartition(".")[2]
        if namespace.startswith(("io.github.", "com.github."))
        else namespace,
        "tags": list(s.tags),
        "install_method": method,
        "capabilities": [t.name for t in s.tools],
        "packages": [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in s.packages],
        "remotes": [{"type": r.transport_type, "url": r.url} for r in s.remotes],
        "repository_url": s.repository_url,
        "source": s.source,
        "score": c.score,
        "why_matched": list(c.why_matched),
        "installed": c.installed,
        "installable": not c.policy_denial,
        "policy_denial": c.policy_denial,
        # derived from the install policy: curated 1.0, allowed 0.7, refused 0.0; popularity is unknown
        "security_score": 0.0 if c.policy_denial else (1.0 if s.source == "curated" else 0.7),
        "popularity_score": None,
    }


def server_json(s: pb.InstalledServer) -> dict[str, Any]:
    return {
        "name": s.name,
        "tool_id": s.tool_id,
        "endpoint": s.endpoint,
        "version": s.version,
        "registry_type": s.registry_type,
        "identifier": s.identifier,
        "state": pb.ServerState.Name(s.state).removeprefix("SERVER_STATE_").lower(),
        "progress": s.progress,
        "status_message": s.status_message,
        "tools": list(s.tools),
        "artifacts": [{"name": a.name, "version": a.version, "hash": a.hash} for a in s.artifacts],
        "installed_at": s.installed_at.ToJsonString() if s.HasField("installed_at") else None,
        "restarts": s.restarts,
        "protocol_version": s.protocol_version,
        "isolation": s.isolation,
        "network": s.network,
    }


def _missing_json(m: pb.MissingCapability) -> dict[str, Any]:
    return {
        "name": m.name,
        "description": m.description,
        "suggested_keywords": list(m.suggested_keywords),
        "priority": m.priority,
    }


def gap_json(g: pb.AnalyzeGapResponse) -> dict[str, Any]:
    return {
        "has_sufficient_tools": g.has_sufficient_tools,
        "gap_analysis": {
            "missing_capabilities": [_missing_json(m) for m in g.missing_capabilities],
            "confidence_score": round(g.confidence, 4),
            "reasoning": g.reasoning,
            "analyzer": pb.GapAnalyzer.Name(g.analyzer).removeprefix("GAP_ANALYZER_").lower(),
            "fallback_reason": g.fallback_reason,
        },
        "recommendations": [
            {"capability": m.name, "priority": m.priority, "suggested_keywords": list(m.suggested_keywords)}
            for m in g.missing_capabilities
        ],
        "candidates": [candidate_json(c) for c in g.recommendations],
    }


# -- handlers ----------------------------------------------------------------------


async def search(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    body = await JsonBody.read(request)
    resp = await client.search(
        pb.SearchServersRequest(
            query=body.text("query"), page_size=min(body.count("max_candidates", 10), 100)
        )
    )
    return {
        "status": "success",
        "candidates": [candidate_json(c) for c in resp.candidates],
        "total_found": resp.total_found,
        "unreachable_registries": list(resp.unreachable_registries),
    }


async def install(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    body = await JsonBody.read(request)
    candidate = body.get("candidate")
    target = JsonBody(candidate) if isinstance(candidate, dict) else body
    start = time.perf_counter()
    resp = await client.install(
        pb.InstallServerRequest(
            name=target.text("name"),
            version=target.text("version", required=False),
            request_id=body.text("request_id", required=False),
        ),
        _auth(request),
    )
    return {
        "success": True,
        "already_installed": resp.already_installed,
        "server": server_json(resp.server),
        "installed_tools": [resp.server.tool_id],
        "progress": [{"progress": p.progress, "message": p.message} for p in resp.progress],
        "nodes": _nodes_json(resp.nodes),
        "processing_time_ms": _ms(start),
    }


def _nodes_json(nodes: Iterable[pb.NodeOutcome]) -> list[dict[str, Any]]:
    """In a cluster, what an install or uninstall did on each other hub node (docs/cluster.md)."""
    return [
        {"node_id": n.node_id, "ok": n.ok, "reason": n.error_reason, "message": n.error_message}
        for n in nodes
    ]


async def list_servers(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    servers: list[pb.InstalledServer] = []
    token = ""
    while True:
        resp = await client.list_servers(pb.ListServersRequest(page_size=1000, page_token=token))
        servers.extend(resp.servers)
        token = resp.next_page_token
        if not token:
            break
    return {"status": "success", "servers": [server_json(s) for s in servers], "total_count": len(servers)}


async def uninstall(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    resp = await client.uninstall(pb.UninstallServerRequest(name=request.match_info["name"]), _auth(request))
    return {
        "success": True,
        "message": f"uninstalled {resp.server.name}",
        "server": server_json(resp.server),
        "removed_tool_ids": list(resp.removed_tool_ids),
        "nodes": _nodes_json(resp.nodes),
    }


async def server_log(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    raw = request.query.get("max_bytes") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:  # "²" is a digit to isdigit, not to int
        raise InvalidRequest(
            "max_bytes must be a whole number of bytes",
            reason="INVALID_FIELD",
            metadata={"field": "max_bytes"},
        )
    resp = await client.server_log(
        pb.GetServerLogRequest(name=request.match_info["name"], max_bytes=int(raw)), _auth(request)
    )
    return {"name": resp.name, "text": resp.text, "truncated": resp.truncated}


async def _gap(client: DiscoveryClient, body: JsonBody, task: str) -> pb.AnalyzeGapResponse:
    tools = await client.tools_for(body.items("current_tools"))
    context = body.get("context", "")
    if not isinstance(context, str):
        context = json.dumps(context)[:4000]
    return await client.analyze_gap(
        pb.AnalyzeGapRequest(task_description=task, current_tools=tools, context=context)
    )


async def analyze_gap(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    start = time.perf_counter()
    body = await JsonBody.read(request)
    result = await _gap(client, body, body.text("task_description"))
    return {"success": True, **gap_json(result), "processing_time_ms": _ms(start)}


def _task_with(body: JsonBody) -> str:
    task = body.text("task_description", required=False)
    caps = [str(c) for c in body.items("required_capabilities")]
    text = " ".join([task, *caps]).strip()
    if not text:
        raise InvalidRequest(
            "task_description or required_capabilities is required",
            reason="MISSING_FIELD",
            metadata={"field": "task_description"},
        )
    return text


def _installed_json(servers: list[pb.InstalledServer]) -> list[dict[str, Any]]:
    return [{"tool_id": s.tool_id, "name": s.name, "tools": list(s.tools)} for s in servers]


async def request_capability(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    start = time.perf_counter()
    body = await JsonBody.read(request)
    result = await _gap(client, body, _task_with(body))
    out: dict[str, Any] = {**gap_json(result), "installed_tools": []}
    if result.has_sufficient_tools:
        return {"success": True, "action_taken": "no_action_needed", **out, "processing_time_ms": _ms(start)}
    if not body.get("auto_install"):
        return {"success": True, "action_taken": "analysis_only", **out, "processing_time_ms": _ms(start)}
    done = await auto_install.install_best(
        client, result.recommendations, auto_install.installs_for(result), _auth(request)
    )
    installed, errors = _installed_json(done.servers), done.errors
    out["installed_tools"], out["errors"] = installed, errors
    action = "installed_new_tools" if installed else "installation_failed"
    if not installed and not errors:
        errors.append("no installable catalog entry matches the missing capabilities")
    return {"success": bool(installed), "action_taken": action, **out, "processing_time_ms": _ms(start)}


async def search_and_install(request: web.Request, client: DiscoveryClient) -> dict[str, Any]:
    start = time.perf_counter()
    body = await JsonBody.read(request)
    done = await auto_install.search_and_install(client, _task_with(body), _auth(request))
    installed, errors = _installed_json(done.servers), done.errors
    if installed:
        message = f"installed {installed[0]['name']} ({', '.join(installed[0]['tools'])})"
    elif errors:
        message = "; ".join(errors)
    else:
        message = "no installable catalog entry matches"
    return {
        "success": bool(installed),
        "installed_tools": installed,
        "installation_count": len(installed),
        "total_tools_now": await client.count_tools(),
        "message": message,
        "errors": errors,
        "processing_time_ms": _ms(start),
    }
