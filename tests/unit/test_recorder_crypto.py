"""Encryption at rest (recorder.crypto): keys, the chunked stream, damage detection, shredding."""

from __future__ import annotations

import base64
import io
import os
import stat
import struct
import tempfile
from pathlib import Path

import pytest

from recorder.crypto import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE,
    DecryptError,
    EncryptedWriter,
    KeyUnwrapError,
    MasterKey,
    MasterKeyError,
    StreamStatus,
    chunk_digests,
    decrypt_chunks,
    decrypt_stream,
    destroy_key,
    load_master_key,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
    write_private_file,
)

CHUNK = 1024
KEY = bytes(range(32))


def encrypt(data: bytes, *, chunk_size: int = CHUNK, flushes: tuple[int, ...] = ()) -> bytes:
    """``data`` encrypted, with a flush after each offset in ``flushes``."""
    fd, name = tempfile.mkstemp()
    try:
        writer = EncryptedWriter(os.fdopen(fd, "wb"), KEY, "rec-1", chunk_size=chunk_size)
        pos = 0
        for cut in (*flushes, len(data)):
            writer.write(data[pos:cut])
            pos = cut
            if cut != len(data):
                writer.flush()
        writer.close()
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def decrypt(blob: bytes, **kwargs: object) -> bytes:
    return b"".join(decrypt_chunks(io.BytesIO(blob), KEY, **kwargs))  # type: ignore[arg-type]


def chunk_offsets(blob: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each chunk record: length prefix included."""
    pos = 8 + 4 + 7 + 1 + blob[8 + 4 + 7]
    found = []
    while pos < len(blob):
        (length,) = struct.unpack_from("!I", blob, pos)
        found.append((pos, 4 + length))
        pos += 4 + length
    return found


# --------------------------------------------------------------------------- master key


def test_master_key_created_once_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_master_key(data_dir, environ={})
    path = data_dir / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(data_dir, environ={}) == first
    assert first.key.hex() not in repr(first)
    assert [p.name for p in data_dir.iterdir()] == [MASTER_KEY_FILE]  # no temp file left


def test_master_key_refused_when_others_can_read_it(tmp_path: Path) -> None:
    load_master_key(tmp_path, environ={})
    (tmp_path / MASTER_KEY_FILE).chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(tmp_path, environ={})
    (tmp_path / MASTER_KEY_FILE).chmod(0o600)
    (tmp_path / MASTER_KEY_FILE).write_bytes(b"short")
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_master_key(tmp_path, environ={})


def test_master_key_from_the_environment(tmp_path: Path) -> None:
    raw = os.urandom(32)
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        key = load_master_key(tmp_path, environ={MASTER_KEY_ENV: encoded})
        assert key.key == raw
    assert not (tmp_path / MASTER_KEY_FILE).exists()
    for bad in ("not base64!", base64.b64encode(b"too short").decode()):
        with pytest.raises(MasterKeyError):
            load_master_key(tmp_path, environ={MASTER_KEY_ENV: bad})


def test_wrapped_keys_open_only_with_their_master_and_recording() -> None:
    master = MasterKey.generate()
    data_key = new_data_key()
    blob = wrap_data_key(master, data_key, "rec-1")
    assert unwrap_data_key(master, blob, "rec-1") == data_key
    with pytest.raises(KeyUnwrapError, match="wrong master key"):
        unwrap_data_key(MasterKey.generate(), blob, "rec-1")
    with pytest.raises(KeyUnwrapError, match="another recording"):
        unwrap_data_key(master, blob, "rec-2")
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(master, bytes(damaged), "rec-1")


# --------------------------------------------------------------------------- stream


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 77])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    blob = encrypt(data)
    status = StreamStatus()
    assert decrypt(blob, status=status) == data
    assert status.complete and status.recording_id == "rec-1" and status.plaintext_bytes == size


def test_flush_seals_short_chunks() -> None:
    data = os.urandom(3000)
    blob = encrypt(data, flushes=(10, 11, 2000))
    assert decrypt(blob) == data
    assert len(chunk_offsets(blob)) == 5  # 10 | 1 | 1024+965 (two) | 1000 final


def test_truncation_is_reported_and_the_prefix_recoverable() -> None:
    data = os.urandom(4 * CHUNK + 100)
    blob = encrypt(data)
    chunks = chunk_offsets(blob)
    assert len(chunks) == 5
    without_last = blob[: chunks[-1][0]]
    with pytest.raises(DecryptError) as caught:
        decrypt(without_last)
    assert caught.value.chunk_index == 4 and caught.value.offset == chunks[-1][0]
    assert "truncated after chunk 3" in str(caught.value)
    status = StreamStatus()
    assert decrypt(without_last, allow_truncated=True, status=status) == data[: 4 * CHUNK]
    assert status.truncation == "truncated after chunk 3" and not status.complete
    assert status.good_bytes == chunks[-1][0]
    # a torn write: half of a chunk record at the end
    torn = blob[: chunks[2][0] + 30]
    assert decrypt(torn, allow_truncated=True) == data[: 2 * CHUNK]
    with pytest.raises(DecryptError, match="truncated after chunk 1"):
        decrypt(torn)


def test_reordered_chunks_are_detected() -> None:
    blob = encrypt(os.urandom(4 * CHUNK + 100))
    (a, size), (b, _) = chunk_offsets(blob)[1:3]
    swapped = blob[:a] + blob[b : b + size] + blob[a : a + size] + blob[b + size :]
    with pytest.raises(DecryptError) as caught:
        decrypt(swapped)
    assert caught.value.chunk_index == 1 and caught.value.offset == a
    assert "authentication failed" in caught.value.reason


@pytest.mark.parametrize("k", [0, 2, 4])
def test_a_flipped_bit_names_its_chunk(k: int) -> None:
    data = os.urandom(4 * CHUNK + 100)
    blob = bytearray(encrypt(data))
    offset, size = chunk_offsets(bytes(blob))[k]
    blob[offset + 4 + size // 2] ^= 0x10
    produced = []
    with pytest.raises(DecryptError) as caught:
        for part in decrypt_chunks(io.BytesIO(bytes(blob)), KEY):
            produced.append(part)
    assert caught.value.chunk_index == k and caught.value.offset == offset
    assert b"".join(produced) == data[: k * CHUNK]  # everything before it was good


def test_flipped_length_or_header_is_detected() -> None:
    blob = bytearray(encrypt(os.urandom(3 * CHUNK)))
    offset, _ = chunk_offsets(bytes(blob))[1]
    length_flip = bytearray(blob)
    length_flip[offset + 3] ^= 0x01
    with pytest.raises(DecryptError) as caught:
        decrypt(bytes(length_flip))
    assert caught.value.chunk_index == 1
    header_flip = bytearray(blob)
    header_flip[10] ^= 0x01  # the chunk size: part of every chunk's associated data
    with pytest.raises(DecryptError):
        decrypt(bytes(header_flip))
    with pytest.raises(DecryptError, match="header"):
        decrypt(b"not an encrypted recording at all")


def test_data_after_the_final_chunk_is_detected() -> None:
    blob = encrypt(os.urandom(2 * CHUNK))
    with pytest.raises(DecryptError, match="after the final chunk"):
        decrypt(blob + blob[-40:])


def test_wrong_key_fails_at_chunk_0() -> None:
    blob = encrypt(os.urandom(CHUNK))
    with pytest.raises(DecryptError) as caught:
        b"".join(decrypt_chunks(io.BytesIO(blob), new_data_key()))
    assert caught.value.chunk_index == 0


def test_abandoned_writer_leaves_sealed_chunks_readable(tmp_path: Path) -> None:
    path = tmp_path / "media.enc"
    data = os.urandom(3 * CHUNK + 10)
    writer = EncryptedWriter(path.open("wb"), KEY, "rec-1", chunk_size=CHUNK)
    writer.write(data)
    writer.flush()
    writer.write(b"never sealed")
    writer.abandon()
    writer.write(b"after the crash")  # discarded, never raises
    with path.open("rb") as file:
        assert b"".join(decrypt_chunks(file, KEY, allow_truncated=True)) == data
    digests, clean = chunk_digests(path)
    assert len(digests) == writer.chunks == 4 and clean
    assert digests == writer.chunk_sha256


def test_decrypt_stream_and_crypto_shredding(tmp_path: Path) -> None:
    master = MasterKey.generate()
    data_key = new_data_key()
    key_path = tmp_path / "key.wrapped"
    write_private_file(key_path, wrap_data_key(master, data_key, "rec-1"))
    media = tmp_path / "media.enc"
    writer = EncryptedWriter(media.open("wb"), data_key, "rec-1", chunk_size=CHUNK)
    writer.write(b"hello" * 1000)
    writer.close()
    assert b"".join(decrypt_stream(media, master)) == b"hello" * 1000
    with pytest.raises(KeyUnwrapError, match="wrong master key"):
        b"".join(decrypt_stream(media, MasterKey.generate()))
    assert destroy_key(key_path)
    assert not key_path.exists()
    assert not destroy_key(key_path)
    with pytest.raises(KeyUnwrapError, match="destroyed"):
        b"".join(decrypt_stream(media, master))
