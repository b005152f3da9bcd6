"""Installs one packaged MCP server into its own directory, pinned, and records what it fetched.

    <install_dir>/<tool_id>/venv/   PyPI: a venv made without pip; the hub's pip installs into it
                                     (wheels only: nothing runs at install time)
    <install_dir>/<tool_id>/npm/    npm: its own prefix, `--ignore-scripts`
    <install_dir>/<tool_id>/work/   the server's working directory and HOME: the only place it may write
    <install_dir>/<tool_id>/server.log   its stderr, as the hub read it (rotated to server.log.1)

Every step is a subprocess awaited with a deadline (the event loop never
blocks); a failure removes the directory, so nothing is left half-installed.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolscore.v1 import discovery_pb2 as pb

from services.common.config import DiscoveryConfig
from services.common.errors import FailedPrecondition, InvalidRequest
from services.common.process import die_with_parent, run_command
from services.discovery import identifiers

log = logging.getLogger(__name__)
Progress = Callable[[float, str], object]
# Paths and proxies installers and servers need to reach their registries; nothing secret.
_ENV_KEEP = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


class InstallFailed(FailedPrecondition):
    reason = "INSTALL_FAILED"


@dataclass
class Installed:
    """How to run what was installed, and what it fetched."""

    command: str
    args: list[str]
    cwd: str
    artifacts: list[pb.ArtifactHash] = field(default_factory=list)


def base_env() -> dict[str, str]:
    """The few variables installers and servers get: no secrets of the hub's environment."""
    return {k: v for k, v in os.environ.items() if k in _ENV_KEEP}


async def run(
    argv: Sequence[str], *, deadline_s: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a command in its own process group; returns (exit code, combined output tail)."""
    code, out = await run_command(
        argv,
        deadline_s=deadline_s,
        cwd=cwd,
        env=env if env is not None else base_env(),
        preexec_fn=die_with_parent,  # an install never outlives the hub
    )
    return code, out.decode(errors="replace")[-4000:]


def _tail(output: str, lines: int = 6) -> str:
    kept = [ln for ln in output.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[-800:]


class Installer:
    """PyPI and npm installs under `<install_dir>/<tool_id>/`."""

    def __init__(self, cfg: DiscoveryConfig, install_dir: Path) -> None:
        self.cfg = cfg
        self.root = install_dir

    def dir_for(self, tool_id: str) -> Path:
        return self.root / tool_id

    async def install(
        self, tool_id: str, pkg: pb.ServerPackage, version: str, progress: Progress
    ) -> Installed:
        """Install `pkg` at `version` into a fresh directory; removes it again on any failure."""
        identifiers.check(pkg.registry_type, pkg.identifier, version)  # the last gate before pip/npm
        target = self.dir_for(tool_id)
        if target.exists():
            shutil.rmtree(target)
        (target / "work").mkdir(parents=True)
        try:
            async with asyncio.timeout(self.cfg.install_timeout_s):
                if pkg.registry_type == "pypi":
                    return await self._pypi(target, pkg, version, progress)
                if pkg.registry_type == "npm":
                    return await self._npm(target, pkg, version, progress)
            raise InvalidRequest(
                f"registry type {pkg.registry_type!r} cannot be installed", reason="UNSUPPORTED_REGISTRY"
            )
        except TimeoutError as exc:
            self.remove(tool_id)
            raise InstallFailed(
                f"installing {pkg.identifier}=={version} took longer than {self.cfg.install_timeout_s:g}s",
                reason="INSTALL_TIMEOUT",
            ) from exc
        except BaseException:
            self.remove(tool_id)
            raise

    def remove(self, tool_id: str) -> None:
        shutil.rmtree(self.dir_for(tool_id), ignore_errors=True)

    async def _pypi(self, target: Path, pkg: pb.ServerPackage, version: str, progress: Progress) -> Installed:
        venv = target / "venv"
        progress(0.1, f"creating a virtual environment for {pkg.identifier}")
        code, out = await run([sys.executable, "-m", "venv", "--without-pip", str(venv)], deadline_s=120)
        if code:
            raise InstallFailed(f"could not create a venv: {_tail(out)}")
        py = venv / "bin" / "python"
        report = target / "pip-report.json"
        argv = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--report",
            str(report),
            "--",  # what follows is a requirement, never an option
            f"{pkg.identifier}=={version}",
        ]
        if self.cfg.pip_index_url:
            argv[6:6] = ["--index-url", self.cfg.pip_index_url]
        progress(0.3, f"pip install {pkg.identifier}=={version}")
        env = {**base_env(), "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        if self.cfg.pip_index_url:  # that index and nothing else (no extra indexes from pip.conf)
            env["PIP_CONFIG_FILE"] = os.devnull
        code, out = await run(argv, deadline_s=self.cfg.install_timeout_s, env=env)
        if code:
            raise InstallFailed(
                f"pip could not install {pkg.identifier}=={version}: {_tail(out)}",
                metadata={"package": pkg.identifier, "version": version},
            )
        progress(0.6, f"installed {pkg.identifier}=={version}")
        script = _console_script(venv, pkg.identifier)
        return Installed(str(script), list(pkg.package_arguments), str(target / "work"), _pip_hashes(report))

    async def _npm(self, target: Path, pkg: pb.ServerPackage, version: str, progress: Progress) -> Installed:
        prefix = target / "npm"
        prefix.mkdir()
        argv = [
            "npm",
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--no-update-notifier",
            "--fetch-retries=1",
            "--loglevel=error",
            "--",  # what follows is a package spec, never an option
            f"{pkg.identifier}@{version}",
        ]
        if self.cfg.npm_registry:
            argv.insert(2, f"--registry={self.cfg.npm_registry}")
        progress(0.3, f"npm install {pkg.identifier}@{version}")
        env = {**base_env(), "npm_config_update_notifier": "false"}
        code, out = await run(argv, deadline_s=self.cfg.install_timeout_s, cwd=prefix, env=env)
        if code:
            raise InstallFailed(
                f"npm could not install {pkg.identifier}@{version}: {_tail(out)}",
                metadata={"package": pkg.identifier, "version": version},
            )
        progress(0.6, f"installed {pkg.identifier}@{version}")
        main = _npm_bin(prefix / "node_modules" / pkg.identifier)
        return Installed(
            "node", [str(main), *pkg.package_arguments], str(target / "work"), _npm_hashes(prefix)
        )


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _console_script(venv: Path, identifier: str) -> Path:
    """The console script the package declares (the one named like the package, else the only one)."""
    scripts: list[str] = []
    for ep_file in venv.glob("lib/python*/site-packages/*.dist-info/entry_points.txt"):
        dist = ep_file.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        if _norm(dist) != _norm(identifier):
            continue
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(ep_file)
        if parser.has_section("console_scripts"):
            scripts = list(parser["console_scripts"])
    if not scripts:
        raise InstallFailed(
            f"{identifier} declares no console script to start the server with", reason="NO_ENTRY_POINT"
        )
    name = next((s for s in scripts if _norm(s) == _norm(identifier)), scripts[0])
    return venv / "bin" / name


def _npm_bin(pkg_dir: Path) -> Path:
    try:
        meta = json.loads((pkg_dir / "package.json").read_text())
    except (OSError, ValueError) as exc:
        raise InstallFailed(
            f"npm package at {pkg_dir.name} has no readable package.json", reason="NO_ENTRY_POINT"
        ) from exc
    bin_ = meta.get("bin")
    if isinstance(bin_, dict) and bin_:
        short = meta.get("name", "").rpartition("/")[2]
        rel = bin_.get(short) or next(iter(bin_.values()))
    elif isinstance(bin_, str):
        rel = bin_
    else:
        raise InstallFailed(
            f"{meta.get('name')} declares no `bin` to start the server with", reason="NO_ENTRY_POINT"
        )
    path: Path = (pkg_dir / rel).resolve()  # `rel` comes from JSON: Any to mypy
    if not path.is_relative_to(pkg_dir.resolve()) or not path.is_file():
        raise InstallFailed(
            f"{meta.get('name')}: bin {rel!r} is not a file in the package", reason="NO_ENTRY_POINT"
        )
    return path


def _pip_hashes(report: Path) -> list[pb.ArtifactHash]:
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for item in data.get("install", []):
        meta = item.get("metadata", {})
        archive = (item.get("download_info") or {}).get("archive_info") or {}
        hashes = archive.get("hashes") or {}
        digest = f"sha256={hashes['sha256']}" if "sha256" in hashes else archive.get("hash", "")
        out.append(pb.ArtifactHash(name=meta.get("name", ""), version=meta.get("version", ""), hash=digest))
    return out


def _npm_hashes(prefix: Path) -> list[pb.ArtifactHash]:
    try:
        lock = json.loads((prefix / "package-lock.json").read_text())
    except (OSError, ValueError):
        return []
    out = []
    for path, meta in (lock.get("packages") or {}).items():
        if path and "integrity" in meta:
            name = meta.get("name") or path.rpartition("node_modules/")[2]
            out.append(pb.ArtifactHash(name=name, version=meta.get("version", ""), hash=meta["integrity"]))
    return out
