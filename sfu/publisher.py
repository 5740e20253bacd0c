"""Publisher: a participant's publish peer connection and the producers it carries.

The client offers, we answer. Each sending m-line becomes a :class:`Producer`; the
answer is restricted to the one codec we forward for it, so the publisher cannot
switch to a codec its subscribers never negotiated. A simulcast m-line (``a=simulcast``)
becomes one producer with a layer per rid; aiortc's answer gets the receive side added.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from aiortc import RTCSessionDescription

from sfu import aiortc_bridge as bridge
from sfu.codec import choose_codec
from sfu.ids import new_id
from sfu.ingress import Ingress
from sfu.peer_connection import MediaConfig, announce_address, new_peer_connection
from sfu.producer import Producer
from sfu.sdp_guard import SdpError, validate_offer
from sfu.simulcast_sdp import SimulcastOffer, add_simulcast_to_answer, offered_simulcast
from sfu.transport import MediaTransport

__all__ = ["Publisher"]

log = structlog.get_logger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
NEGOTIATION_TIMEOUT_S = 10.0


class Publisher:
    """Negotiates the publish PC and keeps its producers in step with the offers."""

    def __init__(
        self,
        participant_id: str,
        media: MediaConfig,
        *,
        on_added: Callable[[Producer], None],
        on_removed: Callable[[Producer], None],
    ) -> None:
        self.participant_id = participant_id
        self.producers: dict[str, Producer] = {}  # by mid
        self._media = media
        self._on_added = on_added
        self._on_removed = on_removed
        self.ingress = Ingress(on_stale=self._remove, stale_after_s=media.stale_after_s)
        self.transport: MediaTransport | None = None
        self.ice_restarts = 0  # publish offers that restarted ICE
        self._lock = asyncio.Lock()
        self._offers = 0  # publish offers received and not yet applied
        self._settled = asyncio.Event()
        self._settled.set()
        self._closed = False

    def expect_offer(self) -> None:
        """An offer arrived (its negotiation may start later): trickled candidates that
        follow it must wait for it, or an ICE restart would discard them."""
        self._offers += 1
        self._settled.clear()

    def offer_done(self) -> None:
        self._offers = max(0, self._offers - 1)
        if not self._offers:
            self._settled.set()

    @property
    def is_settled(self) -> bool:
        """No offer received is waiting to be applied."""
        return self._settled.is_set()

    async def settled(self) -> None:
        """Wait (bounded) until every offer received so far has been applied."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), NEGOTIATION_TIMEOUT_S)

    async def negotiate(
        self, offer: str, sources: Mapping[str, str] | None = None
    ) -> tuple[str, list[Producer]]:
        """Apply a publish offer; returns (answer SDP, producers added by it).

        ``sources`` marks new tracks by mid ("camera", "microphone", "screen")."""
        summary = validate_offer(offer)
        _check_sources(sources or {}, {mid: kind for kind, mid, _, _ in summary.media})
        try:
            parsed = bridge.parse_sdp(offer)
        except Exception as exc:  # noqa: BLE001 - aiortc's parser raises anything
            raise SdpError(f"the offer does not parse ({type(exc).__name__})") from None
        simulcast = offered_simulcast(offer)
        async with self._lock:
            if self._closed:
                raise SdpError("the participant is leaving")
            existing = [t.mid for t in self.pc.getTransceivers()] if self.pc else []
            if [mid for _, mid, _, _ in summary.media[: len(existing)]] != existing:
                # JSEP never removes or reorders m-lines; refusing here also bounds the
                # transceivers a client can make us create (16, the guard's limit).
                raise SdpError("a new offer must keep the previous m-lines, in order")
            try:
                answer = await asyncio.wait_for(self._answer(offer), NEGOTIATION_TIMEOUT_S)
            except SdpError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let aiortc kill the session
                log.warning("publish_negotiation_failed", error=repr(exc))
                await self._reset()
                raise SdpError(
                    f"the offer could not be negotiated ({type(exc).__name__})"
                ) from None
            added = self._update_producers(parsed, summary.media, simulcast, sources or {})
        answer = add_simulcast_to_answer(answer, self._simulcast_accepted(simulcast))
        return announce_address(answer, self._media.announce_ip), added

    def _simulcast_accepted(self, offers: dict[str, SimulcastOffer]) -> dict[str, SimulcastOffer]:
        """The simulcast m-lines whose producer has layers (a renegotiation keeps them)."""
        return {
            mid: layers
            for mid, layers in offers.items()
            if mid in self.producers and self.producers[mid].simulcast
        }

    async def _answer(self, offer: str) -> str:
        pc = self._peer_connection()
        restart = bridge.is_ice_restart(pc, offer)
        if restart:
            try:
                bridge.begin_ice_restart(pc)  # our answer then carries new credentials
            except bridge.IceRestartError as exc:
                raise SdpError(f"ICE restart: {exc}") from None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for transceiver in pc.getTransceivers():
            if not isinstance(transceiver.receiver, bridge.ForwardingReceiver):
                bridge.adopt_receiver(transceiver.receiver)
            codec = choose_codec(transceiver.kind, bridge.negotiated_codecs(transceiver))
            if codec is not None:
                keep = {codec.payload_type} | (
                    {codec.rtx_payload_type} if codec.rtx_payload_type is not None else set()
                )
                bridge.restrict_answer_codecs(transceiver, keep)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        assert self.transport is not None
        self.transport.attach()
        if restart:
            self.transport.restart_ice(offer)
            self.ice_restarts += 1
        return str(pc.localDescription.sdp)

    def _peer_connection(self) -> Any:
        if self.transport is not None:
            return self.transport.pc
        pc = new_peer_connection(self._media.ice_servers)
        self.transport = MediaTransport(pc, self.ingress, queue_limit=self._media.queue_limit)
        self.ingress.transport = self.transport

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not self._closed:
                log.info(
                    "publish_pc_down", participant=self.participant_id, state=pc.connectionState
                )
                for producer in list(self.producers.values()):
                    self._remove(producer)

        return pc

    def _update_producers(
        self,
        parsed: Any,
        media_summary: Sequence[tuple[str, str, str, frozenset[str]]],
        simulcast: dict[str, SimulcastOffer],
        sources: Mapping[str, str],
    ) -> list[Producer]:
        assert self.transport is not None
        transceivers = {t.mid: t for t in self.transport.pc.getTransceivers()}
        added: list[Producer] = []
        now = time.monotonic()
        for media, (kind, mid, direction, _) in zip(parsed.media, media_summary, strict=True):
            sending = direction in ("sendonly", "sendrecv")
            existing = self.producers.get(mid)
            if existing is not None and not sending:
                self._remove(existing)
            transceiver = transceivers.get(mid)
            if existing is not None or not sending or transceiver is None:
                continue
            codec = choose_codec(kind, bridge.negotiated_codecs(transceiver))
            if codec is None:
                continue
            media_ssrc, rtx_ssrc = _signalled_ssrcs(media)
            extensions = bridge.negotiated_extensions(transceiver)
            for ext in extensions:
                if ext.uri == MID_URI:
                    self.ingress.mid_extension_id = ext.id
            layers = simulcast.get(mid)
            if layers is not None:
                # Bundled m-lines share one id space: one pair of ids serves them all.
                self.ingress.rid_extension_id = layers.rid_ext_id
                self.ingress.repaired_rid_extension_id = layers.repaired_rid_ext_id
            producer = Producer(
                track_id=new_id("TR"),
                participant_id=self.participant_id,
                kind=kind,
                mid=mid,
                codec=codec,
                ssrc=media_ssrc,
                rtx_ssrc=rtx_ssrc if codec.rtx_payload_type is not None else None,
                extension_map=_extension_map(kind, extensions),
                feedback=self.ingress,
                now=now,
                audio_level_id=_audio_level_id(kind, extensions),
                source=sources.get(mid),
                rids=layers.rids if layers is not None else (),
            )
            self.producers[mid] = producer
            self.ingress.add(producer)
            added.append(producer)
        for producer in added:
            self._on_added(producer)
        return added

    @property
    def pc(self) -> Any:
        return self.transport.pc if self.transport is not None else None

    def remove_track(self, track_id: str) -> bool:
        for producer in self.producers.values():
            if producer.id == track_id:
                self._remove(producer)
                return True
        return False

    def _remove(self, producer: Producer) -> None:
        if self.producers.get(producer.mid) is not producer:
            return
        del self.producers[producer.mid]
        self.ingress.remove(producer)
        producer.close()
        self._on_removed(producer)

    async def _reset(self) -> None:
        for producer in list(self.producers.values()):
            self._remove(producer)
        if self.transport is not None:
            transport, self.transport = self.transport, None
            self.ingress.transport = None
            await transport.close()

    async def close(self) -> None:
        self._closed = True
        for producer in list(self.producers.values()):
            self._remove(producer)
        self.ingress.close()
        if self.transport is not None:
            await self.transport.close()


_SOURCE_KINDS = {"camera": ("video",), "microphone": ("audio",), "screen": ("audio", "video")}


def _check_sources(sources: Mapping[str, str], kinds: Mapping[str, str]) -> None:
    """Each marked mid must be in the offer, with a source that fits its kind."""
    for mid, source in sources.items():
        if mid not in kinds:
            raise SdpError(f"'sources' names mid {mid[:32]!r}, which the offer does not have")
        if kinds[mid] not in _SOURCE_KINDS.get(source, ()):
            raise SdpError(f"a {kinds[mid]} track cannot be a {source!r} source")


def _signalled_ssrcs(media: Any) -> tuple[int | None, int | None]:
    """(media SSRC, RTX SSRC) from a=ssrc / a=ssrc-group:FID, if the offer has them."""
    for group in media.ssrc_group:
        if group.semantic == "FID" and len(group.items) == 2:
            return int(group.items[0]), int(group.items[1])
    if media.ssrc:
        return int(media.ssrc[0].ssrc), None
    return None, None


def _extension_map(kind: str, negotiated: Sequence[Any]) -> list[int]:
    """256-entry table: ingress extension id → the id aiortc uses in our offers (0 = drop).

    MID is dropped: its value names the publisher's m-line, not the subscriber's.
    """
    egress = bridge.egress_extension_ids(kind)
    table = [0] * 256
    for ext in negotiated:
        if ext.uri != MID_URI and 0 < ext.id < 256:
            table[ext.id] = egress.get(ext.uri, 0)
    return table


def _audio_level_id(kind: str, negotiated: Sequence[Any]) -> int:
    """The id audio levels carry after translation (0 if the publisher sends none)."""
    if kind != "audio" or not any(ext.uri == AUDIO_LEVEL_URI for ext in negotiated):
        return 0
    return bridge.egress_extension_ids(kind).get(AUDIO_LEVEL_URI, 0)
