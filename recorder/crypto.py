"""Encryption at rest: the master key, per-recording data keys, and the chunked media format.

Keys. The server's 32-byte master key lives in ``<data dir>/master.key`` (mode 0600, created on
first use) or comes from ``SFU_MASTER_KEY`` (base64); every node of a cluster needs the same
one. Each recording gets a random 256-bit data key, stored only wrapped: AES-256-GCM under the
master key, with the recording id as associated data, so a wrapped key moved to another
recording does not open. Destroying the wrapped key makes the media unreadable for good
(crypto-shredding), even from backups of the media file alone.

Media (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, as in Tink and age)::

    header   magic "OKREC1\\n\\0" | u32 max chunk plaintext | 7-byte random nonce prefix
             | u8 id length | recording id
    chunk*   u32 ciphertext length | AES-256-GCM(data key, nonce, plaintext, aad=header)
    nonce    prefix (7) | u32 chunk counter, big-endian | u8 1 for the last chunk, else 0

The counter in the nonce makes a reordered or dropped chunk fail authentication at its index;
the last-chunk flag makes a truncated file (a crash, or someone cutting it) detectable, while
every complete chunk before the cut still decrypts: :func:`decrypt_chunks` yields the good
prefix and then reports "truncated after chunk N" (or stops quietly with
``allow_truncated=True``). Chunks hold at most ``chunk_size`` bytes but may be shorter:
:meth:`EncryptedWriter.flush` seals what it has, which bounds what a killed process loses.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CHUNK_SIZE",
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE",
    "DecryptError",
    "EncryptedWriter",
    "KeyUnwrapError",
    "MasterKey",
    "MasterKeyError",
    "StreamStatus",
    "chunk_digests",
    "decrypt_chunks",
    "decrypt_stream",
    "destroy_key",
    "load_master_key",
    "new_data_key",
    "read_wrapped_key",
    "unwrap_data_key",
    "wrap_data_key",
    "write_private_file",
]

MASTER_KEY_FILE = "master.key"
MASTER_KEY_ENV = "SFU_MASTER_KEY"
KEY_BYTES = 32
CHUNK_SIZE = 64 * 1024
TAG_BYTES = 16
MAGIC = b"OKREC1\n\x00"
_WRAP_MAGIC = b"OKWK1\x00"
_WRAP_AAD = b"oktorus-sfu recording data key\x00"
_LENGTH = struct.Struct("!I")
_NONCE_PREFIX_BYTES = 7
_MAX_ID_BYTES = 255
_URLSAFE_TO_STD = str.maketrans("-_", "+/")  # accept either base64 alphabet


class MasterKeyError(Exception):
    """The master key cannot be loaded or created; the message says why."""


class KeyUnwrapError(Exception):
    """A wrapped data key does not open: wrong master key, another recording's, or damaged."""


class DecryptError(Exception):
    """The media file is damaged, tampered with, reordered, truncated or under another key.

    ``chunk_index`` is the first chunk that failed (-1: the header), ``offset`` its byte offset.
    """

    def __init__(self, chunk_index: int, offset: int, reason: str) -> None:
        where = "header" if chunk_index < 0 else f"chunk {chunk_index}"
        super().__init__(f"{where} at byte {offset}: {reason}")
        self.chunk_index = chunk_index
        self.offset = offset
        self.reason = reason


# --- the master key -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The key that wraps every recording's data key (never printed)."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise MasterKeyError(f"the master key must be {KEY_BYTES} bytes")

    @property
    def key_id(self) -> bytes:
        """8 bytes naming this key in wrapped keys, so "wrong master key" is told apart."""
        return hashlib.sha256(b"oktorus-sfu master key id\x00" + self.key).digest()[:8]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist) with mode 0600 from the first byte, write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_master_file(path: Path) -> MasterKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise MasterKeyError(f"cannot open master key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"master key {path} is not a regular file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise MasterKeyError(
                f"master key {path} is readable by group or others; run: chmod 600 {path}"
            )
        data = handle.read(KEY_BYTES + 1)
    if len(data) != KEY_BYTES:
        raise MasterKeyError(f"master key {path} must hold exactly {KEY_BYTES} bytes")
    return MasterKey(data)


def load_master_key(data_dir: Path, environ: Mapping[str, str] | None = None) -> MasterKey:
    """The master key from ``SFU_MASTER_KEY`` (base64) or ``data_dir/master.key``.

    The file is created on first use (mode 0600, atomically: if two workers start at once,
    both end up with the one that was linked first). Raises :class:`MasterKeyError`.
    """
    env = os.environ if environ is None else environ
    encoded = env.get(MASTER_KEY_ENV)
    if encoded:
        text = encoded.strip().translate(_URLSAFE_TO_STD).rstrip("=")
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{MASTER_KEY_ENV} is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"{MASTER_KEY_ENV} must decode to {KEY_BYTES} bytes")
        return MasterKey(raw)
    path = data_dir / MASTER_KEY_FILE
    if not path.exists() and not path.is_symlink():
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = data_dir / f".{MASTER_KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
            write_private_file(tmp, os.urandom(KEY_BYTES))
            try:
                os.link(tmp, path)  # publishes the complete file, or fails if one appeared
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            _fsync_dir(data_dir)
        except OSError as exc:
            raise MasterKeyError(f"cannot create master key {path}: {exc.strerror}") from None
    return _read_master_file(path)


# --- data keys ------------------------------------------------------------------------


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _wrap_aad(recording_id: str) -> bytes:
    return _WRAP_AAD + recording_id.encode("utf-8")


def wrap_data_key(master: MasterKey, data_key: bytes, recording_id: str) -> bytes:
    """``magic | master key id | nonce | AES-GCM(master, data key, aad=recording id)``."""
    nonce = os.urandom(12)
    sealed = AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(recording_id))
    return _WRAP_MAGIC + master.key_id + nonce + sealed


def unwrap_data_key(master: MasterKey, blob: bytes, recording_id: str) -> bytes:
    """The data key of ``recording_id``; raises :class:`KeyUnwrapError`."""
    head = len(_WRAP_MAGIC)
    if len(blob) != head + 8 + 12 + KEY_BYTES + TAG_BYTES or not blob.startswith(_WRAP_MAGIC):
        raise KeyUnwrapError("wrapped key is damaged")
    if blob[head : head + 8] != master.key_id:
        raise KeyUnwrapError("wrong master key")
    nonce = blob[head + 8 : head + 20]
    try:
        return AESGCM(master.key).decrypt(nonce, blob[head + 20 :], _wrap_aad(recording_id))
    except InvalidTag:
        raise KeyUnwrapError("wrapped key is damaged or belongs to another recording") from None


def read_wrapped_key(path: Path) -> bytes:
    """The wrapped key file; raises :class:`KeyUnwrapError` if it is gone (key destroyed)."""
    try:
        return path.read_bytes()[:1024]
    except FileNotFoundError:
        raise KeyUnwrapError("the recording's key was destroyed (erased)") from None
    except OSError as exc:
        raise KeyUnwrapError(f"cannot read {path.name}: {exc.strerror}") from None


def destroy_key(path: Path) -> bool:
    """Crypto-shred: overwrite the wrapped key with random bytes, fsync, unlink.

    Returns False if there was no key. The overwrite is best effort on copy-on-write or
    journalling file systems and SSDs; what makes the shredding hold is that the data key
    never exists unwrapped on disk and backups of the media alone are useless.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        os.write(fd, os.urandom(max(size, 64)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    _fsync_dir(path.parent)
    return True


# --- the chunked stream ---------------------------------------------------------------


def _header(nonce_prefix: bytes, recording_id: str, chunk_size: int) -> bytes:
    ident = recording_id.encode("utf-8")
    if not 0 < len(ident) <= _MAX_ID_BYTES:
        raise ValueError("recording id must be 1-255 bytes of UTF-8")
    return MAGIC + _LENGTH.pack(chunk_size) + nonce_prefix + bytes((len(ident),)) + ident


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + _LENGTH.pack(counter) + (b"\x01" if last else b"\x00")


class EncryptedWriter:
    """Appends plaintext to an encrypted media file, one sealed chunk at a time.

    Not thread-safe: one writer thread. ``write`` seals each full chunk as it fills;
    ``flush`` seals the remainder as a short chunk and hands it to the OS (so it survives the
    process being killed), fsyncing when ``fsync`` is set; ``close`` seals the last chunk.
    ``chunk_sha256`` lists the SHA-256 of every chunk record as written (for the manifest).
    """

    def __init__(
        self,
        file: BinaryIO,
        data_key: bytes,
        recording_id: str,
        *,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if not 0 < chunk_size <= 1 << 24:
            raise ValueError("chunk_size must be in 1..16 MiB")
        self._file = file
        self._aead = AESGCM(data_key)
        self._prefix = os.urandom(_NONCE_PREFIX_BYTES)
        self._header = _header(self._prefix, recording_id, chunk_size)
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        self.chunk_sha256: list[str] = []
        self.bytes_written = len(self._header)
        self.plaintext_bytes = 0
        file.write(self._header)
        file.flush()

    @property
    def chunks(self) -> int:
        return self._counter

    @property
    def pending(self) -> int:
        """Plaintext bytes not yet sealed (lost if the process dies now)."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        return self._closed

    def _seal(self, plaintext: bytes | bytearray | memoryview, last: bool) -> None:
        if self._counter >= 0xFFFFFFFF:
            raise OverflowError("too many chunks")
        sealed = self._aead.encrypt(
            _nonce(self._prefix, self._counter, last), bytes(plaintext), self._header
        )
        record = _LENGTH.pack(len(sealed)) + sealed
        self._file.write(record)
        self.chunk_sha256.append(hashlib.sha256(record).hexdigest())
        self.bytes_written += len(record)
        self.plaintext_bytes += len(plaintext)
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append plaintext; returns its length (the file-object protocol PyAV expects).

        After :meth:`close` or :meth:`abandon`, data is silently discarded.
        """
        if self._closed:
            return len(data)
        self._buffer += data
        size = self._chunk_size
        if len(self._buffer) >= size:
            view = memoryview(self._buffer)
            pos = 0
            # Keep at least one byte back: only close() may seal the final chunk.
            while len(self._buffer) - pos > size:
                self._seal(view[pos : pos + size], last=False)
                pos += size
            view.release()
            del self._buffer[:pos]
        return len(data)

    def flush(self, *, fsync: bool = False) -> None:
        """Seal buffered plaintext as a (short) chunk and hand everything to the OS."""
        if self._closed:
            return
        if self._buffer:
            self._seal(self._buffer, last=False)
            self._buffer.clear()
        self._file.flush()
        if fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Seal the final chunk (with the last flag), fsync and close the file."""
        if self._closed:
            return
        self._seal(self._buffer, last=True)
        self._buffer.clear()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._closed = True
        self._file.close()

    def abandon(self) -> None:
        """Close without a final chunk, dropping unsealed data: what a killed process leaves."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        with contextlib.suppress(OSError):
            self._file.close()


@dataclass(slots=True)
class StreamStatus:
    """Filled in by :func:`decrypt_chunks` as it goes."""

    recording_id: str = ""
    chunks: int = 0
    plaintext_bytes: int = 0
    good_bytes: int = 0  # file offset just after the last authenticated chunk
    complete: bool = False
    truncation: str | None = None


def _read_exact(file: BinaryIO, size: int) -> bytes:
    parts = []
    while size > 0:
        part = file.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _read_header(file: BinaryIO) -> tuple[bytes, bytes, int, str]:
    """(header bytes, nonce prefix, chunk size, recording id)."""
    fixed = _read_exact(file, len(MAGIC) + 4 + _NONCE_PREFIX_BYTES + 1)
    if len(fixed) < len(MAGIC) + 12 or not fixed.startswith(MAGIC):
        raise DecryptError(-1, 0, "not an encrypted recording (bad header)")
    (chunk_size,) = _LENGTH.unpack_from(fixed, len(MAGIC))
    prefix = fixed[len(MAGIC) + 4 : len(MAGIC) + 4 + _NONCE_PREFIX_BYTES]
    ident = _read_exact(file, fixed[-1])
    if len(ident) != fixed[-1] or not 0 < chunk_size <= 1 << 24:
        raise DecryptError(-1, 0, "damaged header")
    try:
        recording_id = ident.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptError(-1, 0, "damaged header") from None
    return fixed + ident, prefix, chunk_size, recording_id


def decrypt_chunks(
    file: BinaryIO,
    data_key: bytes,
    *,
    recording_id: str | None = None,
    allow_truncated: bool = False,
    status: StreamStatus | None = None,
) -> Iterator[bytes]:
    """Yield the plaintext of each chunk in order, authenticating as it goes.

    Raises :class:`DecryptError` at the first chunk that fails (tampered, reordered, another
    key) or after the good prefix when the file is truncated, unless ``allow_truncated``, in
    which case iteration just ends and ``status.truncation`` says where. ``recording_id``, if
    given, must match the header's.
    """
    state = status if status is not None else StreamStatus()
    header, prefix, chunk_size, found_id = _read_header(file)
    state.recording_id = found_id
    if recording_id is not None and found_id != recording_id:
        raise DecryptError(-1, 0, "the file belongs to another recording")
    aead = AESGCM(data_key)
    offset = state.good_bytes = len(header)
    index = 0
    while True:
        length_bytes = _read_exact(file, 4)
        if len(length_bytes) < 4:
            reason = f"truncated after chunk {index - 1}" if index else "truncated: no chunk at all"
            state.truncation = reason
            if allow_truncated:
                return
            raise DecryptError(index, offset, reason)
        (length,) = _LENGTH.unpack(length_bytes)
        if not TAG_BYTES <= length <= chunk_size + TAG_BYTES:
            raise DecryptError(index, offset, "bad chunk length (tampered or misaligned)")
        sealed = _read_exact(file, length)
        if len(sealed) < length:
            reason = f"truncated after chunk {index - 1}" if index else "truncated inside chunk 0"
            state.truncation = reason
            if allow_truncated:
                return
            raise DecryptError(index, offset, reason)
        last = False
        try:
            plaintext = aead.decrypt(_nonce(prefix, index, False), sealed, header)
        except InvalidTag:
            try:
                plaintext = aead.decrypt(_nonce(prefix, index, True), sealed, header)
                last = True
            except InvalidTag:
                raise DecryptError(
                    index, offset, "authentication failed (tampered, reordered or wrong key)"
                ) from None
        state.chunks = index + 1
        state.plaintext_bytes += len(plaintext)
        if plaintext:
            yield plaintext
        offset += 4 + length
        state.good_bytes = offset
        index += 1
        if last:
            if file.read(1):
                raise DecryptError(index, offset, "data after the final chunk")
            state.complete = True
            return


def decrypt_stream(
    path: Path,
    master: MasterKey,
    *,
    key_path: Path | None = None,
    allow_truncated: bool = False,
    status: StreamStatus | None = None,
) -> Iterator[bytes]:
    """Plaintext of the media file ``path`` whose wrapped key is ``key_path``.

    ``key_path`` defaults to ``key.wrapped`` beside the media (the store's layout). Raises
    :class:`KeyUnwrapError` if the key is gone or does not open, :class:`DecryptError` as
    :func:`decrypt_chunks`. Blocking file I/O: iterate it in a thread from async code.
    """
    wrapped = read_wrapped_key(key_path or path.with_name("key.wrapped"))
    with path.open("rb") as file:
        _, _, _, recording_id = _read_header(file)
        data_key = unwrap_data_key(master, wrapped, recording_id)
        file.seek(0)
        yield from decrypt_chunks(
            file,
            data_key,
            recording_id=recording_id,
            allow_truncated=allow_truncated,
            status=status,
        )


def chunk_digests(path: Path) -> tuple[list[str], bool]:
    """SHA-256 of each complete chunk record as stored, and whether the file ends cleanly.

    Reads framing only (no key needed): enough to check a file against its manifest.
    """
    digests: list[str] = []
    with path.open("rb") as file:
        _, _, chunk_size, _ = _read_header(file)
        while True:
            length_bytes = _read_exact(file, 4)
            if len(length_bytes) < 4:
                return digests, not length_bytes
            (length,) = _LENGTH.unpack(length_bytes)
            if length > chunk_size + TAG_BYTES:
                return digests, False
            sealed = _read_exact(file, length)
            if len(sealed) < length:
                return digests, False
            digests.append(hashlib.sha256(length_bytes + sealed).hexdigest())
