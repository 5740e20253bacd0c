"""Producer: one incoming track, fanned out packet by packet to its consumers.

The per-packet work is here and in :mod:`sfu.consumer`: read sequence number and
timestamp, update receive statistics, note gaps for NACK, translate header-extension
ids once, cache the packet for retransmissions, detect a keyframe start (without
decoding), and hand the same bytes to every consumer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from sfu.codec import Codec
from sfu.keyframes import is_keyframe_start
from sfu.layers import Layer, SenderClock, vp8_keyframe_size
from sfu.packet_cache import PacketCache
from sfu.receive_stats import NackTracker, ReceiveStats
from sfu.rtp import find_extension, payload_offset, rtx_unwrap, translate_extensions
from sfu.vp8 import read_descriptor

if TYPE_CHECKING:
    from sfu.consumer import Consumer

__all__ = [
    "KEYFRAME_REQUEST_INTERVAL_S",
    "Producer",
    "ProducerFeedback",
    "RecordingFeed",
    "SenderClock",
]

KEYFRAME_REQUEST_INTERVAL_S = 0.5  # at most one PLI upstream per producer per 500 ms
REPLAY_MAX_AGE_S = 1.0  # a newer keyframe is replayed to a new subscriber instead of a PLI
REPLAY_MAX_PACKETS = 160  # ... if what follows it fits in a short burst
VIDEO_CACHE_PACKETS = 1024
AUDIO_CACHE_PACKETS = 128

_TIMESTAMP = struct.Struct("!I")


class RecordingFeed(Protocol):
    """A recorder's end of a producer: sees exactly the bytes subscribers are sent."""

    def forward(self, packet: bytes, seq: int, ts: int, keyframe: bool) -> None: ...

    @property
    def needs_keyframe(self) -> bool: ...


class ProducerFeedback(Protocol):
    """What a producer asks of the publish side (PLI, NACK timers)."""

    def request_keyframe(self, producer: Producer, layer: Layer) -> None: ...

    def nack_pending(self, producer: Producer) -> None: ...

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        """Call ``producer.keyframe_retry_due`` after ``delay_s`` (the throttle window)."""
        ...


class Producer:
    """An incoming track of a publisher: one RTP stream, or up to three simulcast layers.

    ``layers[0]`` is the lowest quality. Without simulcast it is the only layer, and the
    ``ssrc``/``stats``/``cache``... properties below name it.
    """

    def __init__(
        self,
        *,
        track_id: str,
        participant_id: str,
        kind: str,
        mid: str,
        codec: Codec,
        ssrc: int | None,
        rtx_ssrc: int | None,
        extension_map: Sequence[int],
        feedback: ProducerFeedback,
        now: float,
        audio_level_id: int = 0,
        source: str | None = None,
        rids: Sequence[str] = (),
        favour_resolution: bool = False,
    ) -> None:
        self.id = track_id
        self.participant_id = participant_id
        self.kind = kind
        self.mid = mid
        # What the track shows: "camera", "microphone" or "screen" (from `publish.sources`).
        self.source = source or ("microphone" if kind == "audio" else "camera")
        self.codec = codec
        # Screen shares keep their resolution: a subscriber pauses rather than take a tiny layer.
        self.favour_resolution = favour_resolution or self.source == "screen"
        cache_size = VIDEO_CACHE_PACKETS if kind == "video" else AUDIO_CACHE_PACKETS
        # rids come highest quality first (as offered); layers go lowest first.
        names: list[str | None] = list(reversed(rids)) if len(rids) > 1 else [None]
        self.layers = [
            Layer(
                self,
                i,
                rid=rid,
                ssrc=ssrc if rid is None else None,
                rtx_ssrc=rtx_ssrc if rid is None else None,
                clock_rate=codec.clock_rate,
                cache_packets=cache_size,
            )
            for i, rid in enumerate(names)
        ]
        self.simulcast = len(self.layers) > 1
        self._base = self.layers[0]
        self.muted = False
        self.closed = False
        self.consumers: list[Consumer] = []
        self.recorders: list[RecordingFeed] = []  # attached only after consent verified
        self.record_layer = len(self.layers) - 1  # recorders keep the best layer
        self.created_at = now
        self.last_packet_at = now
        self.last_keyframe_at = -1.0
        self.replays = 0
        self.last_keyframe_request_at = -1e9
        self.keyframe_requests = 0
        self._keyframe_retry_pending = False
        self.packets = 0
        self.last_payload_size = 0  # for consumers' sender-report octet counts
        self.octets = 0  # payload bytes received (repairs included)
        self.keyframes = 0
        self.rtx_packets = 0
        self.rtx_octets = 0
        self.rtx_duplicates = 0
        # RFC 6464 levels (after id translation) summed for the active-speaker detector.
        self._audio_level_id = audio_level_id if kind == "audio" else 0
        self.level_sum = 0
        self.level_count = 0
        self._feedback = feedback
        self._extension_map = extension_map
        self._identity_extensions = all(extension_map[i] == i for i in range(1, 256))
        self._codec_name = codec.name
        self._video = kind == "video"
        self._simulcast_vp8 = self.simulcast and codec.name == "vp8"
        self._on_close: list[Callable[[Producer], None]] = []

    # --- the single layer of a producer without simulcast -------------------------

    @property
    def ssrc(self) -> int | None:
        return self._base.ssrc

    @ssrc.setter
    def ssrc(self, value: int | None) -> None:
        self._base.ssrc = value

    @property
    def rtx_ssrc(self) -> int | None:
        return self._base.rtx_ssrc

    @rtx_ssrc.setter
    def rtx_ssrc(self, value: int | None) -> None:
        self._base.rtx_ssrc = value

    @property
    def stats(self) -> ReceiveStats:
        return self._base.stats

    @property
    def nacks(self) -> NackTracker:
        return self._base.nacks

    @property
    def cache(self) -> PacketCache:
        return self._base.cache

    @property
    def sender_clock(self) -> SenderClock | None:
        return self._base.sender_clock

    @property
    def keyframe_seq(self) -> int:
        return self._base.keyframe_seq

    def describe(self) -> dict[str, object]:
        """The ``track`` object of protocol v1."""
        return {
            "id": self.id,
            "kind": self.kind,
            "participant": self.participant_id,
            "muted": self.muted,
            "source": self.source,  # an addition to v1
        }

    # --- hot path -------------------------------------------------------------------

    def on_rtp(self, packet: bytes, now: float, layer: Layer | None = None) -> None:
        if layer is None:
            layer = self._base
        seq = (packet[2] << 8) | packet[3]
        ts = _TIMESTAMP.unpack_from(packet, 4)[0]
        self.packets += 1
        self.last_packet_at = now
        layer.last_packet_at = now
        layer.stats.update(seq, ts, now)
        if layer.nacks.on_packet(seq, now):
            self._feedback.nack_pending(self)
        if packet[0] & 0x10 and not self._identity_extensions:
            translated = translate_extensions(packet, self._extension_map)
            if translated is None:
                return  # malformed extension block: never forwarded, never cached
            packet = translated
        offset = payload_offset(packet)
        if offset < 0:
            return
        if self._audio_level_id and packet[0] & 0x10:
            level = find_extension(packet, self._audio_level_id)
            if level:
                self.level_sum += level[0] & 0x7F  # -dBov: 0 loudest, 127 silent
                self.level_count += 1
        layer.cache.put(seq, packet)
        size = self.last_payload_size = len(packet) - offset
        self.octets += size
        layer.octets += size
        # Every audio packet can start a stream: only video payloads need looking at.
        keyframe = not self._video or is_keyframe_start(
            self._codec_name, memoryview(packet)[offset:]
        )
        if keyframe and self._video:
            self.last_keyframe_at = layer.last_keyframe_at = now
            layer.keyframe_seq = seq
            self.keyframes += 1
        if self._simulcast_vp8:
            self._note_vp8(layer, packet, offset, seq, keyframe)
        if self.muted:
            return
        index = layer.index
        for consumer in self.consumers:
            consumer.forward(packet, seq, ts, keyframe, index)
        if self.recorders and index == self.record_layer:
            for recorder in self.recorders:
                recorder.forward(packet, seq, ts, keyframe)

    @staticmethod
    def _note_vp8(layer: Layer, packet: bytes, offset: int, seq: int, keyframe: bool) -> None:
        """Latest picture id/TL0PICIDX of a layer (a switch continues them) and its size."""
        if seq != layer.stats.highest_seq_ext & 0xFFFF:
            return  # late or repaired: not the newest picture
        pic_id, _, tl0, end = read_descriptor(packet, offset)
        layer.pic_id, layer.tl0 = pic_id, tl0
        if keyframe and end > 0:
            layer.width, layer.height = vp8_keyframe_size(packet, end)

    def on_rtx(self, packet: bytes, now: float, layer: Layer | None = None) -> None:
        """A retransmission (RFC 4588) answering one of our NACKs."""
        if layer is None:
            layer = self._base
        if layer.ssrc is None:
            return
        original = rtx_unwrap(packet, layer.ssrc, self.codec.payload_type)
        if original is None:
            return
        self.rtx_packets += 1
        if layer.cache.get((original[2] << 8) | original[3]) is not None:
            # Already have it: a browser's bandwidth probe (it pads by resending old
            # packets) or a late repair. Forwarding it would only load every subscriber.
            self.rtx_duplicates += 1
            return
        self.on_rtp(original, now, layer)
        self.rtx_octets += self.last_payload_size

    # --- control --------------------------------------------------------------------

    def on_sender_report(
        self, ntp: int, rtp_ts: int, now: float, layer: Layer | None = None
    ) -> None:
        (layer or self._base).sender_clock = SenderClock(ntp, rtp_ts, now)

    def set_muted(self, muted: bool, now: float) -> None:
        if muted == self.muted:
            return
        self.muted = muted
        if not muted:
            for layer in self.layers:
                layer.keyframe_seq = -1  # what was sent while muted is never replayed
        for consumer in self.consumers:
            if muted:
                consumer.hold()
            else:
                consumer.restart(now)

    def replay_keyframe(self, consumer: Consumer, now: float, index: int = 0) -> bool:
        """Start ``consumer`` from layer ``index``'s cached last keyframe if it is recent.

        Sends the keyframe and everything after it, in order; False (nothing sent) if the
        keyframe is too old or any packet since is missing from the cache.
        """
        if self.kind != "video" or self.muted or not 0 <= index < len(self.layers):
            return False
        layer = self.layers[index]
        if layer.keyframe_seq < 0 or now - layer.last_keyframe_at > REPLAY_MAX_AGE_S:
            return False
        newest = layer.stats.highest_seq_ext & 0xFFFF
        count = ((newest - layer.keyframe_seq) & 0xFFFF) + 1
        if count > REPLAY_MAX_PACKETS:
            return False
        packets = [layer.cache.get((layer.keyframe_seq + i) & 0xFFFF) for i in range(count)]
        if any(p is None for p in packets):
            return False
        for i, packet in enumerate(packets):
            assert packet is not None
            seq = (packet[2] << 8) | packet[3]
            consumer.forward(packet, seq, _TIMESTAMP.unpack_from(packet, 4)[0], i == 0, index)
        self.replays += 1
        return True

    def take_audio_level(self) -> float | None:
        """Mean level (dBov) since the last call, or None if no level arrived."""
        if self.level_count == 0 or self.muted:
            self.level_sum = self.level_count = 0
            return None
        mean = -self.level_sum / self.level_count
        self.level_sum = self.level_count = 0
        return mean

    def request_keyframe(self, now: float, index: int | None = None) -> bool:
        """Ask the publisher for a keyframe of one layer, at most every 500 ms per layer.

        ``index`` None means the layers someone waits for (the recorded one if nobody
        does). True if a request went out now. A request inside the window is not lost:
        if someone is still waiting when the window ends, the request goes out then.
        """
        if self.kind != "video":
            return False
        if index is None:
            wanted = self._awaited_layers() or {self.record_layer}
            sent = False
            for i in sorted(wanted):
                sent = self.request_keyframe(now, i) or sent
            return sent
        if not 0 <= index < len(self.layers):
            return False
        layer = self.layers[index]
        wait = KEYFRAME_REQUEST_INTERVAL_S - (now - layer.last_keyframe_request_at)
        if wait > 0:
            if not self._keyframe_retry_pending and index in self._awaited_layers():
                self._keyframe_retry_pending = True
                self._feedback.retry_keyframe_request(self, wait)
            return False
        layer.last_keyframe_request_at = self.last_keyframe_request_at = now
        self.keyframe_requests += 1
        self._feedback.request_keyframe(self, layer)
        return True

    def keyframe_overdue(self, now: float) -> None:
        """Ask again for every layer someone still waits for (called about once a second)."""
        for index in self._awaited_layers():
            self.request_keyframe(now, index)

    def keyframe_retry_due(self, now: float) -> None:
        self._keyframe_retry_pending = False
        if not self.closed:
            self.keyframe_overdue(now)

    def _awaited_layers(self) -> set[int]:
        """Layers a consumer (starting or switching) or a recorder waits for a keyframe of."""
        wanted = {c.awaited_layer for c in self.consumers}
        wanted.discard(-1)
        if any(r.needs_keyframe for r in self.recorders):
            wanted.add(self.record_layer)
        return wanted

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def on_close(self, callback: Callable[[Producer], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        """Producer gone (unpublished, publisher left, ICE failed, silent too long)."""
        if self.closed:
            return
        self.closed = True
        consumers, self.consumers = self.consumers, []
        for consumer in consumers:
            consumer.producer_closed()
        self.recorders = []  # the recording service finishes the file
        for layer in self.layers:
            layer.cache.clear()
        for callback in self._on_close:
            callback(self)
