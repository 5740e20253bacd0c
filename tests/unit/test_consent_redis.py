"""Revocations and the ledger on a real redis-server (127.0.0.1, a free port, no persistence)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from helpers.redis_server import RedisServer

from consent.ledger import LedgerEntry, LedgerRecord, canonical_json
from consent.ledger_redis import RedisLedger
from consent.revocation import RedisRevocationStore, RevocationUnavailable

assert shutil.which("redis-server"), "redis-server is missing: scripts/test installs it"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- revocation


async def test_revocation_reaches_every_node_within_500_ms(redis_server: RedisServer) -> None:
    node_a = RedisRevocationStore.from_url(redis_server.url)
    node_b = RedisRevocationStore.from_url(redis_server.url)
    heard: asyncio.Queue[tuple[str | None, float]] = asyncio.Queue()
    node_b.subscribe(lambda jti: heard.put_nowait((jti, time.monotonic())))
    await node_b.start()
    try:
        assert not await node_b.is_revoked("jti-1")
        started = time.monotonic()
        await node_a.revoke("jti-1", time.time() + 600)
        jti, at = await asyncio.wait_for(heard.get(), timeout=2)
        assert jti == "jti-1"
        assert at - started < 0.5
        assert await node_b.is_revoked("jti-1")
        assert not await node_b.is_revoked("jti-2")
    finally:
        await node_a.close()
        await node_b.close()


async def test_revocation_expires_with_the_token(client: aioredis.Redis) -> None:
    store = RedisRevocationStore(client, prefix="t:")
    await store.revoke("old", time.time() - 10)  # already expired: kept an hour for skew
    ttl = await client.ttl("t:old")
    assert 3000 < ttl <= 3600
    assert await store.is_revoked("old")


async def test_redis_going_away_fails_closed_and_resubscribes(tmp_path: Path) -> None:
    first = RedisServer(tmp_path / "first").start()
    restarted: RedisServer | None = None
    store = RedisRevocationStore.from_url(first.url, timeout_s=0.5)
    heard: asyncio.Queue[str | None] = asyncio.Queue()
    store.subscribe(heard.put_nowait)
    try:
        await store.start()
        await store.revoke("a", time.time() + 600)
        assert await asyncio.wait_for(heard.get(), timeout=2) == "a"
        first.stop()
        with pytest.raises(RevocationUnavailable):
            await store.is_revoked("a")
        with pytest.raises(RevocationUnavailable):
            await store.revoke("b", time.time() + 600)
        # Back on the same port, but empty: the revocations were missed.
        restarted = RedisServer(tmp_path / "again", first.port).start()
        # the listener reconnects and tells subscribers to re-check everything (None)
        assert await asyncio.wait_for(heard.get(), timeout=10) is None
    finally:
        await store.close()
        first.stop()
        if restarted is not None:
            restarted.stop()


# --------------------------------------------------------------------------- ledger


def entry(subject: str, n: int) -> LedgerEntry:
    return LedgerEntry(
        kind="consent.granted",
        room="r",
        subject=subject,
        jti=f"j{n}",
        scope=frozenset({"audio"}),
        details={"n": n},
    )


async def fill(ledger: RedisLedger, count: int = 5) -> list[LedgerRecord]:
    return [await ledger.append(entry("alice" if i % 2 == 0 else "bob", i)) for i in range(count)]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def stream_entries(client: aioredis.Redis) -> list[tuple[str, dict[str, str]]]:
    """The ledger stream's entries as (id, fields), text only."""
    return [
        (_text(entry_id), {_text(k): _text(v) for k, v in (fields or {}).items()})
        for entry_id, fields in (await client.xrange("{sfu:ledger}") or [])
    ]


async def rewrite(client: aioredis.Redis, bodies: dict[int, tuple[str, str]]) -> None:
    """Rebuild the stream with some entries' (body, hash) replaced: editing, as Redis allows."""
    entries = await stream_entries(client)
    await client.delete("{sfu:ledger}")
    for entry_id, fields in entries:
        seq = int(entry_id.split("-")[0])
        body, hash_ = bodies.get(seq, (fields["body"], fields["hash"]))
        await client.xadd(
            "{sfu:ledger}", {"subject": fields["subject"], "body": body, "hash": hash_}, id=entry_id
        )


async def test_redis_ledger_chains_and_verifies(client: aioredis.Redis) -> None:
    ledger = RedisLedger(client)
    records = await fill(ledger)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert await ledger.records() == records
    assert [r.seq for r in await ledger.records_for_subject("bob")] == [2, 4]
    assert await ledger.head() == (5, records[-1].hash)
    result = await ledger.verify()
    assert result.ok and result.count == 5


async def test_redis_ledger_concurrent_nodes_build_one_chain(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    other = aioredis.Redis.from_url(redis_server.url)
    try:
        node_a, node_b = RedisLedger(client), RedisLedger(other)
        await asyncio.gather(
            *(node.append(entry("x", i)) for i in range(20) for node in (node_a, node_b))
        )
        result = await node_a.verify()
        assert result.ok and result.count == 40
    finally:
        await other.aclose()


async def test_redis_ledger_deleted_entry_is_found(client: aioredis.Redis) -> None:
    ledger = RedisLedger(client)
    await fill(ledger)
    await client.xdel("{sfu:ledger}", "3-0")
    result = await ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in result.reason


async def test_redis_ledger_deleted_tail_is_found(client: aioredis.Redis) -> None:
    ledger = RedisLedger(client)
    await fill(ledger)
    await client.xdel("{sfu:ledger}", "5-0")
    result = await ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "missing at the end" in result.reason


async def test_redis_ledger_edited_entry_is_found(client: aioredis.Redis) -> None:
    ledger = RedisLedger(client)
    records = await fill(ledger)
    body = records[1].body()
    body["scope"] = ["audio", "video"]
    await rewrite(client, {2: (canonical_json(body), records[1].hash)})
    result = await ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "edited" in result.reason


async def test_redis_ledger_swapped_entries_are_found(client: aioredis.Redis) -> None:
    ledger = RedisLedger(client)
    records = await fill(ledger)
    await rewrite(
        client,
        {
            2: (canonical_json(records[3].body()), records[3].hash),
            4: (canonical_json(records[1].body()), records[1].hash),
        },
    )
    result = await ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 2)


async def test_redis_ledger_record_survives_json_round_trip(client: aioredis.Redis) -> None:
    ledger = RedisLedger(client)
    record = await ledger.append(
        LedgerEntry(
            kind="recording.erased", recording="r1", details={"bytes": 123, "files": ["a", "b"]}
        )
    )
    stored = (await stream_entries(client))[0][1]
    assert json.loads(stored["body"])["details"] == {"bytes": 123, "files": ["a", "b"]}
    assert (await ledger.records())[0] == record
