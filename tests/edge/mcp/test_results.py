"""Tool responses and mesh errors become MCP results and JSON-RPC errors."""

from __future__ import annotations

import mcp_types as types
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from edge.mcp._protocol import INTERNAL_ERROR, INVALID_PARAMS, UNAUTHENTICATED
from edge.mcp.results import call_result, error_result, is_result, rpc_error
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArguments,
    InvalidRequest,
    MeshError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.common.jsonvalue import dict_to_struct, py_to_value, text_result, to_response
from services.discovery import mapping
from services.router.failures import failure_result, invalid_input_result


def test_images_become_base64_image_blocks():
    resp = ex.ExecuteResponse()
    resp.content.add().image.data = b"\x89PNG"
    resp.content[0].image.mime_type = "image/png"
    assert call_result(resp) == {"content": [{"type": "image", "data": "iVBORw==", "mimeType": "image/png"}]}


def test_every_mcp_block_kind_with_its_annotations_and_meta_comes_back_as_the_server_sent_it():
    notes = types.Annotations(
        audience=["user", "assistant"], priority=0.5, last_modified="2026-01-12T15:00:58Z"
    )
    sent = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="hi", annotations=notes, _meta={"a": {"b": [1, "c"]}}),
            types.TextContent(type="text", text="bare"),
            types.ImageContent(
                type="image", data="iVBORw==", mime_type="image/png", annotations=types.Annotations()
            ),
            types.AudioContent(type="audio", data="UklGRg==", mime_type="audio/wav", _meta={}),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="x://t", mime_type="text/plain", text="t", _meta={"r": 1}
                ),
                annotations=types.Annotations(priority=1.0),
            ),
            types.EmbeddedResource(
                type="resource", resource=types.BlobResourceContents(uri="x://b", blob="AAE=")
            ),
            types.ResourceLink(
                type="resource_link",
                uri="x://l",
                name="l",
                title="",
                description="d",
                mime_type="text/csv",
                size=0,
                icons=[types.Icon(src="data:,", theme="dark")],
                annotations=types.Annotations(audience=["assistant"]),
                _meta={"k": True},
            ),
            types.ResourceLink(type="resource_link", uri="x://bare", name="bare"),
        ],
        structured_content={"n": 1},
    )
    wire = ex.ExecuteResponse.FromString(mapping.to_response(sent).SerializeToString())
    got = types.CallToolResult.model_validate(call_result(wire))
    assert got.model_dump(mode="json", by_alias=True) == sent.model_dump(mode="json", by_alias=True)


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


def test_timeouts_and_unreachable_tool_servers_are_results_the_router_already_made():
    # The router answers these (services/router/failures.py); MCP only presents what it got.
    for kind, text in (
        (tool_pb2.ERROR_TYPE_TIMEOUT, "tool did not answer within 1s"),
        (tool_pb2.ERROR_TYPE_NETWORK, "tool server at unix:///x is unreachable: gone"),
    ):
        result = call_result(failure_result(kind, text))
        assert result == {"content": [{"type": "text", "text": text}], "isError": True}


def test_the_hub_unreachable_or_late_is_a_json_rpc_error_not_a_result():
    for exc in (
        Unavailable("hub unreachable: connection refused", reason="HUB_UNAVAILABLE"),
        DeadlineExceeded("the hub did not answer"),
    ):
        assert not is_result(exc)
        err = rpc_error(exc)
        assert err.code == INTERNAL_ERROR and err.data["reason"] == exc.reason


def test_arguments_the_tool_does_not_accept_are_an_is_error_result_the_model_can_read():
    # The router answers schema violations as an INVALID_INPUT result naming every one of them
    # (services/router/failures.py); MCP presents it. Arguments past the mesh's bounds reach MCP as
    # mesh errors, and are results too (SEP-1303: the model can send smaller or simpler ones).
    violations = [
        ("arguments.text", "5 is not of type 'string'"),
        ("arguments", "'n' is a required property"),
    ]
    refused = invalid_input_result(
        InvalidArguments("arguments do not match the input schema: ...", violations)
    )
    result = call_result(refused)
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "5 is not of type 'string'" in text and "'n' is a required property" in text
    for reason in ("ARGUMENTS_TOO_DEEP", "ARGUMENTS_TOO_LARGE", "CALL_TOO_LARGE", "SCHEMA_TOO_COMPLEX"):
        err = MeshError(f"because {reason}", reason=reason)
        assert is_result(err), reason
        assert error_result(err) == {"content": [{"type": "text", "text": err.message}], "isError": True}


def test_an_action_the_caller_has_no_rights_for_is_a_json_rpc_error_naming_the_token_not_an_internal_error():
    # python_install_package without the admin token: a protocol fault (the caller's rights), -32003
    # with the mesh error in data; -32603 "Internal error" blamed the edge for a refusal.
    err = Unauthenticated("python_install_package needs the admin token", reason="ADMIN_TOKEN_REQUIRED")
    assert not is_result(err)
    refused = rpc_error(err)
    assert (refused.code, refused.message, refused.data) == (UNAUTHENTICATED, err.message, err.to_json())
    assert refused.http_status == 200  # never 401: an MCP client would start an OAuth flow


def test_unknown_or_disabled_tools_and_bad_requests_are_invalid_params_and_the_rest_internal_errors():
    missing, bad = NotFound("no tool"), InvalidRequest("no action", reason="UNKNOWN_ACTION")
    disabled = FailedPrecondition("tool 'x' is disabled", reason="TOOL_DISABLED")
    other = MeshError("boom")
    assert not any(is_result(exc) for exc in (missing, bad, disabled, other))
    assert {rpc_error(exc).code for exc in (missing, bad, disabled)} == {INVALID_PARAMS}
    assert rpc_error(other).code == INTERNAL_ERROR
    assert rpc_error(disabled).data == disabled.to_json()


def test_a_structured_value_that_is_not_an_object_is_itself_only_where_the_era_allows_it():
    for value in ([1, "two", {"three": None}], "text", 2.5, False):
        resp = mapping.to_response(
            types.CallToolResult(content=[types.TextContent(type="text", text="v")], structured_content=value)
        )
        wire = ex.ExecuteResponse.FromString(resp.SerializeToString())  # as it crosses the mesh
        assert wire.structured_is_value and call_result(wire, any_value=True)["structuredContent"] == value
        assert call_result(wire)["structuredContent"] == {"result": value}  # the handshake era: objects
    obj = mapping.to_response(types.CallToolResult(content=[], structured_content={"result": [1]}))
    assert not obj.structured_is_value  # an object that happens to have `result` stays an object
    assert call_result(obj, any_value=True)["structuredContent"] == {"result": [1]}
    bare = mapping.to_response(types.CallToolResult(content=[], structured_content=[1, 2]))
    assert call_result(bare, any_value=True)["content"] == [{"type": "text", "text": "[1, 2]"}]


def test_a_results_meta_is_carried_without_the_hops_reserved_keys():
    meta = {
        "dev.test/rev": 3,
        "nested": {"a": [1, None]},
        "io.modelcontextprotocol/serverInfo": {"name": "s"},
    }
    resp = mapping.to_response(types.CallToolResult(content=[], _meta=meta))
    assert call_result(resp)["_meta"] == {"dev.test/rev": 3, "nested": {"a": [1, None]}}
    only_reserved = mapping.to_response(
        types.CallToolResult(content=[], _meta={"io.modelcontextprotocol/serverInfo": {"name": "s"}})
    )
    assert "_meta" not in call_result(only_reserved)
    assert "_meta" not in call_result(text_result("plain"))


def test_structured_content_or_meta_past_the_json_bounds_is_an_error_result():
    deep: object = 1
    for _ in range(60):
        deep = {"a": deep}
    for result, why in (
        (
            types.CallToolResult(content=[], structured_content=deep),
            "structuredContent nested deeper than 32",
        ),
        (types.CallToolResult(content=[], _meta={"x": deep}), "_meta nested deeper than 32"),
        (types.CallToolResult(content=[], structured_content={"s": "x" * 2000}), "larger than 1000 bytes"),
        # A block's JSON too: one nested past protobuf's limit could not even be read by the next hop.
        (
            types.CallToolResult(content=[types.TextContent(type="text", text="t", _meta={"x": deep})]),
            "a content block's _meta nested deeper than 32",
        ),
        (
            types.CallToolResult(
                content=[
                    types.EmbeddedResource(
                        type="resource",
                        resource=types.TextResourceContents(uri="x://t", text="t", _meta={"x": deep}),
                    )
                ]
            ),
            "an embedded resource's _meta nested deeper than 32",
        ),
    ):
        resp = mapping.to_response(result, max_bytes=1000)
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_SYSTEM
        assert why in call_result(resp)["content"][0]["text"]
        assert not resp.HasField("structured") and not resp.HasField("meta")
        assert ex.ExecuteResponse.FromString(resp.SerializeToString()) == resp
