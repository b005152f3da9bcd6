"""JSON Schemas of the executor's actions (what the hub validates arguments against)."""

from __future__ import annotations

from services.executor import tasks

SESSION_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": "A session_id returned by an earlier call with new_session: true; the code runs in "
    "that session's interpreter, with its variables, imports and files. Ids are minted by the "
    "executor: any other id is refused",
}
NEW_SESSION = {
    "type": "boolean",
    "description": "Start a session (a dedicated sandboxed interpreter that keeps state across calls) and "
    "run the code in it; the result's session_id names it on later calls",
}

PYTHON_EXECUTE_INPUT = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "Python source to run in a fresh, sandboxed interpreter"},
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "Seconds before the run is killed",
        },
        "session_id": SESSION_ID,
        "new_session": NEW_SESSION,
    },
    "required": ["code"],
    "additionalProperties": False,
}
PYTHON_EXECUTE_OUTPUT = {
    "type": "object",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "return_code": {"type": "integer"},
        "result": {
            "type": ["string", "null"],
            "description": "repr of the last expression, as a notebook shows",
        },
        "timed_out": {"type": "boolean"},
        "truncated": {"type": "boolean"},
        "duration_ms": {"type": "number"},
        "artifacts": {"type": "array", "items": {"type": "object"}},
        "session_id": {"type": "string", "description": "The session the code ran in, if any"},
        "error_reason": {"type": "string"},
    },
}
ANALYZE_INPUT = {
    "type": "object",
    "properties": {
        "data": {"description": "Records (list of objects), columns (object of lists) or a list of numbers"},
        "operation": {"type": "string", "enum": list(tasks.OPERATIONS)},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["data", "operation"],
    "additionalProperties": False,
}
VISUALIZE_INPUT = {
    "type": "object",
    "properties": {
        "data": {"description": "Records, columns or a list of numbers"},
        "plot_type": {"type": "string", "enum": list(tasks.PLOT_TYPES)},
        "title": {"type": "string", "maxLength": 200},
        "x": {"type": "string", "description": "Column for the x axis (default: the first)"},
        "y": {"type": "string", "description": "Column for the y axis (default: the numeric columns)"},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["data", "plot_type"],
    "additionalProperties": False,
}
INSTALL_INPUT = {
    "type": "object",
    "properties": {"package_name": {"type": "string", "minLength": 1, "maxLength": 100}},
    "required": ["package_name"],
    "additionalProperties": False,
}
END_SESSION_INPUT = {
    "type": "object",
    "properties": {"session_id": SESSION_ID},
    "additionalProperties": False,
}
