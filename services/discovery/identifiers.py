"""Package identifiers and versions from a catalog entry, checked per registry type (pure).

pip and npm run outside the sandbox, as the hub's user, with the network: an
identifier is handed to them as a command-line argument, so anything they would
read as an option (`--prefix=/x`), a URL, a git or file spec, a path or an
extra requirement is refused here, before any installer runs. Only a bare name
passes; the version is a separate, exact pin.
"""

from __future__ import annotations

import re

from services.common.errors import FailedPrecondition

# PEP 508 distribution name: letters, digits, `.`, `_`, `-`; starts and ends with a letter or digit.
_PYPI_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
# npm package name (validate-npm-package-name): an optional `@scope/`, URL-safe characters, never
# starting with `.`, `_` or `-`, at most 214 characters. Upper case is accepted for old packages.
_NPM_NAME = re.compile(r"^(?:@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*$")
_NPM_MAX = 214
# A canonical PEP 440 version (its appendix's `is_canonical` pattern): `==` pins exactly this release.
_PEP440 = re.compile(
    r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
    r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$"
)
# An exact semver: npm reads `1.2` or `^1.2.3` as a range, and anything else as a tag or a spec.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


class InvalidPackage(FailedPrecondition):
    """A catalog entry's package identifier or version is not a plain name and an exact pin."""

    reason = "INVALID_PACKAGE_IDENTIFIER"


def problem(registry_type: str, identifier: str, version: str | None = None) -> str:
    """Why `identifier` (at `version`, when given) may not be handed to the `registry_type` installer;
    empty if it may."""
    if registry_type == "pypi":
        if not _PYPI_NAME.fullmatch(identifier):
            return f"{identifier!r} is not a PyPI project name (PEP 508: letters, digits, . _ -)"
        if version is not None and not _PEP440.fullmatch(version):
            return f"version {version!r} is not an exact, canonical PEP 440 version"
        return ""
    if registry_type == "npm":
        if len(identifier) > _NPM_MAX or not _NPM_NAME.fullmatch(identifier):
            return f"{identifier!r} is not an npm package name ([@scope/]name, no URL, path or option)"
        if version is not None and not _SEMVER.fullmatch(version):
            return f"version {version!r} is not an exact semver version"
        return ""
    return f"registry type {registry_type!r} cannot be installed"


def check(registry_type: str, identifier: str, version: str | None = None) -> None:
    """InvalidPackage when `problem` finds one."""
    why = problem(registry_type, identifier, version)
    if why:
        raise InvalidPackage(
            f"refusing to install {registry_type}:{identifier}: {why}",
            metadata={"registry_type": registry_type, "identifier": identifier[:200]},
        )
