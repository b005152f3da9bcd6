"""The one browser guard every edge route uses (REST, WebSockets, both MCP transports)."""

from __future__ import annotations

import pytest

from edge.errors_http import status_of
from edge.origin import OriginGuard

LOCAL = {"Host": "127.0.0.1:8082"}


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        (LOCAL, True),  # a program: no Origin
        ({"Host": "localhost:8082"}, True),
        ({"Host": "[::1]:8082"}, True),
        ({"Host": "LOCALHOST:8082"}, True),
        ({"Host": "127.0.0.2:8082"}, True),  # all of 127/8 is loopback
        ({"Host": "[0:0:0:0:0:0:0:1]:8082"}, True),
        ({"Host": "localhost.:8082"}, True),
        ({"Host": "localhost.evil.example:8082"}, False),
        ({**LOCAL, "Origin": "http://localhost:3000"}, True),
        ({**LOCAL, "Origin": "https://127.0.0.1"}, True),
        ({**LOCAL, "Origin": "http://[::1]:5173/"}, True),
        ({**LOCAL, "Origin": "https://dash.example"}, True),  # listed
        ({**LOCAL, "Origin": "HTTPS://DASH.EXAMPLE/"}, True),
        ({"Host": "dash.example", "Origin": "https://dash.example"}, True),  # a listed origin's host
        ({**LOCAL, "Origin": "https://evil.example"}, False),
        ({**LOCAL, "Origin": "null"}, False),  # sandboxed frames, file:// pages
        ({**LOCAL, "Origin": "ftp://localhost"}, False),
        ({**LOCAL, "Origin": "http://localhost.evil.example"}, False),
        ({"Host": "rebound.evil.example:8082"}, False),  # DNS rebinding: the page's own name
        ({}, False),  # no Host at all
        ({"Host": ""}, False),
    ],
)
def test_loopback_edge(headers, allowed):
    guard = OriginGuard(("https://dash.example",), "127.0.0.1")
    assert (guard.refusal(headers) is None) is allowed


def test_a_refusal_says_which_check_failed():
    guard = OriginGuard((), "127.0.0.1")
    origin = guard.refusal({**LOCAL, "Origin": "https://evil.example"})
    host = guard.refusal({"Host": "evil.example"})
    assert origin is not None and origin.reason == "FORBIDDEN_ORIGIN" and status_of(origin) == 403
    assert host is not None and host.reason == "FORBIDDEN_HOST" and "rebinding" in host.message


def test_any_origin_opens_the_origin_check_only():
    guard = OriginGuard(("*",), "127.0.0.1")
    assert guard.refusal({**LOCAL, "Origin": "https://anything.example"}) is None
    assert guard.refusal({"Host": "rebound.evil.example"}) is not None


def test_a_specific_address_is_its_own_host_name_and_allowed_hosts_add_names():
    guard = OriginGuard((), "10.1.2.3")
    assert guard.refusal({"Host": "10.1.2.3:8082"}) is None
    assert guard.refusal({"Host": "localhost:8082"}) is None
    assert guard.refusal({"Host": "hub.corp:8082"}) is not None
    named = OriginGuard((), "10.1.2.3", allowed_hosts=("hub.corp",))
    assert named.refusal({"Host": "hub.corp:8082"}) is None
    assert named.refusal({"Host": "HUB.CORP"}) is None
    assert named.refusal({"Host": "other.corp"}) is not None
    anything = OriginGuard((), "10.1.2.3", allowed_hosts=("*",))
    assert anything.refusal({"Host": "other.corp"}) is None
    assert anything.refusal({"Host": "other.corp", "Origin": "https://evil.example"}) is not None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "[::]", ""])
def test_a_wildcard_bind_checks_no_host(bind):
    guard = OriginGuard((), bind)
    assert guard.refusal({"Host": "edge.example.com"}) is None
    assert guard.refusal({}) is None
    assert guard.refusal({"Host": "edge.example.com", "Origin": "https://evil.example"}) is not None


def test_a_malformed_origin_or_host_is_refused_and_the_refusal_names_no_host():
    guard = OriginGuard(("https://dash.example",), "127.0.0.1")
    origin = guard.refusal({**LOCAL, "Origin": "http://[::1"})  # not even a URL: urlsplit raises
    assert origin is not None and origin.reason == "FORBIDDEN_ORIGIN"
    for host in ("[::1", ":8082"):  # not a URL / no name at all
        refused = guard.refusal({"Host": host})
        assert refused is not None and refused.reason == "FORBIDDEN_HOST"
        assert refused.message == "host '' is not this edge (possible DNS rebinding)"


def test_a_refusal_echoes_at_most_200_characters_of_a_hostile_origin_or_host():
    guard = OriginGuard((), "127.0.0.1")
    long_origin = "https://" + "o" * 300 + ".example"
    origin = guard.refusal({**LOCAL, "Origin": long_origin})
    assert origin is not None and origin.reason == "FORBIDDEN_ORIGIN"
    assert origin.metadata == {"origin": long_origin[:200]}
    assert (
        origin.message == f"requests from origin {long_origin[:200]!r} are not allowed (edge.allowed_origins)"
    )
    host = guard.refusal({"Host": "h" * 300})
    assert (
        host is not None and host.message == f"host {'h' * 200!r} is not this edge (possible DNS rebinding)"
    )


def test_a_request_without_a_host_header_is_refused_as_such():
    refused = OriginGuard((), "127.0.0.1").refusal({})
    assert refused is not None and refused.reason == "FORBIDDEN_HOST" and status_of(refused) == 403
    assert refused.message == "a Host header is required"


def test_configured_origins_and_hosts_match_whatever_their_case_brackets_or_trailing_slash():
    # Names ending in an upper-case X catch a strip of the wrong characters as well as a missing one.
    guard = OriginGuard(("HTTPS://WWW.BOX/",), "MESH.BOX", allowed_hosts=("[FD00::1]", "HUB.BOX"))
    assert guard.refusal({**LOCAL, "Origin": "https://www.box"}) is None
    assert guard.refusal({**LOCAL, "Origin": "HTTPS://WWW.BOX"}) is None
    for host in ("mesh.box:8082", "[fd00::1]:8082", "hub.box", "www.box"):
        assert guard.refusal({"Host": host}) is None, host
    assert guard.refusal({"Host": "box"}) is not None


def test_any_origin_never_makes_a_star_host_acceptable():
    guard = OriginGuard(("*",), "127.0.0.1")
    refused = guard.refusal({"Host": "*"})
    assert refused is not None and refused.reason == "FORBIDDEN_HOST"


def test_only_allowed_origin_and_host_pairs_are_remembered_and_at_most_256_of_them():
    # The middleware lets a remembered pair pass without asking the guard again.
    guard = OriginGuard((), "127.0.0.1")
    assert guard.refusal({**LOCAL, "Origin": "https://evil.example"}) is not None
    assert guard.refusal({"Host": "rebound.evil.example"}) is not None
    assert guard.refusal({}) is not None
    assert guard.passed == set()
    assert guard.refusal({**LOCAL, "Origin": "http://localhost:3000"}) is None
    assert guard.passed == {("http://localhost:3000", LOCAL["Host"])}
    for port in range(300):
        assert guard.refusal({"Host": f"127.0.0.1:{port}"}) is None
    assert len(guard.passed) == 256
