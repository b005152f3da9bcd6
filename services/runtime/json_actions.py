"""The text-only JSON action mode (the original format) and the prompts of both modes.

For endpoints without function calling the LLM answers with one JSON object,
`{"thinking", "tool_id", "action", "parameters"}`; `"action": "complete_task"`
(or `"tool_id": "complete_task"`) ends the task with `parameters.answer`. Pure
functions only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from services.runtime.llm_tools import Function

COMPLETE = "complete_task"
NATIVE_SYSTEM = (
    "You are an agent that solves the user's task with the tools offered as functions. Call tools when they "
    "help (several at once when they are independent); every result, including errors, comes back to you. "
    "When a capability you need is missing, call request_capability to have a tool installed. When you are "
    "done, answer with the final result as plain text and no tool call."
)
_JSON_SYSTEM = (
    "You are an agent that solves the user's task with tools. Reply with exactly one JSON object and nothing "
    'else: {"thinking": "...", "tool_id": "...", "action": "...", "parameters": {...}}. '
    "The result of each action comes back to you as an observation. When you have the final result reply "
    '{"thinking": "...", "tool_id": "complete_task", "action": "complete_task", '
    '"parameters": {"answer": "..."}}.'
)
_GAP = (
    ' When a capability you need is missing, use tool_id "request_capability", action "request_capability", '
    'parameters {"capability": "...", "reason": "..."}.'
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


@dataclass
class JsonAction:
    thinking: str
    tool_id: str
    action: str
    parameters: dict[str, Any]

    @property
    def completes(self) -> bool:
        return COMPLETE in (self.tool_id, self.action)


def json_system_prompt(functions: list[Function], gap: bool) -> str:
    lines = [
        f"- tool_id {f.tool_id!r}, action {f.action!r}: {f.spec['function']['description']}; "
        f"parameters schema {json.dumps(f.spec['function']['parameters'], separators=(',', ':'))}"
        for f in functions
    ]
    return _JSON_SYSTEM + (_GAP if gap else "") + "\n\nAvailable tools:\n" + ("\n".join(lines) or "(none)")


def parse_action(text: str) -> JsonAction:
    """The action in an LLM reply; ValueError saying what is wrong (it goes back to the LLM)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    obj: Any = None
    for cand in candidates:
        start, end = cand.find("{"), cand.rfind("}")
        if start < 0 or end <= start:
            continue
        try:
            obj = json.loads(cand[start : end + 1])
            break
        except ValueError:
            continue
    if not isinstance(obj, dict):
        raise ValueError("the reply is not one JSON object with thinking, tool_id, action and parameters")
    tool_id, action = obj.get("tool_id"), obj.get("action")
    params = obj.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(tool_id, str) or not tool_id or not isinstance(action, str) or not action:
        if tool_id == COMPLETE or action == COMPLETE:
            tool_id = action = COMPLETE
        else:
            raise ValueError("tool_id and action must be non-empty strings")
    if not isinstance(params, dict):
        raise ValueError("parameters must be a JSON object")
    return JsonAction(str(obj.get("thinking") or ""), tool_id, action, params)
