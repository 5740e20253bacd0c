"""KeyStore (sfu.keys), JWT verification (sfu.tokens) and access tokens (signaling.access)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sfu.keys import SIGNING_KEY_FILE, TRUSTED_KEYS_DIR, KeyStore, KeyStoreError, kid_for
from sfu.tokens import MAX_TOKEN_BYTES, TokenError, verify_jwt
from signaling.access import (
    ACCESS_TYP,
    GRANTS,
    AccessClaims,
    issue_access_token,
    verify_access_token,
)

NOW = 1_800_000_000.0
ISSUER = "oktorus-sfu"
CONSENT_TYP = "sfu-consent+jwt"


# --------------------------------------------------------------------------- helpers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand, so tests can write headers PyJWT would refuse to produce."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    )
    return signing_input + "." + b64url(sign(signing_input.encode("ascii")))


def access_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "room": "room-1",
        "role": "customer",
        "grants": ["publish", "subscribe"],
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not _DROP}


_DROP = object()


def verify(keys: KeyStore, token: str, **kwargs: Any) -> AccessClaims:
    kwargs.setdefault("issuer", ISSUER)
    kwargs.setdefault("now", NOW)
    return verify_access_token(keys, token, **kwargs)


def refused(keys: KeyStore, token: str, reason: str, **kwargs: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        verify(keys, token, **kwargs)
    assert str(caught.value) == reason
    assert caught.value.reason == reason
    return caught.value


def raw_public(keys: KeyStore) -> bytes:
    public = keys.public_key(keys.signing_kid)
    assert public is not None
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(signing_key: Ed25519PrivateKey) -> KeyStore:
    return KeyStore(signing_key)


# --------------------------------------------------------------------------- KeyStore


def test_open_creates_private_dir_and_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "data"
    store = KeyStore.open(data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    key_file = data_dir / SIGNING_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in data_dir.iterdir()] == [SIGNING_KEY_FILE]  # no temp file left
    again = KeyStore.open(data_dir)
    assert again.signing_kid == store.signing_kid
    assert again.kids == frozenset({store.signing_kid})


def test_modes_hold_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        KeyStore.open(tmp_path / "d")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "d" / SIGNING_KEY_FILE).stat().st_mode) == 0o600


def test_kid_is_truncated_b64url_sha256_of_raw_public_key(keys: KeyStore) -> None:
    digest = hashlib.sha256(raw_public(keys)).digest()
    expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")[:16]
    assert keys.signing_kid == expected
    assert len(keys.signing_kid) == 16
    public = keys.public_key(keys.signing_kid)
    assert public is not None and kid_for(public) == expected
    assert keys.public_key("nope") is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_a_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    KeyStore.open(tmp_path)
    (tmp_path / SIGNING_KEY_FILE).chmod(mode)
    with pytest.raises(KeyStoreError, match="readable by group or others"):
        KeyStore.open(tmp_path)


def test_refuses_a_key_that_is_not_ed25519(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = tmp_path / SIGNING_KEY_FILE
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    with pytest.raises(KeyStoreError, match="not an Ed25519 key"):
        KeyStore.open(tmp_path)


def test_refuses_a_garbage_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / SIGNING_KEY_FILE
    key_file.write_bytes(b"not a key")
    key_file.chmod(0o600)
    with pytest.raises(KeyStoreError, match="not an unencrypted PKCS#8 PEM"):
        KeyStore.open(tmp_path)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyStoreError, match="not a directory"):
        KeyStore.open(tmp_path / "file")


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)

    def worker() -> str:
        barrier.wait()
        return KeyStore.open(tmp_path / "shared").signing_kid

    with ThreadPoolExecutor(max_workers=8) as pool:
        kids = [future.result() for future in [pool.submit(worker) for _ in range(8)]]
    assert len(set(kids)) == 1
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [SIGNING_KEY_FILE]


def test_trusted_keys_verify_tokens_of_another_issuer(tmp_path: Path) -> None:
    external = KeyStore.generate()
    public = external.public_key(external.signing_kid)
    assert public is not None
    trusted_dir = tmp_path / TRUSTED_KEYS_DIR
    trusted_dir.mkdir(parents=True)
    (trusted_dir / f"{external.signing_kid}.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    store = KeyStore.open(tmp_path)
    assert store.kids == frozenset({store.signing_kid, external.signing_kid})
    token = external.sign(access_claims(), ACCESS_TYP)
    assert verify(store, token).identity == "alice"
    # ... but the store still signs with its own key only
    assert jwt.get_unverified_header(store.sign(access_claims(), ACCESS_TYP))["kid"] == (
        store.signing_kid
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ok.pem", b"garbage", "not a PEM public key"),
        ("bad name.pem", b"", "must be a key id"),
    ],
)
def test_bad_trusted_key_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / TRUSTED_KEYS_DIR).mkdir(parents=True)
    (tmp_path / TRUSTED_KEYS_DIR / name).write_bytes(content)
    with pytest.raises(KeyStoreError, match=message):
        KeyStore.open(tmp_path)


def test_trusted_key_that_is_not_ed25519(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / TRUSTED_KEYS_DIR).mkdir(parents=True)
    (tmp_path / TRUSTED_KEYS_DIR / "ec.pem").write_bytes(pem)
    with pytest.raises(KeyStoreError, match="not an Ed25519 public key"):
        KeyStore.open(tmp_path)


def test_sign_writes_the_pinned_header(keys: KeyStore) -> None:
    header = jwt.get_unverified_header(keys.sign({"a": 1}, "x+jwt"))
    assert header == {"alg": "EdDSA", "kid": keys.signing_kid, "typ": "x+jwt"}


# --------------------------------------------------------------------------- access tokens


def test_valid_token_round_trip(keys: KeyStore) -> None:
    token = issue_access_token(
        keys, room="room-1", identity="agent@example.org", role="agent",
        grants=("publish", "subscribe", "record"), ttl_s=600, now=NOW,
    )  # fmt: skip
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": keys.signing_kid, "typ": ACCESS_TYP}
    claims = verify(keys, token)
    assert claims.identity == "agent@example.org"
    assert claims.room == "room-1"
    assert claims.role == "agent"
    assert claims.grants == frozenset({"publish", "subscribe", "record"})
    assert claims.can("record") and not claims.can("admin")
    assert claims.issued_at == NOW
    assert claims.expires_at == NOW + 600
    assert len(claims.jti) == 32 and int(claims.jti, 16) >= 0
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"iss", "sub", "room", "role", "grants", "iat", "exp", "jti"}
    assert payload["iss"] == ISSUER
    assert isinstance(payload["grants"], list)


def test_defaults_and_unique_jti(keys: KeyStore) -> None:
    first = verify(keys, issue_access_token(keys, room="r", identity="c", now=NOW))
    second = verify(keys, issue_access_token(keys, room="r", identity="c", now=NOW))
    assert first.role == "customer"
    assert first.grants == frozenset({"publish", "subscribe"})
    assert first.expires_at - first.issued_at == 3600
    assert first.jti != second.jti


def test_expiry_and_leeway(keys: KeyStore) -> None:
    token = issue_access_token(keys, room="r", identity="c", ttl_s=60, now=NOW)
    exp = NOW + 60
    assert verify(keys, token, now=exp - 1).identity == "c"
    assert verify(keys, token, now=exp + 5, leeway_s=10).identity == "c"  # within leeway
    refused(keys, token, "token expired", now=exp + 10, leeway_s=10)  # at the edge: expired
    refused(keys, token, "token expired", now=exp + 11, leeway_s=10)  # beyond leeway
    refused(keys, token, "token expired", now=exp, leeway_s=0)


def test_not_yet_valid(keys: KeyStore) -> None:
    future = keys.sign(access_claims(nbf=int(NOW) + 60), ACCESS_TYP)
    refused(keys, future, "token not yet valid")
    assert verify(keys, future, now=NOW + 55).identity == "alice"
    early = keys.sign(access_claims(iat=int(NOW) + 60), ACCESS_TYP)
    refused(keys, early, "token issued in the future")
    assert verify(keys, early, now=NOW + 51).identity == "alice"


def test_forged_signature_with_same_kid(keys: KeyStore) -> None:
    attacker = Ed25519PrivateKey.generate()
    token = jwt.encode(
        access_claims(role="agent", grants=["admin"]), attacker, algorithm="EdDSA",
        headers={"kid": keys.signing_kid, "typ": ACCESS_TYP},
    )  # fmt: skip
    refused(keys, token, "bad signature")


def test_tampered_payload(keys: KeyStore) -> None:
    token = keys.sign(access_claims(), ACCESS_TYP)
    header, _, signature = token.split(".")
    payload = b64url(json.dumps(access_claims(grants=["admin"])).encode())
    refused(keys, f"{header}.{payload}.{signature}", "bad signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none(keys: KeyStore, alg: str) -> None:
    header = {"alg": alg, "typ": ACCESS_TYP, "kid": keys.signing_kid}
    token = compact(header, access_claims(), lambda _: b"")
    refused(keys, token, "algorithm not allowed")


@pytest.mark.parametrize("secret_kind", ["raw", "pem"])
def test_hs256_with_the_public_key_as_secret(keys: KeyStore, secret_kind: str) -> None:
    """The classic key-confusion attack: HMAC keyed with the (public) verification key."""
    public = keys.public_key(keys.signing_kid)
    assert public is not None
    secret = raw_public(keys) if secret_kind == "raw" else public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )  # fmt: skip
    header = {"alg": "HS256", "typ": ACCESS_TYP, "kid": keys.signing_kid}
    claims = access_claims(role="agent", grants=sorted(GRANTS))
    token = compact(header, claims, lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    if secret_kind == "raw":  # a verifier that trusted the header would accept it
        naive = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_iat": False})
        assert naive["role"] == "agent"
    refused(keys, token, "algorithm not allowed")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS512", "PS256", "Ed25519", "eddsa", ""])
def test_other_algorithms(keys: KeyStore, alg: str) -> None:
    header = {"alg": alg, "typ": ACCESS_TYP, "kid": keys.signing_kid}
    refused(keys, compact(header, access_claims(), lambda _: b"x" * 64), "algorithm not allowed")


@pytest.mark.parametrize("typ", [CONSENT_TYP, "JWT", "at+jwt", "SFU-ACCESS+JWT", None])
def test_wrong_typ(keys: KeyStore, signing_key: Ed25519PrivateKey, typ: str | None) -> None:
    if typ is None:
        header = {"alg": "EdDSA", "kid": keys.signing_kid}
        token = compact(header, access_claims(), signing_key.sign)
    else:
        token = keys.sign(access_claims(), typ)
    refused(keys, token, "wrong token type")


def test_consent_token_never_passes_as_access_token(keys: KeyStore) -> None:
    consent = keys.sign({**access_claims(), "aud": "recorder", "scope": ["audio"]}, CONSENT_TYP)
    refused(keys, consent, "wrong token type")
    payload = verify_jwt(
        keys, consent, typ=CONSENT_TYP, issuer=ISSUER, audience="recorder",
        required=("sub", "room", "scope", "jti"), leeway_s=10, now=NOW,
    )  # fmt: skip
    assert payload["scope"] == ["audio"]
    with pytest.raises(TokenError, match="wrong audience"):
        verify_jwt(
            keys, consent, typ=CONSENT_TYP, issuer=ISSUER, audience="someone-else",
            required=(), leeway_s=10, now=NOW,
        )  # fmt: skip


def test_token_with_an_audience_is_not_an_access_token(keys: KeyStore) -> None:
    refused(keys, keys.sign(access_claims(aud="recorder"), ACCESS_TYP), "wrong audience")


def test_unknown_and_missing_kid(keys: KeyStore, signing_key: Ed25519PrivateKey) -> None:
    other = KeyStore.generate()
    refused(keys, other.sign(access_claims(), ACCESS_TYP), "unknown key id")
    header = {"alg": "EdDSA", "typ": ACCESS_TYP}
    refused(keys, compact(header, access_claims(), signing_key.sign), "missing key id")
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": ""}
    refused(keys, compact(header, access_claims(), signing_key.sign), "missing key id")
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": "k" * 65}
    refused(keys, compact(header, access_claims(), signing_key.sign), "unknown key id")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("jwk", {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("b64", False),
    ],
)
def test_key_carrying_headers_are_refused(
    keys: KeyStore, signing_key: Ed25519PrivateKey, name: str, value: object
) -> None:
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": keys.signing_kid, name: value}
    token = compact(header, access_claims(), signing_key.sign)
    refused(keys, token, f"header {name!r} not allowed")


@pytest.mark.parametrize("claim", ["iss", "sub", "room", "role", "grants", "iat", "exp", "jti"])
def test_missing_required_claim(keys: KeyStore, claim: str) -> None:
    token = keys.sign(access_claims(**{claim: _DROP}), ACCESS_TYP)
    refused(keys, token, f"missing claim {claim!r}")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"grants": ["publish", "superuser"]}, "invalid claim 'grants'"),
        ({"grants": "publish"}, "invalid claim 'grants'"),
        ({"grants": [1]}, "invalid claim 'grants'"),
        ({"grants": ["publish"] * 20}, "invalid claim 'grants'"),
        ({"room": "room/1"}, "invalid claim 'room'"),
        ({"room": "r" * 129}, "invalid claim 'room'"),
        ({"room": ""}, "invalid claim 'room'"),
        ({"room": 7}, "invalid claim 'room'"),
        ({"sub": "x" * 129}, "invalid claim 'sub'"),
        ({"sub": ""}, "invalid claim 'sub'"),
        ({"sub": "a\nb"}, "invalid claim 'sub'"),
        ({"sub": 5}, "invalid token"),  # PyJWT: sub must be a string
        ({"role": ""}, "invalid claim 'role'"),
        ({"role": ["agent"]}, "invalid claim 'role'"),
        ({"jti": ""}, "invalid claim 'jti'"),
        ({"jti": 5}, "invalid token"),  # PyJWT: jti must be a string
        ({"exp": "9999999999"}, "claim 'exp' must be a number"),
        ({"exp": True}, "claim 'exp' must be a number"),
        ({"iat": "now"}, "claim 'iat' must be a number"),
        ({"nbf": [1]}, "claim 'nbf' must be a number"),
        ({"iss": "someone-else"}, "wrong issuer"),
    ],
)
def test_bad_claims(keys: KeyStore, overrides: dict[str, Any], reason: str) -> None:
    refused(keys, keys.sign(access_claims(**overrides), ACCESS_TYP), reason)


def test_non_string_issuer(keys: KeyStore, signing_key: Ed25519PrivateKey) -> None:
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": keys.signing_kid}
    refused(keys, compact(header, access_claims(iss=5), signing_key.sign), "wrong issuer")


def test_non_finite_times_are_refused(keys: KeyStore, signing_key: Ed25519PrivateKey) -> None:
    payload = json.dumps(access_claims()).replace(f'"exp": {int(NOW) + 3600}', '"exp": Infinity')
    assert "Infinity" in payload
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": keys.signing_kid}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(payload.encode())
    token = signing_input + "." + b64url(signing_key.sign(signing_input.encode()))
    refused(keys, token, "claim 'exp' must be a number")


def test_oversize_token(keys: KeyStore) -> None:
    big = keys.sign(access_claims(padding="x" * MAX_TOKEN_BYTES), ACCESS_TYP)
    assert len(big) > MAX_TOKEN_BYTES
    refused(keys, big, "token too large")
    refused(keys, "é" * (MAX_TOKEN_BYTES // 2 + 1), "token too large")  # counted in bytes


@pytest.mark.parametrize(
    "token",
    [
        "", "abc", "a.b", "a.b.c", "a.b.c.d", "....", "eyJhbGciOiJFZERTQSJ9..",
        "\x00.\x00.\x00", "a b.c.d", "W10.e30.", b64url(b'"EdDSA"') + ".e30.AAAA",
        b64url(b"\xff\xfe") + ".e30.AAAA",
    ],
)
def test_malformed_tokens(keys: KeyStore, token: str) -> None:
    with pytest.raises(TokenError):
        verify(keys, token)


def test_non_string_token(keys: KeyStore) -> None:
    with pytest.raises(TokenError, match="must be a string"):
        verify(keys, b"a.b.c")  # type: ignore[arg-type]


def test_reasons_are_short_and_leak_nothing(keys: KeyStore) -> None:
    public_b64 = b64url(raw_public(keys))
    attempts = [
        keys.sign(access_claims(iss="x"), ACCESS_TYP),
        jwt.encode(access_claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA",
                   headers={"kid": keys.signing_kid, "typ": ACCESS_TYP}),
        keys.sign(access_claims(exp=1), ACCESS_TYP),
        "garbage",
    ]  # fmt: skip
    for token in attempts:
        with pytest.raises(TokenError) as caught:
            verify(keys, token)
        message = str(caught.value)
        assert len(message) < 60
        assert public_b64 not in message and "PRIVATE" not in message
        assert "Traceback" not in message
        assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"room": "bad room"},
        {"room": ""},
        {"identity": ""},
        {"role": ""},
        {"grants": ("publish", "fly")},
        {"ttl_s": 0},
        {"ttl_s": -5},
        {"ttl_s": 10**9},
    ],
)
def test_issue_refuses_bad_input(keys: KeyStore, kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"room": "r", "identity": "i", **kwargs}
    with pytest.raises(ValueError):
        issue_access_token(keys, **arguments)
