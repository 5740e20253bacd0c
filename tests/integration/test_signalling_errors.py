"""Every bad signalling input gets the contract's error and changes nothing else.

protocol.md is the oracle: error codes (``bad_request``, ``unauthenticated``, ``forbidden``,
``not_found``, ``conflict``, ``too_large``, ``rate_limited``), close codes (4401, 4429, 1009)
and the rule that a reply to a request carrying an ``id`` carries the same ``id``. After each
refused input the test checks that the connection is still usable where the contract keeps it
open (``ping`` → ``pong``), that a bystander in the room saw nothing, and that the server is
still healthy (``GET /healthz``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers.media import FrameCounterTrack, ToneTrack
from helpers.server import ServerProcess

from sfu.keys import KeyStore
from signaling.access import ACCESS_TYP, issue_access_token
from signaling.client import (
    Message,
    Participant,
    SignalClient,
    SignalClosed,
    create_offer,
    rtc_configuration,
)

pytestmark = pytest.mark.integration

T = 5.0
"""Timeout of every single await on the server (seconds)."""
QUIET_S = 0.25
"""How long a bystander must stay silent after a refused input."""
ISSUER = "oktorus-sfu"
CONSENT_TYP = "sfu-consent+jwt"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_RATE_LIMITED = 4429
CLOSE_MESSAGE_TOO_BIG = 1009
MAX_FRAME = 64 * 1024
REPLY_TYPES = frozenset({"error", "ok", "pong", "joined", "published", "redirect"})
"""Messages that answer a request (everything else is an event)."""
ROOM_EVENTS = frozenset({
    "participant.joined", "participant.left",
    "track.published", "track.unpublished", "track.updated", "offer",
})


# --- plumbing -------------------------------------------------------------------------


async def _healthy(server: ServerProcess) -> None:
    """GET /healthz answers 200 {"status": "ok"} and the process is still running."""
    assert server.proc is not None and server.proc.poll() is None, "the server process died"
    timeout = aiohttp.ClientTimeout(total=T)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        server.http + "/healthz"
    ) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def _connect(server: ServerProcess) -> SignalClient:
    return await SignalClient.connect(server.url, timeout=T)


async def _join(server: ServerProcess, room: str, identity: str, *,
                grants: Sequence[str] = ("publish", "subscribe")) -> SignalClient:
    client = await _connect(server)
    try:
        reply = await client.request(
            {"type": "join", "token": server.token(room, identity, grants=grants)}, T
        )
    except BaseException:
        await client.close()
        raise
    assert reply["type"] == "joined"
    return client


async def _pong(client: SignalClient) -> None:
    """The connection is open and answers in order: ping → pong with the same id."""
    request_id = f"alive-{uuid.uuid4().hex[:8]}"
    reply = await client.request({"type": "ping", "id": request_id}, T)
    assert reply == {"type": "pong", "id": request_id}
    assert not client.closed


async def _send(client: SignalClient, frame: str | bytes | Mapping[str, Any]) -> None:
    if isinstance(frame, str | bytes):
        await client.send_raw(frame)
    else:
        await client.send(frame)


async def _error(client: SignalClient, frame: str | bytes | Mapping[str, Any]) -> Message:
    """Send ``frame`` and return the reply it earns, which must be an ``error``."""
    await _send(client, frame)
    reply = await client.next_event(REPLY_TYPES, timeout=T)
    assert reply.get("type") == "error", f"expected an error, got {reply}"
    assert isinstance(reply.get("message"), str), reply
    return reply


def _errors_left(client: SignalClient) -> list[Message]:
    return client.buffered("error")


class Bystander:
    """Another participant's view of the room: it must see nothing a refused input did."""

    def __init__(self, signal: SignalClient) -> None:
        self.signal = signal
        self._mark = 0

    def mark(self) -> None:
        self._mark = len(self.signal.buffered())

    async def assert_quiet(self, allowed: Callable[[Message], bool] = lambda m: False) -> None:
        await asyncio.sleep(QUIET_S)
        await _pong(self.signal)
        seen = [
            m for m in self.signal.buffered()[self._mark:]
            if m.get("type") in ROOM_EVENTS and not allowed(m)
        ]
        assert seen == [], f"a refused input changed the room: {seen}"
        assert _errors_left(self.signal) == []


@pytest_asyncio.fixture
async def bystander(server: ServerProcess, room: str) -> AsyncIterator[Bystander]:
    client = await _join(server, room, "bystander")
    try:
        watcher = Bystander(client)
        watcher.mark()
        yield watcher
    finally:
        await client.close()


async def _join_watched(server: ServerProcess, room: str, watcher: Bystander,
                        identity: str = "actor",
                        grants: Sequence[str] = ("publish", "subscribe")) -> SignalClient:
    """Join ``room`` and let the bystander see that (and only that) happen."""
    client = await _join(server, room, identity, grants=grants)
    joined = await watcher.signal.next_event("participant.joined", timeout=T)
    assert joined["participant"]["identity"] == identity
    watcher.mark()
    return client


# --- before join ----------------------------------------------------------------------


EARLY_MESSAGES: dict[str, dict[str, Any]] = {
    "ping": {"type": "ping"},
    "publish": {"type": "publish", "sdp": "v=0\r\n"},
    "subscribe": {"type": "subscribe", "tracks": ["TRx"]},
    "mute": {"type": "mute", "track": "TRx", "muted": True},
    "leave": {"type": "leave"},
    "unknown-type": {"type": "frobnicate"},
}


@pytest.mark.parametrize("name", sorted(EARLY_MESSAGES))
async def test_message_before_join_is_unauthenticated_then_4401(
    server: ServerProcess, room: str, bystander: Bystander, name: str
) -> None:
    client = await _connect(server)
    try:
        reply = await _error(client, {**EARLY_MESSAGES[name], "id": "early-1"})
        assert reply["code"] == "unauthenticated"
        assert reply.get("id") == "early-1"
        assert await client.wait_closed(T) == CLOSE_UNAUTHENTICATED
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


NON_MESSAGES: dict[str, str | bytes] = {
    "not-json": "{not json",
    "json-array": '[{"type": "join"}]',
    "missing-type": '{"id": "early-2"}',
    "binary": b'{"type": "join"}',
}


@pytest.mark.parametrize("name", sorted(NON_MESSAGES))
async def test_non_message_before_join_is_unauthenticated_then_4401(
    server: ServerProcess, name: str
) -> None:
    """protocol.md: 'The first client message must be join. Anything else first: error
    unauthenticated, then close with code 4401.'"""
    client = await _connect(server)
    try:
        reply = await _error(client, NON_MESSAGES[name])
        assert reply["code"] == "unauthenticated", reply
        assert await client.wait_closed(T) == CLOSE_UNAUTHENTICATED
        await _healthy(server)
    finally:
        await client.close()


# --- tokens ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _access_claims(room: str, identity: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER, "sub": identity, "room": room, "role": "customer",
        "grants": ["publish", "subscribe"], "iat": now, "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }


def _compact(header: Mapping[str, Any], claims: Mapping[str, Any],
             sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    return f"{signing_input}.{_b64(sign(signing_input.encode('ascii')))}"


def _keys(server: ServerProcess) -> KeyStore:
    return KeyStore.open(server.data_dir)


def _public_pem(keys: KeyStore) -> bytes:
    public = keys.public_key(keys.signing_kid)
    assert public is not None
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_raw(keys: KeyStore) -> bytes:
    public = keys.public_key(keys.signing_kid)
    assert public is not None
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _forged(server: ServerProcess, room: str) -> object:
    """Signed by another Ed25519 key that claims the server's kid."""
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": _keys(server).signing_kid}
    return _compact(header, _access_claims(room, "forger"), Ed25519PrivateKey.generate().sign)


def _forged_unknown_kid(server: ServerProcess, room: str) -> object:
    header = {"alg": "EdDSA", "typ": ACCESS_TYP, "kid": "attacker-key"}
    return _compact(header, _access_claims(room, "forger"), Ed25519PrivateKey.generate().sign)


def _tampered(server: ServerProcess, room: str) -> object:
    """A real token whose payload was edited (admin grant added), signature kept."""
    header, _, signature = server.token(room, "tamperer").split(".")
    claims = {**_access_claims(room, "tamperer"),
              "grants": ["admin", "publish", "record", "subscribe"]}
    return f"{header}.{_json_b64(claims)}.{signature}"


def _expired(server: ServerProcess, room: str) -> object:
    """Expired an hour and 59 minutes ago: far beyond the 10 s leeway."""
    return issue_access_token(_keys(server), room=room, identity="late",
                              now=time.time() - 7200, ttl_s=60)


def _alg_none(server: ServerProcess, room: str) -> object:
    header = {"alg": "none", "typ": ACCESS_TYP, "kid": _keys(server).signing_kid}
    return _compact(header, _access_claims(room, "nobody"), lambda _: b"")


def _hs256_with(key: Callable[[KeyStore], bytes]) -> Callable[[ServerProcess, str], object]:
    def build(server: ServerProcess, room: str) -> object:
        keys = _keys(server)
        secret = key(keys)
        header = {"alg": "HS256", "typ": ACCESS_TYP, "kid": keys.signing_kid}
        return _compact(header, _access_claims(room, "confused"),
                        lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    return build


def _consent_typed(server: ServerProcess, room: str) -> object:
    """Signed by the server's own key, valid in every way, but typ sfu-consent+jwt."""
    return _keys(server).sign(_access_claims(room, "consenter"), CONSENT_TYP)


def _wrong_issuer(server: ServerProcess, room: str) -> object:
    return _keys(server).sign({**_access_claims(room, "outsider"), "iss": "evil"}, ACCESS_TYP)


MISSING = object()

BAD_TOKENS: dict[str, Callable[[ServerProcess, str], object]] = {
    "forged-same-kid": _forged,
    "forged-unknown-kid": _forged_unknown_kid,
    "tampered-payload": _tampered,
    "expired": _expired,
    "alg-none": _alg_none,
    "alg-hs256-public-pem": _hs256_with(_public_pem),
    "alg-hs256-public-raw": _hs256_with(_public_raw),
    "consent-typed": _consent_typed,
    "wrong-issuer": _wrong_issuer,
    "garbage": lambda server, room: "garbage",
    "three-garbage-parts": lambda server, room: "a.b.c",
    "empty-string": lambda server, room: "",
    "number": lambda server, room: 12345,
    "null": lambda server, room: None,
    "object": lambda server, room: {"token": server.token(room, "nested")},
    "missing": lambda server, room: MISSING,
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_join_with_bad_token_is_unauthenticated_then_4401(
    server: ServerProcess, room: str, bystander: Bystander, name: str
) -> None:
    token = BAD_TOKENS[name](server, room)
    join: dict[str, Any] = {"type": "join", "id": "join-1"}
    if token is not MISSING:
        join["token"] = token
    client = await _connect(server)
    try:
        reply = await _error(client, join)
        assert reply["code"] == "unauthenticated"
        assert reply.get("id") == "join-1"
        assert await client.wait_closed(T) == CLOSE_UNAUTHENTICATED
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


async def test_join_naming_another_room_is_forbidden(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    other_room = room + "-other"
    other = await _join(server, other_room, "other-bystander")
    watcher_b = Bystander(other)
    watcher_b.mark()
    client = await _connect(server)
    try:
        token = server.token(room, "wanderer")
        reply = await _error(client, {"type": "join", "id": "j1", "token": token,
                                      "room": other_room})
        assert reply["code"] == "forbidden" and reply.get("id") == "j1"
        await bystander.assert_quiet()
        await watcher_b.assert_quiet()
        # The refused join left the connection as it was: a correct join still works.
        joined = await client.request({"type": "join", "token": token, "room": room}, T)
        assert joined["type"] == "joined" and joined["room"]["id"] == room
        await _pong(client)
        seen = await bystander.signal.next_event("participant.joined", timeout=T)
        assert seen["participant"]["identity"] == "wanderer"
        await watcher_b.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()
        await other.close()


async def test_second_join_is_conflict(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    other_room = room + "-other"
    other = await _join(server, other_room, "other-bystander")
    watcher_b = Bystander(other)
    watcher_b.mark()
    client = await _join_watched(server, room, bystander)
    try:
        for token in (server.token(room, "actor-again"), server.token(other_room, "hopper")):
            reply = await _error(client, {"type": "join", "id": "again", "token": token})
            assert reply["code"] == "conflict" and reply.get("id") == "again"
            await _pong(client)
        await bystander.assert_quiet()
        await watcher_b.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()
        await other.close()


# --- malformed frames after join --------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad frame and the reply it must earn."""

    frame: str | bytes | Mapping[str, Any]
    code: str = "bad_request"
    echo: str | None = None
    """The id the error must carry (None: not checked, e.g. no valid id in the frame)."""


def _raw(value: Any) -> str:
    return json.dumps(value)


MALFORMED: dict[str, Bad] = {
    "not-json": Bad("{not json"),
    "truncated-json": Bad('{"type": "ping", "id": "t1"'),
    "empty-frame": Bad(""),
    "whitespace-frame": Bad("   \n"),
    "json-array": Bad(_raw([{"type": "ping"}])),
    "json-string": Bad(_raw("ping")),
    "json-number": Bad("42"),
    "json-null": Bad("null"),
    "json-true": Bad("true"),
    "deeply-nested": Bad("[" * 50_000),
    "missing-type": Bad(_raw({"id": "no-type"}), echo="no-type"),
    "type-number": Bad(_raw({"type": 7, "id": "type-7"}), echo="type-7"),
    "type-null": Bad(_raw({"type": None, "id": "type-null"}), echo="type-null"),
    "type-object": Bad(_raw({"type": {"type": "ping"}, "id": "type-obj"}), echo="type-obj"),
    "unknown-type": Bad(_raw({"type": "frobnicate", "id": "unk"}), echo="unk"),
    "unknown-type-long": Bad(_raw({"type": "x" * 5000, "id": "unk-long"}), echo="unk-long"),
    "id-65-chars": Bad(_raw({"type": "ping", "id": "i" * 65})),
    "id-number": Bad(_raw({"type": "ping", "id": 5})),
    "id-list": Bad(_raw({"type": "ping", "id": ["a"]})),
    "id-object": Bad(_raw({"type": "ping", "id": {"a": 1}})),
    "id-bool": Bad(_raw({"type": "ping", "id": True})),
    "binary-frame": Bad(b'{"type": "ping", "id": "bin"}'),
    "binary-garbage": Bad(bytes(range(256))),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_frame_is_bad_request_and_connection_survives(
    server: ServerProcess, room: str, bystander: Bystander, name: str
) -> None:
    bad = MALFORMED[name]
    client = await _join_watched(server, room, bystander)
    try:
        reply = await _error(client, bad.frame)
        assert reply["code"] == bad.code, reply
        if bad.echo is not None:
            assert reply.get("id") == bad.echo, f"the error must echo the request id: {reply}"
        await _pong(client)
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


async def test_ping_is_answered_with_pong_and_the_same_id(server: ServerProcess, room: str) -> None:
    client = await _join(server, room, "pinger")
    try:
        assert await client.request({"type": "ping", "id": "p" * 64}, T) == {
            "type": "pong", "id": "p" * 64}
        await client.send({"type": "ping"})
        assert await client.next_event("pong", timeout=T) == {"type": "pong"}
        # Unknown extra fields are allowed (the protocol may grow).
        assert (await client.request({"type": "ping", "extra": [1, {"x": None}]}, T))["type"] \
            == "pong"
    finally:
        await client.close()


# --- oversize frames ----------------------------------------------------------------------


def _padded_ping(request_id: str, size: int, pad_char: str = "x") -> str:
    """A ping frame of exactly ``size`` UTF-8 bytes (pad_char is 1 or 2 bytes)."""
    head = f'{{"type":"ping","id":"{request_id}","pad":"'
    tail = '"}'
    room_left = size - len(head.encode()) - len(tail)
    width = len(pad_char.encode())
    assert room_left >= 0 and room_left % width == 0
    frame = head + pad_char * (room_left // width) + tail
    assert len(frame.encode()) == size
    return frame


async def test_frame_over_64k_is_too_large_and_connection_survives(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander)
    try:
        # Exactly 64 KiB is allowed ("at most 64 KiB").
        await client.send_raw(_padded_ping("edge", MAX_FRAME))
        assert await client.next_event(REPLY_TYPES, timeout=T) == {"type": "pong", "id": "edge"}
        for request_id, size, pad in [("over-by-1", MAX_FRAME + 1, "x"),
                                      ("100k", 100 * 1024, "x"),
                                      ("utf8-80k", 80_000, "é"),  # 40 000 chars, 80 000 bytes
                                      ("200k", 200 * 1024, "x")]:
            reply = await _error(client, _padded_ping(request_id, size, pad))
            assert reply["code"] == "too_large", (request_id, reply)
            await _pong(client)
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


async def test_frame_of_1mib_closes_with_1009(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander)
    try:
        with contextlib.suppress(ConnectionError):
            await client.send_raw(_padded_ping("huge", 1024 * 1024))
        assert await client.wait_closed(T) == CLOSE_MESSAGE_TOO_BIG
        # The participant is gone from the room, and that is all the room saw.
        left = await bystander.signal.next_event("participant.left", timeout=T)
        assert left["participant"]["identity"] == "actor"
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


# --- missing and mistyped fields ------------------------------------------------------------


@dataclass
class Scene:
    """A publisher with one video track (the actor) and a viewer receiving it."""

    actor: Participant
    viewer: Participant
    track_id: str
    watcher: Bystander


async def _connected(pc: RTCPeerConnection | None) -> None:
    """Wait (bounded) until ``pc`` is connected."""
    assert pc is not None
    deadline = time.monotonic() + T
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, f"peer connection still {pc.connectionState}"
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def scene(server: ServerProcess, room: str) -> AsyncIterator[Scene]:
    video = FrameCounterTrack()
    actor = await Participant.join(server.url, server.token(room, "actor"),
                                   publish_tracks=[video], timeout=T)
    viewer: Participant | None = None
    try:
        viewer = await Participant.join(server.url, server.token(room, "viewer"), drain=True,
                                        timeout=T)
        (track_id,) = actor.published
        await viewer.wait_remote_tracks([track_id], timeout=T)
        await _connected(actor.publish_pc)
        await _connected(viewer.subscribe_pc)
        watcher = Bystander(viewer.signal)
        await _pong(actor.signal)
        watcher.mark()
        yield Scene(actor, viewer, track_id, watcher)
    finally:
        if viewer is not None:
            await viewer.close()
        await actor.close()
        video.stop()


CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"

FIELD_ERRORS: dict[str, list[dict[str, Any]]] = {
    "publish": [
        {}, {"sdp": None}, {"sdp": 5}, {"sdp": ["v=0"]}, {"sdp": {"type": "offer"}},
        {"sdp": ""},
    ],
    "answer": [{}, {"sdp": None}, {"sdp": 5}, {"sdp": ["v=0"]}],
    "candidate": [
        {"candidate": None},
        {"pc": None, "candidate": None},
        {"pc": 5, "candidate": None},
        {"pc": "PUBLISH", "candidate": None},
        {"pc": ["publish"], "candidate": None},
        {"pc": "publish"},
        {"pc": "publish", "candidate": CANDIDATE},
        {"pc": "publish", "candidate": 5},
        {"pc": "publish", "candidate": [CANDIDATE]},
        {"pc": "publish", "candidate": {}},
        {"pc": "publish", "candidate": {"candidate": 5}},
        {"pc": "publish", "candidate": {"candidate": None, "sdpMid": "0"}},
        {"pc": "publish", "candidate": {"candidate": CANDIDATE, "sdpMid": 0}},
        {"pc": "publish", "candidate": {"candidate": CANDIDATE, "sdpMLineIndex": "0"}},
        {"pc": "publish", "candidate": {"candidate": CANDIDATE, "sdpMLineIndex": True}},
        {"pc": "publish", "candidate": {"candidate": CANDIDATE, "sdpMLineIndex": 0.5}},
    ],
    "subscribe": [
        {}, {"tracks": None}, {"tracks": "TRx"}, {"tracks": {"TRx": 1}}, {"tracks": [5]},
        {"tracks": [None]}, {"tracks": [""]}, {"tracks": ["x" * 65]},
        {"tracks": [f"TR{i}" for i in range(65)]},
    ],
    "unsubscribe": [
        {}, {"tracks": None}, {"tracks": "TRx"}, {"tracks": [5]}, {"tracks": [[]]},
        {"tracks": [f"TR{i}" for i in range(65)]},
    ],
    "mute": [
        {}, {"muted": True}, {"track": None, "muted": True}, {"track": 5, "muted": True},
        {"track": ["TRx"], "muted": True}, {"track": "x" * 65, "muted": True},
        {"track": "$OWN"}, {"track": "$OWN", "muted": None}, {"track": "$OWN", "muted": "true"},
        {"track": "$OWN", "muted": 1}, {"track": "$OWN", "muted": 0},
        {"track": "$OWN", "muted": [True]},
    ],
    "track.settings": [
        {}, {"paused": True}, {"track": 5, "paused": True}, {"track": None, "paused": True},
        {"track": "$OWN"},
        {"track": "$OWN", "quality": "ultra"}, {"track": "$OWN", "quality": 1},
        {"track": "$OWN", "quality": True},
        {"track": "$OWN", "width": 640}, {"track": "$OWN", "height": 480},
        {"track": "$OWN", "width": -1, "height": 480},
        {"track": "$OWN", "width": 16385, "height": 480},
        {"track": "$OWN", "width": "640", "height": "480"},
        {"track": "$OWN", "width": 640.5, "height": 480},
        {"track": "$OWN", "width": True, "height": 480},
        {"track": "$OWN", "paused": "yes"}, {"track": "$OWN", "paused": 1},
    ],
}


def _fill(fields: Mapping[str, Any], track_id: str) -> dict[str, Any]:
    return {k: (track_id if v == "$OWN" else v) for k, v in fields.items()}


@pytest.mark.parametrize("kind", list(FIELD_ERRORS))
async def test_missing_or_mistyped_fields_are_bad_request_with_id(
    server: ServerProcess, scene: Scene, kind: str
) -> None:
    """Each message type with each bad field set: bad_request echoing the id, nothing else.

    Every variant is sent on the actor's connection (at most 17 per connection: under the
    server's limit of bad requests); failures are collected so one run lists all of them.
    """
    problems: list[str] = []
    for n, fields in enumerate(FIELD_ERRORS[kind]):
        request_id = f"{kind}-{n}"
        message = {**_fill(fields, scene.track_id), "type": kind, "id": request_id}
        try:
            reply = await _error(scene.actor.signal, message)
        except (AssertionError, TimeoutError, SignalClosed) as exc:
            problems.append(f"{message!r:.200}: {exc!r:.300}")
            if scene.actor.signal.closed:
                break
            continue
        if reply.get("code") != "bad_request" or reply.get("id") != request_id:
            problems.append(f"{message!r:.200} → {reply}")
    assert not problems, "\n".join(problems)
    await _pong(scene.actor.signal)
    await scene.watcher.assert_quiet()
    assert scene.actor.publish_pc is not None
    assert scene.actor.publish_pc.connectionState == "connected"
    assert scene.actor.tracks[scene.track_id]["muted"] is False
    await _healthy(server)


# --- SDP ------------------------------------------------------------------------------------


async def _real_offer() -> str:
    """An aiortc offer for one video and one audio track (never answered)."""
    pc = RTCPeerConnection(rtc_configuration())
    video, audio = FrameCounterTrack(), ToneTrack()
    try:
        pc.addTransceiver(video, direction="sendonly")
        pc.addTransceiver(audio, direction="sendonly")
        return await asyncio.wait_for(create_offer(pc), T)
    finally:
        await pc.close()
        video.stop()
        audio.stop()


def _lines(sdp: str) -> list[str]:
    return sdp.replace("\r\n", "\n").split("\n")


def _sdp(lines: Sequence[str]) -> str:
    return "\r\n".join(lines)


def _drop(prefix: str) -> Callable[[str], str]:
    return lambda sdp: _sdp([line for line in _lines(sdp) if not line.startswith(prefix)])


def _sub(pattern: str, replacement: str, count: int = 0) -> Callable[[str], str]:
    def mutate(sdp: str) -> str:
        text = sdp.replace("\r\n", "\n")
        mutated, n = re.subn(pattern, replacement, text, count=count, flags=re.MULTILINE)
        assert n, f"mutation {pattern!r} matched nothing"
        return mutated.replace("\n", "\r\n")
    return mutate


def _vp9_only(sdp: str) -> str:
    """The video m-line offers only VP9 (which the SFU does not forward)."""
    out: list[str] = []
    in_video = False
    for line in _lines(sdp):
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            if in_video:
                out.extend([" ".join([*line.split()[:3], "98"]), "a=rtpmap:98 VP9/90000"])
                continue
        if in_video and line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            continue
        out.append(line)
    return _sdp(out)


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    media: list[list[str]] = []
    for line in _lines(sdp):
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        elif line:
            session.append(line)
    return session, media


def _many_sections(sdp: str) -> str:
    session, media = _sections(sdp)
    audio = next(m for m in media if m[0].startswith("m=audio"))
    copies = [[line if not line.startswith("a=mid:") else f"a=mid:{n}" for line in audio]
              for n in range(20)]
    return _sdp(session + [line for copy in copies for line in copy])


def _session_only(sdp: str) -> str:
    session, _ = _sections(sdp)
    return _sdp([*session, ""])


def _data_channel(sdp: str) -> str:
    return sdp.rstrip("\r\n") + "\r\n" + _sdp([
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
        "a=mid:2", "a=sctp-port:5000", "a=setup:actpass", "",
    ])


BAD_OFFERS: dict[str, Callable[[str], str]] = {
    "not-sdp": lambda sdp: "this is not an SDP offer",
    "nul-bytes": lambda sdp: "\x00" * 64,
    "truncated": lambda sdp: sdp[: len(sdp) // 3],
    "no-media": _session_only,
    "vp9-only-video": _vp9_only,
    "not-srtp": _sub(r"UDP/TLS/RTP/SAVPF", "RTP/AVP"),
    "unknown-media-kind": _sub(r"^m=audio", "m=text"),
    "data-channel": _data_channel,
    "setup-foo": _sub(r"^a=setup:actpass", "a=setup:foo"),
    "no-setup": _drop("a=setup"),
    "no-fingerprint": _drop("a=fingerprint"),
    "bad-fingerprint": _sub(r"^a=fingerprint:sha-256 \S+", "a=fingerprint:sha-256 ZZ:YY"),
    "no-ice-credentials": _drop("a=ice-"),
    "attribute-without-value": _sub(r"^a=rtpmap:97 .*$", "a=rtpmap"),
    "mid-without-value": _sub(r"^a=mid:0$", "a=mid:"),
    "empty-msid": _sub(r"^a=msid:.*$", "a=msid:"),
    "fmtp-without-rtpmap": _sub(r"^a=fmtp:98 apt=97$", "a=fmtp:103 apt=97"),
    "rtpmap-without-clock-rate": _sub(r"^a=rtpmap:97 VP8/90000$", "a=rtpmap:97 VP8"),
    "payload-type-300": _sub(r"^(m=video \d+ \S+) 97", r"\1 300"),
    "duplicate-payload-types": _sub(r"^(m=video \d+ \S+) 97", r"\1 97 97"),
    "short-candidate": _sub(r"^a=candidate:.*$", "a=candidate:1 1 udp 1", count=1),
    "candidate-port-99999": _sub(r"^(a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1) \d+", r"\1 99999",
                                 count=1),
    "port-99999": _sub(r"^m=video \d+", "m=video 99999"),
    "extmap-id-0": _sub(r"^a=extmap:1 ", "a=extmap:0 ", count=1),
    "extmap-id-256": _sub(r"^a=extmap:1 ", "a=extmap:256 ", count=1),
    "duplicate-mid": _sub(r"^a=mid:1$", "a=mid:0"),
    "two-directions": _sub(r"^a=sendonly$", "a=sendonly\na=recvonly", count=1),
    "ssrc-out-of-range": _sub(r"^a=ssrc:\d+ ", "a=ssrc:99999999999 ", count=1),
    "twenty-media-sections": _many_sections,
    "oversize-sdp": lambda sdp: sdp + "a=x-pad:" + "A" * 60_000 + "\r\n",
}


@pytest.mark.parametrize("name", list(BAD_OFFERS))
async def test_bad_offer_is_bad_request_and_a_good_offer_still_publishes(
    server: ServerProcess, room: str, bystander: Bystander, name: str
) -> None:
    offer = BAD_OFFERS[name](await _real_offer())
    actor = await Participant.join(server.url, server.token(room, "actor"), timeout=T)
    video, audio = FrameCounterTrack(), ToneTrack()
    try:
        await bystander.signal.next_event("participant.joined", timeout=T)
        bystander.mark()
        reply = await _error(actor.signal, {"type": "publish", "id": "bad-offer", "sdp": offer})
        assert reply["code"] == "bad_request" and reply.get("id") == "bad-offer", reply
        await _pong(actor.signal)
        await bystander.assert_quiet()
        # The refused offer left nothing behind: a real one publishes both tracks.
        published = await actor.publish([video, audio], timeout=T)
        assert len(published) == 2
        announced = {(await bystander.signal.next_event("track.published", timeout=T))
                     ["track"]["id"] for _ in range(2)}
        assert announced == set(published)
        await _healthy(server)
    finally:
        await actor.close()
        video.stop()
        audio.stop()


async def test_answer_without_outstanding_offer_is_conflict(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander)
    try:
        reply = await _error(client, {"type": "answer", "id": "ans", "sdp": await _real_offer()})
        assert reply["code"] == "conflict" and reply.get("id") == "ans", reply
        await _pong(client)
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


async def test_answer_after_the_offer_was_answered_is_conflict(
    server: ServerProcess, scene: Scene
) -> None:
    viewer = scene.viewer
    assert viewer.subscribe_pc is not None and viewer.subscribe_pc.localDescription is not None
    answered = viewer.subscribe_pc.localDescription.sdp
    reply = await _error(viewer.signal, {"type": "answer", "id": "again", "sdp": answered})
    assert reply["code"] == "conflict" and reply.get("id") == "again", reply
    await _pong(viewer.signal)
    assert viewer.subscribe_pc.connectionState == "connected"
    await _healthy(server)


# --- candidates --------------------------------------------------------------------------


async def test_candidate_for_missing_or_unknown_pc_is_bad_request(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander)
    try:
        for n, pc in enumerate(["publish", "subscribe", "foo", ""]):
            for candidate in ({"candidate": CANDIDATE, "sdpMid": "0"}, None):
                request_id = f"cand-{n}-{candidate is None}"
                reply = await _error(client, {"type": "candidate", "id": request_id, "pc": pc,
                                              "candidate": candidate})
                assert reply["code"] == "bad_request" and reply.get("id") == request_id, \
                    (pc, candidate, reply)
        await _pong(client)
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


MALFORMED_CANDIDATES = [
    "garbage",
    "candidate:",
    "candidate:1 1 udp",
    "candidate:1 1 udp 2130706431 127.0.0.1",
    "candidate:1 1 udp 2130706431 127.0.0.1 5000 type host",
    "candidate:1 x udp 2130706431 127.0.0.1 5000 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 0 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 -1 typ host",
    "candidate:1 1 udp notanumber 127.0.0.1 5000 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ",
    "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host " + "x" * 1000,
    "candidate:" + "1 " * 600,
]


async def test_malformed_candidate_strings_are_bad_request(
    server: ServerProcess, scene: Scene
) -> None:
    actor = scene.actor
    problems: list[str] = []
    for n, line in enumerate(MALFORMED_CANDIDATES):
        request_id = f"mc-{n}"
        try:
            reply = await _error(actor.signal, {
                "type": "candidate", "id": request_id, "pc": "publish",
                "candidate": {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0},
            })
        except (AssertionError, TimeoutError, SignalClosed) as exc:
            problems.append(f"{line[:80]!r}: {exc!r:.300}")
            if actor.signal.closed:
                break
            continue
        if reply.get("code") != "bad_request" or reply.get("id") != request_id:
            problems.append(f"{line[:80]!r} → {reply}")
    assert not problems, "\n".join(problems)
    await _pong(actor.signal)
    await scene.watcher.assert_quiet()
    assert actor.publish_pc is not None and actor.publish_pc.connectionState == "connected"
    await _healthy(server)


async def test_well_formed_candidates_and_end_of_candidates_need_no_reply(
    server: ServerProcess, scene: Scene
) -> None:
    """``candidate`` has no reply: null or an empty string ends trickling, a valid one is
    added. None of them is an error."""
    actor, viewer = scene.actor, scene.viewer
    for client, pc in ((actor.signal, "publish"), (viewer.signal, "subscribe")):
        for candidate in (None, {"candidate": "", "sdpMid": "0"},
                          {"candidate": CANDIDATE.replace(" 9 ", " 40000 "), "sdpMid": "0"},
                          {"candidate": "candidate:2 1 udp 2130706431 127.0.0.1 40001 typ host",
                           "sdpMLineIndex": 0}):
            await client.send({"type": "candidate", "pc": pc, "candidate": candidate})
        await _pong(client)
        assert _errors_left(client) == []
    await scene.watcher.assert_quiet()
    await _healthy(server)


# --- unknown tracks, permissions ------------------------------------------------------------


async def _other_room_track(server: ServerProcess, room: str) -> tuple[Participant, str]:
    """A participant publishing in another room, and its track id."""
    elsewhere = await Participant.join(server.url, server.token(room + "-b", "elsewhere"),
                                       publish_tracks=[FrameCounterTrack()], timeout=T)
    (track_id,) = elsewhere.published
    return elsewhere, track_id


async def test_requests_on_unknown_tracks_are_not_found(
    server: ServerProcess, room: str, scene: Scene
) -> None:
    viewer = scene.viewer
    elsewhere, foreign = await _other_room_track(server, room)
    try:
        problems: list[str] = []
        for unknown in ("TRdoesnotexist", foreign):
            messages: list[dict[str, Any]] = [
                {"type": "subscribe", "tracks": [unknown]},
                {"type": "subscribe", "tracks": [scene.track_id, unknown]},
                {"type": "unsubscribe", "tracks": [unknown]},
                {"type": "unsubscribe", "tracks": [scene.track_id, unknown]},
                {"type": "mute", "track": unknown, "muted": True},
                {"type": "track.settings", "track": unknown, "paused": True},
                {"type": "track.settings", "track": unknown, "quality": "low"},
            ]
            for n, message in enumerate(messages):
                request_id = f"nf-{n}-{unknown[-4:]}"
                reply = await _error(viewer.signal, {**message, "id": request_id})
                if reply.get("code") != "not_found" or reply.get("id") != request_id:
                    problems.append(f"{message} → {reply}")
        assert not problems, "\n".join(problems)
        await _pong(viewer.signal)
        # All-or-nothing: the known track in a refused (un)subscribe is still received.
        await asyncio.sleep(QUIET_S)
        assert scene.track_id in viewer.remote_tracks
        assert viewer.subscribe_pc is not None
        assert viewer.subscribe_pc.connectionState == "connected"
        await _healthy(server)
    finally:
        await elsewhere.close()


async def test_muting_someone_elses_track_is_forbidden(
    server: ServerProcess, scene: Scene
) -> None:
    actor, viewer = scene.actor, scene.viewer
    mark = len(actor.signal.buffered())
    for muted in (True, False):
        reply = await _error(viewer.signal, {"type": "mute", "id": f"m-{muted}",
                                             "track": scene.track_id, "muted": muted})
        assert reply["code"] == "forbidden" and reply.get("id") == f"m-{muted}", reply
    await _pong(viewer.signal)
    await scene.watcher.assert_quiet()
    await asyncio.sleep(QUIET_S)
    assert [m for m in actor.signal.buffered()[mark:] if m["type"] == "track.updated"] == []
    assert viewer.tracks[scene.track_id]["muted"] is False
    await _healthy(server)


async def test_publish_without_the_publish_grant_is_forbidden(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander, identity="customer",
                                 grants=("subscribe",))
    try:
        reply = await _error(client, {"type": "publish", "id": "pub", "sdp": await _real_offer()})
        assert reply["code"] == "forbidden" and reply.get("id") == "pub", reply
        await _pong(client)
        await bystander.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


async def test_subscribe_without_the_subscribe_grant_is_forbidden(
    server: ServerProcess, scene: Scene, room: str
) -> None:
    client = await _join(server, room, "publish-only", grants=("publish",))
    try:
        await scene.watcher.signal.next_event("participant.joined", timeout=T)
        scene.watcher.mark()
        for kind in ("subscribe", "unsubscribe"):
            reply = await _error(client, {"type": kind, "id": kind, "tracks": [scene.track_id]})
            assert reply["code"] == "forbidden" and reply.get("id") == kind, reply
        await _pong(client)
        await scene.watcher.assert_quiet()
        await _healthy(server)
    finally:
        await client.close()


# --- abuse ------------------------------------------------------------------------------------


async def _flood(client: SignalClient, frames: Sequence[str]) -> None:
    with contextlib.suppress(ConnectionError):
        for frame in frames:
            await client.send_raw(frame)


def _rate_limited(client: SignalClient) -> bool:
    return any(m.get("code") == "rate_limited" for m in client.buffered("error"))


async def _assert_cut_off(server: ServerProcess, client: SignalClient,
                          watcher: Bystander) -> None:
    assert await client.wait_closed(T) == CLOSE_RATE_LIMITED
    assert _rate_limited(client), client.buffered("error")[-3:]
    left = await watcher.signal.next_event("participant.left", timeout=T)
    assert left["participant"]["identity"] == "actor"
    await watcher.assert_quiet()
    await _healthy(server)


async def test_repeated_bad_frames_are_rate_limited_then_4429(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander)
    try:
        await _flood(client, ["{not json"] * 30)
        await _assert_cut_off(server, client, bystander)
        # Someone else's abuse cost the bystander nothing.
        await _pong(bystander.signal)
    finally:
        await client.close()


async def test_message_flood_is_rate_limited_then_4429(
    server: ServerProcess, room: str, bystander: Bystander
) -> None:
    client = await _join_watched(server, room, bystander)
    try:
        await _flood(client, [json.dumps({"type": "ping", "id": f"f{n}"}) for n in range(1000)])
        await _assert_cut_off(server, client, bystander)
    finally:
        await client.close()


async def test_errors_spread_out_do_not_cut_the_connection_off(
    server: ServerProcess, room: str
) -> None:
    """Under 20 bad requests per 10 s is not abuse: the connection stays open."""
    client = await _join(server, room, "clumsy")
    try:
        for n in range(15):
            reply = await _error(client, {"type": "frobnicate", "id": f"c{n}"})
            assert reply["code"] == "bad_request"
        await _pong(client)
    finally:
        await client.close()

