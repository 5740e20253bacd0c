"""The signed manifest of a recording: what was recorded, under which consent, byte for byte.

A compact JWS (``typ`` :data:`MANIFEST_TYP`, Ed25519, signed with the server's
:class:`~sfu.keys.KeyStore`) over: recording id, room, participant identity, the consent
``jti``s and scope it was made under, start/stop times, how it ended, container and tracks,
and the SHA-256 of every encrypted chunk record of ``media.enc``. With it anyone holding the
public key can show that a media file is the one recorded, complete and unaltered, and under
which consent, without decrypting it.

Verification follows the rules of :mod:`sfu.tokens` (``alg`` pinned, ``typ`` pinned, known
``kid``, no key-carrying headers) but allows large tokens (one hash per chunk) and needs no
``exp``: a manifest is evidence, it does not expire.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from recorder.crypto import DecryptError, chunk_digests
from sfu.keys import KeyStore
from sfu.tokens import ALGORITHM, REFUSED_HEADERS

__all__ = [
    "MANIFEST_TYP",
    "Manifest",
    "ManifestInvalid",
    "check_media",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_TYP = "sfu-manifest+jwt"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestInvalid(Exception):
    """The manifest is forged, damaged, or does not match the media file."""


@dataclass(frozen=True, slots=True)
class Manifest:
    recording_id: str
    room: str
    subject: str
    consent_jtis: tuple[str, ...]
    scope: frozenset[str]
    started_at: float
    stopped_at: float
    state: str  # "complete" | "interrupted" | "failed"
    format: str
    media_type: str
    tracks: tuple[dict[str, Any], ...]
    chunks: int
    chunk_sha256: tuple[str, ...]
    media_bytes: int
    issuer: str = "oktorus-sfu"
    issued_at: float = 0.0

    def claims(self) -> dict[str, Any]:
        return {
            "iss": self.issuer,
            "iat": int(self.issued_at),
            "recording": self.recording_id,
            "room": self.room,
            "sub": self.subject,
            "consent": list(self.consent_jtis),
            "scope": sorted(self.scope),
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "state": self.state,
            "format": self.format,
            "media_type": self.media_type,
            "tracks": [dict(t) for t in self.tracks],
            "chunks": self.chunks,
            "chunk_sha256": list(self.chunk_sha256),
            "media_bytes": self.media_bytes,
        }

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Manifest:
        try:
            manifest = cls(
                recording_id=str(claims["recording"]),
                room=str(claims["room"]),
                subject=str(claims["sub"]),
                consent_jtis=tuple(str(j) for j in claims["consent"]),
                scope=frozenset(str(s) for s in claims["scope"]),
                started_at=float(claims["started_at"]),
                stopped_at=float(claims["stopped_at"]),
                state=str(claims["state"]),
                format=str(claims["format"]),
                media_type=str(claims["media_type"]),
                tracks=tuple(dict(t) for t in claims["tracks"]),
                chunks=int(claims["chunks"]),
                chunk_sha256=tuple(str(h) for h in claims["chunk_sha256"]),
                media_bytes=int(claims["media_bytes"]),
                issuer=str(claims["iss"]),
                issued_at=float(claims["iat"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestInvalid(f"malformed manifest: {exc}") from None
        if manifest.chunks != len(manifest.chunk_sha256) or not all(
            _HEX64.match(h) for h in manifest.chunk_sha256
        ):
            raise ManifestInvalid("malformed manifest: chunk hashes")
        return manifest


def sign_manifest(keys: KeyStore, manifest: Manifest) -> str:
    return keys.sign(manifest.claims(), MANIFEST_TYP)


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        raise ManifestInvalid("malformed manifest header") from None
    if not isinstance(header, dict):
        raise ManifestInvalid("malformed manifest header")
    return header


def verify_manifest(keys: KeyStore, token: str) -> Manifest:
    """The manifest if its signature and headers are valid; raises :class:`ManifestInvalid`."""
    if not isinstance(token, str) or len(token) > MAX_MANIFEST_BYTES or token.count(".") != 2:
        raise ManifestInvalid("malformed manifest")
    header = _header(token)
    if header.get("alg") != ALGORITHM:
        raise ManifestInvalid("algorithm not allowed")
    if header.get("typ") != MANIFEST_TYP:
        raise ManifestInvalid("wrong token type")
    if REFUSED_HEADERS.intersection(header):
        raise ManifestInvalid("header not allowed")
    kid = header.get("kid")
    public_key = keys.public_key(kid) if isinstance(kid, str) else None
    if public_key is None:
        raise ManifestInvalid("unknown key id")
    try:
        claims = jwt.decode(
            token,
            key=public_key,
            algorithms=[ALGORITHM],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "require": ["iss", "iat", "recording"],
            },
        )
    except jwt.PyJWTError:
        raise ManifestInvalid("bad signature or malformed manifest") from None
    return Manifest.from_claims(claims)


def check_media(manifest: Manifest, media_path: Path) -> str | None:
    """None if ``media_path`` is exactly the file the manifest describes, else what differs."""
    try:
        digests, clean_end = chunk_digests(media_path)
    except (OSError, DecryptError) as exc:
        return f"media unreadable: {exc}"
    for index, (found, expected) in enumerate(zip(digests, manifest.chunk_sha256, strict=False)):
        if found != expected:
            return f"chunk {index} differs from the manifest"
    if len(digests) != manifest.chunks:
        return f"media has {len(digests)} chunks, the manifest {manifest.chunks}"
    if not clean_end:
        return "media has trailing bytes after its last complete chunk"
    return None
