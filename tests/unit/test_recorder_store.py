"""Recordings on disk (recorder.store, recorder.manifest): consent gate, lifecycle, erasure."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from consent.tokens import ConsentClaims, ConsentInvalid, issue_consent_token
from recorder.crypto import DecryptError, KeyUnwrapError, MasterKey, decrypt_stream
from recorder.manifest import MANIFEST_TYP, ManifestInvalid, sign_manifest, verify_manifest
from recorder.remux import TrackSpec
from recorder.sink import RecordingSink
from recorder.store import RecordingBusy, RecordingNotFound, RecordingStore
from recorder.synthetic import SyntheticPacket, feed, synth_rtp
from sfu.keys import KeyStore

ROOM = "room-1"
OPUS = TrackSpec("audio", "opus", 48000, 2, "mic")
VP8 = TrackSpec("video", "vp8", 90000, None, "cam")
EBML = b"\x1a\x45\xdf\xa3"


@pytest.fixture(scope="module")
def media() -> list[SyntheticPacket]:
    return synth_rtp(2.0, video="vp8")[0]


@pytest.fixture
def keys() -> KeyStore:
    return KeyStore.generate()


@pytest.fixture
def store(tmp_path: Path, keys: KeyStore) -> RecordingStore:
    return RecordingStore(tmp_path, MasterKey.generate(), keys)


def consent(
    keys: KeyStore,
    subject: str = "alice",
    scope: tuple[str, ...] = ("audio", "video"),
    **kw: object,
) -> ConsentClaims:
    return issue_consent_token(
        keys, room=ROOM, subject=subject, scope=scope, purpose="quality",
        notice_text="recorded", **kw,  # type: ignore[arg-type]
    )[1]  # fmt: skip


def record(store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]) -> RecordingSink:
    sink = store.create(room=ROOM, subject="alice", consents=[consent(keys)], tracks=[OPUS, VP8])
    feed([f.on_rtp for f in sink.feeds], media)
    return sink


def test_nothing_is_written_without_covering_consent(store: RecordingStore, keys: KeyStore) -> None:
    cases: list[tuple[list[ConsentClaims], str]] = [
        ([], "alice"),
        ([consent(keys, subject="bob")], "alice"),  # someone else's consent
        ([consent(keys, scope=("audio",))], "alice"),  # audio only, video asked
        ([consent(keys, ttl_s=60, now=time.time() - 3600)], "alice"),  # expired
    ]
    for consents, subject in cases:
        with pytest.raises(ConsentInvalid):
            store.create(room=ROOM, subject=subject, consents=consents, tracks=[OPUS, VP8])
    other_room = issue_consent_token(
        keys, room="room-2", subject="alice", scope=["audio"], purpose="q", notice_text="n"
    )[1]
    with pytest.raises(ConsentInvalid):
        store.create(room=ROOM, subject="alice", consents=[other_room], tracks=[OPUS])
    assert list(store.root.iterdir()) == []
    # audio-only consent is enough for an audio-only recording
    sink = store.create(
        room=ROOM, subject="alice", consents=[consent(keys, scope=("audio",))], tracks=[OPUS]
    )
    sink.close()


def test_lifecycle(store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]) -> None:
    claims = consent(keys)
    sink = store.create(room=ROOM, subject="alice", consents=[claims], tracks=[OPUS, VP8])
    assert store.active_for_jti(claims.jti) == [sink]
    assert store.get(sink.recording_id).state == "recording"
    with pytest.raises(RecordingBusy):
        store.decrypted_media(sink.recording_id)
    feed([f.on_rtp for f in sink.feeds], media)
    result = sink.close()
    assert result.state == "complete"
    assert store.active_for_jti(claims.jti) == []

    info = store.get(sink.recording_id)
    assert (info.state, info.room, info.subject) == ("complete", ROOM, "alice")
    assert info.consent_jtis == (claims.jti,) and info.media_type == "video/webm"
    assert info.media_bytes == result.media_bytes > 10_000
    directory = store.root / info.id
    assert sorted(p.name for p in directory.iterdir()) == [
        "key.wrapped", "manifest.jwt", "media.enc", "meta.json"
    ]  # fmt: skip
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.iterdir())
    assert b"OpusHead" not in (directory / "media.enc").read_bytes()  # encrypted at rest

    manifest = store.manifest(info.id)
    assert manifest.subject == "alice" and manifest.consent_jtis == (claims.jti,)
    assert manifest.chunks == result.chunks and manifest.state == "complete"
    assert store.verify(info.id) is None
    data = b"".join(store.decrypted_media(info.id))
    assert data.startswith(EBML) and b"webm" in data[:64]

    assert [i.id for i in store.list_recordings(room=ROOM)] == [info.id]
    assert store.list_recordings(subject="bob") == []
    assert json.loads(json.dumps(info.to_dict()))["consent"] == [claims.jti]


def test_tampering_is_found(
    store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]
) -> None:
    sink = record(store, keys, media)
    sink.close()
    path = store.root / sink.recording_id / "media.enc"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    assert "differs from the manifest" in (store.verify(sink.recording_id) or "")
    with pytest.raises(DecryptError):
        b"".join(store.decrypted_media(sink.recording_id))


def test_forged_manifest_is_refused(
    store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]
) -> None:
    sink = record(store, keys, media)
    sink.close()
    genuine = store.manifest(sink.recording_id)
    path = store.root / sink.recording_id / "manifest.jwt"
    path.write_text(sign_manifest(KeyStore.generate(), genuine))
    assert "unknown key id" in (store.verify(sink.recording_id) or "")
    token = sign_manifest(keys, genuine)
    assert verify_manifest(keys, token) == genuine
    header, body, signature = token.split(".")
    with pytest.raises(ManifestInvalid):
        verify_manifest(keys, f"{header}.{body}.{signature[:-4]}AAAA")
    assert MANIFEST_TYP == "sfu-manifest+jwt"


def test_erase_shreds_the_key(
    tmp_path: Path, store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]
) -> None:
    sink = record(store, keys, media)
    sink.close()
    directory = store.root / sink.recording_id
    kept = tmp_path / "stolen-media.enc"
    shutil.copy(directory / "media.enc", kept)  # a copy someone kept (a backup)
    report = store.erase(sink.recording_id)
    assert report.key_destroyed and not report.was_recording
    assert set(report.files_removed) == {"key.wrapped", "media.enc", "manifest.jwt", "meta.json"}
    assert report.bytes_removed > 10_000 and report.subject == "alice"
    assert not directory.exists()
    with pytest.raises(RecordingNotFound):
        store.get(sink.recording_id)
    with pytest.raises(RecordingNotFound):
        store.erase(sink.recording_id)
    with pytest.raises(KeyUnwrapError):
        b"".join(decrypt_stream(kept, store._master, key_path=directory / "key.wrapped"))


def test_erase_while_recording(
    store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]
) -> None:
    sink = record(store, keys, media)
    report = store.erase(sink.recording_id)
    assert report.was_recording and report.key_destroyed
    assert sink.result is not None and sink.result.state == "aborted"
    assert not (store.root / sink.recording_id).exists()
    assert store.active() == []


def test_recover_after_a_kill(
    tmp_path: Path, store: RecordingStore, keys: KeyStore, media: list[SyntheticPacket]
) -> None:
    sink = record(store, keys, media)
    deadline = time.monotonic() + 10
    while sink.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    sink.crash()  # like kill -9: no trailer, no final chunk, no manifest
    sink.join(10)
    path = store.root / sink.recording_id / "media.enc"
    with path.open("ab") as file:
        file.write(b"\x00\x00\x10")  # the torn start of a chunk record
    assert store.get(sink.recording_id).state == "recording"

    restarted = RecordingStore(tmp_path, store._master, keys)  # the next server start
    assert restarted.recover() == [sink.recording_id]
    info = restarted.get(sink.recording_id)
    assert info.state == "interrupted"
    assert restarted.verify(sink.recording_id) is None  # manifest over the intact prefix
    data = b"".join(restarted.decrypted_media(sink.recording_id))
    assert data.startswith(EBML) and len(data) > 10_000
    assert restarted.recover() == []


def test_recording_stops_when_consent_expires(store: RecordingStore, keys: KeyStore) -> None:
    claims = consent(keys, ttl_s=60, now=int(time.time()) - 58)  # expires in 1-2 s
    sink = store.create(room=ROOM, subject="alice", consents=[claims], tracks=[OPUS])
    result = sink.join(5)
    assert result is not None and result.reason == "consent expired"
    assert claims.expires_at <= time.time() < claims.expires_at + 0.5  # stopped at once
    assert not sink.accepting
    assert store.get(sink.recording_id).state == "complete"


def test_ids_are_checked_before_any_path(store: RecordingStore) -> None:
    for bad in ("../../etc", "", "A" * 32, "0" * 31, os.sep):
        with pytest.raises(RecordingNotFound):
            store.get(bad)
        with pytest.raises(RecordingNotFound):
            store.erase(bad)
