"""Webhook signing and verification, the bounded queue, retries against a local receiver."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from aiohttp import web

from sfu.webhooks import MemoryQueue, WebhookError, Webhooks, sign_webhook, verify_webhook

KEY = "webhook-key-for-tests-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def test_signed_body_verifies() -> None:
    body = b'{"id":"EV_1","event":"room_started","room":{"id":"r"}}'
    token = sign_webhook(body, KEY, issuer="oktorus-sfu")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["typ"] == "sfu-webhook+jwt"
    claims = jwt.decode(token, KEY, algorithms=["HS256"])
    assert claims["sha256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert verify_webhook(body, token, KEY, issuer="oktorus-sfu")["event"] == "room_started"
    assert verify_webhook(body, f"Bearer {token}", KEY)["id"] == "EV_1"


UNSIGNED = jwt.encode(
    {"sha256": "x", "iat": 1, "exp": 2},
    key=None,  # type: ignore[arg-type]
    algorithm="none",
    headers={"typ": "sfu-webhook+jwt"},
)


def test_tampering_is_detected() -> None:
    body = b'{"id":"EV_1","event":"room_started"}'
    token = sign_webhook(body, KEY, issuer="oktorus-sfu")
    cases: list[tuple[bytes, str, str, str]] = [
        (body.replace(b"started", b"finished"), token, KEY, "does not match"),
        (body, token, "another-key-0123456789abcdef012345", "invalid token"),
        (body, "", KEY, "no token"),
        (body, "not.a.jwt", KEY, "malformed"),
        (body, jwt.encode({"sha256": "x"}, KEY, algorithm="HS256"), KEY, "typ"),
        (body, UNSIGNED, KEY, "invalid token"),
        (body, sign_webhook(body, KEY, issuer="x", now=time.time() - 3600), KEY, "expired"),
        (b"[]", sign_webhook(b"[]", KEY, issuer="x"), KEY, "not a webhook event"),
    ]  # fmt: skip
    for data, auth, key, fragment in cases:
        with pytest.raises(WebhookError) as caught:
            verify_webhook(data, auth, key)
        assert fragment in str(caught.value), (fragment, caught.value)
    with pytest.raises(WebhookError, match="invalid token"):
        verify_webhook(body, token, KEY, issuer="someone-else")


@pytest.mark.asyncio
async def test_memory_queue_is_bounded_oldest_dropped() -> None:
    queue = MemoryQueue(limit=3)
    for i in range(5):
        await queue.put(str(i).encode(), created_at=float(i))
    assert queue.depth() == 3 and queue.dropped == 2
    first = await queue.get()
    assert first.body == b"2"
    await queue.ack(first)
    assert queue.depth() == 2


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, object]], list[Handler]]]:
    """A local receiver; the test can swap its behaviour (500, hang) by pushing handlers."""
    received: list[dict[str, object]] = []
    behaviours: list[Handler] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if behaviours:
            return await behaviours.pop(0)(request)
        body = await request.read()
        received.append(verify_webhook(body, request.headers["Authorization"], KEY))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)  # do not wait for a hanging handler
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/hook", received, behaviours
    await runner.cleanup()


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_failures_are_retried_and_a_hanging_receiver_times_out(
    receiver: tuple[str, list[dict[str, object]], list[Handler]],
) -> None:
    url, received, behaviours = receiver

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=204)

    behaviours += [fail, hang]
    hooks = Webhooks([url], KEY, issuer="t", timeout_s=0.3, retry_max_s=0.2)
    await hooks.start()
    try:
        started = time.monotonic()
        hooks.emit("participant_joined", room={"id": "r"}, participant={"id": "PA_1"})
        # The receiver may hold the event a moment before the sender reads the 204.
        await _until(lambda: len(received) == 1 and hooks.stats.delivered == 1)
        assert time.monotonic() - started < 5
        assert received[0]["event"] == "participant_joined"
        assert hooks.stats.failed_attempts == 2
        assert hooks.depth == 0
    finally:
        await hooks.close(flush_timeout_s=1)


@pytest.mark.asyncio
async def test_emit_never_blocks_and_is_bounded_while_the_receiver_is_down() -> None:
    hooks = Webhooks(["http://127.0.0.1:9/unreachable"], KEY, issuer="t", queue_size=100,
                     retry_max_s=0.1)  # fmt: skip
    await hooks.start()
    try:
        started = time.perf_counter()
        for i in range(1000):
            hooks.emit("track_published", room={"id": "r"}, track={"id": f"TR_{i}"})
        assert time.perf_counter() - started < 0.5  # 1000 events: no I/O on the caller
        await asyncio.sleep(0.3)
        assert hooks.depth <= 100 + 4  # the bound (plus what workers hold)
        assert hooks.stats.dropped >= 1000 - 104
    finally:
        await hooks.close(flush_timeout_s=0.2)


def test_cli_verify(tmp_path: Path) -> None:
    body = json.dumps({"id": "EV_2", "event": "room_finished", "room": {"id": "r"}}).encode()
    (tmp_path / "body.json").write_bytes(body)
    token = sign_webhook(body, KEY, issuer="oktorus-sfu")
    command = [sys.executable, "-m", "sfu", "webhook", "verify", "--authorization", token,
               "--body", str(tmp_path / "body.json")]  # fmt: skip
    env = {"SFU_WEBHOOK_KEY": KEY, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    ok = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["event"] == "room_finished"
    (tmp_path / "body.json").write_bytes(body + b" ")
    bad = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert bad.returncode == 1
    assert "not verified: the body does not match" in bad.stderr
    piped = subprocess.run(
        [*command[:-2]], input=body.decode(), capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
