"""The server's Ed25519 keys: the signing key for the tokens it issues and the keys it trusts.

Layout of the data directory (created with mode 0700)::

    signing-key.pem        PKCS#8 PEM, created on first use with mode 0600; refused if the group
                           or others may read it. Every node of a cluster gets the same file.
    trusted-keys/<kid>.pem extra SubjectPublicKeyInfo PEM Ed25519 public keys (e.g. an external
                           consent issuer); the file stem is the key id (``kid``).

The signing key's ``kid`` is the first 16 characters of base64url(SHA-256(raw public key)), so it
is stable across restarts and identical on every node sharing the key file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SIGNING_KEY_FILE",
    "TRUSTED_KEYS_DIR",
    "KeyStore",
    "KeyStoreError",
    "kid_for",
]

SIGNING_KEY_FILE = "signing-key.pem"
TRUSTED_KEYS_DIR = "trusted-keys"

_KID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_KEY_FILE_BYTES = 64 * 1024


class KeyStoreError(Exception):
    """The data directory or a key file cannot be used; the message says which and why."""


def kid_for(public_key: Ed25519PublicKey) -> str:
    """Key id of a public key: first 16 chars of base64url(SHA-256(raw 32-byte public key))."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(raw).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:16]


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not data_dir.is_dir():
            raise KeyStoreError(f"data dir {data_dir} exists and is not a directory") from None
        return
    except OSError as exc:
        raise KeyStoreError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    try:  # mkdir's mode is filtered by the umask; make it exactly 0700
        data_dir.chmod(0o700)
    except OSError as exc:
        raise KeyStoreError(f"cannot chmod data dir {data_dir}: {exc.strerror}") from None


def _read_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyStoreError(f"cannot open signing key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyStoreError(f"signing key {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyStoreError(
                f"signing key {path} is readable by group or others (mode {mode:04o}); "
                f"run: chmod 600 {path}"
            )
        try:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyStoreError(f"cannot read signing key {path}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyStoreError(f"signing key {path} is too large to be a key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyStoreError(
            f"signing key {path} is not an unencrypted PKCS#8 PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"signing key {path} is not an Ed25519 key")
    return key


def _write_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte (never world-readable) and write it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only have narrowed it; make it exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
)


def _create_signing_key(path: Path) -> None:
    """Write a new key to ``path`` atomically; if another process won the race, keep theirs."""
    pem = _private_pem(Ed25519PrivateKey.generate())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_exclusive(tmp, pem)
        try:
            # link() publishes the complete file, or fails if one appeared meanwhile (another
            # worker or node starting at the same moment): theirs is kept and ours dropped.
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            with contextlib.suppress(FileExistsError):  # no hard links here: O_EXCL create
                _write_exclusive(path, pem)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise KeyStoreError(f"cannot create signing key {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    trusted: dict[str, Ed25519PublicKey] = {}
    try:
        if not directory.exists():
            return trusted
        if not directory.is_dir():
            raise KeyStoreError(f"{directory} is not a directory")
        files = sorted(directory.glob("*.pem"))
    except OSError as exc:
        raise KeyStoreError(f"cannot list {directory}: {exc.strerror}") from None
    for file in files:
        kid = file.stem
        if not _KID_RE.match(kid):
            raise KeyStoreError(
                f"trusted key {file}: the file name must be a key id of 1-64 characters "
                "[A-Za-z0-9_.-]"
            )
        try:
            data = file.read_bytes()[: _MAX_KEY_FILE_BYTES + 1]
        except OSError as exc:
            raise KeyStoreError(f"cannot read trusted key {file}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise KeyStoreError(f"trusted key {file} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyStoreError(f"trusted key {file} is not an Ed25519 public key")
        trusted[kid] = key
    return trusted


class KeyStore:
    """The signing key and every public key tokens may be verified with, looked up by ``kid``."""

    __slots__ = ("_signing_key", "_signing_kid", "_verify_keys")

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        trusted: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        """A store over in-memory keys (``open`` reads them from a data dir)."""
        self._signing_key = signing_key
        self._signing_kid = kid_for(signing_key.public_key())
        verify: dict[str, Ed25519PublicKey] = {}
        for kid, key in (trusted or {}).items():
            if not _KID_RE.match(kid):
                raise KeyStoreError(f"invalid key id {kid!r}")
            if kid == self._signing_kid:
                raise KeyStoreError(f"trusted key id {kid!r} clashes with the signing key's id")
            verify[kid] = key
        verify[self._signing_kid] = signing_key.public_key()
        self._verify_keys = verify

    @classmethod
    def open(cls, data_dir: Path) -> KeyStore:
        """Load (creating on first use) the keys of ``data_dir``; raises :class:`KeyStoreError`."""
        _ensure_data_dir(data_dir)
        path = data_dir / SIGNING_KEY_FILE
        try:
            missing = not path.exists() and not path.is_symlink()
        except OSError as exc:
            raise KeyStoreError(f"cannot access {path}: {exc.strerror}") from None
        if missing:
            _create_signing_key(path)
        signing_key = _read_signing_key(path)
        trusted = _read_trusted_keys(data_dir / TRUSTED_KEYS_DIR)
        return cls(signing_key, trusted)

    @classmethod
    def generate(cls) -> KeyStore:
        """A store with a fresh in-memory signing key and nothing else (tests, tools)."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def signing_kid(self) -> str:
        """Key id written in the ``kid`` header of every token this store signs."""
        return self._signing_kid

    @property
    def kids(self) -> frozenset[str]:
        """Every key id a token may name: the signing key's and the trusted keys'."""
        return frozenset(self._verify_keys)

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key with this id, or None if it is unknown."""
        return self._verify_keys.get(kid)

    def sign(self, claims: Mapping[str, object], typ: str) -> str:
        """A compact JWS (JWT) over ``claims``: header ``{"alg": "EdDSA", "kid", "typ"}``."""
        return jwt.encode(
            dict(claims),
            self._signing_key,
            algorithm="EdDSA",
            headers={"kid": self._signing_kid, "typ": typ},
        )

    def __repr__(self) -> str:
        return f"KeyStore(signing_kid={self._signing_kid!r}, kids={sorted(self._verify_keys)!r})"
