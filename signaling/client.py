"""A Python client for signalling protocol v1 (``/work/shared/protocol.md``, ``docs/``).

Two layers, usable separately:

* :class:`SignalClient` speaks the WebSocket protocol only: it matches replies to
  requests by ``id``, buffers everything else as *events* and lets tests send raw or
  malformed frames and observe the close code (4401, 4429, 1009).
* :class:`Participant` is a whole peer: it joins, publishes local tracks on the
  *publish* peer connection (client offers, ``publish``/``published``) and answers the
  server's offers on the *subscribe* peer connection (``offer``/``answer``,
  renegotiated on the same ``RTCPeerConnection`` whenever the server re-offers).

Loopback: aioice never gathers host candidates on 127.0.0.1. This module patches
nothing; a caller that talks to a server on loopback must first call
``sfu.aiortc_bridge.restrict_host_addresses(["127.0.0.1"])`` (process-wide), or
monkeypatch ``aioice.ice.get_host_addresses`` in a test.

Example::

    alice = await Participant.join(url, token, publish_tracks=[FrameCounterTrack()])
    bob = await Participant.join(url, token2)
    tracks = await bob.wait_remote_tracks(alice.published)   # SFU track id -> track
    ...
    await bob.close(); await alice.close()

Received tracks are decoded by aiortc into an unbounded per-track queue: consume them
(``track.recv()``) or pass ``drain=True`` so the participant discards frames itself.
Local tracks passed to :meth:`Participant.publish` stay owned by the caller (never stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

__all__ = [
    "Message",
    "Participant",
    "ProtocolError",
    "SignalClient",
    "SignalClosed",
    "SignalError",
    "TrackCallback",
    "answer_offer",
    "create_offer",
    "ice_candidate",
    "offered_tracks",
    "received_tracks",
    "rtc_configuration",
]

logger = logging.getLogger(__name__)

Message = dict[str, Any]
"""One decoded protocol message (a JSON object with a ``type``)."""

Listener = Callable[[Message], bool]
"""Sees every inbound message in order; returns True to consume it (not buffered)."""

Predicate = Callable[[Message], bool]

TrackCallback = Callable[[str, MediaStreamTrack], None]
"""``on_track(sfu_track_id, track)``: a remote track started arriving."""

DEFAULT_TIMEOUT = 10.0
MAX_BUFFERED_EVENTS = 10_000
MAX_INBOUND_MESSAGE = 4 * 1024 * 1024  # server SDPs can exceed the 64 KiB client limit
_SENDING_DIRECTIONS = frozenset({"sendrecv", "sendonly"})


class SignalError(Exception):
    """The server answered a request with ``error`` {``code``, ``message``}."""

    def __init__(self, code: str, message: str = "", reply: Message | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.reply: Message = reply if reply is not None else {}


class SignalClosed(ConnectionError):
    """The WebSocket is closed; ``code`` is its close code (None if unknown)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"signalling connection closed (code {code})")
        self.code = code


class ProtocolError(Exception):
    """The server sent something protocol v1 does not allow here."""


def rtc_configuration(ice_servers: Sequence[RTCIceServer] = ()) -> RTCConfiguration:
    """The configuration of both peer connections: given ICE servers only, max-bundle.

    aiortc's default adds a public STUN server; never use it (tests run on loopback).
    """
    return RTCConfiguration(iceServers=list(ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


# --- the WebSocket layer ------------------------------------------------------------


def _as_types(types: str | Iterable[str] | None) -> frozenset[str] | None:
    if types is None:
        return None
    return frozenset([types]) if isinstance(types, str) else frozenset(types)


@dataclass
class _Waiter:
    types: frozenset[str] | None
    predicate: Predicate | None
    future: asyncio.Future[Message]

    def matches(self, message: Message) -> bool:
        if self.types is not None and message.get("type") not in self.types:
            return False
        return self.predicate is None or bool(self.predicate(message))


class SignalClient:
    """Protocol v1 over one WebSocket: requests with replies, events, raw frames.

    Inbound messages whose ``id`` names a pending :meth:`request` resolve it; every other
    message is an *event*: listeners see it first, then the oldest matching
    :meth:`next_event` waiter gets it, else it is buffered (at most
    ``MAX_BUFFERED_EVENTS``, oldest dropped).
    """

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, url: str
    ) -> None:
        self.url = url
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._waiters: list[_Waiter] = []
        self._events: deque[Message] = deque(maxlen=MAX_BUFFERED_EVENTS)
        self._listeners: list[Listener] = []
        self._send_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._close_code: int | None = None
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"signal-reader {url}"
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl: ssl_module.SSLContext | bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> SignalClient:
        """Open ``url`` (``ws://host:port/v1/signal``); raises on HTTP errors or timeout."""
        session = aiohttp.ClientSession()
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(url, ssl=ssl, headers=headers, max_msg_size=MAX_INBOUND_MESSAGE),
                timeout,
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, url)

    # state

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._closed.is_set()

    @property
    def closed_code(self) -> int | None:
        """The WebSocket close code once closed (e.g. 4401, 4429, 1009), else None."""
        return self._close_code

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(message)`` for every inbound message (replies included), in order."""
        self._listeners.append(listener)

    def buffered(self, types: str | Iterable[str] | None = None) -> list[Message]:
        """A snapshot of buffered events (optionally of these types), oldest first."""
        wanted = _as_types(types)
        return [m for m in self._events if wanted is None or m.get("type") in wanted]

    # sending

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message as a JSON text frame (fire and forget)."""
        await self.send_raw(json.dumps(message, separators=(",", ":")))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a text (str) or binary (bytes) frame verbatim: for malformed-input tests."""
        if self.closed:
            raise SignalClosed(self._close_code)
        async with self._send_lock:
            if isinstance(data, bytes):
                await self._ws.send_bytes(data)
            else:
                await self._ws.send_str(data)

    async def request(
        self, message: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        """Send ``message`` with a unique ``id`` (unless it has one) and return the reply.

        Raises :class:`SignalError` on an ``error`` reply, :class:`SignalClosed` if the
        connection closes first, :class:`TimeoutError` after ``timeout`` seconds.
        """
        outgoing = dict(message)
        request_id = str(outgoing.setdefault("id", f"{self._id_prefix}-{next(self._ids)}"))
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already pending")
        if self.closed:
            raise SignalClosed(self._close_code)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send(outgoing)
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)
        if reply.get("type") == "error":
            raise SignalError(str(reply.get("code", "")), str(reply.get("message", "")), reply)
        return reply

    # receiving

    async def next_event(
        self,
        types: str | Iterable[str] | None,
        predicate: Predicate | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Message:
        """Remove and return the first event of ``types`` (None: any) matching ``predicate``.

        Buffered events are searched first; non-matching ones stay buffered. Raises
        :class:`TimeoutError`, or :class:`SignalClosed` if the connection is closed and
        nothing buffered matches.
        """
        waiter = _Waiter(_as_types(types), predicate, asyncio.get_running_loop().create_future())
        for event in self._events:
            if waiter.matches(event):
                self._events.remove(event)
                return event
        if self.closed:
            raise SignalClosed(self._close_code)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait_closed(self, timeout: float | None = DEFAULT_TIMEOUT) -> int | None:
        """Wait until the server closes the connection; returns :attr:`closed_code`."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self._close_code

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Close the WebSocket (idempotent) and release the HTTP session."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(code=code), timeout)
        if not self._reader.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        if not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._mark_closed()
        await self._session.close()

    async def __aenter__(self) -> SignalClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch_text(frame.data)
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    logger.debug("signalling socket error: %s", self._ws.exception())
                    break
        except Exception:
            logger.exception("signalling reader failed")
        finally:
            self._mark_closed()

    def _dispatch_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            logger.warning("ignoring a non-JSON frame from the server: %.80r", data)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            logger.warning("ignoring a frame without a type: %.80r", data)
            return
        self._dispatch(message)

    def _dispatch(self, message: Message) -> None:
        consumed = False
        for listener in list(self._listeners):
            try:
                consumed = listener(message) or consumed
            except Exception:
                logger.exception("signalling listener failed on %s", message.get("type"))
        reply_to = self._pending.get(str(message.get("id"))) if "id" in message else None
        if reply_to is not None and not reply_to.done():
            reply_to.set_result(message)
        elif not consumed:
            self._deliver_event(message)

    def _deliver_event(self, message: Message) -> None:
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            try:
                matched = waiter.matches(message)
            except Exception as exc:  # noqa: BLE001 - a bad predicate fails its waiter only
                waiter.future.set_exception(exc)
                continue
            if matched:
                waiter.future.set_result(message)
                return
        self._events.append(message)

    def _mark_closed(self) -> None:
        if self._closed.is_set():
            return
        self._close_code = self._ws.close_code
        self._closed.set()
        error = SignalClosed(self._close_code)
        for future in [*self._pending.values(), *(w.future for w in self._waiters)]:
            if not future.done():
                future.set_exception(error)


# --- SDP helpers --------------------------------------------------------------------


def offered_tracks(sdp: str) -> dict[str, str | None]:
    """Map mid → track id (``a=msid:<stream> <track>``) for the audio/video m-lines of a
    remote offer that send media to us (direction sendrecv/sendonly, port ≠ 0).

    The track id is None when the m-line has no two-part ``a=msid``.
    """
    tracks: dict[str, str | None] = {}
    for section in sdp.replace("\r\n", "\n").split("\nm=")[1:]:
        lines = section.split("\n")
        words = lines[0].split()
        if len(words) < 2 or words[0] not in ("audio", "video") or words[1] == "0":
            continue
        attributes = [line[2:].strip() for line in lines[1:] if line.startswith("a=")]
        mid = next((a[4:] for a in attributes if a.startswith("mid:")), None)
        direction = next(
            (a for a in attributes if a in ("sendrecv", "sendonly", "recvonly", "inactive")),
            "sendrecv",
        )
        if mid is None or direction not in _SENDING_DIRECTIONS:
            continue
        msid = next((a[5:].split() for a in attributes if a.startswith("msid:")), [])
        tracks[mid] = msid[1] if len(msid) >= 2 else None
    return tracks


def ice_candidate(payload: Mapping[str, Any]) -> Any:
    """aiortc ``RTCIceCandidate`` from a protocol ``candidate`` object
    {``candidate``, ``sdpMid``, ``sdpMLineIndex``} (``candidate:`` prefix optional)."""
    text = str(payload["candidate"])
    candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
    candidate.sdpMid = payload.get("sdpMid")
    candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
    return candidate


async def create_offer(pc: RTCPeerConnection) -> str:
    """Create and apply a local offer; returns its SDP (candidates inline)."""
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def answer_offer(pc: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply a remote offer (first or re-offer, same ``pc``) and return the local answer SDP."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return str(pc.localDescription.sdp)


def received_tracks(
    pc: RTCPeerConnection, offered: Mapping[str, str | None]
) -> dict[str, MediaStreamTrack]:
    """Track id → receiving track for the m-lines of the last remote offer that send to us.

    ``offered`` is :func:`offered_tracks` of that offer; the id is its ``a=msid`` track id
    (so a reused m-line maps to its new track id), else aiortc's track id.
    """
    active: dict[str, MediaStreamTrack] = {}
    for transceiver in pc.getTransceivers():
        track, mid = transceiver.receiver.track, transceiver.mid
        if mid is not None and mid in offered and track is not None:
            active[offered[mid] or track.id] = track
    return active


# --- the participant ----------------------------------------------------------------


class Participant:
    """One participant of a room: signalling plus a publish and a subscribe peer connection.

    Create it with :meth:`join`. State kept up to date from ``joined`` and later events:
    :attr:`id`, :attr:`room`, :attr:`participants`, :attr:`tracks` (every track in the
    room by SFU track id), :attr:`recording`; :attr:`published` (this participant's own
    tracks) and :attr:`remote_tracks` (SFU track id → received aiortc track).
    Negotiation failures on the subscribe side are logged and kept in :attr:`errors`.
    """

    def __init__(
        self,
        signal: SignalClient,
        *,
        on_track: TrackCallback | None = None,
        drain: bool = False,
        use_server_ice_servers: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.signal = signal
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        self.joined: Message = {}
        self.participants: dict[str, Message] = {}
        self.tracks: dict[str, Message] = {}
        self.recording: Message | None = None
        self.ice_servers: list[RTCIceServer] = []
        self.published: dict[str, Message] = {}
        self.remote_tracks: dict[str, MediaStreamTrack] = {}
        self.errors: list[BaseException] = []
        self.subscribe_negotiations = 0
        self._on_track = on_track
        self._drain = drain
        self._timeout = timeout
        self._use_server_ice = use_server_ice_servers
        self._senders: dict[str, RTCRtpTransceiver] = {}
        self._publish_lock = asyncio.Lock()
        self._publish_candidates: list[Message] = []
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        signal.add_listener(self._on_message)
        self._spawn(self._run_inbox(), "participant-inbox")

    @classmethod
    async def join(
        cls,
        url: str,
        token: str,
        *,
        publish_tracks: Sequence[MediaStreamTrack] = (),
        video_codec: str | None = None,
        on_track: TrackCallback | None = None,
        drain: bool = False,
        use_server_ice_servers: bool = False,
        max_redirects: int = 3,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Participant:
        """Connect to ``url``, ``join`` with ``token`` (following ``redirect``s) and
        publish ``publish_tracks`` if any.

        ``on_track(track_id, track)`` is called for each received track; ``drain=True``
        reads and discards received frames (bounded memory for load generators).
        ``use_server_ice_servers`` configures both peer connections with
        ``joined.ice_servers`` (TURN); by default no ICE servers are used.
        ``video_codec`` (e.g. ``"video/H264"``) is offered first for video tracks.
        """
        for _ in range(max_redirects + 1):
            signal = await SignalClient.connect(url, timeout=timeout)
            participant = cls(
                signal,
                on_track=on_track,
                drain=drain,
                use_server_ice_servers=use_server_ice_servers,
                timeout=timeout,
            )
            try:
                reply = await signal.request({"type": "join", "token": token}, timeout)
                if reply["type"] == "redirect":
                    url = str(reply["url"])
                    await participant.close()
                    continue
                if reply["type"] != "joined":
                    raise ProtocolError(f"expected joined, got {reply['type']}")
                if publish_tracks:
                    await participant.publish(
                        publish_tracks, timeout=timeout, video_codec=video_codec
                    )
            except BaseException:
                await participant.close()
                raise
            return participant
        raise ProtocolError(f"more than {max_redirects} redirects")

    # identity

    @property
    def id(self) -> str:
        """This participant's id (from ``joined.participant.id``)."""
        return str(self.joined["participant"]["id"])

    @property
    def identity(self) -> str:
        return str(self.joined["participant"].get("identity", ""))

    @property
    def room(self) -> str:
        """The room id (from ``joined.room.id``)."""
        return str(self.joined["room"]["id"])

    # publishing

    async def publish(
        self,
        tracks: Sequence[MediaStreamTrack],
        timeout: float | None = None,
        *,
        video_codec: str | None = None,
    ) -> list[str]:
        """Add ``tracks`` (sendonly) to the publish PC and renegotiate (``publish``).

        Returns the SFU track ids of ``tracks``, in order (see :attr:`published`).
        """
        async with self._publish_lock:
            pc = self._ensure_publish_pc()
            added = [pc.addTransceiver(track, direction="sendonly") for track in tracks]
            if video_codec is not None:
                for transceiver in added:
                    if transceiver.kind == "video":
                        transceiver.setCodecPreferences(_preferred(video_codec))
            try:
                infos = await self._negotiate_publish(timeout)
            except BaseException:
                await _deactivate(added)
                raise
            return self._adopt_published(list(zip(tracks, added, strict=True)), infos)

    async def unpublish(self, track_id: str, timeout: float | None = None) -> None:
        """Stop sending ``track_id`` (its m-line becomes inactive) and renegotiate."""
        async with self._publish_lock:
            transceiver = self._senders.pop(track_id, None)
            if transceiver is None:
                raise KeyError(f"not published by this participant: {track_id}")
            self.published.pop(track_id, None)
            await _deactivate([transceiver])
            await self._negotiate_publish(timeout)

    async def _negotiate_publish(self, timeout: float | None) -> list[Message]:
        pc = self.publish_pc
        assert pc is not None
        offer = await create_offer(pc)
        reply = await self.signal.request({"type": "publish", "sdp": offer}, self._t(timeout))
        if reply.get("type") != "published" or not isinstance(reply.get("sdp"), str):
            raise ProtocolError(f"expected published with sdp, got {reply.get('type')}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        pending, self._publish_candidates = self._publish_candidates, []
        for candidate in pending:
            await pc.addIceCandidate(ice_candidate(candidate))
        tracks = reply.get("tracks", [])
        return [t for t in tracks if isinstance(t, dict)] if isinstance(tracks, list) else []

    def _adopt_published(
        self, added: list[tuple[MediaStreamTrack, RTCRtpTransceiver]], infos: list[Message]
    ) -> list[str]:
        """Match the new transceivers to the ``published`` track list: by ``mid`` if the
        server sends one, else by id (= the local track id from ``a=msid``), else by kind
        in order among the track ids this participant did not know yet."""
        fresh = [i for i in infos if str(i.get("id")) not in self._senders]
        ids: list[str] = []
        for track, transceiver in added:
            info = (
                next((i for i in fresh if "mid" in i and i["mid"] == transceiver.mid), None)
                or next((i for i in fresh if i.get("id") == track.id), None)
                or next((i for i in fresh if i.get("kind") == track.kind and "mid" not in i), None)
            )
            if info is None:
                raise ProtocolError(
                    f"published lists no {track.kind} track for mid {transceiver.mid}"
                )
            fresh.remove(info)
            track_id = str(info["id"])
            self._senders[track_id] = transceiver
            self.published[track_id] = info
            self.tracks.setdefault(track_id, info)
            ids.append(track_id)
        return ids

    def _ensure_publish_pc(self) -> RTCPeerConnection:
        if self.publish_pc is None:
            self.publish_pc = RTCPeerConnection(self._configuration())
        return self.publish_pc

    # requests

    async def mute(
        self, track_id: str, muted: bool = True, timeout: float | None = None
    ) -> Message:
        """``mute`` one of this participant's tracks; everyone gets ``track.updated``."""
        return await self.signal.request(
            {"type": "mute", "track": track_id, "muted": muted}, self._t(timeout)
        )

    async def subscribe(self, track_ids: Iterable[str], timeout: float | None = None) -> Message:
        """``subscribe`` to these tracks (the server then re-offers)."""
        return await self.signal.request(
            {"type": "subscribe", "tracks": list(track_ids)}, self._t(timeout)
        )

    async def unsubscribe(self, track_ids: Iterable[str], timeout: float | None = None) -> Message:
        """``unsubscribe`` from these tracks (the server then re-offers)."""
        return await self.signal.request(
            {"type": "unsubscribe", "tracks": list(track_ids)}, self._t(timeout)
        )

    async def track_settings(
        self, track_id: str, timeout: float | None = None, **settings: Any
    ) -> Message:
        """``track.settings`` for a received track: ``quality``, ``width``+``height``,
        ``paused``."""
        return await self.signal.request(
            {"type": "track.settings", "track": track_id, **settings}, self._t(timeout)
        )

    async def next_event(
        self,
        types: str | Iterable[str] | None,
        predicate: Predicate | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Message:
        """See :meth:`SignalClient.next_event` (``offer``/``candidate`` are handled here,
        never buffered)."""
        return await self.signal.next_event(types, predicate, timeout)

    async def wait_remote_tracks(
        self, track_ids: Iterable[str] | int, timeout: float | None = DEFAULT_TIMEOUT
    ) -> dict[str, MediaStreamTrack]:
        """Wait until all ``track_ids`` (or that many tracks) are received; returns them."""
        count = track_ids if isinstance(track_ids, int) else None
        wanted = set() if isinstance(track_ids, int) else set(track_ids)

        def ready() -> bool:
            if count is not None:
                return len(self.remote_tracks) >= count
            return wanted <= self.remote_tracks.keys()

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        if count is not None:
            return dict(self.remote_tracks)
        return {i: self.remote_tracks[i] for i in wanted}

    # leaving

    async def leave(self, timeout: float | None = None) -> None:
        """Send ``leave``, wait (bounded) for the server to close, then :meth:`close`."""
        try:
            if not self.signal.closed:
                await self.signal.send({"type": "leave"})
                with contextlib.suppress(asyncio.TimeoutError):
                    await self.signal.wait_closed(self._t(timeout))
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel background tasks, close both peer connections and the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: on Python 3.11 wait_for() can swallow a cancellation that races
            # with its inner task finishing, leaving a task alive after cancel().
            self._inbox.put_nowait(None)
            await asyncio.wait(tasks, timeout=self._timeout)
        for pc in (self.subscribe_pc, self.publish_pc):
            if pc is not None:
                try:
                    await asyncio.wait_for(pc.close(), self._timeout)
                except Exception:
                    logger.exception("closing a peer connection failed")
        await self.signal.close()

    async def __aenter__(self) -> Participant:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # inbound messages

    def _on_message(self, message: Message) -> bool:
        kind = message["type"]
        if kind in ("offer", "candidate"):
            self._inbox.put_nowait(message)
            return True
        if kind == "joined":
            self._apply_joined(message)
        elif kind in ("participant.joined", "participant.left"):
            self._apply_participant(kind, message.get("participant"))
        elif kind in ("track.published", "track.updated", "track.unpublished"):
            self._apply_track(kind, message.get("track"))
        elif kind == "recording.state":
            self.recording = message
        return False

    def _apply_joined(self, message: Message) -> None:
        self.joined = message
        self.participants = {
            str(p["id"]): p for p in message.get("participants", []) if isinstance(p, dict)
        }
        self.tracks = {str(t["id"]): t for t in message.get("tracks", []) if isinstance(t, dict)}
        self.recording = message.get("recording")
        self.ice_servers = [
            _ice_server(s) for s in message.get("ice_servers", []) if isinstance(s, dict)
        ]

    def _apply_participant(self, kind: str, participant: Any) -> None:
        if not isinstance(participant, dict) or "id" not in participant:
            return
        if kind == "participant.joined":
            self.participants[str(participant["id"])] = participant
        else:
            self.participants.pop(str(participant["id"]), None)

    def _apply_track(self, kind: str, track: Any) -> None:
        if not isinstance(track, dict) or "id" not in track:
            return
        track_id = str(track["id"])
        if kind == "track.unpublished":
            self.tracks.pop(track_id, None)
            self.published.pop(track_id, None)
            return
        self.tracks[track_id] = track
        if track_id in self.published:
            self.published[track_id] = track

    async def _run_inbox(self) -> None:
        while True:
            message = await self._inbox.get()
            if message is None:
                return  # closing
            try:
                if message["type"] == "offer":
                    await asyncio.wait_for(self._answer(str(message["sdp"])), self._timeout)
                else:
                    await self._add_candidate(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("handling %s failed", message.get("type"))
                self.errors.append(exc)

    async def _answer(self, sdp: str) -> None:
        """Apply a server offer on the subscribe PC (created on the first one) and answer."""
        if self.subscribe_pc is None:
            self.subscribe_pc = RTCPeerConnection(self._configuration())
        answer = await answer_offer(self.subscribe_pc, sdp)
        await self.signal.send({"type": "answer", "sdp": answer})
        self.subscribe_negotiations += 1
        await self._reconcile_remote_tracks(received_tracks(self.subscribe_pc, offered_tracks(sdp)))

    async def _add_candidate(self, message: Message) -> None:
        payload = message.get("candidate")
        if payload is None:
            return  # end of candidates: aiortc needs nothing
        if message.get("pc") == "publish":
            if self.publish_pc is None or self.publish_pc.remoteDescription is None:
                self._publish_candidates.append(payload)
            else:
                await self.publish_pc.addIceCandidate(ice_candidate(payload))
        elif self.subscribe_pc is not None:
            await self.subscribe_pc.addIceCandidate(ice_candidate(payload))

    async def _reconcile_remote_tracks(self, active: dict[str, MediaStreamTrack]) -> None:
        """Replace :attr:`remote_tracks` with ``active``; report tracks that are new."""
        added = [(i, t) for i, t in active.items() if self.remote_tracks.get(i) is not t]
        self.remote_tracks = active
        for track_id, track in added:
            self._report_track(track_id, track)
        async with self._changed:
            self._changed.notify_all()

    def _report_track(self, track_id: str, track: MediaStreamTrack) -> None:
        if self._drain:
            self._spawn(_drain(track), f"drain {track_id}")
        if self._on_track is not None:
            try:
                self._on_track(track_id, track)
            except Exception as exc:
                logger.exception("on_track callback failed")
                self.errors.append(exc)

    # plumbing

    def _configuration(self) -> RTCConfiguration:
        return rtc_configuration(self.ice_servers if self._use_server_ice else ())

    def _t(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ice_server(server: Mapping[str, Any]) -> RTCIceServer:
    return RTCIceServer(
        urls=server.get("urls", []),
        username=server.get("username"),
        credential=server.get("credential"),
    )


async def _deactivate(transceivers: Iterable[RTCRtpTransceiver]) -> None:
    """Make transceivers inactive and stop their senders (the next offer removes them)."""
    for transceiver in transceivers:
        transceiver.direction = "inactive"
        await transceiver.sender.stop()


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _preferred(mime_type: str) -> list[Any]:
    """Video codec capabilities with ``mime_type`` (e.g. ``video/H264``) first, RTX kept."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in capabilities if c.mimeType.lower() == mime_type.lower()]
    if not first:
        raise ValueError(f"aiortc cannot send {mime_type}")
    return first + [c for c in capabilities if c not in first]
