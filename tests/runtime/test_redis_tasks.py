"""Tasks on a Redis Stream with one consumer group: the runtime workers of several nodes share one queue.

A real redis-server (tests/redis_server.py), real task services (the task routes on real aiohttp apps,
workers running the real runtime against the real hub + edge), a real `python -m edge.tasks_server`
process killed mid-task; the LLM is tests/runtime/fake_llm.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from edge import errors_http, tasks_routes
from edge.auth import AdminAuth
from services.common import config as config_mod
from services.common.config import Config
from services.runtime.task_backend import TaskBackend, backend_from_config
from services.runtime.task_workers import TaskService
from tests.conftest import REPO
from tests.helpers import crash_mid_task, deadline
from tests.runtime.conftest import Edge
from tests.runtime.fake_llm import FakeLLM, Hang, say
from tests.runtime.test_task_service import _runner, serve_tasks  # noqa: F401 (a fixture)

STREAM, GROUP = "toolscore:tasks", "runtime-workers"


def on_redis(cfg: Config, redis_server: Any, node: str, **runtime: Any) -> TaskBackend:
    """The task store of node `node` on the test's Redis, as `[runtime] task_backend = "redis"` builds it."""
    shared = config_mod.replace(
        cfg,
        runtime={"task_backend": "redis", "task_visibility_s": 1.0, **runtime},
        cluster={"redis_url": redis_server.url, "node_id": node, "follow_block_s": 0.5},
    )
    return backend_from_config(shared)


def held_until(release: asyncio.Event, answer: str) -> Callable[[dict[str, Any]], Any]:
    """A fake LLM reply that is held until `release` is set (the task runs as long as the test says)."""

    async def reply(body: dict[str, Any]) -> Any:
        await release.wait()
        return say(answer)

    return reply


async def test_a_task_submitted_through_one_node_is_run_by_another_nodes_worker_and_read_from_both(
    redis_server: Any,
    start_runtime: Any,
    serve_tasks: Any,  # noqa: F811
    cfg: Config,
) -> None:
    async with FakeLLM([Hang()]) as llm_a, FakeLLM([say("done on node B")]) as llm_b:
        a = TaskService(
            on_redis(cfg, redis_server, "node-a"), _runner(await start_runtime(llm_a)), concurrency=1
        )
        api_a = await serve_tasks(a)
        status, first = await api_a.post({"input": "keeps node A busy"})
        assert status == 202
        async with deadline(10, "node A's worker to start the first task"):
            await llm_a.received.wait()  # A's one worker is inside it: A can run nothing else now

        b = TaskService(on_redis(cfg, redis_server, "node-b"), _runner(await start_runtime(llm_b)))
        api_b = await serve_tasks(b)
        status, second = await api_a.post(
            {"input": "for whoever is free", "priority": 3, "context": {"k": 1}}
        )
        assert status == 202 and second["status"] == "queued"
        row = await b.wait_final(second["task_id"], 20)
        from_a, from_b = await api_a.get(second["task_id"]), await api_b.get(second["task_id"])
        first_from_b = await api_b.get(first["task_id"])

    assert row.status == "completed" and from_a == from_b
    status, got = from_a
    assert status == 200 and got["status"] == "completed" and got["attempts"] == 1
    assert got["result"]["final_answer"] == "done on node B" and got["error"] is None
    assert (got["input"], got["priority"], got["context"], got["admin"]) == (
        "for whoever is free",
        3,
        {"k": 1},
        True,  # the test's apps have no admin token: every local caller is an admin
    )
    assert got["finished_at"] >= got["started_at"] >= got["created_at"]
    assert [r["messages"][1]["content"].split("\n")[0] for r in llm_b.requests] == ["for whoever is free"]
    assert len(llm_a.requests) == 1
    assert first_from_b[0] == 200 and first_from_b[1]["status"] == "running"


@pytest.mark.parametrize("max_attempts", [2, 1])
async def test_a_task_whose_worker_process_is_killed_is_reclaimed_by_another_node_and_retried_or_failed(
    redis_server: Any, start_runtime: Any, edge: Edge, cfg: Config, root: Path, max_attempts: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLSCORE_", "OPENAI_"))}
    async with FakeLLM([Hang()]) as llm:
        env.update(
            {
                "TOOLSCORE_PATHS__ROOT": str(root / "doomed"),
                "TOOLSCORE_RUNTIME__EDGE_URL": edge.url,
                "TOOLSCORE_RUNTIME__MAX_ATTEMPTS": str(max_attempts),
                "TOOLSCORE_RUNTIME__CONCURRENCY": "1",
                "TOOLSCORE_RUNTIME__TASK_BACKEND": "redis",
                "TOOLSCORE_RUNTIME__TASK_VISIBILITY_S": "1",
                "TOOLSCORE_CLUSTER__REDIS_URL": redis_server.url,
                "TOOLSCORE_CLUSTER__NODE_ID": "doomed-node",
                "TOOLSCORE_CLUSTER__FOLLOW_BLOCK_S": "0.5",
                "OPENAI_BASE_URL": llm.base_url,
                "TOOLSCORE_LOG__LEVEL": "WARNING",
            }
        )
        task_id = await crash_mid_task(env, REPO, llm.received)  # the worker was inside the task

    async with FakeLLM([say("finished after the crash")]) as llm2:
        host = await start_runtime(llm2)
        store = on_redis(cfg, redis_server, "survivor")
        async with TaskService(store, _runner(host), concurrency=1, max_attempts=max_attempts) as s:
            row = await s.wait_final(task_id, 30)
    if max_attempts == 2:
        assert row.status == "completed" and row.attempts == 2 and row.error is None
        assert row.result and row.result["final_answer"] == "finished after the crash"
    else:
        assert row.status == "failed" and row.attempts == 1 and not llm2.requests
        assert row.error and row.error["type"] == "Interrupted"
        assert "doomed-node/worker-0" in row.error["message"] and "not retried" in row.error["message"]
    with redis_server.client() as r:  # acknowledged and deleted: nothing left pending or queued
        assert r.xpending(STREAM, GROUP)["pending"] == 0 and r.xlen(STREAM) == 0


async def test_a_task_running_longer_than_the_visibility_timeout_keeps_its_claim_while_its_worker_lives(
    redis_server: Any,
    start_runtime: Any,
    serve_tasks: Any,  # noqa: F811
    cfg: Config,
) -> None:
    release = asyncio.Event()
    async with FakeLLM([held_until(release, "slow but mine")]) as llm_a, FakeLLM([say("stolen")]) as llm_b:
        # A visibility timeout of 2s, renewed every 2/3s: a loaded machine's pauses stay well below it.
        store_a = on_redis(cfg, redis_server, "node-a", task_visibility_s=2.0)
        a = TaskService(store_a, _runner(await start_runtime(llm_a, timeout_s=30.0)))
        api_a = await serve_tasks(a)
        task_id = (await api_a.post({"input": "a long task"}))[1]["task_id"]
        async with deadline(10, "node A's worker to start the task"):
            await llm_a.received.wait()
        b = TaskService(
            on_redis(cfg, redis_server, "node-b", task_visibility_s=2.0), _runner(await start_runtime(llm_b))
        )
        await serve_tasks(b)
        # Node B's idle workers look for abandoned claims every 0.5s: for two and a half visibility
        # timeouts, none of them may take a task whose worker renews its claim.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(llm_b.received.wait(), 5.0)
        with redis_server.client() as r:
            (pending,) = r.xpending_range(STREAM, GROUP, "-", "+", 10)
        release.set()
        row = await a.wait_final(task_id, 20)
    assert pending["consumer"] == b"node-a/worker-0" and pending["times_delivered"] == 1
    assert row.status == "completed" and row.attempts == 1
    assert row.result and row.result["final_answer"] == "slow but mine"
    assert not llm_b.requests


async def test_a_worker_that_lost_its_claim_stops_the_task_and_records_nothing(
    redis_server: Any, start_runtime: Any, cfg: Config
) -> None:
    never = asyncio.Event()
    async with FakeLLM([held_until(never, "too late"), say("next one")]) as llm:
        store = on_redis(cfg, redis_server, "node-a")
        async with TaskService(store, _runner(await start_runtime(llm)), concurrency=1) as a:
            first = await a.submit("a task another worker will take")
            async with deadline(10, "the worker to start the task"):
                await llm.received.wait()
            with redis_server.client() as r:  # another node's worker takes the entry over
                (pending,) = r.xpending_range(STREAM, GROUP, "-", "+", 10)
                r.xclaim(STREAM, GROUP, "node-b/worker-0", 0, [pending["message_id"]], justid=True)
            # The only worker of node A is free again only if it gave the first task up.
            second = await a.submit("the next task")
            done = await a.wait_final(second.task_id, 20)
            left = await a.get(first.task_id)
    assert done.status == "completed" and done.result and done.result["final_answer"] == "next one"
    assert left and left.status == "running" and left.finished_at is None and left.result is None


async def test_a_finished_tasks_record_expires_after_the_configured_ttl(
    redis_server: Any,
    start_runtime: Any,
    serve_tasks: Any,  # noqa: F811
    cfg: Config,
) -> None:
    release = asyncio.Event()
    watcher = aioredis.Redis(unix_socket_path=str(redis_server.socket), socket_timeout=10)
    await watcher.config_set("notify-keyspace-events", "Ex")
    expired = watcher.pubsub()
    await expired.subscribe("__keyevent@0__:expired")
    try:
        async with FakeLLM([held_until(release, "short-lived")]) as llm:
            store = on_redis(cfg, redis_server, "node-a", task_ttl_s=0.5)
            service = TaskService(store, _runner(await start_runtime(llm)))
            api = await serve_tasks(service)
            task_id = (await api.post({"input": "soon forgotten"}))[1]["task_id"]
            key = f"toolscore:task:{task_id}"
            async with deadline(10, "the worker to start the task"):
                await llm.received.wait()
            running_ttl = await watcher.pttl(key)
            release.set()
            await service.wait_final(task_id, 20)
            finished_ttl = await watcher.pttl(key)
            async with deadline(10, f"the expiry of {key}"):
                while True:  # each get_message waits for the next event (up to its timeout)
                    msg = await expired.get_message(ignore_subscribe_messages=True, timeout=10)
                    if msg is not None and msg["data"] == key.encode():
                        break
            status, got = await api.get(task_id)
    finally:
        await expired.aclose()
        await watcher.aclose()
    assert running_ttl == -1  # no expiry while it is queued or running
    assert finished_ttl == -2 or 0 < finished_ttl <= 500
    assert status == 404 and got["reason"] == "TASK_NOT_FOUND"


@pytest.mark.parametrize(
    "saved", [True, False], ids=["redis-restarted-with-its-data", "redis-came-back-empty"]
)
async def test_with_redis_down_submit_and_get_answer_503_and_the_workers_go_on_once_it_is_back(
    redis_server: Any,
    start_runtime: Any,
    serve_tasks: Any,  # noqa: F811
    cfg: Config,
    saved: bool,
) -> None:
    async with FakeLLM([say("before"), say("after")]) as llm:
        service = TaskService(on_redis(cfg, redis_server, "node-a"), _runner(await start_runtime(llm)))
        api = await serve_tasks(service)
        before = (await api.post({"input": "before the outage"}))[1]["task_id"]
        await service.wait_final(before, 20)

        redis_server.stop(save=saved)
        refused = await api.post({"input": "during the outage"})
        unread = await api.get(before)
        await redis_server.start()

        status, after = await api.post({"input": "after the outage"})
        assert status == 202
        row = await service.wait_final(after["task_id"], 30)
        again = await api.get(before)

    for status, got in (refused, unread):
        assert (status, got["code"], got["reason"], got["success"]) == (
            503,
            "UNAVAILABLE",
            "TASK_STORE_UNAVAILABLE",
            False,
        )
        assert "the task store (Redis at" in got["message"] and "unreachable" in got["message"]
    assert row.status == "completed" and row.result and row.result["final_answer"] == "after"
    if saved:
        assert again[0] == 200 and again[1]["status"] == "completed"
    else:
        assert again[0] == 404 and again[1]["reason"] == "TASK_NOT_FOUND"


async def test_a_task_on_redis_records_its_submitters_admin_flag_and_never_the_token(
    redis_server: Any, start_runtime: Any, cfg: Config
) -> None:
    token = "s3cret-token-for-redis-tasks"
    async with FakeLLM([say("one"), say("two")]) as llm:
        service = TaskService(on_redis(cfg, redis_server, "node-a"), _runner(await start_runtime(llm)))
        app = web.Application(middlewares=[errors_http.middleware])
        tasks_routes.add_routes(app, service, AdminAuth(token))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = "http://{}:{}/api/v1/tasks".format(*runner.addresses[0][:2])
            got = []
            async with aiohttp.ClientSession() as http, asyncio.timeout(30):
                for headers in ({}, {"Authorization": f"Bearer {token}"}):
                    async with http.post(url, json={"input": "who am I"}, headers=headers) as r:
                        task_id = (await r.json())["task_id"]
                    await service.wait_final(task_id, 20)
                    async with http.get(f"{url}/{task_id}") as r:
                        got.append(await r.json())
        finally:
            await runner.cleanup()
    assert [(g["status"], g["admin"]) for g in got] == [("completed", False), ("completed", True)]
    with redis_server.client() as r:  # every key and value the task store wrote
        stored = []
        for key in r.scan_iter("*"):  # the store writes hashes (tasks) and one stream (the queue)
            stored.append(repr((key, r.hgetall(key) if r.type(key) == b"hash" else r.xrange(key))))
    text = "\n".join(stored)
    assert token not in text and got[0]["task_id"] in text and "who am I" in text


def test_the_redis_task_backend_without_a_redis_url_or_an_unknown_backend_is_refused_at_load() -> None:
    with pytest.raises(config_mod.ConfigError, match=r'task_backend "redis" needs cluster\.redis_url'):
        config_mod.load(env={"TOOLSCORE_RUNTIME__TASK_BACKEND": "redis"})
    with pytest.raises(config_mod.ConfigError, match=r"runtime\.task_backend: 'kafka'"):
        config_mod.load(env={"TOOLSCORE_RUNTIME__TASK_BACKEND": "kafka"})
    with pytest.raises(config_mod.ConfigError, match=r"task_visibility_s must be > 0"):
        config_mod.load(env={"TOOLSCORE_RUNTIME__TASK_VISIBILITY_S": "0"})
    cfg = config_mod.load(
        env={"TOOLSCORE_RUNTIME__TASK_BACKEND": "redis", "TOOLSCORE_CLUSTER__REDIS_URL": "unix:///r.sock"}
    )
    assert cfg.runtime.task_backend == "redis"
