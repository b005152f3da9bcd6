"""The executor's own package environment: a venv (default `data/executor-env`) that every
sandbox mounts read-only at /opt/env. Never the host's Python, never the mesh's venv.

Created on first start (config `executor.env_autocreate`) or ahead of time with
`python -m services.executor.envs` (what `make executor-env` runs). Installs
take wheels only (`--only-binary=:all:`), so no package code runs on the host
at install time, and only names on `executor.install_allowlist`.
A file lock makes concurrent creators (several meshes, parallel tests) safe.

`env_dir` is relative to the repository root, not `paths.root`: it is an
installation shared by every mesh run from this checkout, like `.venv`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common.config import REPO_ROOT, ExecutorConfig
from services.common.runtime import run_command
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

    async def install(self, spec: str) -> str:
        """Install one allowlisted requirement (wheels only); returns pip's last lines."""
        spec = check_requirement(spec, self.cfg.install_allowlist)
        await self.ensure()
        async with self._lock:
            async with _file_lock(self.path.with_name(self.path.name + ".lock")):
                return await self._pip([spec])

    async def _pip(self, specs: list[str]) -> str:
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
