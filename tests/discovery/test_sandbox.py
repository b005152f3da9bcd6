"""Installed stdio servers run sandboxed: no network, no host files, no hub secrets, unless allowed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc, tool_pb2, toolscore_pb2_grpc
from toolscore.v1 import toolscore_pb2 as ts

from services.common import config as config_mod
from services.common.config import Config
from services.common.errors import FailedPrecondition
from services.common.jsonvalue import dict_to_struct
from services.discovery.sandbox import _runtime
from services.hub.app import Hub
from tests.discovery.conftest import META, NS, PackageIndex, build_wheel, server_json, write_catalog
from tests.helpers import deadline

SECRET = "TOOLSCORE_TEST_SANDBOX_SECRET"
# Set to 1 to skip, on a machine without cgroups, the test of the limits they enforce (else it fails).
NO_CGROUPS_OPT_OUT = "TOOLSCORE_TEST_NO_CGROUPS"


class Listener:
    """A loopback TCP server that greets whoever connects, and remembers that someone did."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.address = ""

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connected.set()
        writer.write(b"hello from the host")
        await writer.drain()
        writer.close()


@asynccontextmanager
async def loopback_listener() -> AsyncIterator[Listener]:
    listener = Listener()
    server = await asyncio.start_server(listener._greet, "127.0.0.1", 0)
    listener.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield listener


def host_file(root: Path) -> Path:
    """A 0644 file in a world-readable directory: anyone on the host may read it, outside the sandbox."""
    d = root / "host-files"
    d.mkdir(mode=0o755)
    os.chmod(root, 0o755)  # the test root is 0700: open the path, so only the sandbox can hide the file
    f = d / "notes.txt"
    f.write_text("host-only notes")
    f.chmod(0o644)
    return f


def cgroup_limits(pid: int) -> tuple[int, int]:
    """(pids.max, memory limit) of the cgroups process `pid` is in (v1 or v2)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path.lstrip("/")
    base = Path("/sys/fs/cgroup")
    if "pids" in paths:
        pids = (base / "pids" / paths["pids"] / "pids.max").read_text()
        memory = (base / "memory" / paths["memory"] / "memory.limit_in_bytes").read_text()
    else:
        pids = (base / paths[""] / "pids.max").read_text()
        memory = (base / paths[""] / "memory.max").read_text()
    return int(pids), int(memory)


def publish(
    pkg_index: PackageIndex,
    root: Path,
    catalog_dir: Path,
    dist: str,
    behaviour: str = "ok",
    env: dict[str, str] | None = None,
    wheel: bool = True,
) -> str:
    """The tiny server as a wheel on the local index and a curated catalog entry (with `env` as its
    environment defaults); `wheel=False` rewrites only the entry."""
    if wheel:
        wheels = root / "wheels"
        wheels.mkdir(exist_ok=True)
        pkg_index.add_wheel(build_wheel(wheels, dist, "1.0.0", behaviour=behaviour), dist)
    name = f"{NS}/{dist}"
    doc = server_json(name, f"{dist} for sandbox tests", "pypi", dist, "1.0.0")
    doc["packages"][0]["environmentVariables"] = [{"name": k, "default": v} for k, v in (env or {}).items()]
    write_catalog(catalog_dir, doc)
    return name


class Calls:
    def __init__(self, ch: grpc.aio.Channel, tool_id: str) -> None:
        self.stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        self.tool_id = tool_id

    async def attempt(self, what: str, target: str = "") -> ts.ExecuteToolResponse:
        return await self.call("attempt", what=what, target=target)

    async def call(self, action: str, **args: object) -> ts.ExecuteToolResponse:
        request = ts.ExecuteToolRequest(tool_id=self.tool_id, action=action, arguments=dict_to_struct(args))
        return await self.stub.ExecuteTool(request, timeout=20)


async def test_a_sandboxed_server_cannot_reach_the_network_host_files_outside_writes_or_hub_secrets(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "hunter2")  # in the hub's own environment
    name = publish(pkg_index, root, catalog_dir, "ts-boxed-mcp")
    outside = host_file(root)
    async with loopback_listener() as listener, Hub(dcfg) as hub:
        installed = await hub.discovery.install(name)
        tool_id = installed.server.tool_id
        state_dir = hub.discovery.installer.dir_for(tool_id) / "work"
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            connect = await s.attempt("connect", listener.address)
            assert connect.is_error and "hello" not in connect.content[0].text.text
            read = await s.attempt("read", str(outside))
            assert read.is_error and "FileNotFoundError" in read.content[0].text.text
            for target in (root / "escape.txt", state_dir.parent / "venv" / "escape.txt", Path("/etc/x")):
                wrote = await s.attempt("write", str(target))
                assert wrote.is_error and not target.exists(), target
            secret = await s.attempt("env", SECRET)
            assert secret.is_error and "hunter2" not in secret.content[0].text.text

            # it still works, as an unprivileged user, in its own state directory
            assert (await s.call("echo", text="still fine")).content[0].text.text == "still fine"
            ids = json.loads((await s.attempt("ids")).content[0].text.text)
            assert ids == {"uid": 65534, "gid": 65534, "cwd": str(state_dir), "home": str(state_dir)}
            wrote = await s.attempt("write", str(state_dir / "kept.txt"))
            assert not wrote.is_error and (state_dir / "kept.txt").read_text() == "written by the server"
            # A path inside the sandbox, whose /tmp is private: named after this test's root so that
            # the host check below can only see a file this very server leaked.
            scratch = f"/tmp/scratch-{root.name}.txt"
            assert not (await s.attempt("write", scratch)).is_error
            assert not Path(scratch).exists()  # its /tmp is private

            listed = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).ListServers(
                pb.ListServersRequest(), timeout=5
            )
            [status] = listed.servers
            assert status.isolation == hub.discovery.sandboxes.caps.level != "process"  # type: ignore[union-attr]
            assert status.network is False
            if status.isolation == "full":  # bwrap and everything under it count against its cgroup
                limits = cgroup_limits(hub.discovery.runners[tool_id].transport.pid)  # type: ignore[union-attr]
                assert limits == (dcfg.discovery.pids_limit, dcfg.discovery.memory_limit_bytes)
        assert not listener.connected.is_set()


async def test_a_fork_bomb_or_a_memory_hog_in_a_server_is_contained_and_the_server_comes_back(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    limited = config_mod.replace(dcfg, discovery={"pids_limit": 24, "memory_limit_bytes": 192 << 20})
    name = publish(pkg_index, root, catalog_dir, "ts-greedy-mcp")
    async with Hub(limited) as hub:
        caps = hub.discovery.sandboxes.caps  # type: ignore[union-attr]
        if caps.cgroups is None:
            why = "; ".join(caps.notes) or f"isolation level {caps.level!r}"
            if os.environ.get(NO_CGROUPS_OPT_OUT) != "1":  # a silent skip would hide a missing defence
                pytest.fail(
                    f"no cgroups for MCP servers here ({why}): the pids and memory limits under test "
                    f"are not applied; give the tests cgroups v2, or set {NO_CGROUPS_OPT_OUT}=1 to skip"
                )
            pytest.skip(f"{NO_CGROUPS_OPT_OUT}=1 and no cgroups here ({why})")
        tool_id = (await hub.discovery.install(name)).server.tool_id
        runner = hub.discovery.runners[tool_id]
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            # Fork until refused: the pids cgroup (bwrap, init, setpriv and the server count too)
            # stops it well short of the 1000 it asks for; the server itself lives on.
            bomb = json.loads((await s.attempt("fork", "1000")).content[0].text.text)
            assert bomb["outcome"] == "BlockingIOError" and bomb["forked"] < 24, bomb
            echo = await s.call("echo", text="after the fork bomb")
            assert echo.content[0].text.text == "after the fork bomb"
            assert runner.restarts == 0

            # Touch more memory than the cgroup allows: the kernel kills the server mid-call, the
            # caller gets an error promptly, and the runner starts it again (its health goes
            # UNHEALTHY, then HEALTHY once the new connection is up: watched, not polled).
            health = tool_library_pb2_grpc.ToolLibraryServiceStub(ch).WatchToolEvents(
                lib.WatchToolEventsRequest(
                    since_revision=hub.registry.revision,
                    tool_ids=[tool_id],
                    types=[tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED],
                )
            )
            hog = await s.attempt("allocate", "400")
            assert hog.is_error, hog
            assert hog.error.type == tool_pb2.ERROR_TYPE_SYSTEM
            assert "killed for exceeding its memory limit" in hog.error.message, hog.error.message
            down, up = tool_pb2.HEALTH_STATUS_UNHEALTHY, tool_pb2.HEALTH_STATUS_HEALTHY
            seen: list[int] = []
            async with deadline(20, f"{tool_id} to turn unhealthy, then healthy again"):
                while down not in seen or seen[-1] != up:
                    seen.append((await health.read()).event.tool.health)
            health.cancel()
            echo = await s.call("echo", text="back again")
            assert echo.content[0].text.text == "back again"
            assert runner.restarts >= 1


async def test_bubblewrap_starts_with_path_alone_and_loader_variables_from_a_catalog_never_pass(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "hunter2")
    preload = root / "preload-marker.so"  # never loaded: the loader would complain on stderr if tried
    env = {"LD_PRELOAD": str(preload), "GCONV_PATH": str(root), "TS_GREETING": "hello"}
    name = publish(pkg_index, root, catalog_dir, "ts-env-mcp", env=env)
    async with Hub(dcfg) as hub:
        installed = await hub.discovery.install(name)
        tool_id = installed.server.tool_id
        transport = hub.discovery.runners[tool_id].transport
        assert transport is not None and transport.pid is not None
        outside = Path(f"/proc/{transport.pid}/environ").read_bytes().split(b"\0")
        assert [v for v in outside if v] == [b"PATH=/usr/local/bin:/usr/bin:/bin"]  # bwrap's own
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            assert (await s.attempt("env", "TS_GREETING")).content[0].text.text == "hello"
            for unsafe in ("LD_PRELOAD", "GCONV_PATH", SECRET):
                assert (await s.attempt("env", unsafe)).is_error, unsafe
        assert "preload" not in transport.stderr_tail()


async def test_an_installed_curated_server_gets_environment_defaults_its_entry_gained_since(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-later-env-mcp")
    async with Hub(dcfg) as hub:
        tool_id = (await hub.discovery.install(name)).server.tool_id
    # e.g. a state file location added to the entry after the install
    publish(pkg_index, root, catalog_dir, "ts-later-env-mcp", env={"TS_GREETING": "~/greeting"}, wheel=False)
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            greeting = await Calls(ch, tool_id).attempt("env", "TS_GREETING")
        work = hub.discovery.installer.dir_for(tool_id) / "work"
    assert greeting.content[0].text.text == f"{work}/greeting"


async def test_files_an_unsandboxed_server_left_in_its_directory_stay_writable_once_it_is_sandboxed(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-upgraded-mcp")
    async with Hub(dcfg) as hub:
        tool_id = (await hub.discovery.install(name)).server.tool_id
        work = hub.discovery.installer.dir_for(tool_id) / "work"
    (work / "state").mkdir()
    kept = work / "state" / "kept.txt"
    kept.write_text("from before the sandbox")
    for p in (work, work / "state", kept):  # as a server running as root left them
        os.chown(p, 0, 0)
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            wrote = await Calls(ch, tool_id).attempt("write", str(kept))
    assert not wrote.is_error and kept.read_text() == "written by the server"


async def test_stopping_a_sandboxed_server_that_outlives_its_stdin_sends_it_sigterm(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-linger-mcp", behaviour="linger")
    async with Hub(dcfg) as hub:
        installed = await hub.discovery.install(name)
        work = hub.discovery.installer.dir_for(installed.server.tool_id) / "work"
        assert not (work / "terminated.txt").exists()
    # the hub closed its stdin, waited stop_grace_s, then signalled the server inside the sandbox
    assert (work / "terminated.txt").read_text() == "SIGTERM"


def test_a_runtime_outside_the_system_is_mounted_by_its_installation_never_by_the_home_around_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = root / "home"
    monkeypatch.setenv("HOME", str(home))
    loose = home / "bin" / "node"  # a node binary dropped into ~/bin: its "prefix" is the home directory
    nvm = home / ".nvm" / "versions" / "node" / "v20" / "bin" / "node"  # a real installation prefix
    for exe in (loose, nvm):
        exe.parent.mkdir(parents=True)
        exe.write_text("")
    (nvm.parents[1] / "lib" / "node_modules").mkdir(parents=True)
    install_dir = root / "mcp" / "server"

    assert _runtime(str(loose), install_dir) == (str(loose), [(str(loose), str(loose))])
    assert _runtime(str(nvm), install_dir) == (str(nvm), [(str(nvm.parents[1]), str(nvm.parents[1]))])
    assert _runtime("/usr/bin/env", install_dir) == ("/usr/bin/env", [])  # the system is always there
    shared = home / ".local" / "bin" / "node"  # ~/.local holds many tools' files: never mounted whole
    shared.parent.mkdir(parents=True)
    shared.write_text("")
    (home / ".local" / "lib" / "node_modules").mkdir(parents=True)
    assert _runtime(str(shared), install_dir) == (str(shared), [(str(shared), str(shared))])


async def test_a_server_named_in_network_allowed_reaches_the_loopback_listener_and_sees_its_mounts(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    shared = root / "shared"
    shared.mkdir()
    (shared / "doc.txt").write_text("shared document")
    net = publish(pkg_index, root, catalog_dir, "ts-net-mcp")
    boxed = publish(pkg_index, root, catalog_dir, "ts-quiet-mcp")
    cfg = config_mod.replace(
        dcfg,
        discovery={"network_allowed": (f"{NS}/ts-net-*",), "mounts": (f"*/ts-net-mcp:{shared}:ro",)},
    )
    async with loopback_listener() as listener, Hub(cfg) as hub:
        net_id = (await hub.discovery.install(net)).server.tool_id
        boxed_id = (await hub.discovery.install(boxed)).server.tool_id
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            reached = await Calls(ch, net_id).attempt("connect", listener.address)
            assert not reached.is_error and reached.content[0].text.text == "hello from the host"
            assert listener.connected.is_set()
            assert (await Calls(ch, boxed_id).attempt("connect", listener.address)).is_error

            doc = await Calls(ch, net_id).attempt("read", str(shared / "doc.txt"))
            assert doc.content[0].text.text == "shared document"
            assert (await Calls(ch, net_id).attempt("write", str(shared / "new.txt"))).is_error
            assert (await Calls(ch, boxed_id).attempt("read", str(shared / "doc.txt"))).is_error
            listed = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).ListServers(
                pb.ListServersRequest(), timeout=5
            )
            assert {s.name: s.network for s in listed.servers} == {net: True, boxed: False}
        assert not (shared / "new.txt").exists()


async def test_without_bubblewrap_installs_are_refused_unless_the_weaker_level_is_allowed_explicitly(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "hunter2")  # in the hub's own environment, before any server starts
    name = publish(pkg_index, root, catalog_dir, "ts-bare-mcp")
    outside = host_file(root)
    no_bwrap = config_mod.replace(dcfg, discovery={"bwrap": str(root / "no-such-bwrap")})
    async with Hub(no_bwrap) as hub:
        with pytest.raises(FailedPrecondition) as refused:
            await hub.discovery.install(name)
        assert refused.value.reason == "ISOLATION_UNAVAILABLE"
        assert "bubblewrap" in refused.value.message and "MIN_ISOLATION=process" in refused.value.message
        assert not pkg_index.download_started.is_set()  # refused before fetching anything

    weaker = config_mod.replace(no_bwrap, discovery={"min_isolation": "process"})
    async with loopback_listener() as listener, Hub(weaker) as hub:
        installed = await hub.discovery.install(name)
        assert installed.server.isolation == "process"
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, installed.server.tool_id)
            # the same attempts that fail in the sandbox succeed here: the sandbox is what stops them
            assert (await s.attempt("read", str(outside))).content[0].text.text == "host-only notes"
            assert not (await s.attempt("connect", listener.address)).is_error
            secret = await s.attempt("env", SECRET)  # the environment is scrubbed at every level
            assert secret.is_error and "hunter2" not in secret.content[0].text.text
        assert listener.connected.is_set()

    async with Hub(no_bwrap) as hub:  # back at the default level on the same machine: stays stopped
        [server] = hub.discovery.list_servers()
        assert server.state == pb.SERVER_STATE_STOPPED and "MIN_ISOLATION=process" in server.status_message
        assert not hub.discovery.runners[server.tool_id].transport  # never started


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("mounts", ("*/x:relative/path",), "relative/path"),
        ("min_isolation", "paranoid", "paranoid"),
    ],
)
async def test_a_malformed_sandbox_setting_stops_the_hub_with_a_clear_error(
    dcfg: Config, key: str, value: object, complaint: str
) -> None:
    with pytest.raises(config_mod.ConfigError, match=complaint):
        async with Hub(config_mod.replace(dcfg, discovery={key: value})):
            pass


async def test_a_remote_registrys_network_claim_grants_no_network_while_the_same_curated_claim_does(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    wheels = root / "wheels"
    wheels.mkdir()
    names = {}
    for dist, where in (("ts-curated-net-mcp", "curated"), ("ts-stranger-net-mcp", "registry")):
        pkg_index.add_wheel(build_wheel(wheels, dist, "1.0.0"), dist)
        doc = server_json(f"{NS}/{dist}", "needs the network", "pypi", dist, "1.0.0")
        doc["_meta"][META]["network"] = True  # the same claim, in the operator's catalog or a stranger's
        if where == "curated":
            write_catalog(catalog_dir, doc)
        else:
            pkg_index.servers.append(doc)  # served by the remote registry; `pypi:ts-*` is allowed
        names[where] = doc["name"]
    async with loopback_listener() as to_stranger, loopback_listener() as to_curated, Hub(dcfg) as hub:
        stranger = (await hub.discovery.install(names["registry"])).server
        curated = (await hub.discovery.install(names["curated"])).server
        assert hub.discovery.records[names["registry"]].source == pkg_index.url
        assert hub.discovery.records[names["registry"]].wants_network  # read, and not believed
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            refused = await Calls(ch, stranger.tool_id).attempt("connect", to_stranger.address)
            assert refused.is_error and "hello" not in refused.content[0].text.text
            reached = await Calls(ch, curated.tool_id).attempt("connect", to_curated.address)
            assert not reached.is_error and reached.content[0].text.text == "hello from the host"
            listed = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).ListServers(
                pb.ListServersRequest(), timeout=5
            )
            assert {s.name: s.network for s in listed.servers} == {
                names["registry"]: False,
                names["curated"]: True,
            }
        assert not to_stranger.connected.is_set() and to_curated.connected.is_set()


def _stat_of(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode


async def test_symlinks_left_in_work_before_the_first_sandboxed_start_are_handed_over_never_followed(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-planted-mcp")
    async with Hub(dcfg) as hub:
        tool_id = (await hub.discovery.install(name)).server.tool_id
        work = hub.discovery.installer.dir_for(tool_id) / "work"
    # Host files the sandbox uid must never own: a root file and a root directory with a file in it.
    secret = root / "host-secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o600)
    host_dir = root / "host-dir"
    host_dir.mkdir(mode=0o700)
    (host_dir / "inside.txt").write_text("inside")
    host = {
        p: (_stat_of(p), p.read_text() if p.is_file() else None)
        for p in (secret, host_dir, host_dir / "inside.txt")
    }
    # What a server that ran unsandboxed, as root, left behind: links to them, at the top and deeper.
    (work / "state").mkdir()
    links = [work / "to-secret", work / "to-dir", work / "state" / "to-secret"]
    for link, target in zip(links, (secret, host_dir, secret), strict=True):
        link.symlink_to(target)
    for p in (work, work / "state"):
        os.chown(p, 0, 0)

    async with Hub(dcfg) as hub:  # its first sandboxed start: the hub hands work/ to the sandbox uid
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            assert (await s.call("echo", text="started")).content[0].text.text == "started"
            through = await s.attempt("read", str(work / "to-secret"))
            assert through.is_error and "host secret" not in through.content[0].text.text
    assert {p: (_stat_of(p), p.read_text() if p.is_file() else None) for p in host} == host
    uid = dcfg.discovery.sandbox_uid
    assert all(link.lstat().st_uid == uid for link in links)  # the links themselves were handed over
    assert (work / "state").stat().st_uid == uid


@pytest.mark.parametrize("target", ["host-dir", "host-dir/inside.txt", "nowhere"])
async def test_a_work_dir_replaced_by_a_symlink_is_refused_with_the_reason_and_its_target_untouched(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path, target: str
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-swapped-mcp")
    async with Hub(dcfg) as hub:
        tool_id = (await hub.discovery.install(name)).server.tool_id
        work = hub.discovery.installer.dir_for(tool_id) / "work"
    host_dir = root / "host-dir"
    host_dir.mkdir(mode=0o700)
    (host_dir / "inside.txt").write_text("inside")
    before = (_stat_of(host_dir), _stat_of(host_dir / "inside.txt"))
    shutil.rmtree(work)
    work.symlink_to(root / target)  # what a server that ran unsandboxed could leave in its place

    async with Hub(dcfg) as hub:
        # nothing was chowned or chmodded through the link
        assert (_stat_of(host_dir), _stat_of(host_dir / "inside.txt")) == before
        runner = hub.discovery.runners[tool_id]
        assert runner.state == pb.SERVER_STATE_RESTARTING and runner.transport is not None
        assert "symbolic link" in runner.message and str(work) in runner.message, runner.message
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await Calls(ch, tool_id).call("echo", text="anyone?")
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sorted(p.name for p in host_dir.iterdir()) == ["inside.txt"]
    assert not (root / "nowhere").exists()
