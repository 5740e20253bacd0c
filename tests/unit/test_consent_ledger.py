"""The SQLite ledger (consent.ledger, .ledger_sqlite, .audit): chaining and tampering."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from consent.audit import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE, audit_verify
from consent.ledger import GENESIS_HASH, LedgerEntry, LedgerRecord, canonical_json, verify
from consent.ledger_sqlite import LEDGER_DB, LedgerError, SqliteLedger

NOTICE_HASH = "ab" * 32


def entry(kind: str = "consent.granted", subject: str = "alice", **kwargs: object) -> LedgerEntry:
    return LedgerEntry(
        kind=kind,
        room="room-1",
        subject=subject,
        actor=subject,
        notice_sha256=NOTICE_HASH,
        method="in-call-dialog",
        scope=frozenset({"audio", "video"}),
        purpose="quality",
        jti=f"jti-{subject}",
        details=dict(kwargs),
    )


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    ledger = SqliteLedger.in_data_dir(tmp_path)
    for i, subject in enumerate(["alice", "bob", "alice", "carol", "alice"]):
        ledger.append_sync(entry(subject=subject, n=i), now=1_800_000_000 + i)
    return ledger


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, as someone editing the file would use, with the guards dropped."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER ledger_no_update")
    db.execute("DROP TRIGGER ledger_no_delete")
    return db


def test_records_are_chained(ledger: SqliteLedger) -> None:
    records = ledger.records_sync()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    first = records[0]
    assert first.hash == LedgerRecord.compute_hash(first.body())
    assert json.loads(canonical_json(first.body()))["notice_sha256"] == NOTICE_HASH
    result = ledger.verify_sync()
    assert result.ok and result.count == 5 and result.head_hash == records[-1].hash
    assert ledger.head_sync() == (5, records[-1].hash)
    assert verify(records).ok


def test_records_for_subject(ledger: SqliteLedger) -> None:
    assert [r.seq for r in ledger.records_for_subject_sync("alice")] == [1, 3, 5]
    assert ledger.records_for_subject_sync("nobody") == []
    exported = ledger.records_for_subject_sync("bob")[0].to_dict()
    assert exported["kind"] == "consent.granted" and exported["scope"] == ["audio", "video"]
    assert set(exported) >= {"seq", "ts", "prev_hash", "hash", "jti", "purpose", "method"}


def test_unknown_kind_and_unhashable_details_are_refused() -> None:
    with pytest.raises(ValueError):
        LedgerEntry(kind="consent.maybe")
    with pytest.raises(ValueError):
        LedgerEntry(kind="consent.granted", details={"x": float("nan")})


def test_sqlite_itself_refuses_update_and_delete(ledger: SqliteLedger) -> None:
    db = sqlite3.connect(ledger.path, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE ledger SET subject = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM ledger WHERE seq = 1")
    db.close()
    assert ledger.verify_sync().ok


def test_edited_field_is_found(ledger: SqliteLedger) -> None:
    db = raw(ledger.path)
    body = json.loads(db.execute("SELECT body FROM ledger WHERE seq = 3").fetchone()[0])
    body["scope"] = ["audio"]  # "she only agreed to audio"
    db.execute("UPDATE ledger SET body = ? WHERE seq = 3", (canonical_json(body),))
    result = ledger.verify_sync()
    assert not result.ok and result.first_bad_seq == 3
    assert "edited" in result.reason
    assert "seq=3" in result.report()


def test_edit_with_a_recomputed_hash_breaks_the_next_link(ledger: SqliteLedger) -> None:
    db = raw(ledger.path)
    body = json.loads(db.execute("SELECT body FROM ledger WHERE seq = 2").fetchone()[0])
    body["purpose"] = "marketing"
    new_hash = LedgerRecord.compute_hash(body)
    db.execute(
        "UPDATE ledger SET body = ?, hash = ? WHERE seq = 2", (canonical_json(body), new_hash)
    )
    result = ledger.verify_sync()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "prev_hash" in result.reason


def test_deleted_row_is_found(ledger: SqliteLedger) -> None:
    raw(ledger.path).execute("DELETE FROM ledger WHERE seq = 3")
    result = ledger.verify_sync()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in result.reason


def test_deleted_tail_is_found(ledger: SqliteLedger) -> None:
    raw(ledger.path).execute("DELETE FROM ledger WHERE seq >= 4")
    result = ledger.verify_sync()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "missing at the end" in result.reason


def test_swapped_rows_are_found(ledger: SqliteLedger) -> None:
    db = raw(ledger.path)
    rows = {
        seq: (body, hash_)
        for seq, body, hash_ in db.execute("SELECT seq, body, hash FROM ledger WHERE seq IN (2, 4)")
    }
    db.execute("UPDATE ledger SET body = ?, hash = ? WHERE seq = 2", rows[4])
    db.execute("UPDATE ledger SET body = ?, hash = ? WHERE seq = 4", rows[2])
    result = ledger.verify_sync()
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "claims seq=4" in result.reason


def test_reordered_records_are_found(ledger: SqliteLedger) -> None:
    records = ledger.records_sync()
    records[1], records[2] = records[2], records[1]
    result = verify(records)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_garbage_row_is_found(ledger: SqliteLedger) -> None:
    raw(ledger.path).execute("UPDATE ledger SET body = 'not json' WHERE seq = 2")
    result = ledger.verify_sync()
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "unreadable" in result.reason
    with pytest.raises(LedgerError, match="seq=2"):
        ledger.records_sync()


def test_concurrent_appenders_build_one_chain(tmp_path: Path) -> None:
    """Two connections (as two worker processes would have) appending at once."""
    first = SqliteLedger.in_data_dir(tmp_path)
    second = SqliteLedger.in_data_dir(tmp_path)

    def append_many(ledger: SqliteLedger, subject: str) -> None:
        for i in range(25):
            ledger.append_sync(entry(subject=subject, n=i))

    threads = [
        threading.Thread(target=append_many, args=(first, "alice")),
        threading.Thread(target=append_many, args=(second, "bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    result = first.verify_sync()
    assert result.ok and result.count == 50


async def test_async_api_runs_off_the_loop(tmp_path: Path) -> None:
    ledger = SqliteLedger.in_data_dir(tmp_path)
    record = await ledger.append(entry(kind="recording.started"))
    assert record.seq == 1
    assert (await ledger.head()) == (1, record.hash)
    assert [r.seq for r in await ledger.records_for_subject("alice")] == [1]
    assert (await ledger.verify()).ok
    assert len(await ledger.records(start_seq=2)) == 0


def test_audit_verify_exit_codes(tmp_path: Path) -> None:
    out = io.StringIO()
    assert audit_verify(tmp_path / "empty", out=out) == EXIT_OK
    assert not (tmp_path / "empty" / LEDGER_DB).exists()  # verifying never creates a ledger

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ledger = SqliteLedger.in_data_dir(data_dir)
    for i in range(3):
        ledger.append_sync(entry(n=i))
    out = io.StringIO()
    assert audit_verify(data_dir, out=out) == EXIT_OK
    assert "ledger ok: 3 records" in out.getvalue()

    raw(ledger.path).execute("DELETE FROM ledger WHERE seq = 2")
    out = io.StringIO()
    assert audit_verify(data_dir, out=out) == EXIT_INVALID
    assert "first bad record seq=2" in out.getvalue()

    (data_dir / LEDGER_DB).write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (data_dir / (LEDGER_DB + suffix)).unlink(missing_ok=True)
    out = io.StringIO()
    assert audit_verify(data_dir, out=out) == EXIT_UNREADABLE
