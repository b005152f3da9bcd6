"""The seccomp filter's decisions, read from the BPF program the sandboxes really load.

The program `seccomp.program()` compiles (the bytes bwrap gets with `--seccomp`) is run here on a small
classic-BPF interpreter, for every syscall and socket family that matters, the way the kernel runs it
on each syscall's `struct seccomp_data`. tests/executor/test_attacks.py checks, through the executor,
that the kernel applies it; this checks every rule, in milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

import pytest

from services.sandbox import seccomp

ALLOW, ERRNO, KILL_MASK = 0x7FFF0000, 0x00050000, 0xFFFF0000
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    return lib


LIB = _lib()
ARCH = LIB.seccomp_arch_native()


@pytest.fixture(autouse=True)
def compiled_afresh() -> None:
    """Each test compiles its own program: seccomp.program() caches it for the process, and mutation
    testing, which runs a mutant only against the tests that ran the mutated function, would see the
    compilation in the first test alone."""
    seccomp.program.cache_clear()


def nr(name: str) -> int:
    return int(LIB.seccomp_syscall_resolve_name(name.encode()))


def run_bpf(program: bytes, data: bytes) -> int:
    """Classic BPF as the kernel runs a seccomp filter: the return value for one `seccomp_data`."""
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    a = x = pc = 0
    mem = [0] * 16
    mask = 0xFFFFFFFF
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls, op, src = code & 0x07, code & 0xF0, code & 0x08
        operand = x if src else k
        if cls == 0x00:  # LD
            mode = code & 0xE0
            a = struct.unpack_from("=I", data, k)[0] if mode == 0x20 else mem[k] if mode == 0x60 else k
        elif cls == 0x01:  # LDX
            x = mem[k] if code & 0xE0 == 0x60 else k
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            ops = {
                0x00: a + operand,
                0x10: a - operand,
                0x20: a * operand,
                0x40: a | operand,
                0x50: a & operand,
                0x60: a << operand,
                0x70: a >> operand,
                0x80: -a,
                0xA0: a ^ operand,
            }
            a = ops[op] & mask
        elif cls == 0x05:  # JMP
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        else:  # MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x


def seccomp_data(name_or_nr: str | int, *args: int, arch: int = ARCH) -> bytes:
    number = nr(name_or_nr) if isinstance(name_or_nr, str) else name_or_nr
    full = [*args, *[0] * (6 - len(args))]
    return struct.pack("=iIQ6Q", number, arch, 0x400000, *(v & (1 << 64) - 1 for v in full))


def decide(name: str, *args: int, network: bool = False, arch: int = ARCH) -> int:
    return run_bpf(seccomp.program(network), seccomp_data(name, *args, arch=arch))


def test_every_blocked_syscall_fails_with_eperm() -> None:
    present = [name for name in seccomp.BLOCKED if nr(name) >= 0]
    assert "ptrace" in present and "mount" in present and "bpf" in present
    for name in present:
        for network in (False, True):
            assert decide(name, 0, 0, 0, network=network) == ERRNO | errno.EPERM, name


def test_what_python_needs_is_allowed() -> None:
    for name in ("read", "write", "openat", "mmap", "futex", "execve", "wait4", "pipe2", "exit_group"):
        assert decide(name, 3, 0, 0) == ALLOW, name
    assert decide("clone", SIGCHLD) == ALLOW  # fork
    assert decide("clone", CLONE_NEWNS | SIGCHLD) == ALLOW  # refused by the missing capability instead


def test_a_new_user_namespace_through_clone_is_refused_and_clone3_falls_back_to_clone() -> None:
    assert decide("clone", CLONE_NEWUSER | SIGCHLD) == ERRNO | errno.EPERM
    assert decide("clone", CLONE_NEWUSER | CLONE_NEWNS) == ERRNO | errno.EPERM
    assert decide("clone", (1 << 40) | SIGCHLD) == ALLOW  # only the flag bit counts
    assert decide("clone3", 0, 88) == ERRNO | errno.ENOSYS  # flags in memory: glibc then uses clone


@pytest.mark.parametrize("network", [False, True])
def test_sockets_of_every_family_but_unix_are_refused_unless_the_network_is_granted(network: bool) -> None:
    allowed = {1, 2, 10} if network else {1}
    families = [*range(0, 50), 0xFFFF, 1 << 31, (1 << 32) + 1, (1 << 32) + 2, 1 << 63]
    for call in ("socket", "socketpair"):
        for family in families:
            expected = ALLOW if family in allowed else ERRNO | errno.EAFNOSUPPORT
            assert decide(call, family, 1, 0, network=network) == expected, (call, family)


def test_syscalls_of_another_architecture_kill_the_process() -> None:
    i386 = 0x40000003 if ARCH != 0x40000003 else 0xC000003E
    for name in ("read", "write"):
        assert decide(name, arch=i386) & KILL_MASK in (0x00000000, 0x80000000)  # KILL_THREAD / _PROCESS
    if ARCH == 0xC000003E:  # x86_64: the x32 ABI shares the architecture and sets bit 30 of the number
        assert run_bpf(seccomp.program(), seccomp_data(0x40000000 | nr("read"))) & KILL_MASK in (
            0,
            0x80000000,
        )


def test_the_refused_families_cover_every_value_but_the_allowed_ones() -> None:
    lt, eq, gt = 2, 4, 6  # enum scmp_compare
    assert seccomp._refused_families((1,)) == [(lt, 1), (gt, 1)]
    assert seccomp._refused_families((1, 2, 10)) == [(lt, 1), (gt, 10), *((eq, f) for f in range(3, 10))]


def test_bwrap_gets_the_program_from_a_fresh_fd_at_its_start_closed_on_exec() -> None:
    for network in (False, True):
        fd = seccomp.program_fd(network)
        try:
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0
            assert os.read(fd, 1 << 20) == seccomp.program(network)
            assert not os.get_inheritable(fd)  # only bwrap gets it, through pass_fds
        finally:
            os.close(fd)
    assert seccomp.program(True) != seccomp.program(False)
    fd = seccomp.program_fd()
    try:
        assert os.read(fd, 1 << 20) == seccomp.program(False)  # by default, no network
    finally:
        os.close(fd)
