"""Recordings on disk: create (consent-checked), list, read back decrypted, verify, erase.

Layout under the data dir (directories 0700, files 0600)::

    recordings/<id>/media.enc     the encrypted container (recorder.crypto format)
                    key.wrapped   its data key, wrapped by the master key
                    manifest.jwt  the signed manifest (recorder.manifest), once finished
                    meta.json     what the HTTP API lists (room, subject, consent, state...)

``<id>`` is 32 lowercase hex characters; every method checks it before touching a path.

Every method here does blocking file I/O (an fsync or two, a few ms): from the event loop run
them with :func:`asyncio.to_thread`. The sink returned by :meth:`RecordingStore.create` is
the exception: its ``on_rtp`` and ``stop`` are made for the loop. Ledger entries
(``recording.started`` etc.) are the caller's to append, with the ids this store returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from consent.tokens import ConsentClaims, ConsentInvalid
from recorder.crypto import (
    DecryptError,
    EncryptedWriter,
    KeyUnwrapError,
    MasterKey,
    StreamStatus,
    chunk_digests,
    decrypt_chunks,
    destroy_key,
    new_data_key,
    read_wrapped_key,
    unwrap_data_key,
    wrap_data_key,
    write_private_file,
)
from recorder.manifest import (
    Manifest,
    ManifestInvalid,
    check_media,
    sign_manifest,
    verify_manifest,
)
from recorder.remux import TrackSpec, container_for
from recorder.sink import RecordingResult, RecordingSink
from sfu.keys import KeyStore

__all__ = [
    "RECORDINGS_DIR",
    "ErasureReport",
    "RecordingBusy",
    "RecordingInfo",
    "RecordingNotFound",
    "RecordingStore",
    "hold_recordings_lock",
]

RECORDINGS_DIR = "recordings"
MEDIA_FILE = "media.enc"
KEY_FILE = "key.wrapped"
MANIFEST_FILE = "manifest.jwt"
META_FILE = "meta.json"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class RecordingNotFound(Exception):
    """No recording with that id (or it was erased)."""


class RecordingBusy(Exception):
    """The recording is still being written."""


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """One recording as listed (``meta.json``); ``to_dict`` is the HTTP representation."""

    id: str
    room: str
    subject: str
    consent_jtis: tuple[str, ...]
    scope: frozenset[str]
    state: str  # "recording" | "complete" | "interrupted" | "failed" | "aborted"
    format: str
    media_type: str
    created_at: float
    stopped_at: float | None
    media_bytes: int
    tracks: tuple[dict[str, Any], ...]
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "subject": self.subject,
            "consent": list(self.consent_jtis),
            "scope": sorted(self.scope),
            "state": self.state,
            "format": self.format,
            "media_type": self.media_type,
            "created_at": self.created_at,
            "stopped_at": self.stopped_at,
            "media_bytes": self.media_bytes,
            "tracks": [dict(t) for t in self.tracks],
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordingInfo:
        return cls(
            id=str(data["id"]),
            room=str(data["room"]),
            subject=str(data["subject"]),
            consent_jtis=tuple(str(j) for j in data["consent"]),
            scope=frozenset(str(s) for s in data["scope"]),
            state=str(data["state"]),
            format=str(data["format"]),
            media_type=str(data["media_type"]),
            created_at=float(data["created_at"]),
            stopped_at=None if data.get("stopped_at") is None else float(data["stopped_at"]),
            media_bytes=int(data.get("media_bytes", 0)),
            tracks=tuple(dict(t) for t in data.get("tracks", ())),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`RecordingStore.erase` destroyed (for the ledger's ``recording.erased``)."""

    recording_id: str
    room: str
    subject: str
    key_destroyed: bool
    files_removed: tuple[str, ...]
    bytes_removed: int
    was_recording: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "recording": self.recording_id,
            "key_destroyed": self.key_destroyed,
            "files_removed": list(self.files_removed),
            "bytes_removed": self.bytes_removed,
            "was_recording": self.was_recording,
        }


@dataclass(slots=True)
class _Active:
    sink: RecordingSink
    info: RecordingInfo
    jtis: frozenset[str] = field(default_factory=frozenset)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write_private_file(tmp, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    os.replace(tmp, path)


def _consent_for(
    consents: Sequence[ConsentClaims], *, room: str, subject: str, kind: str, at: float
) -> ConsentClaims:
    for claims in consents:
        if claims.covers(room=room, subject=subject, kinds=(kind,), at=at):
            return claims
    raise ConsentInvalid(f"no valid consent of {subject} covers recording {kind} in {room}")


class RecordingStore:
    """The recordings of one data dir (see the module doc). Thread-safe."""

    def __init__(self, data_dir: Path, master: MasterKey, keys: KeyStore) -> None:
        self.root = data_dir / RECORDINGS_DIR
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._master = master
        self._keys = keys
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}

    # --- paths -----------------------------------------------------------------------

    def _dir(self, recording_id: str) -> Path:
        if not isinstance(recording_id, str) or not _ID_RE.match(recording_id):
            raise RecordingNotFound(recording_id)
        return self.root / recording_id

    # --- create ----------------------------------------------------------------------

    def create(
        self,
        *,
        room: str,
        subject: str,
        consents: Sequence[ConsentClaims],
        tracks: Sequence[TrackSpec],
        now: float | None = None,
        keyframe_request: Callable[[str], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        **sink_options: Any,
    ) -> RecordingSink:
        """Start recording ``tracks`` of ``subject``; returns the sink to attach to producers.

        ``consents`` are already-verified claims (:func:`consent.tokens.verify_consent_token`);
        each track's kind must be covered by one of them for this room and subject, now.
        The sink stops by itself when the earliest of those consents expires. Raises
        :class:`ConsentInvalid` before anything is written, RemuxError for unsupported codecs.
        """
        at = time.time() if now is None else now
        fmt, media_type = container_for(tracks)
        used = {
            c.jti: c
            for c in (
                _consent_for(consents, room=room, subject=subject, kind=t.kind, at=at)
                for t in tracks
            )
        }
        recording_id = uuid.uuid4().hex
        directory = self._dir(recording_id)
        directory.mkdir(mode=0o700)
        data_key = new_data_key()
        write_private_file(
            directory / KEY_FILE, wrap_data_key(self._master, data_key, recording_id)
        )
        info = RecordingInfo(
            id=recording_id,
            room=room,
            subject=subject,
            consent_jtis=tuple(sorted(used)),
            scope=frozenset(t.kind for t in tracks),
            state="recording",
            format=fmt,
            media_type=media_type,
            created_at=at,
            stopped_at=None,
            media_bytes=0,
            tracks=tuple({"kind": t.kind, "codec": t.codec} for t in tracks),
        )
        _write_json_atomic(directory / META_FILE, info.to_dict())
        fd = os.open(
            directory / MEDIA_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        writer = EncryptedWriter(os.fdopen(fd, "wb", buffering=0), data_key, recording_id)
        del data_key
        sink = RecordingSink(
            recording_id,
            tracks,
            writer,
            stop_at=min(c.expires_at for c in used.values()),
            on_finished=lambda result: self._finished(info, result),
            keyframe_request=keyframe_request,
            loop=loop,
            **sink_options,
        )
        with self._lock:
            self._active[recording_id] = _Active(sink, info, frozenset(used))
        return sink

    def _finished(self, info: RecordingInfo, result: RecordingResult) -> None:
        """On the sink's worker thread: sign the manifest, update meta.json."""
        directory = self._dir(info.id)
        try:
            if result.state == "aborted" or not directory.exists():
                return  # being erased
            state = "complete" if result.state == "complete" else "failed"
            self._seal(
                info,
                state,
                result.stopped_at,
                result.reason,
                tuple(t.to_dict() for t in result.tracks),
                result.chunk_sha256,
                result.media_bytes,
            )
        finally:
            with self._lock:
                self._active.pop(info.id, None)

    def _seal(
        self,
        info: RecordingInfo,
        state: str,
        stopped_at: float,
        reason: str,
        tracks: tuple[dict[str, Any], ...],
        chunk_sha256: Sequence[str],
        media_bytes: int,
    ) -> None:
        directory = self._dir(info.id)
        manifest = Manifest(
            recording_id=info.id,
            room=info.room,
            subject=info.subject,
            consent_jtis=info.consent_jtis,
            scope=info.scope,
            started_at=info.created_at,
            stopped_at=stopped_at,
            state=state,
            format=info.format,
            media_type=info.media_type,
            tracks=tracks,
            chunks=len(chunk_sha256),
            chunk_sha256=tuple(chunk_sha256),
            media_bytes=media_bytes,
            issued_at=time.time(),
        )
        path = directory / MANIFEST_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        write_private_file(path, sign_manifest(self._keys, manifest).encode("ascii"))
        meta = info.to_dict()
        meta.update(
            state=state,
            stopped_at=stopped_at,
            media_bytes=media_bytes,
            tracks=[dict(t) for t in tracks],
            reason=reason,
        )
        _write_json_atomic(directory / META_FILE, meta)

    # --- active recordings ---------------------------------------------------------

    def active(self) -> list[RecordingSink]:
        with self._lock:
            return [a.sink for a in self._active.values()]

    def renew(self, recording_id: str, claims: ConsentClaims, *, now: float | None = None) -> None:
        """A renewed consent token (verified) keeps recording ``recording_id`` past the old one's
        expiry. Raises ConsentInvalid if it does not cover every recorded track, now."""
        at = time.time() if now is None else now
        with self._lock:
            active = self._active.get(recording_id)
            if active is None:
                raise RecordingNotFound(recording_id)
            for track in active.sink.tracks:
                _consent_for(
                    [claims],
                    room=active.info.room,
                    subject=active.info.subject,
                    kind=track.kind,
                    at=at,
                )
            active.jtis = active.jtis | {claims.jti}
            active.sink.extend(claims.expires_at)

    def active_for_jti(self, jti: str) -> list[RecordingSink]:
        """Sinks recording under consent ``jti``: stop these when it is revoked or withdrawn."""
        with self._lock:
            return [a.sink for a in self._active.values() if jti in a.jtis]

    def active_for_subject(self, subject: str, room: str | None = None) -> list[RecordingSink]:
        with self._lock:
            return [
                a.sink
                for a in self._active.values()
                if a.info.subject == subject and (room is None or a.info.room == room)
            ]

    # --- read ------------------------------------------------------------------------

    def get(self, recording_id: str) -> RecordingInfo:
        path = self._dir(recording_id) / META_FILE
        try:
            return RecordingInfo.from_dict(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            raise RecordingNotFound(recording_id) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingNotFound(f"{recording_id}: unreadable meta.json ({exc})") from None

    def list_recordings(
        self, *, room: str | None = None, subject: str | None = None
    ) -> list[RecordingInfo]:
        """Recordings, oldest first, optionally of one room and/or subject."""
        found = []
        for directory in self.root.iterdir():
            if not _ID_RE.match(directory.name):
                continue
            try:
                info = self.get(directory.name)
            except RecordingNotFound:
                continue
            if (room is None or info.room == room) and (subject is None or info.subject == subject):
                found.append(info)
        return sorted(found, key=lambda i: (i.created_at, i.id))

    def manifest(self, recording_id: str) -> Manifest:
        """The verified manifest; raises ManifestInvalid, RecordingNotFound."""
        path = self._dir(recording_id) / MANIFEST_FILE
        try:
            token = path.read_text("ascii")
        except FileNotFoundError:
            raise RecordingNotFound(f"{recording_id}: no manifest yet") from None
        manifest = verify_manifest(self._keys, token)
        if manifest.recording_id != recording_id:
            raise ManifestInvalid("the manifest belongs to another recording")
        return manifest

    def verify(self, recording_id: str) -> str | None:
        """None if the media matches its signed manifest, else the problem."""
        try:
            manifest = self.manifest(recording_id)
        except (ManifestInvalid, RecordingNotFound) as exc:
            return str(exc)
        return check_media(manifest, self._dir(recording_id) / MEDIA_FILE)

    def decrypted_media(
        self, recording_id: str, *, status: StreamStatus | None = None
    ) -> Iterator[bytes]:
        """The recording's container bytes, decrypted as they are read (blocking generator).

        A recording that ended cleanly must decrypt completely: any truncation or tampering
        raises DecryptError. An interrupted one yields its intact prefix.
        """
        with self._lock:
            if recording_id in self._active:
                raise RecordingBusy(recording_id)
        info = self.get(recording_id)
        if info.state == "recording":
            raise RecordingBusy(recording_id)
        directory = self._dir(recording_id)
        data_key = unwrap_data_key(
            self._master, read_wrapped_key(directory / KEY_FILE), recording_id
        )
        return self._decrypt(
            directory / MEDIA_FILE,
            data_key,
            recording_id,
            allow_truncated=info.state != "complete",
            status=status,
        )

    @staticmethod
    def _decrypt(
        path: Path,
        data_key: bytes,
        recording_id: str,
        *,
        allow_truncated: bool,
        status: StreamStatus | None,
    ) -> Iterator[bytes]:
        with path.open("rb") as file:
            yield from decrypt_chunks(
                file,
                data_key,
                recording_id=recording_id,
                allow_truncated=allow_truncated,
                status=status,
            )

    # --- erase -----------------------------------------------------------------------

    def erase(self, recording_id: str, *, timeout: float = 10.0) -> ErasureReport:
        """Crypto-shred and delete a recording (stopping it first if active).

        The wrapped key is destroyed first: once that returns the media is unreadable even if
        deleting the files fails halfway. Raises RecordingNotFound.
        """
        directory = self._dir(recording_id)
        with self._lock:
            active = self._active.pop(recording_id, None)
        if active is not None:
            active.sink.abort("erased")
            active.sink.join(timeout)
        if not directory.is_dir():
            raise RecordingNotFound(recording_id)
        try:
            info = self.get(recording_id)
            room, subject = info.room, info.subject
        except RecordingNotFound:
            room = subject = ""
        key_destroyed = destroy_key(directory / KEY_FILE)
        removed: list[str] = [KEY_FILE] if key_destroyed else []
        size = 0
        for name in (MEDIA_FILE, MANIFEST_FILE, META_FILE):
            path = directory / name
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
                path.unlink()
                removed.append(name)
        shutil.rmtree(directory, ignore_errors=True)
        return ErasureReport(
            recording_id=recording_id,
            room=room,
            subject=subject,
            key_destroyed=key_destroyed,
            files_removed=tuple(removed),
            bytes_removed=size,
            was_recording=active is not None,
        )

    # --- start-up ----------------------------------------------------------------------

    def recover(self) -> list[str]:
        """At start-up: seal recordings a killed process left in state "recording".

        Each keeps its authenticated prefix: the file is cut after the last complete chunk,
        and a manifest with state "interrupted" is signed over it. Returns their ids.
        """
        with self._lock:
            active = set(self._active)
        recovered = []
        for info in self.list_recordings():
            if info.state != "recording" or info.id in active:
                continue
            directory = self._dir(info.id)
            media = directory / MEDIA_FILE
            status = StreamStatus()
            state, reason = "interrupted", "the server stopped while recording"
            try:
                data_key = unwrap_data_key(
                    self._master, read_wrapped_key(directory / KEY_FILE), info.id
                )
                with media.open("rb") as file:
                    for _ in decrypt_chunks(
                        file, data_key, recording_id=info.id, allow_truncated=True, status=status
                    ):
                        pass
            except (KeyUnwrapError, DecryptError, OSError) as exc:
                state, reason = "failed", f"unreadable after a crash: {exc}"
            digests, _ = chunk_digests(media) if media.exists() else ([], True)
            digests = digests[: status.chunks]
            if status.good_bytes and media.exists():
                with media.open("r+b") as file:  # drop the torn chunk a kill left at the end
                    file.truncate(status.good_bytes)
                    os.fsync(file.fileno())
            size = media.stat().st_size if media.exists() else 0
            self._seal(info, state, time.time(), reason, info.tracks, digests, size)
            recovered.append(info.id)
        return recovered


LOCK_FILE = "recordings.lock"


def hold_recordings_lock(data_dir: Path, *, exclusive: bool = False) -> IO[bytes]:
    """A lock on the data dir's recordings: servers share it, offline recovery needs it alone.

    Raises BlockingIOError when ``exclusive`` and a server is running on this data dir.
    """
    handle = open(data_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
    except BaseException:
        handle.close()
        raise
    return handle
