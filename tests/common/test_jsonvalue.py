"""The hot-path Struct conversions agree with protobuf's own Struct.update and JSON semantics."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Struct

from services.common.jsonvalue import fill_struct, struct_to_dict
from services.toolkit.results import to_json

VALUES = [
    {},
    {"s": "x", "e": "", "u": "héllo \U0001f600"},
    {"i": 1, "big": 2**60, "neg": -3, "f": 1.5, "z": 0.0},
    {"t": True, "f": False, "n": None},
    {"empty_list": [], "empty_obj": {}, "list": [1, "2", None, [3], {"k": False}]},
    {"nested": {"a": {"b": {"c": [True, 2.5]}}}},
]


@pytest.mark.parametrize("value", VALUES)
def test_fill_struct_writes_what_struct_update_writes(value):
    expected, got = Struct(), Struct()
    expected.update(value)
    fill_struct(got, value)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("value", VALUES)
def test_struct_to_dict_reads_back_json_values(value):
    s = Struct()
    s.update(value)
    back = struct_to_dict(s)
    assert back == value  # Struct keeps every number as a double: 2**60 comes back as 2.0**60
    for k, v in back.items():
        if isinstance(value[k], int) and abs(value[k]) < 2**53:
            assert type(v) is type(value[k])  # integral doubles come back as ints (bools as bools)


def test_an_empty_result_is_still_a_present_struct():
    holder = Struct()
    fill_struct(holder.fields["r"].struct_value, {})
    assert holder.fields["r"].WhichOneof("kind") == "struct_value"


def test_to_json_is_json_dumps():
    import datetime
    import json

    for value in [*VALUES, [1, "x"], "s", 3, None, {"d": datetime.date(2020, 1, 1)}, {1: 2}]:
        assert to_json(value) == json.dumps(value, ensure_ascii=False, default=str)
