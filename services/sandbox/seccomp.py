"""A seccomp filter for the sandbox, compiled to BPF with libseccomp (through ctypes).

libseccomp2 ships with every Debian system (apt itself depends on it), so no
Python binding is needed. The filter is a blocklist: syscalls a Python program
has no business making and that widen the kernel attack surface or could undo
the namespaces (mount, ptrace, bpf, new user namespaces, kernel keyrings,
io_uring, module loading, ...) fail with EPERM. Other architectures and the
x32 ABI are killed by libseccomp's default bad-arch action. bwrap loads the
program (`--seccomp FD`) as the very last step before exec'ing Python.

Sockets are the one allowlist: `socket` and `socketpair` work for AF_UNIX only
(what the interpreter, asyncio's self-pipe and multiprocessing use) and fail
with EAFNOSUPPORT for every other family. Namespaces do not cover them all:
AF_VSOCK reaches the hypervisor and other VMs whatever the network namespace,
AF_NETLINK, AF_PACKET and AF_ALG are kernel attack surface a Python call never
needs. AF_INET/AF_INET6 would only reach an empty namespace's loopback, and
are refused too since nothing in the sandbox needs them; an installed MCP
server granted the network (`network=True`) gets them back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import os
from functools import cache

BLOCKED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "personality",
    "uselib",
    "nfsservctl",
    "pidfd_getfd",
)
_ALLOW = 0x7FFF0000
_CLONE_NEWUSER = 0x10000000
_SCMP_CMP_LT, _SCMP_CMP_EQ, _SCMP_CMP_GT, _SCMP_CMP_MASKED_EQ = 2, 4, 6, 7  # enum scmp_compare
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10


def _errno(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(Exception):
    """libseccomp is missing or refused the filter."""


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    if not name:
        raise SeccompUnavailable("libseccomp not found (Debian package libseccomp2)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _refused_families(allowed: tuple[int, ...]) -> list[tuple[int, int]]:
    """(comparison, value) on a socket's family, each one refusing part of what is not `allowed`:
    below the smallest, each value in a gap, above the largest. The kernel reads the family as a
    32-bit int, the filter compares all 64 bits: any high bit set is above the largest, refused."""
    ranges = [(_SCMP_CMP_LT, allowed[0]), (_SCMP_CMP_GT, allowed[-1])]
    for low, high in itertools.pairwise(allowed):
        ranges += [(_SCMP_CMP_EQ, family) for family in range(low + 1, high)]
    return ranges


def _add(lib: ctypes.CDLL, ctx: int, name: str, action: int, args: list[_ArgCmp] | None = None) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a syscall on this architecture
    array = (_ArgCmp * len(args))(*args) if args else None
    if lib.seccomp_rule_add_array(ctx, action, nr, len(args or ()), array) != 0:
        raise SeccompUnavailable(f"could not add a rule for {name}")


@cache
def program(network: bool = False) -> bytes:
    """The compiled BPF program (cached: it is the same for every sandbox); `network` also lets
    sockets of AF_INET and AF_INET6 be created (for a sandbox that keeps the host's network)."""
    return _compile(network=network, allowed=(), new_user_namespaces=False)


def program_fd(network: bool = False) -> int:
    """A fresh fd holding the program, positioned at its start (bwrap reads it to EOF)."""
    return _fd(program(network))


# What the executor's template process (services/executor/zygote.py) may do beyond the strict
# filter: make the user, mount, pid, ipc and network namespaces of each call's child and mount
# its fresh tmpfs. It runs no user code; every call's interpreter stacks `program()` on top.
TEMPLATE_ALLOWED = ("mount", "unshare")


@cache
def template_program() -> bytes:
    """The template's looser BPF program: `program()` without the TEMPLATE_ALLOWED syscalls and
    without the clone(CLONE_NEWUSER) rule; sockets of AF_UNIX only, like every sandbox."""
    return _compile(network=False, allowed=TEMPLATE_ALLOWED, new_user_namespaces=True)


def template_program_fd() -> int:
    """A fresh fd holding the template's program, positioned at its start (bwrap reads it to EOF)."""
    return _fd(template_program())


def _compile(*, network: bool, allowed: tuple[str, ...], new_user_namespaces: bool) -> bytes:
    """BLOCKED refused (but `allowed`), clone(CLONE_NEWUSER) too unless `new_user_namespaces`,
    clone3 made to fall back to clone, and sockets of any family but AF_UNIX (and, with `network`,
    AF_INET/AF_INET6) refused."""
    lib = _lib()
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for name in BLOCKED:
            if name not in allowed:
                _add(lib, ctx, name, _errno(errno.EPERM))
        if not new_user_namespaces:
            _add(
                lib,
                ctx,
                "clone",
                _errno(errno.EPERM),
                [_ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER)],
            )
        # clone3 passes its flags in memory, where no filter can read them: make glibc fall back to clone.
        _add(lib, ctx, "clone3", _errno(errno.ENOSYS))
        families = (_AF_UNIX, _AF_INET, _AF_INET6) if network else (_AF_UNIX,)
        for op, family in _refused_families(families):
            for name in ("socket", "socketpair"):
                _add(lib, ctx, name, _errno(errno.EAFNOSUPPORT), [_ArgCmp(0, op, family, 0)])
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            if lib.seccomp_export_bpf(ctx, fd) != 0:
                raise SeccompUnavailable("seccomp_export_bpf failed")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _fd(bpf: bytes) -> int:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    os.write(fd, bpf)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
