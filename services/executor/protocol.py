"""The executor's side of the control-pipe protocol spoken with `worker.py`.

Frames: a 4-byte big-endian length, then fields `name SP decimal-length LF
bytes`. Everything the sandbox sends is untrusted: frames are size-capped
(per call, to what its reply may carry), one per request (a frame nobody asked
for is an error, and the reader stops at the second one instead of queueing
them), field names are checked against a fixed set, lengths against what is
left; `handle.py` checks the fields' values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable

REPLY_FIELDS = frozenset(
    {"ready", "return_code", "error", "repr", "artifact_name", "artifact_data", "artifacts_skipped"}
)


class ProtocolError(Exception):
    """The sandbox sent something that is not a well-formed frame."""


def encode(fields: Iterable[tuple[str, bytes]]) -> bytes:
    body = b"".join(b"%s %d\n%s" % (name.encode(), len(value), value) for name, value in fields)
    return len(body).to_bytes(4, "big") + body


def decode(body: bytes) -> list[tuple[str, bytes]]:
    """Parse one frame body from the sandbox; raise ProtocolError on anything unexpected."""
    fields, i = [], 0
    while i < len(body):
        nl = body.find(b"\n", i, i + 64)
        if nl < 0:
            raise ProtocolError("field header too long or missing")
        name_b, _, length_b = body[i:nl].partition(b" ")
        name = name_b.decode("ascii", "replace")
        if name not in REPLY_FIELDS or not length_b.isdigit():
            raise ProtocolError(f"unexpected field header {body[i:nl][:40]!r}")
        end = nl + 1 + int(length_b)
        if end > len(body):
            raise ProtocolError("field longer than its frame")
        fields.append((name, body[nl + 1 : end]))
        i = end
    return fields


class FrameReader:
    """Reads frames from a non-blocking pipe fd with loop.add_reader (no transport, no thread)."""

    def __init__(self, fd: int, max_frame: int) -> None:
        self.fd = fd
        self.max_frame = max_frame  # the caller lowers it to what the next reply may carry
        self._buf = bytearray()
        self._waiter: asyncio.Future[list[tuple[str, bytes]]] | None = None
        self._frames: list[list[tuple[str, bytes]] | BaseException] = []
        self._eof = False
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk, self._eof = b"", True
            self._push(exc)
        if not chunk:
            self._eof = True
            self._loop.remove_reader(self.fd)
            self._push(EOFError("the sandboxed interpreter closed its control pipe"))
            return
        self._buf += chunk
        while len(self._buf) >= 4:
            size = int.from_bytes(self._buf[:4], "big")
            if size > self.max_frame:
                self._loop.remove_reader(self.fd)
                self._push(ProtocolError(f"reply of {size} bytes exceeds the {self.max_frame}-byte cap"))
                self._buf.clear()
                return
            if len(self._buf) < 4 + size:
                return
            if self._frames and (self._waiter is None or self._waiter.done()):
                # A second frame nobody asked for: stop reading rather than queue what user code
                # writes without end; the next call finds the error and ends the sandbox.
                self._loop.remove_reader(self.fd)
                self._buf.clear()
                self._frames = [ProtocolError("the sandbox sent frames nobody asked for")]
                return
            body = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                self._push(decode(body))
            except ProtocolError as exc:
                self._push(exc)

    def _push(self, item: list[tuple[str, bytes]] | BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            if isinstance(item, BaseException):
                self._waiter.set_exception(item)
            else:
                self._waiter.set_result(item)
        else:
            self._frames.append(item)

    @property
    def idle(self) -> bool:
        """No frame (nor part of one) received that no one has read yet; an end of the pipe or an
        error waiting to be raised does not count."""
        return not self._buf and not any(isinstance(f, list) for f in self._frames)

    async def next(self) -> list[tuple[str, bytes]]:
        """The next frame; raises EOFError when the sandbox is gone, ProtocolError on garbage."""
        if self._frames:
            item = self._frames.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        if self._eof:
            raise EOFError("the sandboxed interpreter closed its control pipe")
        self._waiter = self._loop.create_future()
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
