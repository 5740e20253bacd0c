"""Consent tokens (consent.tokens): the valid case, and every forgery or misuse refused."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consent.revocation import MemoryRevocationStore, RedisRevocationStore, RevocationStore
from consent.tokens import (
    AUDIENCE,
    CONSENT_TYP,
    ConsentClaims,
    ConsentInvalid,
    issue_consent_token,
    notice_digest,
    verify_consent_token,
)
from sfu.keys import KeyStore
from signaling.access import issue_access_token

NOW = 1_800_000_000.0
ROOM = "room-1"
SUBJECT = "alice"
NOTICE = "This call is recorded for quality and training. You may withdraw at any time."


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand, so tests can write headers PyJWT would refuse to produce."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(sign(signing_input.encode("ascii")))


def payload(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "oktorus-sfu",
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "room": ROOM,
        "scope": ["audio", "video"],
        "purpose": "quality",
        "notice": notice_digest(NOTICE),
        "method": "in-call-dialog",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return claims


PRIVATE = Ed25519PrivateKey.generate()  # the server's signing key in these tests


@pytest.fixture
def keys() -> KeyStore:
    return KeyStore(PRIVATE)


@pytest.fixture
def store() -> MemoryRevocationStore:
    return MemoryRevocationStore()


async def verify(
    keys: KeyStore, token: object, revocations: RevocationStore, **kwargs: Any
) -> ConsentClaims:
    kwargs.setdefault("room", ROOM)
    kwargs.setdefault("subject", SUBJECT)
    kwargs.setdefault("needed_scope", ["audio", "video"])
    kwargs.setdefault("now", NOW + 5)
    return await verify_consent_token(keys, token, revocations=revocations, **kwargs)


async def refused(
    keys: KeyStore, token: object, revocations: RevocationStore, reason: str, **kwargs: Any
) -> None:
    with pytest.raises(ConsentInvalid) as caught:
        await verify(keys, token, revocations, **kwargs)
    assert reason in caught.value.reason


def issue(keys: KeyStore, **kwargs: Any) -> tuple[str, ConsentClaims]:
    kwargs.setdefault("room", ROOM)
    kwargs.setdefault("subject", SUBJECT)
    kwargs.setdefault("scope", ["audio", "video"])
    kwargs.setdefault("purpose", "quality")
    kwargs.setdefault("notice_text", NOTICE)
    kwargs.setdefault("now", NOW)
    return issue_consent_token(keys, **kwargs)


# --------------------------------------------------------------------------- valid


async def test_valid_token_round_trips(keys: KeyStore, store: MemoryRevocationStore) -> None:
    token, issued = issue(keys, ttl_s=600)
    claims = await verify(keys, token, store)
    assert claims == issued
    assert claims.scope == frozenset({"audio", "video"})
    assert claims.notice_sha256 == hashlib.sha256(NOTICE.encode()).hexdigest()
    assert claims.method == "in-call-dialog"
    assert claims.expires_at == NOW + 600
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": keys.signing_kid, "typ": CONSENT_TYP}


async def test_a_subset_of_the_scope_is_enough(
    keys: KeyStore, store: MemoryRevocationStore
) -> None:
    token, _ = issue(keys)
    claims = await verify(keys, token, store, needed_scope=["audio"])
    assert claims.covers(room=ROOM, subject=SUBJECT, kinds=["video"], at=NOW)


async def test_trusted_external_issuer(store: MemoryRevocationStore) -> None:
    external = Ed25519PrivateKey.generate()
    keys = KeyStore(Ed25519PrivateKey.generate(), {"ext-1": external.public_key()})
    token = compact(
        {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": "ext-1"},
        payload(iss="consent-vendor"),
        external.sign,
    )
    await refused(keys, token, store, "untrusted issuer")
    claims = await verify(keys, token, store, issuers=["oktorus-sfu", "consent-vendor"])
    assert claims.issuer == "consent-vendor"


def test_issue_refuses_bad_input(keys: KeyStore) -> None:
    bad: dict[str, Any]
    for bad in (
        {"scope": []},
        {"scope": ["screen"]},
        {"scope": "audio"},
        {"room": "bad room"},
        {"subject": ""},
        {"purpose": ""},
        {"notice_text": ""},
        {"ttl_s": 0},
    ):
        with pytest.raises(ValueError):
            issue(keys, **bad)


# --------------------------------------------------------------------------- refused


async def test_no_token(keys: KeyStore, store: MemoryRevocationStore) -> None:
    await refused(keys, None, store, "no consent token")
    await refused(keys, "", store, "no consent token")
    await refused(keys, 42, store, "must be a string")
    await refused(keys, "not.a.jwt!", store, "malformed")


async def test_signed_by_another_key(keys: KeyStore, store: MemoryRevocationStore) -> None:
    other = KeyStore.generate()
    token, _ = issue(other)
    await refused(keys, token, store, "unknown key id")
    # the same key id as ours, with another key's signature
    forged = compact(
        {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": keys.signing_kid},
        payload(),
        Ed25519PrivateKey.generate().sign,
    )
    await refused(keys, forged, store, "bad signature")


async def test_unknown_or_missing_kid(keys: KeyStore, store: MemoryRevocationStore) -> None:
    private = Ed25519PrivateKey.generate()
    for header in (
        {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": "nobody"},
        {"alg": "EdDSA", "typ": CONSENT_TYP},
    ):
        await refused(keys, compact(header, payload(), private.sign), store, "key id")


async def test_alg_none(keys: KeyStore, store: MemoryRevocationStore) -> None:
    for alg in ("none", "None", "NONE"):
        token = compact(
            {"alg": alg, "typ": CONSENT_TYP, "kid": keys.signing_kid}, payload(), lambda _: b""
        )
        await refused(keys, token, store, "algorithm not allowed")


async def test_hs256_keyed_with_the_public_key(
    keys: KeyStore, store: MemoryRevocationStore
) -> None:
    public = keys.public_key(keys.signing_kid)
    assert public is not None
    for secret in (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ):
        token = compact(
            {"alg": "HS256", "typ": CONSENT_TYP, "kid": keys.signing_kid},
            payload(),
            functools.partial(_hs256, secret),
        )
        await refused(keys, token, store, "algorithm not allowed")


def _hs256(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


async def test_access_token_is_not_consent(keys: KeyStore, store: MemoryRevocationStore) -> None:
    access = issue_access_token(keys, room=ROOM, identity=SUBJECT, grants=["record"], now=NOW)
    await refused(keys, access, store, "wrong token type")
    # consent claims under the access typ: still refused on the header
    relabelled = compact(
        {"alg": "EdDSA", "typ": "sfu-access+jwt", "kid": keys.signing_kid},
        payload(),
        PRIVATE.sign,
    )
    await refused(keys, relabelled, store, "wrong token type")


async def test_wrong_audience(keys: KeyStore, store: MemoryRevocationStore) -> None:
    for aud in ("sfu", ["someone-else"]):
        token = compact(
            {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": keys.signing_kid},
            payload(aud=aud),
            PRIVATE.sign,
        )
        await refused(keys, token, store, "wrong audience")


async def test_expired(keys: KeyStore, store: MemoryRevocationStore) -> None:
    token, _ = issue(keys, ttl_s=60)
    await verify(keys, token, store, now=NOW + 60 + 9)  # inside the 10 s leeway
    await refused(keys, token, store, "expired", now=NOW + 60 + 10)


async def test_not_yet_valid(keys: KeyStore, store: MemoryRevocationStore) -> None:
    token = compact(
        {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": keys.signing_kid},
        payload(nbf=int(NOW) + 300, iat=int(NOW)),
        PRIVATE.sign,
    )
    await refused(keys, token, store, "not yet valid", now=NOW)


async def test_wrong_room_subject_and_narrower_scope(
    keys: KeyStore, store: MemoryRevocationStore
) -> None:
    token, _ = issue(keys, scope=["audio"])
    await refused(keys, token, store, "another room", room="room-2")
    await refused(keys, token, store, "another participant", subject="mallory")
    await refused(keys, token, store, "does not cover video", needed_scope=["audio", "video"])
    await refused(keys, token, store, "does not cover video", needed_scope=["video"])


async def test_malformed_claims(keys: KeyStore, store: MemoryRevocationStore) -> None:
    bad: dict[str, Any]
    for bad in (
        {"scope": "audio video"},
        {"scope": ["audio", "screen"]},
        {"scope": []},
        {"notice": "not-a-hash"},
        {"sub": ""},
    ):
        token = compact(
            {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": keys.signing_kid},
            payload(**bad),
            PRIVATE.sign,
        )
        await refused(keys, token, store, "invalid claim")
    missing = payload()
    del missing["notice"]
    token = compact(
        {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": keys.signing_kid},
        missing,
        PRIVATE.sign,
    )
    await refused(keys, token, store, "missing claim 'notice'")


async def test_revoked(keys: KeyStore, store: MemoryRevocationStore) -> None:
    token, claims = issue(keys)
    await verify(keys, token, store)
    await store.revoke(claims.jti, claims.expires_at)
    await refused(keys, token, store, "consent revoked")


class _BrokenStore:
    """A revocation store whose backend is down."""

    def __init__(self, error: BaseException | None, answer: object = False) -> None:
        self.error = error
        self.answer = answer

    async def is_revoked(self, jti: str) -> bool:
        if self.error is not None:
            raise self.error
        return self.answer  # type: ignore[return-value]

    async def revoke(self, jti: str, until_ts: float) -> None:
        raise RuntimeError("down")

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        return lambda: None


async def test_revocation_store_unavailable_fails_closed(keys: KeyStore) -> None:
    token, _ = issue(keys)
    for error in (ConnectionError("down"), TimeoutError(), RuntimeError("bug"), KeyError("x")):
        await refused(keys, token, _BrokenStore(error), "revocation state unavailable")
    # a store answering anything but False (e.g. None from a broken backend) is not trusted
    await refused(keys, token, _BrokenStore(None, answer=None), "consent revoked")


async def test_redis_store_on_a_closed_port_fails_closed(keys: KeyStore) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens
    redis_store = RedisRevocationStore.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    try:
        token, _ = issue(keys)
        await refused(keys, token, redis_store, "revocation state unavailable")
    finally:
        await redis_store.close()


async def test_signature_checked_before_revocation_lookup(keys: KeyStore) -> None:
    """A forged token is refused without touching the (possibly remote) store."""

    class Spy(_BrokenStore):
        calls = 0

        async def is_revoked(self, jti: str) -> bool:
            Spy.calls += 1
            return False

    forged = compact(
        {"alg": "EdDSA", "typ": CONSENT_TYP, "kid": keys.signing_kid},
        payload(),
        Ed25519PrivateKey.generate().sign,
    )
    await refused(keys, forged, Spy(None), "bad signature")
    assert Spy.calls == 0
