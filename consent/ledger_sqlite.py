"""The embedded ledger: one SQLite table, INSERT only, in the data dir.

Durability: WAL journal with ``synchronous=FULL``, so an append returns only after its commit
is fsynced; a crash loses no acknowledged record. Appends run in ``BEGIN IMMEDIATE``
transactions, so several worker processes sharing the file still build one chain.

There is no UPDATE or DELETE anywhere in this API, and triggers make SQLite itself refuse
them (a guard against mistakes; someone with the file can drop the triggers, which is what
:func:`~consent.ledger.verify_stored` is for). A one-row ``ledger_head`` table, written in
the same transaction as each record, also reveals records removed from the end.

Threading: the ``*_sync`` methods block (an append waits for an fsync, typically 1-10 ms) and
may be called from any thread: one connection, guarded by a lock. The async methods of the
:class:`~consent.ledger.Ledger` protocol run them with :func:`asyncio.to_thread`; use those on
the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

from consent.ledger import (
    GENESIS_HASH,
    LedgerEntry,
    LedgerRecord,
    VerifyResult,
    canonical_json,
    chain,
    verify_stored,
)

__all__ = ["LEDGER_DB", "LedgerError", "SqliteLedger"]

LEDGER_DB = "ledger.sqlite"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger ("
    " seq INTEGER PRIMARY KEY, subject TEXT, body TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ledger_subject ON ledger (subject, seq)",
    "CREATE TABLE IF NOT EXISTS ledger_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger"
    " BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger"
    " BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
)


class LedgerError(Exception):
    """The ledger file cannot be opened, read or appended to."""


class SqliteLedger:
    """The ledger in one SQLite file (see the module doc for durability and threading)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if read_only:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, check_same_thread=False, isolation_level=None
                )
            else:
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                for statement in _SCHEMA:
                    self._db.execute(statement)
            self._db.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from None

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteLedger:
        """The ledger of ``data_dir`` (``ledger.sqlite``), created on first use."""
        return cls(data_dir / LEDGER_DB)

    # --- blocking API -------------------------------------------------------------------

    def append_sync(self, entry: LedgerEntry, *, now: float | None = None) -> LedgerRecord:
        """Chain and store ``entry``; returns after the commit is on disk."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                    prev_seq, prev_hash = (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)
                    record = chain(entry, prev_seq=prev_seq, prev_hash=prev_hash, now=now)
                    self._db.execute(
                        "INSERT INTO ledger (seq, subject, body, hash) VALUES (?, ?, ?, ?)",
                        (record.seq, entry.subject, canonical_json(record.body()), record.hash),
                    )
                    self._db.execute(
                        "INSERT INTO ledger_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id)"
                        " DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                        (record.seq, record.hash),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot append to {self.path}: {exc}") from None
        return record

    def _rows(self, where: str = "", args: tuple[object, ...] = ()) -> list[tuple[int, str, str]]:
        with self._lock:
            try:
                rows = self._db.execute(
                    f"SELECT seq, body, hash FROM ledger {where} ORDER BY seq", args
                ).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read {self.path}: {exc}") from None
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def _parse(self, rows: list[tuple[int, str, str]]) -> list[LedgerRecord]:
        records = []
        for seq, body, hash_ in rows:
            try:
                records.append(LedgerRecord.from_body(json.loads(body), hash_))
            except ValueError as exc:
                raise LedgerError(f"{self.path}: record seq={seq} unreadable: {exc}") from None
        return records

    def records_sync(self, start_seq: int = 1) -> list[LedgerRecord]:
        return self._parse(self._rows("WHERE seq >= ?", (start_seq,)))

    def records_for_subject_sync(self, subject: str) -> list[LedgerRecord]:
        return self._parse(self._rows("WHERE subject = ?", (subject,)))

    def head_sync(self) -> tuple[int, str]:
        """(seq, hash) as recorded in ``ledger_head`` (not derived from the records)."""
        with self._lock:
            try:
                row = self._db.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read {self.path}: {exc}") from None
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def verify_sync(self) -> VerifyResult:
        """Check every stored record and the recorded head; names the first bad record."""
        head = self.head_sync()
        return verify_stored(self._rows(), expected_head=head)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- the async Ledger protocol --------------------------------------------------------

    async def append(self, entry: LedgerEntry) -> LedgerRecord:
        return await asyncio.to_thread(self.append_sync, entry)

    async def records(self, start_seq: int = 1) -> list[LedgerRecord]:
        return await asyncio.to_thread(self.records_sync, start_seq)

    async def records_for_subject(self, subject: str) -> list[LedgerRecord]:
        return await asyncio.to_thread(self.records_for_subject_sync, subject)

    async def verify(self) -> VerifyResult:
        return await asyncio.to_thread(self.verify_sync)

    async def head(self) -> tuple[int, str]:
        return await asyncio.to_thread(self.head_sync)
