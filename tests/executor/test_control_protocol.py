"""The executor's control-pipe protocol against what a hostile sandbox can write: real pipes, real bytes.

Everything the sandbox sends is untrusted: frames are size-capped, one per request, field names come
from a fixed set and lengths are checked against what is left (services/executor/interpreter.py).
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
import termios
from collections.abc import AsyncIterator, Iterator

import pytest

from services.executor.interpreter import REPLY_FIELDS, FrameReader, ProtocolError, decode, encode
from tests.helpers import deadline


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass  # the test closed it on purpose


@pytest.fixture
async def reader(pipe: tuple[int, int]) -> AsyncIterator[FrameReader]:
    fr = FrameReader(pipe[0], 1024)
    yield fr
    fr.close()


def unread(fd: int) -> int:
    """Bytes in the pipe that the reader has not taken yet."""
    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return n[0]


async def one_turn() -> None:
    """Let the loop poll its selector once and run the reader's callback if the pipe is readable: the
    first yield puts this task ahead of that callback in the ready queue, the second behind it."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def taken(fd: int) -> None:
    """The reader has read (and, in the same callback, parsed) everything written to `fd` so far:
    one callback reads up to 64 KiB, more than any test writes at once."""
    await one_turn()
    assert unread(fd) == 0, "the frame reader left bytes in the pipe"


def test_a_frame_is_a_big_endian_length_then_named_length_prefixed_fields() -> None:
    wire = encode([("ready", b""), ("repr", b"4\n2")])
    assert wire == b"\x00\x00\x00\x12ready 0\nrepr 3\n4\n2"
    assert encode([("repr", b"x" * 300)])[:14] == b"\x00\x00\x01\x35repr 300\nx"
    assert decode(wire[4:]) == [("ready", b""), ("repr", b"4\n2")]
    assert encode([]) == b"\x00\x00\x00\x00" and decode(b"") == []


def test_every_reply_field_the_worker_sends_is_accepted_and_nothing_else() -> None:
    names = ["ready", "return_code", "error", "repr", "artifact_name", "artifact_data", "artifacts_skipped"]
    assert REPLY_FIELDS == frozenset(names)
    fields = [(n, n.encode()) for n in names]
    assert decode(encode(fields)[4:]) == fields
    with pytest.raises(ProtocolError, match=r"^unexpected field header b'stdin 1'$"):
        decode(b"stdin 1\nx")


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"repr 5\nabc", "field longer than its frame"),
        (b"\nrepr 1\nx", "unexpected field header b''"),
        (b"repr -1\n", "unexpected field header b'repr -1'"),
        (b"repr \n", "unexpected field header b'repr '"),
        (b"repr\n", "unexpected field header b'repr'"),
        (b"r\xe9pr 1\nx", "unexpected field header b'r\\xe9pr 1'"),
        (b"repr 1", "field header too long or missing"),
        (b"repr 1\nxjunk", "field header too long or missing"),
        (b"x" * 60 + b" 1\n", "unexpected field header b'" + "x" * 40 + "'"),
    ],
)
def test_a_malformed_frame_body_is_a_protocol_error_saying_what_is_wrong(body: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(body)
    assert str(err.value) == complaint


def test_a_field_header_is_at_most_63_bytes_so_garbage_without_a_newline_is_never_scanned_far() -> None:
    longest = b"repr " + b"0" * 57 + b"1"  # 63 bytes: leading zeros keep the length 1
    assert decode(longest + b"\nx") == [("repr", b"x")]
    with pytest.raises(ProtocolError, match="field header too long or missing"):
        decode(b"0" + longest + b"\nx")
    assert decode(b"repr 1\nx" + longest + b"\ny") == [("repr", b"x"), ("repr", b"y")]


async def test_a_frame_split_across_writes_is_read_whole(pipe: tuple[int, int], reader: FrameReader) -> None:
    wire = encode([("return_code", b"0"), ("repr", b"x" * 100)])
    os.write(pipe[1], wire[:2])
    await taken(pipe[0])
    os.write(pipe[1], wire[2:7])
    await taken(pipe[0])
    assert not reader.idle  # part of a frame is waiting
    os.write(pipe[1], wire[7:])
    async with deadline(5, "the frame"):
        assert await reader.next() == [("return_code", b"0"), ("repr", b"x" * 100)]
    assert reader.idle


async def test_an_empty_frame_is_a_frame(pipe: tuple[int, int], reader: FrameReader) -> None:
    os.write(pipe[1], encode([]))
    async with deadline(5, "the empty frame"):
        assert await reader.next() == []


async def test_a_frame_of_exactly_the_cap_is_read_and_one_byte_more_is_refused_before_it_is_buffered(
    pipe: tuple[int, int],
) -> None:
    body = b"repr 6\n" + b"y" * 6
    exact = FrameReader(pipe[0], len(body))
    try:
        os.write(pipe[1], frame(body))
        async with deadline(5, "the frame at the cap"):
            assert await exact.next() == [("repr", b"y" * 6)]
        exact.max_frame = len(body) - 1  # the caller lowers the cap to what the next reply may carry
        os.write(pipe[1], frame(body))
        async with deadline(5, "the refusal"):
            with pytest.raises(ProtocolError) as err:
                await exact.next()
        assert str(err.value) == f"reply of {len(body)} bytes exceeds the {len(body) - 1}-byte cap"
        # it stopped reading: what user code writes next stays in the pipe, never in our memory
        os.write(pipe[1], b"z" * 1000)
        await one_turn()
        assert unread(pipe[0]) == 1000
        assert exact.idle
    finally:
        exact.close()


async def test_a_length_prefix_beyond_the_cap_is_refused_without_waiting_for_its_body(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    os.write(pipe[1], (1 << 31).to_bytes(4, "big"))  # claims 2 GiB, sends nothing more
    async with deadline(5, "the refusal"):
        with pytest.raises(ProtocolError, match=r"^reply of 2147483648 bytes exceeds the 1024-byte cap$"):
            await reader.next()


async def test_a_garbage_body_fails_the_call_waiting_for_it(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0)  # the call is waiting before the sandbox writes
    os.write(pipe[1], frame(b"evil 1\nx"))
    async with deadline(5, "the protocol error"):
        with pytest.raises(ProtocolError, match="unexpected field header"):
            await waiting


async def test_a_garbage_frame_nobody_waited_for_is_raised_to_the_next_call(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    os.write(pipe[1], frame(b"evil 1\nx"))
    await taken(pipe[0])
    assert reader.idle  # an error waiting to be raised is not a reply
    async with deadline(5, "the protocol error"):
        with pytest.raises(ProtocolError, match="unexpected field header"):
            await reader.next()


async def test_a_second_frame_nobody_asked_for_stops_the_reader_instead_of_queueing(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    one = encode([("return_code", b"0")])
    os.write(pipe[1], one)
    await taken(pipe[0])
    assert not reader.idle  # a reply is waiting to be read
    os.write(pipe[1], one + one)
    await taken(pipe[0])
    os.write(pipe[1], one * 10)  # the reader stopped: this stays in the pipe
    await one_turn()
    assert unread(pipe[0]) == len(one) * 10
    async with deadline(5, "the protocol error"):
        with pytest.raises(ProtocolError, match=r"^the sandbox sent frames nobody asked for$"):
            await reader.next()
    assert reader.idle


async def test_a_frame_that_answers_the_waiting_call_is_not_unsolicited(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    for n in range(3):  # request, reply; request, reply: each reply meets its waiter
        waiting = asyncio.create_task(reader.next())
        await asyncio.sleep(0)
        os.write(pipe[1], encode([("return_code", str(n).encode())]))
        async with deadline(5, "the reply"):
            assert await waiting == [("return_code", str(n).encode())]


async def test_a_closed_pipe_is_the_sandbox_gone_for_the_waiting_call_and_every_later_one(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0)
    os.close(pipe[1])
    async with deadline(5, "the end of the pipe"):
        with pytest.raises(EOFError, match=r"^the sandboxed interpreter closed its control pipe$"):
            await waiting
    with pytest.raises(EOFError, match=r"^the sandboxed interpreter closed its control pipe$"):
        await reader.next()
    assert reader.idle


async def test_a_frame_before_the_pipe_closed_is_still_read_then_the_end(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    os.write(pipe[1], encode([("ready", b"")]))
    os.close(pipe[1])
    async with deadline(5, "the last frame"):
        assert await reader.next() == [("ready", b"")]
        with pytest.raises(EOFError):
            await reader.next()


async def test_a_closed_reader_reads_nothing_more(pipe: tuple[int, int]) -> None:
    fr = FrameReader(pipe[0], 1024)
    fr.close()
    fr.close()  # twice is harmless
    os.write(pipe[1], encode([("ready", b"")]))
    await one_turn()
    assert unread(pipe[0]) == len(encode([("ready", b"")]))


async def test_a_reply_and_the_start_of_the_next_in_one_read_are_each_read_whole(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    first, second = encode([("ready", b"")]), encode([("repr", b"'second'")])
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0)
    os.write(pipe[1], first + second[:3])  # the next frame's length prefix cut in the middle
    async with deadline(5, "the first frame"):
        assert await waiting == [("ready", b"")]
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0)
    os.write(pipe[1], second[3:])
    async with deadline(5, "the second frame"):
        assert await waiting == [("repr", b"'second'")]


async def test_a_frame_arriving_after_the_reply_with_no_call_waiting_is_kept_and_marks_the_pipe_busy(
    pipe: tuple[int, int], reader: FrameReader
) -> None:
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0)
    os.write(pipe[1], encode([("return_code", b"0")]))
    async with deadline(5, "the reply"):
        await waiting
    assert reader.idle
    os.write(pipe[1], encode([("return_code", b"1")]))  # user code writing after its call returned
    await taken(pipe[0])
    assert not reader.idle  # what handle.py checks before the next call: that call is refused
    async with deadline(5, "the kept frame"):
        assert await reader.next() == [("return_code", b"1")]


async def test_a_read_error_on_the_channel_fails_the_waiting_call_then_every_later_one_ends() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        fr = FrameReader(ours.fileno(), 1024)
        try:
            ours.send(b"never read")  # closing `theirs` with this unread makes our next read fail
            waiting = asyncio.create_task(fr.next())
            await asyncio.sleep(0)
            theirs.close()
            async with deadline(5, "the read error"):
                with pytest.raises(ConnectionResetError):
                    await waiting
            with pytest.raises(EOFError, match=r"^the sandboxed interpreter closed its control pipe$"):
                await fr.next()
        finally:
            fr.close()
