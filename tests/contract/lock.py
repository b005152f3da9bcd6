"""The wire contract of `proto/toolscore/v1`, as a reviewable lock file, and what breaks it.

Tool servers in other languages are generated from these protos, so a change
that renumbers, retypes or removes a field, an enum value or an rpc breaks them
silently. The lock (`proto/toolscore/v1/contract.lock.json`) records every
message field (number, name, type, label or explicit presence, oneof), enum value and rpc of the
package. The test compares the protos with it: additions only ask for the lock
to be refreshed (`make proto-lock`); anything else is reported as breaking and
needs `make proto-lock ALLOW_BREAKING=1`, a change the lock's diff makes
visible in review.

`python -m tests.contract.lock [--write [--allow-breaking]]`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTORS = ROOT / "generated" / "toolscore.binpb"  # written by `make proto`
LOCK = ROOT / "proto" / "toolscore" / "v1" / "contract.lock.json"
PACKAGE = "toolscore.v1"

_F = descriptor_pb2.FieldDescriptorProto
_LABELS = {_F.LABEL_OPTIONAL: "singular", _F.LABEL_REQUIRED: "required", _F.LABEL_REPEATED: "repeated"}
_TYPES = {v: k.removeprefix("TYPE_").lower() for k, v in _F.Type.items()}


def describe(descriptors: Path = DESCRIPTORS) -> dict[str, Any]:
    """The package's contract: {"messages": {...}, "enums": {...}, "services": {...}}."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    out: dict[str, dict[str, Any]] = {"messages": {}, "enums": {}, "services": {}}
    for f in fds.file:
        if f.package != PACKAGE:
            continue
        for m in f.message_type:
            _message(out, f"{f.package}.{m.name}", m)
        for e in f.enum_type:
            _enum(out, f"{f.package}.{e.name}", e)
        for s in f.service:
            out["services"][f"{f.package}.{s.name}"] = {
                m.name: f"({'stream ' * m.client_streaming}{m.input_type.lstrip('.')}) returns "
                f"({'stream ' * m.server_streaming}{m.output_type.lstrip('.')})"
                for m in s.method
            }
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def _message(out: dict[str, dict[str, Any]], name: str, m: descriptor_pb2.DescriptorProto) -> None:
    if m.options.map_entry:
        return
    fields = {}
    for fd in m.field:
        real_oneof = fd.HasField("oneof_index") and not fd.proto3_optional
        label = "map" if _is_map(m, fd) else _LABELS[fd.label]
        if fd.proto3_optional:  # explicit presence: absence means something, so the lock records it
            label = "optional"
        type_ = fd.type_name.lstrip(".") if fd.type_name else _TYPES[fd.type]
        oneof = f" (oneof {m.oneof_decl[fd.oneof_index].name})" if real_oneof else ""
        fields[str(fd.number)] = f"{label} {type_} {fd.name}{oneof}"  # "repeated toolscore.v1.Tool tools"
    out["messages"][name] = dict(sorted(fields.items(), key=lambda kv: int(kv[0])))
    for nested in m.nested_type:
        _message(out, f"{name}.{nested.name}", nested)
    for e in m.enum_type:
        _enum(out, f"{name}.{e.name}", e)


def _is_map(m: descriptor_pb2.DescriptorProto, fd: descriptor_pb2.FieldDescriptorProto) -> bool:
    return fd.label == _F.LABEL_REPEATED and any(
        n.options.map_entry and fd.type_name.endswith(f".{n.name}") for n in m.nested_type
    )


def _enum(out: dict[str, dict[str, Any]], name: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
    out["enums"][name] = {str(v.number): v.name for v in e.value}


def breaking(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every change from `old` to `new` that breaks generated code or the wire; additions are fine."""
    problems = []
    for kind in ("messages", "enums", "services"):
        for name, before in old.get(kind, {}).items():
            after = new.get(kind, {}).get(name)
            if after is None:
                problems.append(f"{kind[:-1]} {name} was removed")
                continue
            for key, was in before.items():
                now = after.get(key)
                what = {"messages": "field", "enums": "value", "services": "rpc"}[kind]
                if now is None:
                    problems.append(f"{what} {name} #{key} ({was}) was removed")
                elif now != was and not _gains_presence(was, now):
                    problems.append(f"{what} {name} #{key} changed: {was!r} -> {now!r}")
    return problems


def _gains_presence(was: str, now: str) -> bool:
    """`singular T f` -> `optional T f`: the same bytes on the wire, and old readers see the same
    values (the reverse is breaking: an absent field would silently read as its zero value)."""
    return was.startswith("singular ") and now == "optional " + was.removeprefix("singular ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the lock from the protos")
    parser.add_argument("--allow-breaking", action="store_true", help="with --write: accept breaking changes")
    args = parser.parse_args(argv)
    current = describe()
    locked = json.loads(LOCK.read_text()) if LOCK.exists() else {}
    problems = breaking(locked, current)
    for p in problems:
        print(f"breaking: {p}", file=sys.stderr)
    if not args.write:
        return 1 if problems or current != locked else 0
    if problems and not args.allow_breaking:
        print("refusing to lock breaking changes (ALLOW_BREAKING=1 accepts them)", file=sys.stderr)
        return 1
    LOCK.write_text(json.dumps(current, indent=1) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
