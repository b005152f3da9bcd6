"""The auto-install policy: how many catalog candidates a need installs, and which may be installed.

Written once, used by every caller that installs for a need rather than by name: the edge's REST
routes (`request-capability`, `search-and-install`) and the runtime's `request_capability`
meta-tool. Both reach discovery through `DiscoveryClient` (its gRPC RPCs), so the hub still decides
each install's authority: an `Unauthenticated` refusal is raised, never swallowed as a candidate's
failure. Whether an entry is allowed at all is the install policy (`policy.py`), which the hub
reports as each candidate's `policy_denial`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from toolscore.v1 import discovery_pb2 as pb

from services.common.errors import MeshError, Unauthenticated
from services.discovery.client import DiscoveryClient

MAX_INSTALLS = 3  # the most servers one gap installs: each runs third-party code
SEARCH_PAGE = 10  # candidates a free-text need is searched for


@dataclass
class Installs:
    """What one auto-install did: the servers installed, best first, and why the others failed."""

    servers: list[pb.InstalledServer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def installable(candidate: pb.ServerCandidate) -> bool:
    """A candidate auto-install may pick: not installed yet, and allowed by the install policy."""
    return not candidate.installed and not candidate.policy_denial


def installs_for(gap: pb.AnalyzeGapResponse) -> int:
    """How many servers a gap analysis installs: one per missing capability, at most MAX_INSTALLS."""
    return min(len(gap.missing_capabilities), MAX_INSTALLS)


async def install_best(
    client: DiscoveryClient,
    candidates: Sequence[pb.ServerCandidate],
    limit: int,
    authorization: str | None = None,
) -> Installs:
    """Install the best `limit` installable candidates, in rank order; a failed one makes way for the next."""
    out = Installs()
    for c in candidates:
        if len(out.servers) >= limit:
            break
        if not installable(c):
            continue
        try:
            resp = await client.install(pb.InstallServerRequest(name=c.server.name), authorization)
        except Unauthenticated:
            raise  # the caller's authority, not this candidate: no other candidate would do better
        except MeshError as err:
            out.errors.append(f"{c.server.name}: {err.message}")
            continue
        out.servers.append(resp.server)
    return out


async def search_and_install(
    client: DiscoveryClient, need: str, authorization: str | None = None
) -> Installs:
    """Search the catalog for `need` and install the best installable match (one server)."""
    found = await client.search(pb.SearchServersRequest(query=need, page_size=SEARCH_PAGE))
    return await install_best(client, found.candidates, 1, authorization)
