"""The Tasks page with an LLM: a task submitted from the console runs on the reasoning runtime
(the real edge and hub, a scripted OpenAI-compatible endpoint); its steps show as they happen, then
its answer, trajectory and tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.common.config import Config
from services.hub.app import Hub
from tests.console.conftest import WAIT_MS, Edge, expect, serve_edge
from tests.runtime.fake_llm import FakeLLM, call, calls, say


@dataclass
class HeldLLM:
    fake: FakeLLM
    asked_again: asyncio.Event  # the task's first step is done: the LLM is asked for the next
    go_on: asyncio.Event  # set by the test: the LLM answers it


@pytest.fixture
async def llm() -> AsyncIterator[HeldLLM]:
    asked_again, go_on = asyncio.Event(), asyncio.Event()

    async def held(_body: dict[str, Any]) -> Any:
        asked_again.set()
        await go_on.wait()
        return say("2 + 40 is 42.")

    async with FakeLLM([calls(call("builtin__add", {"a": 2, "b": 40})), held]) as fake:
        yield HeldLLM(fake, asked_again, go_on)


@pytest.fixture
async def edge_with_tasks(cfg: Config, hub: Hub, llm: HeldLLM) -> AsyncIterator[Edge]:
    async with serve_edge(cfg, hub, (llm.fake.base_url, "scripted")) as edge:
        yield edge


async def test_a_task_submitted_from_the_console_shows_its_steps_live_then_its_answer_and_tokens(
    edge_with_tasks: Edge, open_console: Any, llm: HeldLLM
) -> None:
    console = await open_console(edge_with_tasks, "/ui/#/tasks")
    page = console.page
    follows: list[str] = []
    page.on("request", lambda r: follows.append(r.url) if r.url.endswith("/steps") else None)
    await page.get_by_role("textbox", name="Task").fill("What is 2 + 40? Use the add tool.")
    await page.get_by_role("button", name="Submit").click()

    # While the LLM is held on the second step, the first one's notes are on the page already.
    notes = page.locator("section.notes li")
    await expect(notes.filter(has_text='calls builtin__add {"a":2,"b":40}')).to_have_count(1, timeout=WAIT_MS)
    await expect(notes.filter(has_text="✓ builtin__add")).to_have_count(1, timeout=WAIT_MS)
    await expect(notes.filter(has_text="step 2")).to_have_count(1, timeout=WAIT_MS)
    assert llm.asked_again.is_set() and not llm.go_on.is_set()  # (the task is still running)
    await expect(page.locator(".result")).to_have_attribute("data-status", "running")
    await console.screenshot("task-running")
    llm.go_on.set()

    result = page.locator(".result")
    await expect(result).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await expect(result.get_by_role("region", name="Answer")).to_contain_text("2 + 40 is 42.")
    summary = result.locator("dl.summary")
    await expect(summary).to_contain_text("Steps2")
    await expect(summary).to_contain_text("Tokens30 (20 prompt, 10 completion)")
    await expect(summary).to_contain_text("Tool calls1")
    assert len(llm.fake.requests) == 2
    assert len(follows) == 1  # one stream carried every note: nothing polled

    # Its notes as it ran, then its trajectory step by step: the call, its arguments, result, tokens.
    await expect(notes.filter(has_text='calls builtin__add {"a":2,"b":40}')).to_have_count(1)
    await expect(notes.filter(has_text="finished: completed")).to_have_count(1)
    first = page.get_by_role("region", name="Step 1")
    await expect(first).to_contain_text("✓ builtin__add")
    await expect(first).to_contain_text("(builtin · add,")
    await expect(first.locator("pre.out").nth(0)).to_have_text('{\n  "a": 2,\n  "b": 40\n}')
    await expect(first).to_contain_text('"sum": 42')
    await expect(first.locator("h3")).to_contain_text("15 tokens (10 prompt, 5 completion)")
    await expect(page.get_by_role("region", name="Step 2")).to_contain_text("2 + 40 is 42.")
    await console.screenshot("task")
    assert await console.axe() == []
    console.done()
