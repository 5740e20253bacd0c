"""Subscriber: a participant's subscribe peer connection and its consumers.

The server offers, the client answers. Whenever the set of tracks this participant
should receive changes, the m-lines are updated (one send-only m-line per consumer,
set inactive when it ends) and a new offer goes out; changes that arrive while an
offer is outstanding are folded into the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpSendParameters

from sfu import aiortc_bridge as bridge
from sfu.consumer import Consumer
from sfu.egress import Egress
from sfu.layer_choice import Preference
from sfu.peer_connection import MediaConfig, announce_address, new_peer_connection
from sfu.producer import Producer
from sfu.sdp_guard import validate_answer
from sfu.transport import MediaTransport

__all__ = ["Subscriber"]

log = structlog.get_logger(__name__)

ANSWER_TIMEOUT_S = 15.0


class Subscriber:
    """Keeps one subscriber's consumers and the subscribe PC's m-lines in step."""

    def __init__(
        self,
        participant_id: str,
        media: MediaConfig,
        *,
        send: Callable[[dict[str, Any]], None],
    ) -> None:
        self.participant_id = participant_id
        self.consumers: dict[str, Consumer] = {}  # by track id
        self.egress = Egress(media.observe_report)
        self.transport: MediaTransport | None = None
        self.negotiations = 0
        self._media = media
        self._send = send
        self._wanted: dict[str, Producer] = {}
        self._transceivers: dict[str, Any] = {}
        # Ended m-lines, reusable by a track of the same codec: (transceiver, last consumer).
        self._idle: list[tuple[Any, Consumer]] = []
        self._paused: dict[str, bool] = {}
        self._preferences: dict[str, Preference] = {}
        self._answer: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._offer: dict[str, Any] | None = None  # the last offer sent, for a resend
        self._unanswered = False  # the last offer timed out: offer again when asked
        self._ice_restart = False  # the next offer restarts ICE (until one is answered)
        self._dirty = False
        self._closed = False

    # --- what this participant should receive ------------------------------------

    def want(self, producer: Producer) -> None:
        if producer.id not in self._wanted:
            self._wanted[producer.id] = producer
            self._schedule()

    def drop(self, track_id: str) -> None:
        if self._wanted.pop(track_id, None) is not None:
            self._schedule()

    def set_paused(self, track_id: str, paused: bool) -> None:
        self._paused[track_id] = paused
        consumer = self.consumers.get(track_id)
        if consumer is not None:
            consumer.set_paused(paused, time.monotonic())

    def set_preference(self, track_id: str, preference: Preference) -> None:
        """Which simulcast layer this participant wants of a track (``track.settings``)."""
        self._preferences[track_id] = preference
        consumer = self.consumers.get(track_id)
        if consumer is not None:
            consumer.set_preference(preference, time.monotonic())

    # --- negotiation ----------------------------------------------------------------

    def _schedule(self) -> None:
        self._dirty = True
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._negotiate())

    def restart_ice(self) -> bool:
        """Offer new ICE credentials (the client's network changed); False before the
        subscribe PC exists."""
        if self.transport is None or self._closed:
            return False
        self._ice_restart = True
        self._schedule()
        return True

    def resend_offer(self) -> None:
        """The client reconnected: send the unanswered offer again (or a fresh one if
        it timed out meanwhile), since the old socket may have swallowed it."""
        if self._answer is not None and not self._answer.done() and self._offer is not None:
            self._send(self._offer)
        elif self._unanswered:
            self._schedule()

    async def _negotiate(self) -> None:
        while self._dirty and not self._closed:
            self._dirty = False
            if not self._apply_changes() and not (self._unanswered or self._ice_restart):
                continue
            self._unanswered = False
            try:
                await self._offer_and_wait()
            except TimeoutError:
                log.warning("subscribe_answer_timeout", participant=self.participant_id)
                self._unanswered = True
                return
            except Exception as exc:  # noqa: BLE001 - keep the session alive
                log.warning(
                    "subscribe_negotiation_failed", participant=self.participant_id, error=repr(exc)
                )
                return

    def _apply_changes(self) -> bool:
        """Add m-lines for new tracks, deactivate ended ones; True if anything changed."""
        changed = False
        for track_id, consumer in list(self.consumers.items()):
            producer = self._wanted.get(track_id)
            if producer is None or producer.closed:
                self._wanted.pop(track_id, None)
                self._end(track_id, consumer)
                changed = True
        for track_id, producer in self._wanted.items():
            if track_id not in self.consumers and not producer.closed:
                self._start(producer)
                changed = True
        return changed

    def _start(self, producer: Producer) -> None:
        pc = self._peer_connection()
        assert self.transport is not None
        transceiver, previous = self._reusable(producer)
        if transceiver is None:
            transceiver = pc.addTransceiver(producer.kind, direction="sendonly")
            transceiver.setCodecPreferences(_capabilities_for(producer))
            bridge.adopt_receiver(transceiver.receiver)
        else:
            transceiver.direction = "sendonly"
        ssrc, rtx_ssrc = bridge.sender_ssrcs(transceiver.sender)
        consumer = Consumer(
            producer,
            subscriber_id=self.participant_id,
            transport=self.transport,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            cname=bridge.peer_cname(pc),
        )
        if previous is not None:
            consumer.follow(previous)

        def on_parameters(parameters: RTCRtpSendParameters) -> None:
            payload_type, rtx_payload_type = _payload_types(parameters)
            consumer.start(payload_type, rtx_payload_type, time.monotonic())

        bridge.adopt_sender(transceiver.sender, on_parameters)
        bridge.set_sender_identity(transceiver.sender, producer.participant_id, producer.id)
        if self._paused.get(producer.id):
            consumer.set_paused(True, time.monotonic())
        preference = self._preferences.get(producer.id)
        if preference is not None:
            consumer.set_preference(preference, time.monotonic())
        producer.add_consumer(consumer)
        self.egress.add(consumer)
        self.consumers[producer.id] = consumer
        self._transceivers[producer.id] = transceiver

    def _end(self, track_id: str, consumer: Consumer) -> None:
        consumer.close()
        self.egress.remove(consumer)
        del self.consumers[track_id]
        transceiver = self._transceivers.pop(track_id)
        transceiver.direction = "inactive"
        self._idle.append((transceiver, consumer))

    def _reusable(self, producer: Producer) -> tuple[Any, Consumer | None]:
        """An ended, negotiated m-line of the same kind and codec, so SDP stays bounded.

        aiortc cannot change a negotiated m-line's codec, hence the codec match.
        """
        for i, (transceiver, previous) in enumerate(self._idle):
            if transceiver.kind != producer.kind or transceiver.mid is None:
                continue
            codecs = bridge.negotiated_codecs(transceiver)
            if codecs and producer.codec.matches(codecs[0].mimeType, codecs[0].parameters):
                del self._idle[i]
                return transceiver, previous
        return None, None

    def _peer_connection(self) -> Any:
        if self.transport is None:
            pc = new_peer_connection(self._media.ice_servers)
            self.transport = MediaTransport(pc, self.egress, queue_limit=self._media.queue_limit)
        return self.transport.pc

    async def _offer_and_wait(self) -> None:
        assert self.transport is not None
        pc = self.transport.pc
        restart = self._ice_restart
        if restart:
            try:
                bridge.begin_ice_restart(pc)
            except bridge.IceRestartError as exc:
                log.info("ice_restart_skipped", participant=self.participant_id, reason=str(exc))
                restart = self._ice_restart = False
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        self.transport.attach()
        mids = {t.mid: track_id for track_id, t in self._transceivers.items()}
        self._answer = asyncio.get_running_loop().create_future()
        self.negotiations += 1
        self._offer = {
            "type": "offer",
            "sdp": announce_address(pc.localDescription.sdp, self._media.announce_ip),
            "tracks": mids,
        }
        self._send(self._offer)
        try:
            answer = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT_S)
        finally:
            self._answer = None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        if restart:
            self._ice_restart = False
            self.transport.restart_ice(answer)

    def on_answer(self, sdp: str) -> bool:
        """The client's answer to our offer; False if none is outstanding.

        Raises SdpError for an answer that is not well-formed.
        """
        if self._answer is None or self._answer.done():
            return False
        validate_answer(sdp)
        self._answer.set_result(sdp)
        return True

    @property
    def pc(self) -> Any:
        return self.transport.pc if self.transport is not None else None

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for track_id, consumer in list(self.consumers.items()):
            consumer.close()
            self.egress.remove(consumer)
            del self.consumers[track_id]
        if self.transport is not None:
            await self.transport.close()


def _capabilities_for(producer: Producer) -> list[Any]:
    """Offer exactly the producer's codec (and RTX for video): no transcoding, ever."""
    capabilities = RTCRtpSender.getCapabilities(producer.kind).codecs
    chosen = [c for c in capabilities if producer.codec.matches(c.mimeType, c.parameters)][:1]
    if producer.kind == "video":
        chosen += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    return chosen


def _payload_types(parameters: RTCRtpSendParameters) -> tuple[int, int | None]:
    codec = parameters.codecs[0]
    assert codec.payloadType is not None
    for candidate in parameters.codecs[1:]:
        if candidate.mimeType.lower().endswith("/rtx") and (
            candidate.parameters.get("apt") == codec.payloadType
        ):
            return codec.payloadType, candidate.payloadType
    return codec.payloadType, None
