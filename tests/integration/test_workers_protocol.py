"""Protocol v1 through the supervisor: the whole signalling-errors suite, with ``--workers 2``.

Every test of ``test_signalling_errors`` runs again here against a supervisor relaying to
two workers, so error codes, request ids, close codes (4401, 4429, 1009) and the "nothing
else changes" rule are proven to survive the relay unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.server import ServerProcess
from integration.test_signalling_errors import *  # noqa: F403  (re-run every test here)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("sfu-data")), ["--workers", "2"]).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the supervisor must exit cleanly:\n" + "".join(process.log_lines[-40:])
