"""Consent tokens: what a participant agreed to be recorded for, signed so anyone can check it.

A consent token is an Ed25519 JWT with header ``typ`` :data:`CONSENT_TYP` and the claims of
protocol.md "Tokens": ``iss``, ``aud`` (always :data:`AUDIENCE`), ``sub`` (the participant's
identity), ``room``, ``scope`` (a list, subset of ``["audio", "video"]``), ``purpose``, ``notice``
(SHA-256 hex of the exact notice text shown), ``method`` (how consent was collected), ``iat``,
``nbf``, ``exp`` and ``jti``.

:func:`verify_consent_token` is **async** on purpose: the last check asks a
:class:`~consent.revocation.RevocationStore` whether the ``jti`` was revoked, and the cluster
store lives in Redis. Every synchronous check (signature, header, claims, room, subject, scope,
times) runs first, so a forged or mismatched token is refused without any I/O. The revocation
lookup fails closed: if the store raises, the token is refused with "revocation state
unavailable". Every refusal is a :class:`ConsentInvalid`; its ``reason`` is short and safe to
send to a client (error code ``consent_invalid``).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from consent.revocation import RevocationStore
from sfu.keys import KeyStore
from sfu.tokens import TokenError, verify_jwt
from signaling.access import validate_identity, validate_room

__all__ = [
    "AUDIENCE",
    "CONSENT_TYP",
    "DEFAULT_ISSUER",
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "SCOPES",
    "ConsentClaims",
    "ConsentInvalid",
    "issue_consent_token",
    "notice_digest",
    "validate_scope",
    "verify_consent_token",
]

CONSENT_TYP = "sfu-consent+jwt"
AUDIENCE = "recorder"
DEFAULT_ISSUER = "oktorus-sfu"
SCOPES = frozenset({"audio", "video"})
DEFAULT_TTL_S = 4 * 3600  # a support call; consent is re-asked for the next one
MAX_TTL_S = 366 * 24 * 3600
MAX_TEXT_LEN = 256
_REQUIRED = (
    "iss",
    "aud",
    "sub",
    "room",
    "scope",
    "purpose",
    "notice",
    "method",
    "iat",
    "exp",
    "jti",
)
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ConsentInvalid(Exception):
    """A consent token was refused, or consent does not cover what was asked.

    ``reason`` (also ``str(error)``) is short and safe to send to a client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ConsentClaims:
    """The verified claims of a consent token: what the ledger records and the recorder checks."""

    subject: str
    room: str
    scope: frozenset[str]
    purpose: str
    notice_sha256: str
    method: str
    jti: str
    issued_at: float
    expires_at: float
    issuer: str

    def covers(self, *, room: str, subject: str, kinds: Iterable[str], at: float) -> bool:
        """Whether this consent covers recording ``kinds`` of ``subject`` in ``room`` at ``at``."""
        return (
            self.room == room
            and self.subject == subject
            and frozenset(kinds) <= self.scope
            and self.issued_at - 60 <= at < self.expires_at
        )


def notice_digest(notice_text: str) -> str:
    """SHA-256 hex of the notice as shown (UTF-8, byte for byte: no normalisation)."""
    return hashlib.sha256(notice_text.encode("utf-8")).hexdigest()


def validate_scope(scope: Iterable[object]) -> frozenset[str]:
    """The scope as a frozenset if it is a non-empty subset of :data:`SCOPES`, else ValueError."""
    if isinstance(scope, str):
        raise ValueError("scope must be a list of kinds, not a string")
    result: set[str] = set()
    for kind in scope:
        if not isinstance(kind, str) or kind not in SCOPES:
            raise ValueError(f"unknown scope {kind!r}; known: {', '.join(sorted(SCOPES))}")
        result.add(kind)
    if not result:
        raise ValueError("scope must not be empty")
    return frozenset(result)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_LEN:
        raise ValueError(f"{what} must be a string of 1-{MAX_TEXT_LEN} characters")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def issue_consent_token(
    keys: KeyStore,
    *,
    room: str,
    subject: str,
    scope: Iterable[str],
    purpose: str,
    notice_text: str,
    method: str = "in-call-dialog",
    ttl_s: int = DEFAULT_TTL_S,
    issuer: str = DEFAULT_ISSUER,
    now: float | None = None,
) -> tuple[str, ConsentClaims]:
    """Sign a consent token for ``subject`` and return it with its claims (for the ledger).

    ``notice_text`` is the exact text shown to the participant; only its SHA-256 goes in the
    token. Raises ValueError for an invalid room, subject, scope, purpose, method or ttl.
    """
    validate_room(room)
    validate_identity(subject)
    kinds = validate_scope(scope)
    _text(purpose, "purpose")
    _text(method, "method")
    _text(issuer, "issuer")
    if not isinstance(notice_text, str) or not notice_text:
        raise ValueError("notice_text must be the non-empty text shown to the participant")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be an integer number of seconds in 1..{MAX_TTL_S}")
    issued_at = int(time.time() if now is None else now)
    claims = ConsentClaims(
        subject=subject,
        room=room,
        scope=kinds,
        purpose=purpose,
        notice_sha256=notice_digest(notice_text),
        method=method,
        jti=uuid.uuid4().hex,
        issued_at=float(issued_at),
        expires_at=float(issued_at + ttl_s),
        issuer=issuer,
    )
    payload: dict[str, object] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": subject,
        "room": room,
        "scope": sorted(kinds),
        "purpose": purpose,
        "notice": claims.notice_sha256,
        "method": method,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + ttl_s,
        "jti": claims.jti,
    }
    return keys.sign(payload, CONSENT_TYP), claims


def _claims_from_payload(payload: dict[str, Any]) -> ConsentClaims:
    try:
        room = validate_room(payload["room"])
        subject = validate_identity(payload["sub"])
        scope_value = payload["scope"]
        if not isinstance(scope_value, list) or len(scope_value) > 2 * len(SCOPES):
            raise ValueError("scope must be a short list")
        scope = validate_scope(scope_value)
        purpose = _text(payload["purpose"], "purpose")
        method = _text(payload["method"], "method")
        issuer = _text(payload["iss"], "iss")
        jti = _text(payload["jti"], "jti")
    except ValueError as exc:
        raise ConsentInvalid(f"invalid claim: {exc}") from None
    notice = payload["notice"]
    if not isinstance(notice, str) or not _SHA256_HEX_RE.match(notice):
        raise ConsentInvalid("invalid claim 'notice'")
    iat = payload["iat"]
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise ConsentInvalid("invalid claim 'iat'")
    return ConsentClaims(
        subject=subject,
        room=room,
        scope=scope,
        purpose=purpose,
        notice_sha256=notice,
        method=method,
        jti=jti,
        issued_at=float(iat),
        expires_at=float(payload["exp"]),  # checked numeric by verify_jwt
        issuer=issuer,
    )


async def verify_consent_token(
    keys: KeyStore,
    token: object,
    *,
    room: str,
    subject: str,
    needed_scope: Iterable[str],
    revocations: RevocationStore,
    issuers: Collection[str] = (DEFAULT_ISSUER,),
    leeway_s: float = 10,
    now: float | None = None,
) -> ConsentClaims:
    """Verify a consent token for recording ``needed_scope`` of ``subject`` in ``room``.

    Checks, in order: the JWT rules of :func:`sfu.tokens.verify_jwt` (size, ``alg`` EdDSA,
    ``typ`` :data:`CONSENT_TYP`, known ``kid``, no key-carrying headers, signature, ``aud``
    :data:`AUDIENCE`, required claims, ``exp``/``nbf``/``iat`` with ``leeway_s``); ``iss`` in
    ``issuers``; the claim types; ``room``, ``sub``; that ``scope`` covers ``needed_scope``; and
    last, with the only ``await``, that the ``jti`` is not revoked. Raises :class:`ConsentInvalid`.
    """
    if token is None or token == "":
        raise ConsentInvalid("no consent token")
    if not isinstance(token, str):
        raise ConsentInvalid("consent token must be a string")
    try:
        needed = validate_scope(needed_scope)
    except ValueError as exc:
        raise ConsentInvalid(str(exc)) from None
    try:
        payload = verify_jwt(
            keys,
            token,
            typ=CONSENT_TYP,
            issuer=None,  # several issuers may be trusted: checked below
            audience=AUDIENCE,
            required=_REQUIRED,
            leeway_s=leeway_s,
            now=now,
        )
    except TokenError as exc:
        raise ConsentInvalid(exc.reason) from None
    if payload.get("iss") not in issuers:
        raise ConsentInvalid("untrusted issuer")
    claims = _claims_from_payload(payload)
    if claims.room != room:
        raise ConsentInvalid("consent is for another room")
    if claims.subject != subject:
        raise ConsentInvalid("consent is for another participant")
    missing = needed - claims.scope
    if missing:
        raise ConsentInvalid(f"consent does not cover {', '.join(sorted(missing))}")
    try:
        revoked = await revocations.is_revoked(claims.jti)
    except Exception:  # noqa: BLE001 - fail closed on any store failure, whatever its type
        raise ConsentInvalid("revocation state unavailable") from None
    if revoked is not False:
        raise ConsentInvalid("consent revoked")
    return claims
