"""The consent and audit ledger: append-only, hash-chained records of who agreed to what.

What GDPR Art. 7(1) asks us to demonstrate: who consented, when, to which exact notice (its
SHA-256), how, to what scope and purpose, and when they withdrew; plus what happened to the
recordings (started, stopped, exported, erased). Each :class:`LedgerRecord` carries

* ``seq``: 1, 2, 3, ... with no gap;
* ``prev_hash``: the previous record's ``hash`` (:data:`GENESIS_HASH` for the first);
* ``hash``: SHA-256 hex of the canonical JSON (:func:`canonical_json`: sorted keys, no
  whitespace, UTF-8) of every other field, ``prev_hash`` included.

So editing a record breaks its hash, removing one leaves a ``seq`` gap, and moving one breaks
its ``seq`` or the next record's ``prev_hash``; :func:`verify` names the first bad record. Only
a rewrite of the whole tail from the edit onwards passes the chain: publish :meth:`Ledger.head`
somewhere else (another system's log, a signed report) to anchor it.

The stores (:mod:`consent.ledger_sqlite`, :mod:`consent.ledger_redis`) implement the async
:class:`Ledger` protocol; this module has the data model and the checks, and no I/O.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "Ledger",
    "LedgerEntry",
    "LedgerRecord",
    "VerifyResult",
    "canonical_json",
    "chain",
    "verify",
    "verify_stored",
]

GENESIS_HASH = "0" * 64
KINDS = frozenset(
    {
        "consent.requested",
        "consent.granted",
        "consent.refused",
        "consent.withdrawn",
        "consent.expired",
        "recording.started",
        "recording.stopped",
        "recording.exported",
        "recording.erased",
    }
)
_FIELDS = ("room", "subject", "actor", "notice_sha256", "method", "purpose", "jti", "recording")


def canonical_json(value: Mapping[str, Any]) -> str:
    """The one JSON text of ``value`` that is hashed: sorted keys, no spaces, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What a caller appends; the ledger adds ``seq``, ``ts`` and the hashes.

    ``actor`` is who caused the event (the participant, an agent, an admin, ``"system"``);
    ``details`` holds anything else as JSON (e.g. the reason of a withdrawal, bytes erased).
    """

    kind: str
    room: str | None = None
    subject: str | None = None
    actor: str | None = None
    notice_sha256: str | None = None
    method: str | None = None
    scope: frozenset[str] | None = None
    purpose: str | None = None
    jti: str | None = None
    recording: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown ledger kind {self.kind!r}")
        canonical_json(dict(self.details))  # refuse what cannot be hashed now, not at verify


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One stored record (an entry plus its place in the chain).

    ``ts`` is Unix time in integer milliseconds: an integer, so that every language writes the
    same canonical JSON for it (floats differ: ``1.0`` vs ``1``).
    """

    seq: int
    ts: int
    entry: LedgerEntry
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what ``hash`` is computed over."""
        e = self.entry
        body: dict[str, Any] = {
            "seq": self.seq,
            "ts": self.ts,
            "kind": e.kind,
            "scope": sorted(e.scope) if e.scope is not None else None,
            "details": dict(e.details),
            "prev_hash": self.prev_hash,
        }
        for name in _FIELDS:
            body[name] = getattr(e, name)
        return body

    def to_dict(self) -> dict[str, Any]:
        """The record as exported (HTTP export, audit reports)."""
        return {**self.body(), "hash": self.hash}

    @staticmethod
    def compute_hash(body: Mapping[str, Any]) -> str:
        return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()

    @classmethod
    def from_body(cls, body: Mapping[str, Any], hash_: str) -> LedgerRecord:
        """Parse a stored body; raises ValueError if it is not a well-formed record."""
        if set(body) != {"seq", "ts", "kind", "scope", "details", "prev_hash", *_FIELDS}:
            raise ValueError("unexpected or missing fields")
        seq, ts, scope, details = body["seq"], body["ts"], body["scope"], body["details"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("seq is not an integer")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise ValueError("ts is not an integer")
        if scope is not None and (
            not isinstance(scope, list) or not all(isinstance(s, str) for s in scope)
        ):
            raise ValueError("scope is not a list of strings")
        if not isinstance(details, dict):
            raise ValueError("details is not an object")
        values = {name: body[name] for name in _FIELDS}
        if not all(v is None or isinstance(v, str) for v in values.values()):
            raise ValueError("a text field is not a string")
        if not isinstance(body["prev_hash"], str) or not isinstance(body["kind"], str):
            raise ValueError("kind or prev_hash is not a string")
        entry = LedgerEntry(
            kind=body["kind"],
            scope=frozenset(scope) if scope is not None else None,
            details=details,
            **values,
        )
        return cls(seq=seq, ts=ts, entry=entry, prev_hash=body["prev_hash"], hash=hash_)


def chain(
    entry: LedgerEntry, *, prev_seq: int, prev_hash: str, now: float | None = None
) -> LedgerRecord:
    """The record that follows ``(prev_seq, prev_hash)`` (0 and :data:`GENESIS_HASH` first)."""
    ts = round((time.time() if now is None else now) * 1000)
    draft = LedgerRecord(seq=prev_seq + 1, ts=ts, entry=entry, prev_hash=prev_hash, hash="")
    return LedgerRecord(
        seq=draft.seq,
        ts=ts,
        entry=entry,
        prev_hash=prev_hash,
        hash=LedgerRecord.compute_hash(draft.body()),
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify`: ``first_bad_seq`` is None when ``ok``."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_hash: str = GENESIS_HASH

    def report(self) -> str:
        """One line for an operator."""
        if self.ok:
            return f"ledger ok: {self.count} records, head {self.head_hash[:16]}"
        return f"ledger INVALID: first bad record seq={self.first_bad_seq}: {self.reason}"


class _ChainCheck:
    """Checks records one by one, in storage order."""

    def __init__(self) -> None:
        self.count = 0
        self.seq = 0
        self.hash = GENESIS_HASH

    def check(self, record: LedgerRecord) -> VerifyResult | None:
        expected = self.seq + 1
        if record.seq > expected:
            last = record.seq - 1
            missing = f"{expected}" if last == expected else f"{expected}-{last}"
            return self.bad(expected, f"record(s) {missing} missing")
        if record.seq < expected:
            return self.bad(record.seq, f"record seq={record.seq} out of order")
        if LedgerRecord.compute_hash(record.body()) != record.hash:
            return self.bad(record.seq, "hash mismatch: record edited")
        if record.prev_hash != self.hash:
            return self.bad(record.seq, "prev_hash does not match the previous record")
        self.count += 1
        self.seq = record.seq
        self.hash = record.hash
        return None

    def bad(self, seq: int, reason: str) -> VerifyResult:
        return VerifyResult(
            ok=False, count=self.count, first_bad_seq=seq, reason=reason, head_hash=self.hash
        )

    def done(self, expected_head: tuple[int, str] | None) -> VerifyResult:
        if expected_head is not None:
            head_seq, head_hash = expected_head
            if head_seq > self.seq:
                missing = f"{self.seq + 1}-{head_seq}"
                return self.bad(self.seq + 1, f"records {missing} missing at the end")
            if head_seq == self.seq and head_hash != self.hash:
                return self.bad(self.seq, "last record does not match the recorded head")
        return VerifyResult(ok=True, count=self.count, head_hash=self.hash)


def verify(
    records: Iterable[LedgerRecord], *, expected_head: tuple[int, str] | None = None
) -> VerifyResult:
    """Check a whole chain from seq 1, in the order given; names the first bad record.

    ``expected_head`` (seq, hash), kept apart from the records, also catches removal of the
    last records.
    """
    checker = _ChainCheck()
    for record in records:
        failure = checker.check(record)
        if failure is not None:
            return failure
    return checker.done(expected_head)


def verify_stored(
    rows: Iterable[tuple[int, str, str]], *, expected_head: tuple[int, str] | None = None
) -> VerifyResult:
    """:func:`verify` over raw stored rows ``(stored seq, body JSON, hash)``.

    A body that does not parse, or that claims another ``seq`` than where it is stored (rows
    swapped), is reported as the first bad record.
    """
    checker = _ChainCheck()
    for stored_seq, body_text, hash_ in rows:
        try:
            body = json.loads(body_text)
            if not isinstance(body, dict):
                raise ValueError("not an object")
            record = LedgerRecord.from_body(body, hash_)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            return checker.bad(stored_seq, f"record unreadable: {exc}")
        if record.seq != stored_seq:
            return checker.bad(
                stored_seq, f"record stored at seq={stored_seq} claims seq={record.seq}"
            )
        failure = checker.check(record)
        if failure is not None:
            return failure
    return checker.done(expected_head)


class Ledger(Protocol):
    """An append-only ledger store (SQLite embedded, Redis streams in a cluster)."""

    async def append(self, entry: LedgerEntry) -> LedgerRecord:
        """Chain ``entry`` after the current head, durably; returns the stored record."""
        ...

    async def records(self, start_seq: int = 1) -> list[LedgerRecord]:
        """Records from ``start_seq`` on, in order."""
        ...

    async def records_for_subject(self, subject: str) -> list[LedgerRecord]:
        """Every record about ``subject`` (data-subject export), in order."""
        ...

    async def verify(self) -> VerifyResult:
        """Check the whole stored chain."""
        ...

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record; (0, :data:`GENESIS_HASH`) when empty."""
        ...
