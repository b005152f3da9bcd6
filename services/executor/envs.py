"""The executor's own package environment: a venv (default `data/executor-env`) that every
sandbox mounts read-only at /opt/env. Never the host's Python, never the mesh's venv.

Created on first start (config `executor.env_autocreate`) or ahead of time with
`python -m services.executor.envs` (what `make executor-env` runs). Installs
take wheels only (`--only-binary=:all:`), so no package code runs on the host
at install time, and only names on `executor.install_allowlist`. Every sandbox
shares this environment, so an install only ever adds: a request for an installed
distribution at another version is refused, and pip runs constrained to the
versions installed now, so no dependency is ever upgraded or downgraded either.
A file lock makes concurrent creators (several meshes, parallel tests) safe.

`env_dir` is relative to the repository root, not `paths.root`: it is an
installation shared by every mesh run from this checkout, like `.venv`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common.config import REPO_ROOT, ExecutorConfig
from services.common.process import run_command
from services.executor.sandbox import env_site, real_python

log = logging.getLogger(__name__)
READY_MARK = ".toolscore-ready"
_REQUIREMENT = re.compile(
    r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\s*(==|>=|<=|~=|!=|<|>)\s*([A-Za-z0-9.*+!_-]{1,64}))?$"
)
_PASS_ENV = ("PATH", "HOME", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


class InstallRefused(Exception):
    """The package is not on the allowlist or the name is not a plain requirement."""


class InstallFailed(Exception):
    """pip ran and failed."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_requirement(spec: str, allowlist: Sequence[str]) -> str:
    """The spec if it is `name` or `name<op>version` with an allowlisted name; InstallRefused otherwise."""
    m = _REQUIREMENT.match(spec.strip())
    if not m:
        raise InstallRefused(
            f"{spec!r} is not a package name (optionally with one version pin, e.g. pandas==2.2.3)"
        )
    if normalize(m.group(1)) not in {normalize(a) for a in allowlist}:
        raise InstallRefused(
            f"package {m.group(1)!r} is not on the executor's install allowlist "
            f"(executor.install_allowlist: {', '.join(sorted(allowlist))})"
        )
    return spec.strip()


def env_path(cfg: ExecutorConfig) -> Path:
    p = Path(cfg.env_dir)
    return p if p.is_absolute() else REPO_ROOT / p


class ExecutorEnv:
    """Creation, state and installs of one environment directory."""

    def __init__(self, cfg: ExecutorConfig, host_env: Mapping[str, str]) -> None:
        self.cfg, self.path = cfg, env_path(cfg)
        self._host_env = host_env
        self._lock = asyncio.Lock()
        self.state = "ready" if self.ready else "missing"
        self.error = ""

    @property
    def ready(self) -> bool:
        return (self.path / READY_MARK).exists() and env_site(self.path).is_dir()

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def status(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "state": "ready" if self.ready else self.state,
            "error": self.error,
            "packages": list(self.cfg.env_packages),
        }

    async def ensure(self) -> bool:
        """Create the env with the default packages unless it exists; True when it was created now."""
        async with self._lock:
            if self.ready:
                return False
            self.state, self.error = "creating", ""
            try:
                async with _file_lock(self.path.with_name(self.path.name + ".lock")):
                    if self.ready:  # made by another process meanwhile
                        return False
                    log.info(
                        "creating the executor environment in %s (%s)",
                        self.path,
                        ", ".join(self.cfg.env_packages),
                    )
                    await self._run([str(real_python()[1]), "-m", "venv", "--clear", str(self.path)])
                    if self.cfg.env_packages:
                        await self._pip(list(self.cfg.env_packages))
                    (self.path / READY_MARK).write_text("ok\n")
            except Exception as exc:
                self.state, self.error = "failed", str(exc)
                log.error("could not create the executor environment: %s", exc)
                raise
            self.state = "ready"
            log.info("executor environment ready")
            return True

    def installed(self) -> dict[str, str]:
        """Normalized distribution name -> version, for everything in the environment now."""
        found: dict[str, str] = {}
        for dist in importlib.metadata.distributions(path=[str(env_site(self.path))]):
            name = dist.metadata["Name"]
            if name:
                found.setdefault(normalize(name), dist.version)
        return found

    async def install(self, spec: str) -> str:
        """Install one allowlisted requirement (wheels only) without changing anything installed;
        returns pip's last lines. InstallRefused for another version of an installed distribution."""
        spec = check_requirement(spec, self.cfg.install_allowlist)
        await self.ensure()
        async with self._lock:
            async with _file_lock(self.path.with_name(self.path.name + ".lock")):
                installed = await asyncio.to_thread(self.installed)
                already = _already_installed(spec, installed)
                if already:
                    return already
                with _constraints(self.path.parent, installed) as constraints:
                    return await self._pip([spec], constraints)

    async def _pip(self, specs: list[str], constraints: Path | None = None) -> str:
        argv = [
            str(self.python),
            "-m",
            "pip",
            "install",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
        ]
        if self.cfg.pip_index_url:
            argv += ["--index-url", self.cfg.pip_index_url]
        if self.cfg.pip_find_links:
            argv += ["--find-links", self.cfg.pip_find_links]
            if not self.cfg.pip_index_url:
                argv.append("--no-index")
        if constraints is not None:
            argv += ["--constraint", str(constraints)]
        return await self._run([*argv, "--", *specs])

    async def _run(self, argv: list[str]) -> str:
        env = {
            k: v
            for k, v in self._host_env.items()
            if k in _PASS_ENV or k.startswith("PIP_") or k.lower().endswith("_proxy")
        }
        code, out = await run_command(argv, deadline_s=self.cfg.pip_timeout_s, env=env)
        text = out.decode("utf-8", "replace")
        if code != 0:
            raise InstallFailed(f"{' '.join(argv[-1:])}: exit {code}: {text[-2000:].strip()}")
        return text[-2000:]


def _same_release(a: str, b: str) -> bool:
    """PEP 440's equality of plain release versions (1.26 == 1.26.0); other versions compare as text."""
    if not (_RELEASE.match(a) and _RELEASE.match(b)):
        return a == b
    x, y = [int(p) for p in a.split(".")], [int(p) for p in b.split(".")]
    width = max(len(x), len(y))
    return x + [0] * (width - len(x)) == y + [0] * (width - len(y))


_RELEASE = re.compile(r"^\d+(?:\.\d+)*$")


def _already_installed(spec: str, installed: Mapping[str, str]) -> str:
    """A note when `spec` names an installed distribution and asks for nothing new, "" when pip must
    run; InstallRefused when it pins another version than the one every sandbox shares."""
    m = _REQUIREMENT.match(spec)
    assert m is not None  # checked by check_requirement
    name, op, version = m.group(1), m.group(2), m.group(3)
    have = installed.get(normalize(name))
    if have is None:
        return ""
    if op is None or (op == "==" and _same_release(version, have)):
        return f"{name} {have} is already installed"
    if op == "==":
        raise InstallRefused(
            f"{name} {have} is installed in the shared environment and every sandbox uses it; "
            f"an install never changes an installed distribution (asked for {spec})"
        )
    return ""  # a range: pip decides under the constraints, which hold the installed version


@contextlib.contextmanager
def _constraints(directory: Path, installed: Mapping[str, str]):  # type: ignore[no-untyped-def]
    """A pip constraints file pinning every installed distribution at its version, removed after."""
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".constraints-", suffix=".txt") as f:
        f.write("".join(f"{name}=={version}\n" for name, version in sorted(installed.items())))
        f.flush()
        yield Path(f.name)


@contextlib.asynccontextmanager
async def _file_lock(path: Path):  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        # Another process may hold it for the minutes a creation takes: wait in a thread.
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def main() -> None:
    """`python -m services.executor.envs`: create the environment now (idempotent)."""
    from services.common import config as config_mod

    parser = argparse.ArgumentParser(description="Create the Python executor's package environment")
    parser.add_argument("--config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = config_mod.load(args.config)
    env = ExecutorEnv(cfg.executor, dict(os.environ))
    created = asyncio.run(env.ensure())
    print(f"{env.path}: {'created' if created else 'already present'}")


if __name__ == "__main__":
    main()
