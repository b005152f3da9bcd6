"""A seccomp filter for the sandbox, compiled to BPF with libseccomp (through ctypes).

libseccomp2 ships with every Debian system (apt itself depends on it), so no
Python binding is needed. The filter is a blocklist: syscalls a Python program
has no business making and that widen the kernel attack surface or could undo
the namespaces (mount, ptrace, bpf, new user namespaces, kernel keyrings,
io_uring, module loading, ...) fail with EPERM. Other architectures and the
x32 ABI are killed by libseccomp's default bad-arch action. bwrap loads the
program (`--seccomp FD`) as the very last step before exec'ing Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
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
_SCMP_CMP_MASKED_EQ = 7


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


@cache
def program() -> bytes:
    """The compiled BPF program (cached: it is the same for every sandbox)."""
    lib = _lib()
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for name in BLOCKED:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a syscall on this architecture
            if lib.seccomp_rule_add_array(ctx, _errno(errno.EPERM), nr, 0, None) != 0:
                raise SeccompUnavailable(f"could not add a rule for {name}")
        # New user namespaces via clone(2); clone3 passes flags in memory, so make glibc fall back to clone.
        newuser = (_ArgCmp * 1)(_ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
        for name, action, n, args in (
            ("clone", _errno(errno.EPERM), 1, newuser),
            ("clone3", _errno(errno.ENOSYS), 0, None),
        ):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0 and lib.seccomp_rule_add_array(ctx, action, nr, n, args) != 0:
                raise SeccompUnavailable(f"could not add a rule for {name}")
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            if lib.seccomp_export_bpf(ctx, fd) != 0:
                raise SeccompUnavailable("seccomp_export_bpf failed")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def program_fd() -> int:
    """A fresh fd holding the program, positioned at its start (bwrap reads it to EOF)."""
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
