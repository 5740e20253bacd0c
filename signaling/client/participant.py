"""A whole participant: signalling, a publish PC and a subscribe PC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from sfu import aiortc_bridge as bridge
from sfu.keyframes import is_keyframe_start
from signaling.client.impair import Impairment, LinkModel
from signaling.client.renack import renack_forever
from signaling.client.sdp import (
    answer_offer,
    create_offer,
    ice_candidate,
    offered_tracks,
    received_tracks,
    rtc_configuration,
)
from signaling.client.signal import (
    DEFAULT_TIMEOUT,
    Message,
    Predicate,
    ProtocolError,
    SignalClient,
    TrackCallback,
)

logger = logging.getLogger(__name__)

RECONNECTING = 4000  # our close code for a socket given up for a new one (not a leave)


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
        impair_send: Impairment | None = None,
        impair_receive: Impairment | None = None,
        renack: bool = True,
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
        self.token: str | None = None  # the access token of the last join (for resume)
        # ICE restarts in progress or done: each task returns True once a new pair works.
        self.ice_restarts: list[asyncio.Task[bool]] = []
        self._on_track = on_track
        self._drain = drain
        self._timeout = timeout
        self._use_server_ice = use_server_ice_servers
        self._senders: dict[str, RTCRtpTransceiver] = {}
        self._sources: dict[RTCRtpTransceiver, str] = {}
        self._publish_lock = asyncio.Lock()
        self._publish_candidates: list[Message] = []
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._impair = (impair_send, impair_receive)
        self._renack = renack
        self.link_models: dict[str, LinkModel] = {}
        """``publish.send``, ``subscribe.receive``, ...: the impairment applied, with counts."""
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
        impair_send: Impairment | None = None,
        impair_receive: Impairment | None = None,
        renack: bool = True,
    ) -> Participant:
        """Connect to ``url``, ``join`` with ``token`` (following ``redirect``s) and
        publish ``publish_tracks`` if any.

        ``on_track(track_id, track)`` is called for each received track; ``drain=True``
        reads and discards received frames (bounded memory for load generators).
        ``use_server_ice_servers`` configures both peer connections with
        ``joined.ice_servers`` (TURN); by default no ICE servers are used.
        ``video_codec`` (e.g. ``"video/H264"``) is offered first for video tracks.
        ``impair_send`` / ``impair_receive`` impair what this participant's peer
        connections send / receive, below SRTP (``signaling.client.impair``), from
        their first negotiation on. ``renack`` asks again for video packets still
        missing every 100 ms, up to 10 times, as browsers do (``signaling.client.renack``);
        load generators with their own NACK logic turn it off.
        """
        for _ in range(max_redirects + 1):
            signal = await SignalClient.connect(url, timeout=timeout)
            participant = cls(
                signal,
                on_track=on_track,
                drain=drain,
                use_server_ice_servers=use_server_ice_servers,
                timeout=timeout,
                impair_send=impair_send,
                impair_receive=impair_receive,
                renack=renack,
            )
            participant.token = token
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

    @property
    def resume_secret(self) -> str | None:
        """``joined.resume``: lets a new connection take this participant over."""
        secret = self.joined.get("resume")
        return secret if isinstance(secret, str) else None

    # reconnecting

    async def resume(
        self, url: str | None = None, token: str | None = None, timeout: float | None = None
    ) -> bool:
        """Open a new signalling connection and ``join`` with ``resume``.

        True: the server kept this participant (same id, tracks, subscriptions, peer
        connections). False: it did not (window expired): this is now a fresh
        participant with a new id, and the caller must publish again on new peer
        connections. The old connection is closed either way.
        """
        token = token or self.token
        if token is None:
            raise ValueError("resume needs the access token used to join")
        old = self.signal
        signal = await SignalClient.connect(url or old.url, timeout=self._t(timeout))
        signal.add_listener(self._on_message)
        self.signal = signal
        message: dict[str, Any] = {"type": "join", "token": token}
        if self.resume_secret is not None:
            message["resume"] = self.resume_secret
        try:
            reply = await signal.request(message, self._t(timeout))
        finally:
            # Never close the old socket with 1000 first: that means "I left". A resumed
            # server closes it itself (4409); give that a moment to arrive.
            with contextlib.suppress(asyncio.TimeoutError):
                await old.wait_closed(1.0)
            await old.close(code=RECONNECTING, timeout=1.0)
        if reply.get("type") != "joined":
            raise ProtocolError(f"expected joined, got {reply.get('type')}")
        self.token = token
        return bool(reply.get("resumed"))

    async def restart_ice(
        self, timeout: float | None = None, *, host_addresses: Sequence[str] = ()
    ) -> None:
        """Restart ICE on both peer connections, keeping DTLS, SRTP and every track.

        The publish PC offers new credentials (``publish``); the server then re-offers
        the subscribe PC with new ones too (or, with no publish PC, is asked to with
        ``ice.restart``). ``host_addresses``: gather new host candidates there first,
        as a client that moved to another network would. Returns once both new offers
        and answers are applied; :attr:`ice_restarts` tell when connectivity is back.
        """
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None and host_addresses:
                await bridge.add_host_candidates(pc, host_addresses)
        answered = self.subscribe_negotiations
        if self.publish_pc is not None:
            async with self._publish_lock:
                await self._negotiate_publish(timeout, ice_restart=True)
        elif self.subscribe_pc is not None:
            await self.signal.request({"type": "ice.restart", "pc": "subscribe"}, self._t(timeout))
        if self.subscribe_pc is not None:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.subscribe_negotiations > answered),
                    self._t(timeout),
                )

    # publishing

    async def publish(
        self,
        tracks: Sequence[MediaStreamTrack],
        timeout: float | None = None,
        *,
        video_codec: str | None = None,
        sources: Sequence[str | None] = (),
    ) -> list[str]:
        """Add ``tracks`` (sendonly) to the publish PC and renegotiate (``publish``).

        ``sources`` marks each track ("camera", "microphone", "screen"; None: by kind).
        Returns the SFU track ids of ``tracks``, in order (see :attr:`published`).
        """
        async with self._publish_lock:
            pc = self._ensure_publish_pc()
            added = [pc.addTransceiver(track, direction="sendonly") for track in tracks]
            for transceiver, source in zip(added, sources, strict=False):
                if source is not None:
                    self._sources[transceiver] = source
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

    async def _negotiate_publish(
        self, timeout: float | None, *, ice_restart: bool = False
    ) -> list[Message]:
        pc = self.publish_pc
        assert pc is not None
        if ice_restart:
            bridge.begin_ice_restart(pc)  # the offer carries new ICE credentials
        offer = await create_offer(pc)
        self._impair_pc(pc, "publish")
        message: dict[str, Any] = {"type": "publish", "sdp": offer}
        marked = {t.mid: source for t, source in self._sources.items() if t.mid is not None}
        if marked:
            message["sources"] = marked
        reply = await self.signal.request(message, self._t(timeout))
        if reply.get("type") != "published" or not isinstance(reply.get("sdp"), str):
            raise ProtocolError(f"expected published with sdp, got {reply.get('type')}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        if ice_restart:
            self.ice_restarts.append(bridge.finish_ice_restart(pc, reply["sdp"]))
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
            if self._renack:
                self._spawn(renack_forever(self.subscribe_pc), "subscribe-renack")
        restart = bridge.is_ice_restart(self.subscribe_pc, sdp)
        if restart:
            bridge.begin_ice_restart(self.subscribe_pc)  # before its candidates are added
        answer = await answer_offer(self.subscribe_pc, sdp)
        for transceiver in self.subscribe_pc.getTransceivers():
            bridge.decode_from_keyframes(transceiver.receiver, is_keyframe_start)
        self._impair_pc(self.subscribe_pc, "subscribe")
        await self.signal.send({"type": "answer", "sdp": answer})
        if restart:
            self.ice_restarts.append(bridge.finish_ice_restart(self.subscribe_pc, sdp))
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

    def _impair_pc(self, pc: RTCPeerConnection, name: str) -> None:
        """Once per PC, after its sockets are gathered: apply the impairment, if any."""
        send, receive = self._impair
        if f"{name}.send" in self.link_models or f"{name}.receive" in self.link_models:
            return
        models = impair_peer_connection(pc, send, receive, 0 if name == "publish" else 2)
        self.link_models.update({f"{name}.{way}": m for way, m in models.items()})

    def _configuration(self) -> RTCConfiguration:
        return rtc_configuration(self.ice_servers if self._use_server_ice else ())

    def _t(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def impair_peer_connection(
    pc: RTCPeerConnection,
    send: Impairment | None,
    receive: Impairment | None,
    stream: int = 0,
) -> dict[str, LinkModel]:
    """Impair what ``pc`` sends and/or receives from now on (call it once its sockets
    are gathered, i.e. after ``setLocalDescription``). Returns the models applied, by
    ``send`` / ``receive`` (their counters say what they did)."""
    models: dict[str, LinkModel] = {}
    if send is not None and not send.is_null:
        models["send"] = send.model(stream)
    if receive is not None and not receive.is_null:
        models["receive"] = receive.model(stream + 1)
    if models:
        loop = asyncio.get_running_loop()
        out, into = models.get("send"), models.get("receive")
        bridge.impair_datagrams(
            pc,
            outgoing=None if out is None else lambda d: out.decide(len(d), loop.time()),
            incoming=None if into is None else lambda d: into.decide(len(d), loop.time()),
        )
    return models


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
