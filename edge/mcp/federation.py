"""The prompts, resources and completion of installed MCP servers, federated for the edge's clients.

Each installed or federated server the hub runs is registered as one tool whose metadata names
what else it offers (`mcp_features`) and the revision of those lists (`mcp_lists_revision`,
services/discovery/mapping.py). This module follows those tools through the registry cache's
events, reads each server's lists through the hub (ToolScoreService.RelayServerRequest), keeps
them per server until the revision moves (or `list_ttl_s` passes), and serves their union:

- prompts are named as tools are, `tool_name(<tool_id>, <prompt name>)` (edge/mcp/tool_list.py);
- a resource keeps its URI when no server earlier in tool-id order lists the same URI; a later
  server's copy is listed as `toolscore://servers/<tool_id>/<URI, percent-encoded>` (that form
  reaches any server's resource; a URI a server lists in that form itself is listed so too, under
  its own tool id, so no server can present another's resource as its own). A URI no server
  lists goes to the first server (tool-id order) with a template it matches, else to the only
  server offering resources, else -32002;
- lists page in name (prompts), URI (resources) or template order, like `tools/list`.

A listing waits for a server only when it has none of its lists yet or the server announced a
change (at most `list_timeout_s`); otherwise what was read last is served and old lists are read
again in the background. A server whose lists cannot be read keeps what was read of it last. A
read, a get or a completion waits only for the server it is for.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import grpc
from google.protobuf import duration_pb2
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts

from edge.registry_cache import RegistryCache, hub_error
from services.common.errors import MeshError

from ._protocol import INVALID_PARAMS, ProtocolError
from .tool_list import decode_cursor, encode_cursor, tool_name

if TYPE_CHECKING:
    from .views import ViewSpec

log = logging.getLogger(__name__)

FEATURES_KEY = "mcp_features"  # services/discovery/mapping.py writes these two
LISTS_REVISION_KEY = "mcp_lists_revision"
EXPLICIT = "toolscore://servers/"
RESOURCE_NOT_FOUND = -32002
META_TOOL_ID = "dev.toolscore/toolId"
META_NAME = "dev.toolscore/name"
_MAX_PAGES = 50  # per server and list
_MAX_ITEMS = 10_000  # per server and list


class ServerError(Exception):
    """A server answered with a JSON-RPC error: passed on to the client as it was."""

    def __init__(self, code: int, message: str, data: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


# (tool_id, method, params, timeout_s) -> the server's result; raises ServerError or MeshError.
RelayFn = Callable[[str, str, dict[str, Any] | None, float], Awaitable[dict[str, Any]]]


async def relay_request(
    gateway: Any,
    tool_id: str,
    method: str,
    params: dict[str, Any] | None,
    timeout_s: float,
    watch_id: str = "",
) -> dict[str, Any]:
    """One request to an installed server through the hub's RelayServerRequest, on the channel of
    `gateway` (a HubGateway, whose `toolscore` stub exists once it is open); `watch_id`: the
    notification watch a subscription is held for. The server's result; raises ServerError (its
    JSON-RPC error) or MeshError (the hub's)."""
    timeout = duration_pb2.Duration()
    timeout.FromNanoseconds(int(timeout_s * 1e9))
    req = ts.RelayServerRequestRequest(
        tool_id=tool_id, method=method, params_json=json.dumps(params) if params else "", timeout=timeout
    )
    req.watch_id = watch_id
    try:
        resp = await gateway.toolscore.RelayServerRequest(req, timeout=timeout_s + 1.0)
    except grpc.aio.AioRpcError as exc:
        raise hub_error(exc) from None
    if resp.HasField("error"):
        data = json.loads(resp.error.data_json) if resp.error.data_json else None
        raise ServerError(resp.error.code, resp.error.message, data)
    result: dict[str, Any] = json.loads(resp.result_json) if resp.result_json else {}
    return result


def hub_relay(gateway: Any) -> RelayFn:
    """The relay through the hub's RelayServerRequest, on the channel of `gateway`."""

    async def relay(
        tool_id: str, method: str, params: dict[str, Any] | None, timeout_s: float
    ) -> dict[str, Any]:
        return await relay_request(gateway, tool_id, method, params, timeout_s)

    return relay


@dataclass(frozen=True)
class FederationOptions:
    page_size: int = 100
    list_timeout_s: float = 10.0  # one server's list (each page)
    call_timeout_s: float = 30.0  # a get, a read, a completion
    list_ttl_s: float = 30.0  # a server's lists are read again after this, even if it announced nothing


@dataclass
class _Lists:
    """One server's lists as last read, and the revision they were read at."""

    revision: str = ""
    read_at: float = -1e9
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# What each list method reads from servers: its result key and the feature it needs.
_KINDS = {
    "prompts/list": ("prompts", "prompts"),
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resourceTemplates", "resources"),
}


@dataclass
class _Union:
    """A list's union across servers: entries sorted by key, and where each key goes."""

    keys: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (tool_id, server's key)


class Federation:
    """The union of the installed servers' prompts, resources and templates; requests routed to
    the server that owns their name or URI."""

    def __init__(
        self, registry: RegistryCache, relay: RelayFn, opts: FederationOptions | None = None
    ) -> None:
        self._registry = registry
        self._relay = relay
        self.opts = opts or FederationOptions()
        self._listing = -1
        self.servers: dict[str, tuple[frozenset[str], str]] = {}  # tool_id -> (features, lists revision)
        self._lists: dict[str, _Lists] = {}
        # (method, view key) -> the union as built at the servers' read times
        self._unions: dict[tuple[str, str], tuple[tuple[tuple[str, float], ...], _Union]] = {}
        self._reading: dict[str, asyncio.Task[None]] = {}

    # -- following the registry --------------------------------------------------

    def current(self) -> dict[str, tuple[frozenset[str], str]]:
        """The federated servers (tool id -> features, lists revision), rebuilt only after the
        registry cache took a fresh listing."""
        if self._registry.listings != self._listing:
            self._listing = self._registry.listings
            self.servers = {}
            for entry in self._registry.entries.values():
                self._put(entry.tool)
        return self.servers

    def apply(self, event: tool_pb2.ToolEvent) -> tuple[bool, bool]:
        """Follow one registry event; returns whether (prompts, resources) lists may have changed."""
        before = self.current().get(event.tool.tool_id)
        if self._registry.listings == self._listing:
            if event.type == tool_pb2.TOOL_EVENT_TYPE_REMOVED:
                self.servers.pop(event.tool.tool_id, None)
            else:
                self._put(event.tool)
        after = self.servers.get(event.tool.tool_id)
        if before == after:
            return False, False
        feats = (before[0] if before else frozenset()) | (after[0] if after else frozenset())
        return "prompts" in feats, "resources" in feats

    def _put(self, tool: tool_pb2.Tool) -> None:
        features = tool.metadata.get(FEATURES_KEY)
        if not features or not tool.endpoint.startswith("mcp://") or not tool.enabled:
            self.servers.pop(tool.tool_id, None)
            return
        self.servers[tool.tool_id] = (
            frozenset(features.split(",")),
            tool.metadata.get(LISTS_REVISION_KEY, ""),
        )

    def offering(self, feature: str) -> list[str]:
        """The tool ids of the servers offering `feature`, in order."""
        return sorted(t for t, (feats, _) in self.current().items() if feature in feats)

    # -- reading the servers' lists ----------------------------------------------

    async def _union(self, method: str, view: ViewSpec | None) -> _Union:
        """`method`'s union as the endpoint of `view` lists it (None: `/mcp` unfiltered). A view of one
        server lists that server's items under their own names; a view's globs and renames apply to
        prompt names (as to tool names); resource URIs are filtered by server only, never renamed."""
        key, feature = _KINDS[method]
        servers = self.offering(feature)
        if view is not None and view.server:
            servers = [t for t in servers if t == view.server]
        await self._refresh(servers)
        state = tuple((t, self._lists[t].read_at) for t in servers if t in self._lists)
        cache_key = (method, view.key if view is not None else "")
        cached = self._unions.get(cache_key)
        if cached is not None and cached[0] == state:
            return cached[1]
        union = _build(method, ((t, self._lists[t].items.get(key, [])) for t, _ in state), view)
        self._unions[cache_key] = (state, union)
        return union

    async def _refresh(self, servers: list[str]) -> None:
        """Read again the lists of the servers whose revision moved (waited for: the server
        announced a change) or whose lists are old (read in the background: what was read last
        stands meanwhile, so a slow server does not hold up every listing)."""
        now = time.monotonic()
        moved: list[str] = []
        for t in servers:
            got = self._lists.get(t)
            if got is None or got.revision != self.servers[t][1]:
                moved.append(t)
            elif now - got.read_at > self.opts.list_ttl_s and t not in self._reading:
                self._start_read(t)
        for gone in set(self._lists) - set(self.servers):
            del self._lists[gone]
        if moved:
            await asyncio.wait([self._reading.get(t) or self._start_read(t) for t in moved])

    def close(self) -> None:
        """The edge is stopping: stop reading lists."""
        for task in list(self._reading.values()):
            task.cancel()

    def _start_read(self, tool_id: str) -> asyncio.Task[None]:
        # Shared by every request waiting for the same server's lists; not cancelled with any one.
        task = asyncio.get_running_loop().create_task(self._read(tool_id), name=f"mcp-lists-{tool_id}")
        self._reading[tool_id] = task
        task.add_done_callback(lambda _: self._reading.pop(tool_id, None))
        return task

    async def _read(self, tool_id: str) -> None:
        features, revision = self.servers.get(tool_id, (frozenset(), ""))
        items: dict[str, list[dict[str, Any]]] = {}
        try:
            async with asyncio.timeout(self.opts.list_timeout_s):  # all of one server's lists
                for method, (key, feature) in _KINDS.items():
                    if feature in features:
                        items[key] = await self._read_all(tool_id, method, key)
        except (MeshError, ServerError, ValueError, TimeoutError) as exc:
            log.info("lists of MCP server %s not read: %s", tool_id, exc)
            old = self._lists.get(tool_id)
            if old is not None:  # what was read last stands, tried again after list_ttl_s
                old.read_at = time.monotonic()
            return
        self._lists[tool_id] = _Lists(revision, time.monotonic(), items)

    async def _read_all(self, tool_id: str, method: str, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await self._relay(
                tool_id, method, {"cursor": cursor} if cursor else None, self.opts.list_timeout_s
            )
            got = page.get(key)
            if not isinstance(got, list):
                raise ValueError(f"{method} result has no {key} list")
            out.extend(i for i in got if isinstance(i, dict))
            cursor = page.get("nextCursor")
            if not cursor or not isinstance(cursor, str) or len(out) >= _MAX_ITEMS:
                break
        return out[:_MAX_ITEMS]

    # -- the requests ---------------------------------------------------------------

    async def list(self, method: str, params: dict[str, Any], view: ViewSpec | None = None) -> dict[str, Any]:
        """One page of prompts/list, resources/list or resources/templates/list, as `view` lists it."""
        cursor = params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise ProtocolError(INVALID_PARAMS, "params.cursor must be a string")
        union = await self._union(method, view)
        start = 0
        if cursor is not None:
            try:
                start = bisect.bisect_right(union.keys, decode_cursor(cursor))
            except ValueError as exc:
                raise ProtocolError(INVALID_PARAMS, f"Invalid cursor: {exc}") from None
        end = start + self.opts.page_size
        result: dict[str, Any] = {_KINDS[method][0]: union.entries[start:end]}
        if end < len(union.keys):
            result["nextCursor"] = encode_cursor(union.keys[end - 1])
        return result

    async def get_prompt(self, params: dict[str, Any], view: ViewSpec | None = None) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise ProtocolError(INVALID_PARAMS, "params.name must be a string")
        tool_id, original = await self._prompt_owner(name, view)
        return await self._call(tool_id, "prompts/get", {**_strip_meta(params), "name": original})

    async def read_resource(self, params: dict[str, Any], view: ViewSpec | None = None) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise ProtocolError(INVALID_PARAMS, "params.uri must be a string")
        tool_id, original = await self.resource_owner(uri, view)
        result = await self._call(tool_id, "resources/read", {**_strip_meta(params), "uri": original})
        if original != uri:  # contents name the URI the client read
            for c in result.get("contents") or ():
                if isinstance(c, dict) and c.get("uri") == original:
                    c["uri"] = uri
        return result

    async def complete(self, params: dict[str, Any], view: ViewSpec | None = None) -> dict[str, Any]:
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise ProtocolError(INVALID_PARAMS, "params.ref must be an object")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            tool_id, original = await self._prompt_owner(ref["name"], view)
            ref = {**ref, "name": original}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            tool_id, original = await self._template_owner(ref["uri"], view)
            ref = {**ref, "uri": original}
        else:
            raise ProtocolError(
                INVALID_PARAMS, "params.ref must be a ref/prompt with a name or a ref/resource with a uri"
            )
        if "completions" not in self.servers.get(tool_id, (frozenset(), ""))[0]:
            return {"completion": {"values": [], "hasMore": False}}  # the server completes nothing
        return await self._call(tool_id, "completion/complete", {**_strip_meta(params), "ref": ref})

    async def _call(self, tool_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._relay(tool_id, method, params, self.opts.call_timeout_s)
        except ServerError as exc:
            raise ProtocolError(exc.code, exc.message, exc.data) from None

    async def _prompt_owner(self, name: str, view: ViewSpec | None) -> tuple[str, str]:
        owner = (await self._union("prompts/list", view)).owners.get(name)
        if owner is None:
            raise ProtocolError(INVALID_PARAMS, f"Unknown prompt: {name}", {"name": name})
        return owner

    async def resource_owner(self, uri: str, view: ViewSpec | None) -> tuple[str, str]:
        """The server (tool id) of the resource `view`'s endpoint names `uri`, and its URI there;
        -32002 when no server has it."""
        offering = self.offering("resources")
        if view is not None and view.server:
            offering = [t for t in offering if t == view.server]
        if uri.startswith(EXPLICIT):
            tool_id, _, rest = uri[len(EXPLICIT) :].partition("/")
            if tool_id in offering and rest:
                return tool_id, unquote(rest)
            raise ProtocolError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
        owner = (await self._union("resources/list", view)).owners.get(uri)
        if owner is not None:
            return owner
        templates = await self._union("resources/templates/list", view)
        for template in templates.keys:
            tool_id, original = templates.owners[template]
            if _template_regex(original).fullmatch(uri):
                return tool_id, uri
        if len(offering) == 1:  # the one server may serve URIs it does not list
            return offering[0], uri
        raise ProtocolError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})

    async def _template_owner(self, uri: str, view: ViewSpec | None) -> tuple[str, str]:
        owner = (await self._union("resources/templates/list", view)).owners.get(uri)
        if owner is not None:
            return owner
        return await self.resource_owner(uri, view)


def _build(
    method: str, lists: Iterable[tuple[str, list[dict[str, Any]]]], view: ViewSpec | None = None
) -> _Union:
    """The union of the servers' lists (in tool-id order), named (through `view`) and sorted."""
    by_key: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {}
    named_so_far: dict[str, tuple[str, str]] = {}  # prompts: `/mcp` name -> (tool id, own name)
    for tool_id, items in lists:
        for item in items:
            if method == "prompts/list":
                original = item.get("name")
                if not isinstance(original, str):
                    continue
                named = _unclashed(tool_id, original, named_so_far)
                presented = named if view is None else view.present(tool_id, original, named)
                if presented is None:
                    continue
                key, entry = presented, {**item, "name": presented}
            elif method == "resources/list":
                original = item.get("uri")
                if not isinstance(original, str):
                    continue
                # A URI in the mesh's own explicit form is never taken as listed: a server could
                # otherwise list another server's resource as its own.
                plain = original not in by_key and not original.startswith(EXPLICIT)
                key = original if plain else f"{EXPLICIT}{tool_id}/{quote(original, safe='')}"
                entry = {**item, "uri": key}
            else:
                original = item.get("uriTemplate")
                if not isinstance(original, str):
                    continue
                key, entry = original, dict(item)
                if key in by_key:  # the same template twice: the first server's (tool-id order) is kept
                    continue
            meta = entry.get("_meta")
            entry["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_TOOL_ID: tool_id}
            if key != original:
                entry["_meta"][META_NAME] = original
            by_key.setdefault(key, (entry, (tool_id, original)))
    union = _Union()
    for key in sorted(by_key):
        entry, owner = by_key[key]
        union.keys.append(key)
        union.entries.append(entry)
        union.owners[key] = owner
    return union


def _unclashed(tool_id: str, original: str, named: dict[str, tuple[str, str]]) -> str:
    """The `/mcp` name of a server's prompt, recorded in `named`: `tool_name`'s, unless a prompt
    read before it (an earlier server in tool-id order, or earlier in its server's list) already
    has that name, as two pairs can spell one name (`a` + `b__c`, `a__b` + `c`); then, as tools/list
    does (tool_list._named), the same with a longer hash, so no prompt is hidden by another's."""
    hash_len, name = 8, tool_name(tool_id, original)
    while named.get(name, (tool_id, original)) != (tool_id, original):
        hash_len += 8
        name = tool_name(tool_id, original, hash_len)
    named[name] = (tool_id, original)
    return name


def _strip_meta(params: dict[str, Any]) -> dict[str, Any]:
    """The params without the client's envelope (`_meta`), which is the edge's, not the server's."""
    return {k: v for k, v in params.items() if k != "_meta"}


_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the URIs an RFC 6570 template expands to (the forms servers use)."""
    out, pos = [], 0
    for m in _EXPRESSION.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        op = m.group(1)
        out.append(".+" if op in "+#" and op else "(?:[?&].*)?" if op in "?&" and op else "[^/?#]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))
