"""Integration fixtures: a real server process and aiortc peers on loopback only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> None:
    """Client peers in this process gather ICE candidates on 127.0.0.1 only."""
    bridge.restrict_host_addresses(["127.0.0.1"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("sfu-data"))).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the server must exit cleanly on SIGTERM:\n" + "".join(
            process.log_lines[-40:]
        )


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own (scripts/test installs it)."""
    if not RedisServer.available():
        pytest.fail("redis-server is not installed: scripts/test installs it")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
