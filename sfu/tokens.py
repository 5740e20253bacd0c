"""JWT verification shared by access tokens (:mod:`signaling.access`) and consent tokens.

The rules (RFC 8725, protocol.md "Tokens"), checked in this order:

1. size: at most :data:`MAX_TOKEN_BYTES`;
2. the header, before any signature work: ``alg`` exactly ``EdDSA`` (no ``none``, HS*, RS*...);
   ``typ`` exactly the one expected (an ``sfu-consent+jwt`` never passes as an
   ``sfu-access+jwt``); ``kid`` present and known to the :class:`~sfu.keys.KeyStore`; no key
   or certificate carried or pointed to by the token (``jku``, ``x5u``, ``jwk``, ``x5c``), no
   ``crit`` (we understand no extension) and no ``b64``;
3. the signature, with PyJWT and ``algorithms=["EdDSA"]`` pinned;
4. the claims: the required ones present, ``iss`` and ``aud`` as expected (a token carrying an
   ``aud`` is refused where none is expected), ``exp`` always required, ``exp``/``nbf``/``iat``
   numeric and checked against ``now`` with the leeway.

Every failure raises :class:`TokenError` whose message is short and safe to send to a client.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import jwt

from sfu.keys import KeyStore

__all__ = ["ALGORITHM", "MAX_TOKEN_BYTES", "TokenError", "verify_jwt"]

ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 8 * 1024
#: Header parameters that make a verifier fetch or trust key material named by the token itself,
#: or change how it is processed; we accept none of them.
REFUSED_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit", "b64", "zip", "enc"})
_MAX_KID_LEN = 64
_COMPACT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class TokenError(Exception):
    """A token was refused; ``str(error)`` (also ``error.reason``) is a short, safe reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _unverified_header(token: str) -> dict[str, Any]:
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TokenError("malformed token header") from None
    if not isinstance(header, dict):
        raise TokenError("malformed token header")
    return header


def _number(payload: dict[str, Any], claim: str) -> float | None:
    if claim not in payload:
        return None
    value = payload[claim]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(f"claim {claim!r} must be a number")
    return float(value)


def verify_jwt(
    keys: KeyStore,
    token: str,
    *,
    typ: str,
    issuer: str | None,
    audience: str | None,
    required: Sequence[str],
    leeway_s: float,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a compact JWS signed by a key of ``keys`` and return its claims.

    ``typ`` is the expected ``typ`` header; ``issuer``/``audience`` the expected ``iss``/``aud``
    (None: not checked, and for ``aud`` none may be present); ``required`` the claims that must be
    present (``exp`` always is); ``now`` defaults to ``time.time()``. Raises :class:`TokenError`.
    """
    if not isinstance(token, str):
        raise TokenError("token must be a string")
    if len(token) > MAX_TOKEN_BYTES or len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    if not _COMPACT_RE.match(token):
        raise TokenError("malformed token")

    header = _unverified_header(token)
    if header.get("alg") != ALGORITHM:
        raise TokenError("algorithm not allowed")
    if header.get("typ") != typ:
        raise TokenError("wrong token type")
    refused = REFUSED_HEADERS.intersection(header)
    if refused:
        raise TokenError(f"header {sorted(refused)[0]!r} not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("missing key id")
    if len(kid) > _MAX_KID_LEN:
        raise TokenError("unknown key id")
    public_key = keys.public_key(kid)
    if public_key is None:
        raise TokenError("unknown key id")

    require = list(dict.fromkeys([*required, "exp"]))
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key=public_key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            audience=audience,
            options={
                "require": require,
                "verify_signature": True,
                # time claims are checked below against the caller's `now`
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_iss": issuer is not None,
                "verify_aud": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenError("bad signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"missing claim {exc.claim!r}") from None
    except jwt.InvalidIssuerError:
        raise TokenError("wrong issuer") from None
    except jwt.InvalidAudienceError:
        raise TokenError("wrong audience") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("algorithm not allowed") from None
    except jwt.DecodeError:
        raise TokenError("malformed token") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenError("invalid token") from None

    current = time.time() if now is None else now
    exp = _number(payload, "exp")
    nbf = _number(payload, "nbf")
    iat = _number(payload, "iat")
    if exp is None or current >= exp + leeway_s:
        raise TokenError("token expired")
    if nbf is not None and current < nbf - leeway_s:
        raise TokenError("token not yet valid")
    if iat is not None and iat > current + leeway_s:
        raise TokenError("token issued in the future")
    return payload
