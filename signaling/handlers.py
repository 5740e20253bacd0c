"""Protocol v1 request handlers: one small function per client message type."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from sfu.cluster.placement import ClusterUnavailable, Placement
from sfu.ids import new_id
from sfu.layer_choice import QUALITIES, Preference
from sfu.participant import Participant
from sfu.sdp_guard import SdpError
from sfu.shard import ShardProtocolError
from sfu.tokens import TokenError
from signaling.access import verify_access_token
from signaling.consent_handlers import CONSENT_HANDLERS
from signaling.messages import ProtocolError, optional, require
from signaling.resume import MAX_SECRET_CHARS, claim

if TYPE_CHECKING:
    from sfu.producer import Producer
    from sfu.room import Room
    from sfu.server import Server
    from signaling.session import SignalSession

__all__ = ["HANDLERS", "dispatch"]

log = structlog.get_logger(__name__)

Handler = Callable[["SignalSession", dict[str, Any], "str | None"], Awaitable[None]]
MAX_TRACKS_PER_REQUEST = 64
SOURCES = ("camera", "microphone", "screen")


async def dispatch(session: SignalSession, message: dict[str, Any], request_id: str | None) -> None:
    kind = message["type"]
    if session.participant is None and kind != "join":
        raise ProtocolError("unauthenticated", "the first message must be 'join'")
    handler = HANDLERS.get(kind)
    if handler is None:
        raise ProtocolError("bad_request", f"unknown message type {kind[:40]!r}")
    await handler(session, message, request_id)


def _joined(session: SignalSession) -> tuple[Participant, Room]:
    assert session.participant is not None and session.room is not None
    return session.participant, session.room


def _need(participant: Participant, grant: str) -> None:
    if not participant.can(grant):
        raise ProtocolError("forbidden", f"this token has no '{grant}' grant")


def _track(room: Room, track_id: str) -> Producer:
    producer = room.tracks.get(track_id)
    if producer is None:
        raise ProtocolError("not_found", f"no track {track_id[:40]!r} in this room")
    return producer


def _recording_state(session: SignalSession, room: Room) -> dict[str, Any]:
    recordings = session.server.recordings
    if recordings is None:
        return {"active": False, "recording": None, "participants": [], "requests": []}
    return recordings.state(room)


def _ok(session: SignalSession, request_id: str | None) -> None:
    session.reply(request_id, {"type": "ok"})


async def on_join(session: SignalSession, message: dict[str, Any], request_id: str | None) -> None:
    if session.participant is not None:
        raise ProtocolError("conflict", "already joined")
    server = session.server
    if server.draining or server.closing:
        # The upgrade is refused with 503 while draining; a socket opened just before gets
        # the draining notice, a `conflict` error and a 1001 close: join another node.
        session.send({"type": "server.draining", "deadline": server.drain_remaining()})
        session.reply(
            request_id,
            {
                "type": "error",
                "code": "conflict",
                "message": "the server is draining: join another node",
                "retry_after": server.retry_after_s(),
            },
        )
        server.stats.signal_errors["conflict"] += 1
        session.close_after_flush(1001)
        return
    token = message.get("token")
    if not isinstance(token, str):
        raise ProtocolError("unauthenticated", "'join' needs an access token")
    try:
        claims = verify_access_token(
            server.keys,
            token,
            issuer=server.settings.issuer,
            leeway_s=server.settings.token_leeway_s,
        )
    except TokenError as exc:
        raise ProtocolError("unauthenticated", f"invalid token: {exc}") from None
    asked_room = optional(message, "room", str, max_len=128)
    if asked_room is not None and asked_room != claims.room:
        raise ProtocolError("forbidden", "the token is for another room")
    secret = optional(message, "resume", str, max_len=MAX_SECRET_CHARS)
    if secret is not None:
        # Before placement: a kept participant's room is held here already (it still
        # counts), so resuming neither asks the cluster nor re-claims the room.
        resumed = claim(server.rooms.get(claims.room), secret, claims.identity)
        if resumed is not None:
            await _resume(session, resumed, request_id)
            return
        # Unknown, expired or someone else's: a fresh join (`resumed` false tells the
        # client to publish again and rebuild its peer connections).
    try:
        placement = await server.placement.place(claims.room)
    except ClusterUnavailable:
        raise ProtocolError("internal", "cluster state unavailable") from None
    if not placement.local and not await _spilled_here(server, placement):
        # The room lives on another node: the client sends the same `join` there.
        session.reply(request_id, {"type": "redirect", "url": placement.url})
        session.close_after_flush(1000)
        return
    if server.draining or server.closing:  # began while the placement was asked
        raise ProtocolError("conflict", "the server is draining: join another node")
    room = server.rooms.get_or_create(claims.room)
    participant = Participant(
        participant_id=new_id("PA"),
        identity=claims.identity,
        role=claims.role,
        grants=claims.grants,
        room=room,
        media=server.media,
        hooks=server.hooks,
    )
    session.room = room
    session.log = participant.log
    session.start_writer(participant)
    session.reply(request_id, _joined_message(session, participant, room, resumed=False))
    room.join(participant)
    if server.recordings is not None:
        await server.recordings.participant_joined(room, participant)


async def _spilled_here(server: Server, placement: Placement) -> bool:
    """A room held by another node that is full enough: serve this join as its spill
    shard here (rooms spanning nodes); False (redirect) if not, or if the link fails."""
    spans = server.node_spans
    if spans is None or not spans.should_spill(placement):
        return False
    try:
        await spans.open_node_spill(placement)
    except ShardProtocolError as exc:
        log.warning("node_span_failed", room=placement.room, home=placement.node, error=str(exc))
        return False
    return True


def _joined_message(
    session: SignalSession, participant: Participant, room: Room, *, resumed: bool
) -> dict[str, Any]:
    """``joined``; ``resume``, ``resume_window`` and ``resumed`` are additions to v1."""
    server = session.server
    return {
        "type": "joined",
        "participant": participant.describe(),
        "room": room.describe(),
        # Everyone else, on this worker and (if the room spans two) on the other one.
        "participants": [p for p in room.all_participants() if p["id"] != participant.id],
        "tracks": [t.describe() for t in room.tracks.values()],
        "recording": _recording_state(session, room),
        "ice_servers": server.ice_servers_for(participant.id),
        "resume": participant.resume_secret,
        "resume_window": server.settings.resume_window_s,
        "resumed": resumed,
    }


async def _resume(session: SignalSession, participant: Participant, request_id: str | None) -> None:
    """Attach this connection to a kept participant and resend what it may have missed."""
    server, room = session.server, participant.room
    previous = participant.connection
    if previous is not None and previous is not session:
        previous.replaced()  # two sockets: the newest wins
    participant.fresh_outbox()
    session.room = room
    session.log = participant.log
    session.start_writer(participant)
    session.reply(request_id, _joined_message(session, participant, room, resumed=True))
    # Events queued for the dead socket were dropped: `joined` carries the state, and what
    # needs an answer is asked again.
    participant.subscriber.resend_offer()
    if server.draining:
        session.send({"type": "server.draining", "deadline": server.drain_remaining()})
    if server.recordings is not None:
        server.recordings.participant_resumed(room, participant)
    participant.log.info("participant_resumed")


async def on_publish(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    participant, room = _joined(session)
    _need(participant, "publish")
    sdp = require(message, "sdp", str)
    sources = _sources(message)
    restarts = participant.publisher.ice_restarts
    try:
        answer, added = await participant.publisher.negotiate(sdp, sources)
    except SdpError as exc:
        raise ProtocolError("bad_request", f"publish: {exc}") from None
    if participant.publisher.ice_restarts != restarts:
        # The client's network changed: its subscribe path is as dead as its publish path.
        participant.subscriber.restart_ice()
    # `mid` (an addition to v1) maps each track to the client's own transceiver.
    tracks = [{**p.describe(), "mid": p.mid} for p in participant.publisher.producers.values()]
    session.reply(request_id, {"type": "published", "sdp": answer, "tracks": tracks})
    recordings = session.server.recordings
    if recordings is not None:
        for producer in added:  # a consented participant's new track joins its recording
            recordings.producer_added(room, producer)


def _sources(message: dict[str, Any]) -> dict[str, str]:
    """``publish.sources`` (an addition to v1): {mid: "camera" | "microphone" | "screen"}."""
    sources = optional(message, "sources", dict)
    if sources is None:
        return {}
    if len(sources) > MAX_TRACKS_PER_REQUEST or not all(
        isinstance(mid, str) and 0 < len(mid) <= 32 and source in SOURCES
        for mid, source in sources.items()
    ):
        raise ProtocolError(
            "bad_request", "'sources' maps m-line ids to 'camera', 'microphone' or 'screen'"
        )
    return dict(sources)


async def on_answer(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    participant, _ = _joined(session)
    sdp = require(message, "sdp", str)
    try:
        accepted = participant.subscriber.on_answer(sdp)
    except SdpError as exc:
        raise ProtocolError("bad_request", f"answer: {exc}") from None
    if not accepted:
        raise ProtocolError("conflict", "there is no outstanding offer to answer")


async def on_candidate(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    participant, _ = _joined(session)
    which = require(message, "pc", str)
    if which not in ("publish", "subscribe"):
        raise ProtocolError("bad_request", "'pc' must be 'publish' or 'subscribe'")
    if which == "publish":
        await participant.publisher.settled()  # after the offer it follows, not before
    pc = participant.publisher.pc if which == "publish" else participant.subscriber.pc
    if pc is None:
        raise ProtocolError("bad_request", f"there is no {which} peer connection yet")
    if "candidate" not in message:
        raise ProtocolError("bad_request", "'candidate' is required (null ends trickling)")
    raw = message["candidate"]
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ProtocolError("bad_request", "'candidate' must be an object or null")
    line = require(raw, "candidate", str, max_len=1024)
    if not line:
        return  # an empty candidate is the browser's end-of-candidates
    candidate = _parse_candidate(line)
    candidate.sdpMid = optional(raw, "sdpMid", str, max_len=32)
    candidate.sdpMLineIndex = optional(raw, "sdpMLineIndex", int)
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    try:
        await pc.addIceCandidate(candidate)
    except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError/AssertionError/...
        raise ProtocolError("bad_request", f"candidate refused ({type(exc).__name__})") from None


def _parse_candidate(line: str) -> RTCIceCandidate:
    text = line.removeprefix("candidate:")
    bits = text.split()
    if (
        len(bits) < 8
        or bits[6] != "typ"
        or not bits[1].isdigit()
        or not bits[5].isdigit()
        or not 0 < int(bits[5]) < 65536
    ):
        raise ProtocolError("bad_request", "malformed ICE candidate")
    try:
        return candidate_from_sdp(text)
    except Exception:  # noqa: BLE001
        raise ProtocolError("bad_request", "malformed ICE candidate") from None


def _track_ids(message: dict[str, Any]) -> list[str]:
    ids = require(message, "tracks", list, max_len=MAX_TRACKS_PER_REQUEST)
    if not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
        raise ProtocolError("bad_request", "'tracks' must be a list of track ids")
    return ids


async def on_subscribe(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    participant, room = _joined(session)
    _need(participant, "subscribe")
    producers = [_track(room, track_id) for track_id in _track_ids(message)]
    for producer in producers:
        participant.unsubscribed.discard(producer.id)
        participant.offer_track(producer)
    _ok(session, request_id)


async def on_unsubscribe(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    participant, room = _joined(session)
    _need(participant, "subscribe")
    producers = [_track(room, track_id) for track_id in _track_ids(message)]
    for producer in producers:
        participant.unsubscribed.add(producer.id)
        consumer = participant.subscriber.consumers.get(producer.id)
        if consumer is not None:
            session.server.stats.traffic.retire(consumer)  # /metrics keeps its final counts
        participant.subscriber.drop(producer.id)
    _ok(session, request_id)


async def on_mute(session: SignalSession, message: dict[str, Any], request_id: str | None) -> None:
    participant, room = _joined(session)
    producer = _track(room, require(message, "track", str, max_len=64))
    muted = require(message, "muted", bool)
    if producer.participant_id != participant.id:
        raise ProtocolError("forbidden", "only the publisher can mute its track")
    room.set_muted(producer, muted, time.monotonic())
    _ok(session, request_id)


async def on_track_settings(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    participant, room = _joined(session)
    producer = _track(room, require(message, "track", str, max_len=64))
    quality = optional(message, "quality", str)
    if quality is not None and quality not in QUALITIES:
        raise ProtocolError("bad_request", "'quality' must be low, medium or high")
    width, height = optional(message, "width", int), optional(message, "height", int)
    if (width is None) != (height is None) or any(
        v is not None and not 0 <= v <= 16384 for v in (width, height)
    ):
        raise ProtocolError("bad_request", "'width' and 'height' go together, 0..16384")
    paused = optional(message, "paused", bool)
    if quality is None and width is None and paused is None:
        raise ProtocolError("bad_request", "give 'quality', 'width'+'height' or 'paused'")
    # Quality or rendered size choose the simulcast layer (nothing to choose without
    # simulcast); pausing stops forwarding that track to this subscriber until resumed.
    if quality is not None or width is not None:
        participant.subscriber.set_preference(
            producer.id, Preference(quality=quality, width=width, height=height)
        )
    if paused is not None:
        participant.subscriber.set_paused(producer.id, paused)
    _ok(session, request_id)


async def on_ice_restart(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    """``ice.restart`` {``pc``: "subscribe"} (an addition to v1): re-offer the subscribe PC
    with new ICE credentials. The publish PC restarts by a ``publish`` offer with new ones."""
    participant, _ = _joined(session)
    which = optional(message, "pc", str) or "subscribe"
    if which != "subscribe":
        raise ProtocolError(
            "bad_request", "only 'subscribe': restart the publish PC with a new 'publish' offer"
        )
    if not participant.subscriber.restart_ice():
        raise ProtocolError("conflict", "there is no subscribe peer connection to restart")
    _ok(session, request_id)


async def on_leave(session: SignalSession, message: dict[str, Any], request_id: str | None) -> None:
    session.close_after_flush(1000)


async def on_ping(session: SignalSession, message: dict[str, Any], request_id: str | None) -> None:
    session.reply(request_id, {"type": "pong"})


HANDLERS: dict[str, Handler] = {
    "join": on_join,
    "publish": on_publish,
    "answer": on_answer,
    "candidate": on_candidate,
    "subscribe": on_subscribe,
    "unsubscribe": on_unsubscribe,
    "mute": on_mute,
    "track.settings": on_track_settings,
    "ice.restart": on_ice_restart,
    "leave": on_leave,
    "ping": on_ping,
}
HANDLERS.update(CONSENT_HANDLERS)
