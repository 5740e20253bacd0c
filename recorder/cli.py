"""Operator commands on a data dir: recordings, subject export, ledger audit.

``python -m sfu recordings list|export|erase``, ``python -m sfu subject export`` and
``python -m sfu audit verify``. They work on the data dir directly (a server may be running:
the ledger serialises appends across processes), and every export and erasure is written to
the consent ledger with actor ``cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a command runs: `python -m sfu token` stays light
    from recorder.store import RecordingStore

__all__ = ["add_data_commands"]

ACTOR = "cli"


def _store(data_dir: Path) -> RecordingStore:
    from recorder.crypto import load_master_key
    from recorder.store import RecordingStore
    from sfu.keys import KeyStore

    return RecordingStore(data_dir, load_master_key(data_dir), KeyStore.open(data_dir))


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _recordings(args: argparse.Namespace) -> int:
    from consent.ledger import LedgerEntry
    from consent.ledger_sqlite import SqliteLedger
    from recorder.store import RecordingBusy, RecordingNotFound

    store = _store(args.data_dir)
    ledger = SqliteLedger.in_data_dir(args.data_dir)
    try:
        if args.action == "list":
            infos = store.list_recordings(room=args.room, subject=args.subject)
            _print([i.to_dict() for i in infos])
            return 0
        if args.action == "recover":
            return _recover(args.data_dir, store)
        info = store.get(args.id)
        if args.action == "export":
            with open(args.out, "wb") as out:
                for chunk in store.decrypted_media(info.id):
                    out.write(chunk)
            ledger.append_sync(
                LedgerEntry(
                    kind="recording.exported",
                    room=info.room,
                    subject=info.subject,
                    actor=ACTOR,
                    recording=info.id,
                    details={"how": "cli export"},
                )
            )
            print(f"wrote {args.out} ({info.media_type})")
            return 0
        report = store.erase(info.id)
        ledger.append_sync(
            LedgerEntry(
                kind="recording.erased",
                room=info.room,
                subject=info.subject,
                actor=ACTOR,
                recording=info.id,
                details=report.to_dict(),
            )
        )
        _print(report.to_dict())
        return 0
    except RecordingNotFound:
        print(f"no recording {getattr(args, 'id', '')!r}", file=sys.stderr)
        return 1
    except RecordingBusy:
        print(
            "still recording (if its server was killed: `recordings recover` first)",
            file=sys.stderr,
        )
        return 1
    finally:
        ledger.close()


def _recover(data_dir: Path, store: RecordingStore) -> int:
    """Seal what a killed server left mid-recording (the server does this when it starts)."""
    from recorder.store import hold_recordings_lock

    try:
        lock = hold_recordings_lock(data_dir, exclusive=True)
    except BlockingIOError:
        print(
            "a server is running on this data dir: it recovers recordings itself", file=sys.stderr
        )
        return 1
    with lock:
        _print(store.recover())
    return 0


def _subject(args: argparse.Namespace) -> int:
    from consent.ledger import LedgerEntry
    from consent.ledger_sqlite import SqliteLedger

    store = _store(args.data_dir)
    ledger = SqliteLedger.in_data_dir(args.data_dir)
    try:
        infos = store.list_recordings(subject=args.subject)
        export = {
            "subject": args.subject,
            "consent_records": [r.to_dict() for r in ledger.records_for_subject_sync(args.subject)],
            "recordings": [i.to_dict() for i in infos],
        }
        ledger.append_sync(
            LedgerEntry(
                kind="recording.exported",
                subject=args.subject,
                actor=ACTOR,
                details={"how": "cli subject export"},
            )
        )
    finally:
        ledger.close()
    text = json.dumps(export, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from consent.audit import audit_verify

    return audit_verify(args.data_dir)


def add_data_commands(subcommands: Any) -> None:
    """Add ``recordings``, ``subject`` and ``audit`` to the CLI (``handler(args, env)``)."""

    def data_dir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-dir", type=Path, required=True, help="the server's data dir")

    recordings = subcommands.add_parser("recordings", help="list, export or erase recordings")
    actions = recordings.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="recordings (JSON)")
    data_dir(listing)
    listing.add_argument("--room")
    listing.add_argument("--subject")
    export = actions.add_parser("export", help="write a recording, decrypted")
    data_dir(export)
    export.add_argument("id")
    export.add_argument("--out", required=True, help="output file (.webm or .mkv)")
    recover = actions.add_parser(
        "recover", help="seal recordings a killed server left behind (no server running)"
    )
    data_dir(recover)
    erase = actions.add_parser("erase", help="erase a recording and destroy its key")
    data_dir(erase)
    erase.add_argument("id")
    recordings.set_defaults(handler=lambda args, env: _recordings(args))

    subject = subcommands.add_parser("subject", help="everything held about one person")
    subject_actions = subject.add_subparsers(dest="action", required=True)
    subject_export = subject_actions.add_parser("export", help="consent records and recordings")
    data_dir(subject_export)
    subject_export.add_argument("subject")
    subject_export.add_argument("--out")
    subject.set_defaults(handler=lambda args, env: _subject(args))

    audit = subcommands.add_parser("audit", help="check the consent ledger")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    verify = audit_actions.add_parser("verify", help="report the first edited or missing record")
    data_dir(verify)
    audit.set_defaults(handler=lambda args, env: _audit(args))
