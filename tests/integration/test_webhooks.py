"""Webhooks to a real receiver: signed, at least once, unaffected by a failing receiver,
kept in Redis (Streams) across a server restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from helpers.media import FrameCounterTrack
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess
from helpers.webhook_receiver import WebhookReceiver

from signaling.client import Participant, SignalClient

pytestmark = pytest.mark.integration

KEY = "integration-webhook-key-0123456789abcdef"
FAST_RETRY = ["--webhook-timeout", "0.5", "--webhook-retry-max", "0.5"]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = await WebhookReceiver(KEY).start()
    yield hook
    await hook.stop()


def _server(tmp: Path, receiver: WebhookReceiver, *extra: str) -> ServerProcess:
    return ServerProcess(
        tmp, ["--webhook-url", receiver.url, "--webhook-key", KEY, *FAST_RETRY, *extra]
    )


@pytest.mark.asyncio
async def test_a_call_produces_signed_events_in_order(
    receiver: WebhookReceiver, tmp_path: Path, room: str
) -> None:
    process = _server(tmp_path, receiver).start()
    try:
        alice = await Participant.join(
            process.url, process.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
        )
        bob = await Participant.join(process.url, process.token(room, "bob"), drain=True)
        await bob.wait_remote_tracks(1, timeout=10)
        await alice.close()
        await bob.close()
        await receiver.wait_for(8, timeout=10)
    finally:
        assert process.stop() == 0
    # Several delivery workers per URL: arrival order is not emission order (documented);
    # receivers order by created_at.
    events = sorted(receiver.events(), key=lambda e: float(e["created_at"]))
    names = [e["event"] for e in events]
    assert sorted(names) == sorted([
        "room_started", "participant_joined", "track_published", "participant_joined",
        "track_unpublished", "participant_left", "participant_left", "room_finished",
    ])  # fmt: skip
    assert names[0] == "room_started" and names[-1] == "room_finished"
    assert names.index("track_published") < names.index("track_unpublished")
    assert receiver.rejected == []  # every request carried a valid signature
    joined = receiver.events("participant_joined")
    assert joined[0]["participant"]["identity"] == "alice"
    assert all(e["room"] == {"id": room} for e in receiver.events())
    assert len(set(receiver.ids)) == len(receiver.ids)
    assert not any(KEY in line for line in process.log_lines)


@pytest.mark.asyncio
async def test_failing_hanging_and_absent_receivers_lose_nothing_and_slow_nothing(
    receiver: WebhookReceiver, tmp_path: Path, room: str
) -> None:
    process = _server(tmp_path, receiver).start()
    try:
        expected = 0
        for mode in ("error", "hang", "down"):
            if mode == "down":
                await receiver.stop()
            else:
                receiver.mode = mode
            # Signalling stays fast while webhooks fail: join → joined → leave, twice.
            for i in range(2):
                started = time.perf_counter()
                signal = await SignalClient.connect(process.url)
                reply = await signal.request(
                    {"type": "join", "token": process.token(room, f"{mode}{i}")}
                )
                assert reply["type"] == "joined"
                assert time.perf_counter() - started < 1.0
                await signal.close()
                expected += 4  # room_started, joined, left, room_finished
            await asyncio.sleep(1.0)
            receiver.mode = "ok"
            if mode == "down":
                await receiver.start()
        await receiver.wait_for(expected, timeout=15)
        assert len(set(receiver.ids)) == expected  # nothing lost (duplicates allowed)
        assert receiver.rejected == []
        metrics = process.metrics()
        assert metrics['sfu_webhook_deliveries_total{result="failed_attempt"}'] > 0
        assert metrics['sfu_webhook_deliveries_total{result="dropped"}'] == 0
    finally:
        assert process.stop() == 0


@pytest.mark.asyncio
async def test_redis_keeps_undelivered_events_across_a_restart(
    redis_server: RedisServer, tmp_path: Path, room: str
) -> None:
    receiver = WebhookReceiver(KEY)  # not started: down while the first server runs
    args = ["--redis", redis_server.url]
    first = _server(tmp_path / "data", receiver, *args).start()
    try:
        for i in range(3):
            signal = await SignalClient.connect(first.url)
            await signal.request({"type": "join", "token": first.token(room, f"p{i}")})
            await signal.close()
        await asyncio.sleep(0.5)
    finally:
        assert first.stop() == 0  # undelivered events stay in the Redis stream

    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        keys = [k async for k in client.scan_iter("sfu:webhooks:*")]
        assert len(keys) == 1 and await client.xlen(keys[0]) == 12
    finally:
        await client.aclose()

    await receiver.start()
    second = _server(tmp_path / "data", receiver, *args).start()
    try:
        await receiver.wait_for(12, timeout=15)
        assert [e["event"] for e in receiver.events()][:4] == [
            "room_started",
            "participant_joined",
            "participant_left",
            "room_finished",
        ]
        assert receiver.rejected == []
    finally:
        assert second.stop() == 0
        await receiver.stop()
