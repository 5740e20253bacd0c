"""``python -m sfu audit verify``: check the ledger's hash chain and say where it breaks.

Exit codes: 0 the chain is intact (or there is no ledger yet), 1 it is not (the report line
names the first bad record), 2 the ledger could not be read.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

import redis.asyncio as aioredis

from consent.ledger import VerifyResult
from consent.ledger_redis import RedisLedger
from consent.ledger_sqlite import LEDGER_DB, LedgerError, SqliteLedger

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_UNREADABLE", "audit_verify"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2


async def _verify_redis(url: str) -> VerifyResult:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        return await RedisLedger(client).verify()
    finally:
        await client.aclose()


def audit_verify(data_dir: Path, *, redis_url: str | None = None, out: TextIO | None = None) -> int:
    """Verify the ledger of ``data_dir`` (or the Redis one at ``redis_url``); print one line.

    The SQLite file is opened read-only: verifying never creates or changes a ledger.
    """
    stream = sys.stdout if out is None else out
    try:
        if redis_url is not None:
            result = asyncio.run(_verify_redis(redis_url))
            where = "redis"
        else:
            path = data_dir / LEDGER_DB
            where = str(path)
            if not path.exists():
                print(f"{where}: no ledger yet (0 records)", file=stream)
                return EXIT_OK
            ledger = SqliteLedger(path, read_only=True)
            try:
                result = ledger.verify_sync()
            finally:
                ledger.close()
    except LedgerError as exc:
        print(f"ledger unreadable: {exc}", file=stream)
        return EXIT_UNREADABLE
    print(f"{where}: {result.report()}", file=stream)
    return EXIT_OK if result.ok else EXIT_INVALID
