"""The hub's service credential: how the mesh's own processes prove they are the mesh's own.

On a mesh without an admin token every local program may call the hub, so a name
is no proof: anyone can write `owner: python-executor`. At each start the hub
mints a random credential and writes it to a private file (`auth.service_credential_path`,
mode 0600, replaced atomically); the executor and the edge read it from there and
send it as `toolscore-service-credential` metadata. The hub asks for it (or the
admin token) where a caller claims to be part of the mesh: registering or removing
a tool of a reserved owner, and reporting usage. Never logged, never sent to a
tool server that did not prove it holds it already.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

METADATA_KEY = "toolscore-service-credential"
# Owners only the mesh's own processes register as: the executor, the hub's function tools and
# the servers discovery installs. A registration naming one must prove itself.
RESERVED_OWNERS = frozenset({"python-executor", "toolscore-hub", "toolscore-discovery"})


def mint(path: Path) -> str:
    """A fresh credential, written to `path` (0600) before it is returned; replaces the previous one."""
    credential = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credential-", dir=path.parent)  # 0600 from the start
    try:
        with os.fdopen(fd, "w") as f:
            f.write(credential)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return credential


class CredentialFile:
    """The credential the hub last minted, read from its file again whenever the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._value = ""

    def current(self) -> str:
        """The credential, or "" while there is none (hub not started yet, file unreadable)."""
        try:
            st = self.path.stat()
            if (st.st_ino, st.st_mtime_ns) != self._seen:
                self._value = self.path.read_text().strip()
                self._seen = (st.st_ino, st.st_mtime_ns)
        except OSError:
            self._seen, self._value = None, ""
        return self._value

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying the current credential (empty without one)."""
        value = self.current()
        return ((METADATA_KEY, value),) if value else ()
