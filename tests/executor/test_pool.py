"""The warm pool's one-call run (`WarmPool.run`) on real sandboxes, without a hub or a server around it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.executor.interpreter import Worker
from services.executor.pool import WarmPool
from services.executor.sandbox import Sandbox
from tests.executor.test_sandbox_spawn import XC, cgroup_set, env_dir, machine  # noqa: F401 (env_dir: a fixture)
from tests.helpers import deadline


async def test_an_interpreter_that_died_waiting_in_the_pool_is_freed_and_the_call_runs_on_the_next(
    env_dir: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups:
        sandbox = Sandbox(XC, env_dir, {}, caps, groups)
        started: list[Worker] = []

        async def spawn() -> Worker:
            worker = await sandbox.spawn()
            started.append(worker)
            return worker

        pool = WarmPool(spawn, 1, 1)
        given_back: list[Callable[[], None]] = []
        pool.start()
        try:
            async with deadline(30, "the pool to fill"):
                await pool.wait_full()
            dead = started[0]
            assert dead.group is not None
            dead.group.kill_all()  # everything in the sandbox, as the OOM killer would; bwrap then exits
            async with deadline(10, "the sandbox to end"):
                await dead.proc.wait()
            async with deadline(30, "the call"):
                result = await pool.run("print(6 * 7)", 10, XC, 30, given_back.append)
            assert (result.stdout, result.return_code, result.worker_lost) == ("42\n", 0, False)
            assert dead.calls == 0 and started[1].calls == 1  # nothing was sent to the dead one
            assert len(given_back) == 1  # the worker that ran it, handed back for after the reply
        finally:
            for give_back in given_back:
                give_back()
            await pool.close()
