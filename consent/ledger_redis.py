"""The cluster ledger: one Redis stream, every node appending to the same chain.

Each record is a stream entry with id ``<seq>-0`` and fields ``body`` (canonical JSON),
``hash`` and ``subject``. The head ``"<seq>:<hash>"`` lives in a second key. An append reads
the head, builds the record, and runs a Lua script that adds it only if the head is still the
one it read (compare-and-set), retrying otherwise: two nodes appending at once never fork the
chain. Stream ids only grow, so an entry cannot be re-inserted in the middle; ``XDEL`` leaves
a seq gap that :func:`~consent.ledger.verify` reports, and the head key reveals a cut tail.

Both keys share the hash tag of ``key`` (default ``{sfu:ledger}``) so they sit in one slot of
a Redis Cluster. Durability is Redis's: run it with ``appendonly yes`` and
``appendfsync always`` (or ``everysec``, accepting a second of loss on a power cut).
Any Redis error raises :class:`~consent.ledger_sqlite.LedgerError`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consent.ledger import (
    GENESIS_HASH,
    LedgerEntry,
    LedgerRecord,
    VerifyResult,
    canonical_json,
    chain,
    verify_stored,
)
from consent.ledger_sqlite import LedgerError

__all__ = ["RedisLedger"]

_APPEND = """
local head = redis.call('GET', KEYS[2]) or ARGV[5]
if head ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[1], ARGV[2] .. '-0', 'subject', ARGV[6], 'body', ARGV[3], 'hash', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[4])
return 1
"""
_EMPTY_HEAD = f"0:{GENESIS_HASH}"
_PAGE = 500
_MAX_RETRIES = 50


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisLedger:
    """The ledger in a Redis stream (see the module doc); implements the Ledger protocol."""

    def __init__(
        self, client: aioredis.Redis, *, key: str = "{sfu:ledger}", timeout_s: float = 5.0
    ) -> None:
        self._client = client
        self._stream = key
        self._head = f"{key}:head"
        self._timeout_s = timeout_s
        self._script = client.register_script(_APPEND)

    async def _head_value(self) -> str:
        value = await self._client.get(self._head)
        return _EMPTY_HEAD if value is None else _text(value)

    async def append(self, entry: LedgerEntry) -> LedgerRecord:
        try:
            async with asyncio.timeout(self._timeout_s):
                for _ in range(_MAX_RETRIES):
                    head = await self._head_value()
                    seq_text, _, prev_hash = head.partition(":")
                    record = chain(entry, prev_seq=int(seq_text), prev_hash=prev_hash)
                    added = await self._script(
                        keys=[self._stream, self._head],
                        args=[
                            head,
                            str(record.seq),
                            canonical_json(record.body()),
                            record.hash,
                            _EMPTY_HEAD,
                            entry.subject or "",
                        ],
                    )
                    if int(added) == 1:
                        return record
                    await asyncio.sleep(0)  # another node appended first: chain after it
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            raise LedgerError(f"cannot append to the Redis ledger: {exc}") from None
        raise LedgerError("cannot append to the Redis ledger: too much contention")

    async def _rows(self) -> list[tuple[int, str, str, str]]:
        """(stored seq, body, hash, subject) of every entry, in stream order."""
        rows: list[tuple[int, str, str, str]] = []
        start = "-"
        try:
            async with asyncio.timeout(self._timeout_s * 10):
                while True:
                    page = await self._client.xrange(self._stream, min=start, count=_PAGE) or []
                    for entry_id, fields in page:
                        ident = _text(entry_id)
                        values = {_text(k): _text(v) for k, v in (fields or {}).items()}
                        rows.append(
                            (
                                int(ident.split("-", 1)[0]),
                                values.get("body", ""),
                                values.get("hash", ""),
                                values.get("subject", ""),
                            )
                        )
                    if len(page) < _PAGE:
                        return rows
                    start = "(" + _text(page[-1][0])
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            raise LedgerError(f"cannot read the Redis ledger: {exc}") from None

    @staticmethod
    def _parse(rows: list[tuple[int, str, str, str]]) -> list[LedgerRecord]:
        records = []
        for seq, body, hash_, _ in rows:
            try:
                records.append(LedgerRecord.from_body(json.loads(body), hash_))
            except ValueError as exc:
                raise LedgerError(f"Redis ledger record seq={seq} unreadable: {exc}") from None
        return records

    async def records(self, start_seq: int = 1) -> list[LedgerRecord]:
        return self._parse([r for r in await self._rows() if r[0] >= start_seq])

    async def records_for_subject(self, subject: str) -> list[LedgerRecord]:
        """Scans the stream (O(records)): exports are rare; no secondary index to keep right."""
        return self._parse([r for r in await self._rows() if r[3] == subject])

    async def head(self) -> tuple[int, str]:
        try:
            seq_text, _, hash_ = (await self._head_value()).partition(":")
            return int(seq_text), hash_
        except (RedisError, OSError, ValueError) as exc:
            raise LedgerError(f"cannot read the Redis ledger head: {exc}") from None

    async def verify(self) -> VerifyResult:
        head = await self.head()
        rows = await self._rows()
        return verify_stored(((seq, body, h) for seq, body, h, _ in rows), expected_head=head)
