"""The gap meta-tool: the LLM asks for a capability; discovery analyses, installs, and the runtime waits.

Flow: `POST /api/v1/tools/analyze-gap` -> (when tools are missing)
`POST /api/v1/tools/search-and-install` -> wait until the installed tools
appear in the catalog (it is fed by `tool_installed` events, so this waits on
the event, not on a poll). When the discovery routes are not deployed (404) the
LLM gets a clear observation and carries on with the tools it has.
"""

from __future__ import annotations

from typing import Any

from services.runtime.catalog import Catalog
from services.runtime.edge import EdgeClient, EdgeUnavailable, RouteMissing, ToolOutcome

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
    "Tool discovery is not available on this mesh (the edge has no {route} route), so no tool can "
    "be installed. Continue with the tools you have, or answer with what you can."
)


def _installed_ids(raw: Any) -> list[str]:
    out = []
    for item in raw or ():
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            tid = item.get("tool_id") or item.get("id") or item.get("name")
            if isinstance(tid, str):
                out.append(tid)
    return out


async def request_capability(
    edge: EdgeClient, catalog: Catalog, task: str, arguments: dict[str, Any], wait_s: float
) -> ToolOutcome:
    """Run the gap flow for one request; always an outcome for the LLM, never an exception."""
    capability = arguments.get("capability")
    if not isinstance(capability, str) or not capability.strip():
        return ToolOutcome.failed("'capability' (a non-empty string) is required", "InvalidInput")
    reason = str(arguments.get("reason") or "")
    description = f"{task}\nNeeded capability: {capability}" + (f" ({reason})" if reason else "")
    route = "/api/v1/tools/analyze-gap"
    try:
        gap = await edge.post_json(
            route,
            {
                "task_description": description,
                "current_tools": sorted(catalog.tools),
                "context": {"requested_capability": capability},
            },
        )
        if gap.get("has_sufficient_tools") is True:
            why = (gap.get("gap_analysis") or {}).get("reasoning") or ""
            return ToolOutcome(True, f"The tools already offered cover this capability. {why}".strip(), gap)
        missing = [
            m.get("name") if isinstance(m, dict) else m
            for m in (gap.get("gap_analysis") or {}).get("missing_capabilities") or ()
        ]
        route = "/api/v1/tools/search-and-install"
        # The search query is the capability itself: the whole task would drown it in unrelated words.
        install = await edge.post_json(
            route,
            {
                "task_description": capability,
                "required_capabilities": [m for m in missing if m and m != capability],
                "reason": reason or capability,
            },
            timeout_s=wait_s,
        )
    except RouteMissing:
        return ToolOutcome.failed(_UNAVAILABLE.format(route=route), "NotAvailable")
    except EdgeUnavailable as exc:
        return ToolOutcome.failed(f"discovery failed: {exc}", "NetworkError")
    ids = _installed_ids(install.get("installed_tools"))
    if not install.get("success") or not ids:
        msg = install.get("message") or install.get("error") or "no matching tool could be installed"
        return ToolOutcome.failed(
            f"nothing installed for {capability!r}: {msg}", "InstallFailed", result=install
        )
    arrived = await catalog.wait_for(lambda c: all(i in c.tools for i in ids), wait_s)
    if not arrived:
        return ToolOutcome.failed(
            f"installed {ids} but no tool_installed event arrived within {wait_s:.0f}s",
            "TimeoutError",
            result=install,
        )
    names = [f"{t}: " + ", ".join(c.name for c in catalog.tools[t].capabilities) for t in ids]
    return ToolOutcome(
        True, "Installed " + "; ".join(names) + ". Their functions are offered from now on.", install
    )
