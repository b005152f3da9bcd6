"""The gap meta-tool: the LLM asks for a capability; discovery analyses, installs, and the runtime waits.

Flow, over the hub's discovery RPCs (`hub_client.py`): `AnalyzeGap` -> (when tools are missing) discovery's
auto-install policy (`services.discovery.auto_install.search_and_install`: `SearchServers`, then
`InstallServer` of the best installable candidate) -> wait until the installed tools appear in the
catalog (it is fed by `tool_installed` events, so this waits on the event, not on a poll). When the
hub serves no discovery (UNIMPLEMENTED) the LLM gets a clear observation and carries on with the
tools it has.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from google.protobuf import json_format
from toolscore.v1 import discovery_pb2 as pb

from services.common.errors import DeadlineExceeded, MeshError, Unauthenticated, Unavailable
from services.discovery import auto_install
from services.runtime.edge_client import ToolOutcome
from services.runtime.hub_client import HubClient
from services.runtime.llm_tools import Catalog

NAME = "request_capability"
SPEC: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": NAME,
        "description": (
            "Ask ToolScore for a capability none of the offered tools has (e.g. 'read PDF files'). "
            "It finds and installs a matching tool server; its functions are offered to you next."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "capability": {"type": "string", "description": "what the missing tool must be able to do"},
                "reason": {"type": "string", "description": "why the task needs it"},
            },
            "required": ["capability"],
        },
    },
}
_UNAVAILABLE = (
    "Tool discovery is not available on this mesh (the hub serves no discovery RPCs), so no tool can "
    "be installed. Continue with the tools you have, or answer with what you can."
)


async def request_capability(
    hub: HubClient, catalog: Catalog, task: str, arguments: dict[str, Any], wait_s: float
) -> ToolOutcome:
    """Run the gap flow for one request; always an outcome for the LLM, never an exception."""
    capability = arguments.get("capability")
    if not isinstance(capability, str) or not capability.strip():
        return ToolOutcome.failed("'capability' (a non-empty string) is required", "InvalidInput")
    reason = str(arguments.get("reason") or "")
    description = f"{task}\nNeeded capability: {capability}" + (f" ({reason})" if reason else "")
    client = hub.discovery
    try:
        gap = await client.analyze_gap(
            pb.AnalyzeGapRequest(
                task_description=description,
                current_tools=await client.tools_for(sorted(catalog.tools)),
                context=json.dumps({"requested_capability": capability}),
            )
        )
        if gap.has_sufficient_tools:
            why = gap.reasoning
            return ToolOutcome(
                True, f"The tools already offered cover this capability. {why}".strip(), _json(gap)
            )
        missing = [m.name for m in gap.missing_capabilities if m.name and m.name != capability]
        # The search query is the capability itself: the whole task would drown it in unrelated words.
        async with asyncio.timeout(wait_s):  # the whole install, however many candidates it tries
            done = await auto_install.search_and_install(
                client, " ".join([capability, *missing]), hub.authorization
            )
    except MeshError as err:
        return _refused(err, capability)
    except TimeoutError:
        return ToolOutcome.failed(
            f"no install for {capability!r} finished within {wait_s:.0f}s", "TimeoutError"
        )
    installed = [{"tool_id": s.tool_id, "name": s.name, "tools": list(s.tools)} for s in done.servers]
    result = {"installed_tools": installed, "errors": done.errors}
    ids = [s.tool_id for s in done.servers]
    if not ids:
        msg = "; ".join(done.errors) or "no installable catalog entry matches"
        return ToolOutcome.failed(
            f"nothing installed for {capability!r}: {msg}", "InstallFailed", result=result
        )
    arrived = await catalog.wait_for(lambda c: all(i in c.tools for i in ids), wait_s)
    if not arrived:
        return ToolOutcome.failed(
            f"installed {ids} but no tool_installed event arrived within {wait_s:.0f}s",
            "TimeoutError",
            result=result,
        )
    names = [f"{t}: " + ", ".join(c.name for c in catalog.tools[t].capabilities) for t in ids]
    return ToolOutcome(
        True, "Installed " + "; ".join(names) + ". Their functions are offered from now on.", result
    )


def _refused(err: MeshError, capability: str) -> ToolOutcome:
    """A discovery RPC that failed, as the LLM sees it."""
    if err.code == grpc.StatusCode.UNIMPLEMENTED:
        return ToolOutcome.failed(_UNAVAILABLE, "NotAvailable")
    if isinstance(err, Unavailable | DeadlineExceeded):
        return ToolOutcome.failed(f"discovery failed: {err.reason}: {err.message}", "NetworkError")
    if isinstance(err, Unauthenticated):
        return ToolOutcome.failed(f"nothing installed for {capability!r}: {err.message}", "InstallFailed")
    return ToolOutcome.failed(f"discovery failed: {err.reason}: {err.message}", "InstallFailed")


def _json(gap: pb.AnalyzeGapResponse) -> dict[str, Any]:
    answer: dict[str, Any] = json_format.MessageToDict(gap, preserving_proto_field_name=True)
    return answer
