"""The start of every sandbox's bubblewrap argv: its namespaces and a read-only view of the system.

The executor's worker sandbox and discovery's MCP server sandbox both begin with `system_view` and add
their own mounts, descriptors and program after it.
"""

from __future__ import annotations

import os

PATH = "/usr/local/bin:/usr/bin:/bin"  # inside every sandbox: the system's directories only


def system_view(bwrap: str, *, network: bool = False) -> list[str]:
    """bwrap with its namespaces and a read-only view of the system (/usr, /bin, /lib*, a near-empty
    /etc): the start of every sandbox's argv. Shared with discovery's MCP server sandbox."""
    argv = [
        bwrap,
        "--unshare-ipc",
        "--unshare-pid",
        *(() if network else ("--unshare-net",)),
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    if os.geteuid() == 0:  # root without a user namespace; the sandboxed program drops to the sandbox uid
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--ro-bind", "/usr", "/usr"]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for f in ("/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", f, f]
    return argv
