"""The shared executor environment only ever grows: python_install_package can neither up- nor downgrade a
distribution every sandbox uses, directly or as a dependency. Real executor, real pip, real wheels in a
local directory, an environment of the test's own (never data/executor-env)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from services.common import config as config_mod
from services.common.config import Config
from services.executor.envs import InstallRefused, _already_installed
from services.hub.app import Hub
from tests.executor.conftest import running_executor


def wheel(directory: Path, name: str, version: str, source: str, requires: tuple[str, ...] = ()) -> None:
    """A real (tiny) pure-Python wheel, with Requires-Dist lines when given."""
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
        for p, d in files.items()
    )
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(directory / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)


VERSIONS = "import importlib.metadata as m\n[m.version(n) for n in ('tsbase', 'tsdep')]"


@pytest.mark.timeout(300)
async def test_an_install_never_up_or_downgrades_a_distribution_every_sandbox_shares(
    xcfg: Config, hub: Hub, root: Path
) -> None:
    wheels = root / "wheels"
    wheels.mkdir()
    for version in ("1.0", "2.0"):
        wheel(wheels, "tsbase", version, f"VALUE = {version!r}\n")
        wheel(wheels, "tsdep", version, f"VALUE = {version!r}\n")
    wheel(wheels, "tsapp", "1.0", "", requires=("tsdep>=2",))
    cfg = config_mod.replace(
        xcfg,
        executor={
            "env_dir": str(root / "env"),
            "env_packages": (),
            "install_allowlist": ("tsbase", "tsdep", "tsapp"),
            "pip_find_links": str(wheels),
        },
    )
    async with running_executor(cfg, hub) as call:
        for spec in ("tsbase==1.0", "tsdep==1.0"):
            resp, s = await call("python_install_package", package_name=spec, deadline=240)
            assert not resp.is_error and s["installed"] is True, resp.error.message

        # The attack: pin another version of what is installed (numpy==1.26.4 under pandas).
        resp, s = await call("python_install_package", package_name="tsbase==2.0", deadline=240)
        assert resp.is_error and s["installed"] is False
        assert "tsbase 1.0 is installed" in resp.error.message, resp.error.message
        # The same through a dependency, or a range the installed version does not meet.
        for spec in ("tsapp==1.0", "tsbase>=2"):
            resp, s = await call("python_install_package", package_name=spec, deadline=240)
            assert resp.is_error and s["installed"] is False, spec

        # Asking for what is installed changes nothing and is no error.
        for spec in ("tsbase", "tsbase==1.0", "tsbase>=1"):
            resp, s = await call("python_install_package", package_name=spec, deadline=240)
            assert not resp.is_error, (spec, resp.error.message)

        resp, s = await call.code(VERSIONS)
        assert not resp.is_error and s["result"] == "['1.0', '1.0']", s
        resp, s = await call.code("import tsapp")
        assert resp.is_error and "ModuleNotFoundError" in s["stderr"]
    assert not list((root).glob(".constraints-*")), "the constraints file is removed after each install"


def test_a_pin_equal_to_the_installed_version_under_pep_440_is_already_installed_not_refused():
    installed = {"numpy": "1.26.0"}
    assert "already installed" in _already_installed("numpy==1.26", installed)
    assert "already installed" in _already_installed("numpy==1.26.0.0", installed)
    with pytest.raises(InstallRefused):
        _already_installed("numpy==1.26.4", installed)
