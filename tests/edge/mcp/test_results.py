"""Tool responses and mesh errors become MCP results and JSON-RPC errors."""

from __future__ import annotations

import pytest
from toolscore.v1 import executor_pb2 as ex

from edge.mcp._protocol import INTERNAL_ERROR, INVALID_PARAMS, ProtocolError
from edge.mcp.results import call_result, from_mesh_error
from services.common.errors import DeadlineExceeded, InvalidArguments, MeshError, NotFound, Unavailable
from services.common.jsonvalue import dict_to_struct, py_to_value
from services.toolkit.results import text_result, to_response


def test_images_become_base64_image_blocks():
    resp = ex.ExecuteResponse()
    resp.content.add().image.data = b"\x89PNG"
    resp.content[0].image.mime_type = "image/png"
    assert call_result(resp) == {"content": [{"type": "image", "data": "iVBORw==", "mimeType": "image/png"}]}


def test_json_blocks_become_text_once_and_objects_become_structured_content():
    listed = call_result(to_response([1, 2]))  # the toolkit sends a JSON block and the same JSON as text
    obj = ex.ExecuteResponse()
    obj.content.add().json.value.CopyFrom(py_to_value({"a": 1}))
    assert listed == {"content": [{"type": "text", "text": "[1, 2]"}]}
    assert call_result(obj) == {
        "content": [{"type": "text", "text": '{"a": 1}'}],
        "structuredContent": {"a": 1},
    }


def test_structured_results_keep_their_text_and_failures_say_why():
    ok = call_result(text_result('{"x": 1}', {"x": 1}))
    silent_failure = call_result(ex.ExecuteResponse(is_error=True, error={"message": "disk full"}))
    bare = ex.ExecuteResponse(structured=dict_to_struct({"y": 2}))
    assert ok == {"content": [{"type": "text", "text": '{"x": 1}'}], "structuredContent": {"x": 1}}
    assert silent_failure == {"content": [{"type": "text", "text": "disk full"}], "isError": True}
    assert call_result(bare)["content"] == [{"type": "text", "text": '{"y": 2}'}]


def test_timeouts_and_unreachable_servers_are_tool_failures():
    for exc in (DeadlineExceeded("tool did not answer within 1s"), Unavailable("tool server is unreachable")):
        assert from_mesh_error(exc) == {"content": [{"type": "text", "text": exc.message}], "isError": True}


def test_bad_calls_are_invalid_params_and_the_rest_internal_errors():
    with pytest.raises(ProtocolError) as bad_args:
        from_mesh_error(InvalidArguments("bad", [("text", "5 is not of type 'string'")]))
    with pytest.raises(ProtocolError) as missing:
        from_mesh_error(NotFound("no tool"))
    with pytest.raises(ProtocolError) as other:
        from_mesh_error(MeshError("boom"))
    assert bad_args.value.code == INVALID_PARAMS
    assert bad_args.value.data["violations"] == [
        {"field": "text", "description": "5 is not of type 'string'"}
    ]
    assert missing.value.code == INVALID_PARAMS
    assert other.value.code == INTERNAL_ERROR
