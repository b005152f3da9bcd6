"""The console in headless Chromium against a real mesh: what an operator sees and does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from playwright import async_api as playwright_api

from services.toolkit import Action
from tests.console.conftest import TOKEN, WAIT_MS, Console, ConsoleMesh, expect
from tests.discovery.conftest import NS, PackageIndex, build_wheel, server_json, write_catalog
from tests.edge.conftest import ECHO_ACTIONS

DOT_PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
XSS = '<img src=x onerror="window.__pwned = 1">'
SCRIPTED_SVG = (  # an image artifact carrying a script
    '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
    "<script>document.documentElement.setAttribute('data-pwned', '1'); window.__pwned = 1</script>"
    '<rect width="8" height="8"/></svg>'
)


def tool_spec(tool_id: str, endpoint: str, description: str = "echoes text back") -> dict[str, Any]:
    return {
        "tool_id": tool_id,
        "name": f"{tool_id} tool",
        "description": description,
        "endpoint": endpoint,
        "tags": ["console-test"],
        "capabilities": [
            {
                "name": "echo",
                "description": "Echo text back",
                "input_schema": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "description": "what to echo"}},
                    "required": ["text"],
                },
            },
            {"name": "fail", "description": "Always fails", "input_schema": {"type": "object"}},
        ],
    }


async def register(cm: ConsoleMesh, start_tool_server: Any, tool_id: str, **kw: Any) -> None:
    _, endpoint = await start_tool_server({tool_id: ECHO_ACTIONS}, name=tool_id)
    status, body = await cm.rest("POST", "/api/v1/tools", tool_spec(tool_id, endpoint, **kw))
    assert status == 201, body


async def test_the_tools_page_shows_every_tool_and_one_another_client_registers_appears_live(
    console_mesh: ConsoleMesh, open_console: Any, start_tool_server: Any
) -> None:
    console = await open_console(console_mesh)
    page = console.page
    executor = page.locator('tr[data-tool-id="python-executor-mcp-server"]')
    await expect(executor).to_be_visible(timeout=WAIT_MS)
    await expect(executor.locator("td").first).to_have_text("grpc_server")
    await expect(page.locator("#live-status")).to_contain_text("live", timeout=WAIT_MS)

    await register(console_mesh, start_tool_server, "weather-echo")  # another client, no reload
    row = page.locator('tr[data-tool-id="weather-echo"]')
    await expect(row).to_be_visible(timeout=WAIT_MS)
    await expect(row).to_contain_text("echoes text back")

    await page.locator("#tool-search").fill("weather")
    await expect(page.locator("tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await page.locator("#tool-search").fill("")
    await console.screenshot("tools")
    assert await console.axe() == []
    console.done()


async def test_running_print_6_times_7_on_the_python_page_shows_42(python_page: Console) -> None:
    console = python_page
    page = console.page
    await page.get_by_label("Code").fill("print(6*7)\n6*7")
    await page.get_by_role("button", name="Run").click()
    await expect(page.locator("pre.stdout")).to_have_text("42\n", timeout=WAIT_MS)
    await expect(page.locator("pre.value")).to_have_text("42")
    await expect(page.locator(".result")).to_have_attribute("data-outcome", "ok")

    # An image the code writes comes back as an artifact and shows inline (a blob: URL the CSP allows).
    await page.get_by_label("Code").fill(
        f"import base64; open('dot.png', 'wb').write(base64.b64decode('{DOT_PNG}'))"
    )
    await page.get_by_role("button", name="Run").click()
    figure = page.get_by_role("img", name="figure 1")
    await expect(figure).to_be_visible(timeout=WAIT_MS)
    assert await figure.evaluate("img => img.complete && img.naturalWidth") == 1

    # A session keeps its state from one run to the next.
    await page.get_by_label("Session").select_option("new")
    await page.get_by_label("Code").fill("x = 20")
    await page.get_by_role("button", name="Run").click()
    await expect(page.locator(".result")).to_contain_text("session ", timeout=WAIT_MS)
    assert (await page.get_by_label("Session").input_value()) not in ("", "new")
    await page.get_by_label("Code").fill("x + 22")
    await page.get_by_role("button", name="Run").click()
    await expect(page.locator("pre.value")).to_have_text("42", timeout=WAIT_MS)
    await console.screenshot("python")
    assert await console.axe() == []
    console.done()


async def test_an_svg_artifact_with_a_script_shows_as_an_image_and_its_script_never_runs(
    python_page: Console,
) -> None:
    console = python_page
    page = console.page
    await page.get_by_label("Code").fill(f"open('x.svg', 'w').write({SCRIPTED_SVG!r})")
    await page.get_by_role("button", name="Run").click()
    figure = page.get_by_role("img", name="figure 1")
    await expect(figure).to_be_visible(timeout=WAIT_MS)
    assert await figure.evaluate("img => img.complete && img.naturalWidth") == 8
    assert await page.evaluate("() => window.__pwned") is None  # an <img> runs no script
    # Opened as a page of its own (Open image in new tab), a blob: SVG would run its script in the
    # console's origin, out of the CSP's reach: the URL is gone once the image has loaded.
    src = await figure.get_attribute("src")
    assert src and src.startswith("blob:")
    tab = await page.context.new_page()
    with pytest.raises(playwright_api.Error, match="ERR_"):  # (it opened, and the script ran)
        await tab.goto(src)
    await tab.close()
    await console.screenshot("svg-artifact")
    assert await console.axe() == []
    console.done()


async def test_a_call_with_bad_arguments_shows_a_clear_error(
    console_mesh: ConsoleMesh, open_console: Any, start_tool_server: Any
) -> None:
    await register(console_mesh, start_tool_server, "echo")
    console = await open_console(console_mesh, "/ui/#/tools/echo")
    page = console.page
    echo = page.locator('section[data-capability="echo"]')
    await expect(echo.get_by_label("text")).to_be_visible(timeout=WAIT_MS)

    await echo.get_by_role("button", name="Call echo").click()  # `text` is required: left empty
    result = echo.locator(".result")
    await expect(result).to_have_attribute("data-outcome", "error", timeout=WAIT_MS)
    await expect(result.locator(".outcome")).to_have_text("✗ Error: InvalidInput")
    await expect(result.locator(".error-message")).to_contain_text("'text' is a required property")

    await echo.get_by_label("text").fill("hello")
    await echo.get_by_role("button", name="Call echo").click()
    await expect(result).to_have_attribute("data-outcome", "ok", timeout=WAIT_MS)
    await expect(result).to_contain_text("hello")
    await expect(result.locator(".duration")).to_contain_text("tool:")
    await console.screenshot("bad-arguments")

    # A number field that holds no number is refused before anything is sent, naming the field.
    await page.goto(console_mesh.url + "/ui/#/tools/builtin")
    add = page.locator('section[data-capability="add"]')
    await add.locator("input[name=a]").fill("two")
    await add.locator("input[name=b]").fill("40")
    await add.get_by_role("button", name="Call add").click()
    await expect(add.locator(".result")).to_have_attribute("data-outcome", "refused", timeout=WAIT_MS)
    await expect(add.locator(".error-message")).to_have_text('a: "two" is not a number')
    await add.locator("input[name=a]").fill("2")
    await add.get_by_role("button", name="Call add").click()
    await expect(add.locator(".result")).to_have_attribute("data-outcome", "ok", timeout=WAIT_MS)
    await expect(add.locator(".result")).to_contain_text('"sum": 42')
    assert await console.axe() == []
    console.done()


async def test_a_tool_description_holding_html_renders_as_text(
    console_mesh: ConsoleMesh, open_console: Any, start_tool_server: Any
) -> None:
    await register(console_mesh, start_tool_server, "sneaky", description=XSS)
    for path in ("/ui/#/tools", "/ui/#/tools/sneaky"):
        # CSP bypassed: were the description parsed as HTML, its handler would run and show.
        console = await open_console(console_mesh, path, bypass_csp=True)
        page = console.page
        await expect(page.get_by_text(XSS).first).to_be_visible(timeout=WAIT_MS)
        assert await page.locator("img").count() == 0
        assert await page.evaluate("() => window.__pwned") is None
        await console.screenshot("html-as-text" + path.replace("/", "-").replace("#", ""))
        console.done()


async def test_the_browser_refuses_a_string_to_an_html_sink_on_every_console_page(
    console_mesh: ConsoleMesh, open_console: Any
) -> None:
    # Trusted Types with no policy (the CSP): were any script of the page, vendored ones included,
    # to give a tool's text to innerHTML, the browser would throw instead of parsing it.
    console = await open_console(console_mesh, "/ui/#/activity")
    page = console.page
    await expect(page.locator(".chart canvas")).to_have_count(2, timeout=WAIT_MS)  # uPlot drew
    refused = await page.evaluate(
        """() => {
            try { document.getElementById('main').innerHTML = '<img src=x onerror="window.__pwned = 1">'; }
            catch (err) { return err.name; }
            return 'parsed';
        }"""
    )
    assert refused == "TypeError"
    assert await page.locator("img").count() == 0
    await console.screenshot("html-sink-refused")
    console.done("TrustedHTML")


async def test_installing_a_catalog_server_shows_its_progress_to_the_end_and_needs_the_token(
    console_mesh: ConsoleMesh, open_console: Any, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    wheels = root / "wheels"
    wheels.mkdir()
    pkg_index.add_wheel(build_wheel(wheels, "ts-clock-mcp", "2.0.0"), "ts-clock-mcp")
    name = f"{NS}/clock"
    write_catalog(
        catalog_dir,
        server_json(
            name,
            "Converts times between time zones",
            "pypi",
            "ts-clock-mcp",
            "2.0.0",
            tools=[("convert_time", "Convert a time between time zones")],
        ),
    )
    console = await open_console(console_mesh, "/ui/#/servers")
    page = console.page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.get_by_label("Search the catalog").fill("convert time zones")
    await page.get_by_role("button", name="Search").click()
    candidate = page.locator(f'li[data-candidate="{name}"]')
    await expect(candidate).to_contain_text("Converts times between time zones", timeout=WAIT_MS)
    await expect(candidate).to_contain_text("score")

    await candidate.get_by_role("button", name="Install").click()  # no token in this tab yet
    await expect(page.locator(".install")).to_contain_text("needs the admin token", timeout=WAIT_MS)

    await page.get_by_label("Admin token").fill(TOKEN)
    await page.get_by_role("button", name="Keep for this tab").click()
    await expect(page.locator("#token-state")).to_have_text("kept in this tab")
    pkg_index.hold = asyncio.Event()  # the package's download waits: the install is seen under way
    listings = len([r for r in requests if r.endswith("/api/v1/tools/servers")])
    await candidate.get_by_role("button", name="Install").click()
    progress = page.locator(".install")
    steps = progress.locator("ol.steps li")
    await expect(steps.filter(has_text="pip install ts-clock-mcp==2.0.0")).to_have_count(1, timeout=WAIT_MS)
    await expect(progress.locator("progress")).to_have_attribute("value", "0.3")  # under way
    await expect(progress.locator(".state")).to_have_text("installing")
    assert not pkg_index.hold.is_set()  # (so POST /mcp/install has not answered yet)
    # Each step came on the events WebSocket, pushed as it happened; nothing polled the servers.
    pushed = [json.loads(f) for f in console.frames if '"install_progress"' in f]
    assert [m["message"] for m in pushed] == await steps.all_inner_texts(), pushed
    assert len([r for r in requests if r.endswith("/api/v1/tools/servers")]) <= listings + 1
    await console.screenshot("install-under-way")
    pkg_index.hold.set()
    await expect(progress.locator(".outcome")).to_contain_text(f"{name} is running", timeout=120_000)
    await expect(progress.locator("progress")).to_have_attribute("value", "1")
    await expect(steps.last).to_contain_text("running with")
    assert await steps.count() >= 4
    await expect(page.locator(f'tr[data-server="{name}"]')).to_contain_text("running", timeout=WAIT_MS)
    await expect(page.locator(f'tr[data-server="{name}"] .health')).to_have_text("healthy", timeout=WAIT_MS)
    await console.screenshot("install")
    assert await console.axe() == []

    assert TOKEN not in page.url
    assert TOKEN not in console_mesh.mesh.log()

    # The tail of the server's log (its stderr), live while shown.
    row = page.locator(f'tr[data-server="{name}"]')
    await row.get_by_role("button", name="Log").click()
    log_text = page.locator("section.log pre.log-text")
    await expect(log_text).to_be_visible(timeout=WAIT_MS)
    status, body = await console_mesh.rest(
        "POST",
        "/api/v1/tools/io.github.toolscore-tests.clock/call",
        {"action": "attempt", "arguments": {"what": "shout", "target": "1"}},
    )
    assert status == 200 and not body["is_error"], body
    await expect(log_text).to_contain_text("last words", timeout=WAIT_MS)
    await console.screenshot("server-log")

    await row.get_by_role("button", name="Uninstall").click()
    await row.get_by_role("button", name=f"Confirm uninstall of {name}").click()
    await expect(row).to_have_count(0, timeout=WAIT_MS)
    console.done("401")


async def test_the_activity_page_shows_calls_and_registry_events_as_they_happen(
    console_mesh: ConsoleMesh, open_console: Any, start_tool_server: Any
) -> None:
    console = await open_console(console_mesh, "/ui/#/activity")
    page = console.page
    await expect(page.locator("#live-status")).to_contain_text("live", timeout=WAIT_MS)
    await expect(page.locator(".chart canvas")).to_have_count(2, timeout=WAIT_MS)
    await register(console_mesh, start_tool_server, "echo")
    events = page.locator('section[aria-labelledby="h-events"] tbody tr')
    await expect(events.filter(has_text="tool_installed").filter(has_text="echo")).to_have_count(
        1, timeout=WAIT_MS
    )

    for text in ("one", "two"):
        status, body = await console_mesh.rest(
            "POST", "/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": text}}, admin=False
        )
        assert status == 200 and not body["is_error"], body
    await console_mesh.rest(
        "POST", "/api/v1/tools/echo/call", {"action": "fail", "arguments": {}}, admin=False
    )
    calls = page.locator('section[aria-labelledby="h-calls"] tbody tr')
    await expect(calls.filter(has_text="echo").filter(has_text="ok")).to_have_count(2, timeout=WAIT_MS)
    failed = calls.filter(has_text="tool_error")
    await expect(failed).to_have_count(1, timeout=WAIT_MS)
    await expect(failed).to_contain_text("fail")  # the action
    await expect(failed).to_contain_text("anonymous")  # the caller sent no admin token
    await console.screenshot("activity")
    assert await console.axe() == []
    console.done()


async def test_the_tasks_page_says_clearly_when_no_llm_is_configured(
    console_mesh: ConsoleMesh, open_console: Any
) -> None:
    console = await open_console(console_mesh, "/ui/#/tasks")
    page = console.page
    await page.get_by_role("textbox", name="Task").fill("What is 2**100?")
    await page.get_by_role("button", name="Submit").click()
    await expect(page.get_by_role("alert")).to_contain_text("no LLM endpoint is configured", timeout=WAIT_MS)
    await expect(page.get_by_role("alert")).to_contain_text("HTTP 503 NO_LLM_CONFIGURED")
    await console.screenshot("tasks")
    assert await console.axe() == []
    console.done("503")


async def test_a_schema_naming_its_properties_proto_and_constructor_gets_a_form_that_sends_them_as_arguments(
    console_mesh: ConsoleMesh, open_console: Any, start_tool_server: Any
) -> None:
    # A hostile tool's schema: its property names are the keys the form's arguments object is built
    # with. On a plain object, `__proto__` would swap the object's prototype instead of being sent.
    async def echo_arguments(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"received": args}

    tools = {"hostile": [Action("echo_args", "", echo_arguments)]}
    _, endpoint = await start_tool_server(tools, name="hostile")
    spec = {
        "tool_id": "hostile",
        "endpoint": endpoint,
        "capabilities": [
            {
                "name": "echo_args",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "__proto__": {"type": "string", "description": "not a prototype"},
                        "constructor": {"type": "string"},
                        "toString": {"type": "object"},
                    },
                },
            }
        ],
    }
    status, body = await console_mesh.rest("POST", "/api/v1/tools", spec)
    assert status == 201, body
    console = await open_console(console_mesh, "/ui/#/tools/hostile")
    page = console.page
    cap = page.locator('section[data-capability="echo_args"]')
    await cap.locator('input[name="__proto__"]').fill("polluted")
    await cap.locator('input[name="constructor"]').fill("Object?")
    await cap.locator('textarea[name="toString"]').fill('{"__proto__": {"isAdmin": true}}')
    await cap.locator('textarea[name="more arguments"]').fill('{"__proto__": {"more": 1}, "plain": 2}')
    await cap.get_by_role("button", name="Call echo_args").click()
    result = cap.locator(".result")
    await expect(result).to_have_attribute("data-outcome", "ok", timeout=WAIT_MS)
    received = json.loads(await result.locator("pre.out").first.inner_text())["received"]
    assert received == {
        "__proto__": "polluted",
        "constructor": "Object?",
        "toString": {"__proto__": {"isAdmin": True}},
        "plain": 2,  # and "more arguments"' own `__proto__`, overwritten by the field's
    }, received
    assert await page.evaluate("() => ({}).isAdmin === undefined && ({}).more === undefined")
    await console.screenshot("hostile-schema")
    assert await console.axe() == []
    console.done()
