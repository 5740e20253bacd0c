"""Access tokens: who may join which room, as what, allowed to do what.

An access token is an Ed25519 JWT with header ``typ`` :data:`ACCESS_TYP` and the claims ``iss``,
``sub`` (identity), ``room``, ``role``, ``grants`` (subset of :data:`GRANTS`), ``iat``, ``exp``
and ``jti`` (protocol.md, "Tokens"). ``python -m sfu token`` and ``POST /v1/sessions`` issue
them with :func:`issue_access_token`; ``join`` and the HTTP API check them with
:func:`verify_access_token`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from sfu.keys import KeyStore
from sfu.tokens import TokenError, verify_jwt

__all__ = [
    "ACCESS_TYP",
    "GRANTS",
    "MAX_TTL_S",
    "AccessClaims",
    "TokenError",
    "issue_access_token",
    "validate_grants",
    "validate_identity",
    "validate_role",
    "validate_room",
    "verify_access_token",
]

ACCESS_TYP = "sfu-access+jwt"
GRANTS = frozenset({"publish", "subscribe", "record", "admin"})
MAX_TTL_S = 366 * 24 * 3600
MAX_NAME_LEN = 128
ROOM_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_T = TypeVar("_T")
_REQUIRED = ("iss", "sub", "room", "role", "grants", "iat", "exp", "jti")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified claims of an access token."""

    identity: str
    room: str
    role: str
    grants: frozenset[str]
    jti: str
    issued_at: float
    expires_at: float

    def can(self, grant: str) -> bool:
        """Whether the token carries ``grant``."""
        return grant in self.grants


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_LEN:
        raise ValueError(f"{what} must be at most {MAX_NAME_LEN} characters")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def validate_room(room: object) -> str:
    """The room id if valid (1-128 chars of ``[A-Za-z0-9_.:-]``), else ValueError."""
    value = _check_name(room, "room")
    if not ROOM_RE.match(value):
        raise ValueError("room may only contain letters, digits and _ . : -")
    return value


def validate_identity(identity: object) -> str:
    """The identity if valid (1-128 printable chars), else ValueError."""
    return _check_name(identity, "identity")


def validate_role(role: object) -> str:
    """The role if valid (1-128 printable chars, e.g. agent or customer), else ValueError."""
    return _check_name(role, "role")


def validate_grants(grants: Iterable[object]) -> frozenset[str]:
    """The grants as a frozenset if every one is in :data:`GRANTS`, else ValueError."""
    result: set[str] = set()
    for grant in grants:
        if not isinstance(grant, str) or grant not in GRANTS:
            raise ValueError(f"unknown grant {grant!r}; known: {', '.join(sorted(GRANTS))}")
        result.add(grant)
    return frozenset(result)


def issue_access_token(
    keys: KeyStore,
    *,
    room: str,
    identity: str,
    role: str = "customer",
    grants: Iterable[str] = ("publish", "subscribe"),
    ttl_s: int = 3600,
    issuer: str = "oktorus-sfu",
    now: float | None = None,
) -> str:
    """Sign an access token; raises ValueError for an invalid room/identity/role/grant/ttl."""
    validate_room(room)
    validate_identity(identity)
    validate_role(role)
    granted = validate_grants(grants)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be an integer number of seconds in 1..{MAX_TTL_S}")
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("issuer must be a non-empty string")
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": identity,
        "room": room,
        "role": role,
        "grants": sorted(granted),
        "iat": issued_at,
        "exp": issued_at + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return keys.sign(claims, ACCESS_TYP)


def _claim(value: object, check: Callable[[object], _T], name: str) -> _T:
    try:
        return check(value)
    except ValueError:
        raise TokenError(f"invalid claim {name!r}") from None


def _grants_claim(value: object) -> frozenset[str]:
    if not isinstance(value, list) or len(value) > 2 * len(GRANTS):
        raise ValueError("grants must be a short list")
    return validate_grants(value)


def verify_access_token(
    keys: KeyStore,
    token: str,
    *,
    issuer: str,
    leeway_s: float = 10,
    now: float | None = None,
) -> AccessClaims:
    """Verify an access token (signature, typ, issuer, times, claim types); raises TokenError."""
    payload = verify_jwt(
        keys,
        token,
        typ=ACCESS_TYP,
        issuer=issuer,
        audience=None,
        required=_REQUIRED,
        leeway_s=leeway_s,
        now=now,
    )
    room = _claim(payload["room"], validate_room, "room")
    identity = _claim(payload["sub"], validate_identity, "sub")
    role = _claim(payload["role"], validate_role, "role")
    grants = _claim(payload["grants"], _grants_claim, "grants")
    jti = payload["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_NAME_LEN:
        raise TokenError("invalid claim 'jti'")
    return AccessClaims(
        identity=identity,
        room=room,
        role=role,
        grants=grants,
        jti=jti,
        issued_at=float(payload["iat"]),
        expires_at=float(payload["exp"]),
    )
