"""E2E fixtures: the real server process and Debian's Chromium driven by Playwright.

See tests/helpers/browser.py for how Chromium is launched. Screenshots and the measured figures
go to ``artifacts/e2e/`` (gitignored); the figures are also printed at the end of the run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers.browser import ARTIFACTS, CHROMIUM, MEASURED, chromium_args, launch
from helpers.server import ServerProcess
from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEASURED:
        return
    terminalreporter.section("e2e measurements")
    for key, value in MEASURED.items():
        terminalreporter.write_line(f"{key}: {value}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "measurements.json").write_text(json.dumps(MEASURED, indent=2) + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed (scripts/test installs Debian's chromium)")
    process = ServerProcess(Path(tmp_path_factory.mktemp("sfu-data"))).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the server must exit cleanly on SIGTERM:\n" + "".join(
            process.log_lines[-40:]
        )


# One Playwright driver and one browser per test module (on the module's event loop: tests are
# marked `asyncio(loop_scope="module")`); every test gets fresh browser contexts.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    browser = await launch(playwright, chromium_args())
    try:
        yield browser
    finally:
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def contexts(browser: Browser) -> AsyncIterator[Callable[..., Awaitable[BrowserContext]]]:
    """Make isolated browser contexts (an agent, a customer…), closed after the test."""
    made: list[BrowserContext] = []

    async def make(**options: Any) -> BrowserContext:
        context = await browser.new_context(**options)
        made.append(context)
        return context

    yield make
    for context in made:
        await context.close()
