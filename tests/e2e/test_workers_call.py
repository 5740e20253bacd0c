"""The browser call again, through ``serve --workers 2``: real Chromium pages, the console,
the invite link, media both ways, a dropped signalling socket and leaving, all through the
supervisor's one port to the room's home worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.test_call import Contexts
from e2e.test_call import test_agent_and_customer_talk as talk
from helpers.browser import CHROMIUM, MEASURED
from helpers.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed (scripts/test installs Debian's chromium)")
    process = ServerProcess(Path(tmp_path_factory.mktemp("sfu-data")), ["--workers", "2"]).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the supervisor must exit cleanly:\n" + "".join(process.log_lines[-40:])


async def test_agent_and_customer_talk_through_workers(
    server: ServerProcess, contexts: Contexts
) -> None:
    measured = dict(MEASURED)  # the single-process run's figures stay the reported ones
    try:
        await talk(server, contexts)
    finally:
        MEASURED.clear()
        MEASURED.update(measured)
