"""SFU-added one-way latency and loss, by matching payloads on one clock.

Publishers and subscribers share one clock (``time.perf_counter``, CLOCK_MONOTONIC, the
same in every process on Linux), whether they run in the generator process or are spread
over generator processes (:mod:`bench.pool`). A publisher's tap sees each RTP packet before
SRTP (:func:`sfu.aiortc_bridge.tap_sent_rtp`) and records *key of the payload → send
time*; a subscriber's tap sees each packet after SRTP and looks its payload up. An SFU
rewrites headers (SSRC, sequence, timestamp, payload type, extensions) but never the
payload, so the payload identifies the packet across the server. Each publisher replays
its own audio clip and aiortc numbers VP8 pictures from a random start, so payloads do
not repeat across publishers or within seconds.

What the latency includes besides the server: the publisher's SRTP protect and aioice
send, the subscriber's aioice receive and SRTP unprotect, and any wait in the generator's
event loop (its lag is reported beside it). The same generator measures every target.

Loss: packets a publisher sent inside the measurement window that a subscriber received
(whenever it did) against those it should have received.
"""

from __future__ import annotations

import time
import zlib
from array import array
from dataclasses import dataclass, field

from sfu.keyframes import is_keyframe_start
from sfu.rtp import payload_offset

__all__ = [
    "KIND_AUDIO",
    "KIND_KEYFRAME",
    "KIND_VIDEO",
    "Arrivals",
    "PublisherTap",
    "SendLedger",
    "classify_sent",
    "key_of",
    "media_payload_types",
    "payload_key",
]

KIND_AUDIO = 0
KIND_VIDEO = 1
KIND_KEYFRAME = 2  # first packet of a video keyframe
_MAX_ENTRIES = 400_000
_KEEP_S = 5.0


def key_of(payload: bytes) -> int:
    """64-bit key of a payload, the same in every process (``hash()`` of bytes is salted
    per process, and generator processes must agree): CRC-32 and Adler-32 side by side."""
    return (zlib.crc32(payload) << 32) | zlib.adler32(payload)


def payload_key(packet: bytes) -> int | None:
    """Key of the RTP payload (after CSRCs and header extensions), None if malformed."""
    offset = payload_offset(packet)
    if offset < 0 or offset >= len(packet):
        return None
    return key_of(packet[offset:])


def media_payload_types(
    sdp: str, video_codecs: tuple[str, ...] = ("vp8",), audio_codecs: tuple[str, ...] = ("opus",)
) -> tuple[set[int], set[int]]:
    """Payload types of the forwarded codecs in an SDP (``a=rtpmap``), video and audio;
    RTX and anything else left out."""
    video: set[int] = set()
    audio: set[int] = set()
    for line in sdp.splitlines():
        if not line.startswith("a=rtpmap:"):
            continue
        head, _, encoding = line[len("a=rtpmap:") :].partition(" ")
        name = encoding.split("/", 1)[0].strip().lower()
        if not head.isdigit():
            continue
        if name in video_codecs:
            video.add(int(head))
        elif name in audio_codecs:
            audio.add(int(head))
    return video, audio


def _is_rtcp(packet: bytes) -> bool:
    return len(packet) > 1 and 191 < packet[1] < 224


class SendLedger:
    """Send times of every publisher's RTP payloads (shared by all taps of one run)."""

    def __init__(self) -> None:
        self.sent: dict[int, tuple[float, int, int]] = {}
        """payload key → (send time, publisher index, kind)."""
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.window_sent: list[int] = []
        self.window_sent_video: list[int] = []
        """Of those, video packets (what subscribers can NACK)."""
        """Media packets each publisher sent inside the window."""
        self.publishers = 0

    def add_publisher(
        self, video_payload_types: set[int], audio_payload_types: set[int], video_codec: str = "vp8"
    ) -> PublisherTap:
        index = self.publishers
        self.publishers += 1
        self.window_sent.append(0)
        self.window_sent_video.append(0)
        return PublisherTap(self, index, video_payload_types, audio_payload_types, video_codec)

    def open_window(self, now: float | None = None) -> None:
        self.window_start = time.perf_counter() if now is None else now
        self.window_end = None
        self.window_sent = [0] * self.publishers
        self.window_sent_video = [0] * self.publishers

    def close_window(self, now: float | None = None) -> None:
        self.window_end = time.perf_counter() if now is None else now

    def in_window(self, sent_at: float) -> bool:
        start, end = self.window_start, self.window_end
        return start is not None and sent_at >= start and (end is None or sent_at < end)

    def _prune(self, now: float) -> None:
        horizon = now - _KEEP_S
        self.sent = {k: v for k, v in self.sent.items() if v[0] >= horizon}


class PublisherTap:
    """``tap(plain_packet)`` for one publisher's sent packets (RTCP and RTX skipped)."""

    __slots__ = ("_audio", "_codec", "_ledger", "_video", "index", "packets")

    def __init__(
        self, ledger: SendLedger, index: int, video: set[int], audio: set[int], codec: str
    ) -> None:
        self._ledger = ledger
        self.index = index
        self._video = frozenset(video)
        self._audio = frozenset(audio)
        self._codec = codec
        self.packets = 0

    def __call__(self, packet: bytes) -> None:
        sent = classify_sent(packet, self._video, self._audio, self._codec)
        if sent is not None:
            self.record(sent[0], time.perf_counter(), sent[1])

    def record(self, key: int, now: float, kind: int) -> None:
        """Note one media packet sent at ``now`` (also fed from generator processes)."""
        ledger = self._ledger
        if len(ledger.sent) >= _MAX_ENTRIES:
            ledger._prune(now)
        ledger.sent[key] = (now, self.index, kind)
        self.packets += 1
        if ledger.in_window(now):
            ledger.window_sent[self.index] += 1
            if kind != KIND_AUDIO:
                ledger.window_sent_video[self.index] += 1


def classify_sent(
    packet: bytes, video: frozenset[int], audio: frozenset[int], codec: str
) -> tuple[int, int] | None:
    """(payload key, kind) of a sent media packet; None for RTCP, RTX and anything else
    the SFU does not forward as is."""
    if len(packet) < 12 or _is_rtcp(packet):
        return None
    payload_type = packet[1] & 0x7F
    if payload_type in video:
        kind = KIND_VIDEO
    elif payload_type in audio:
        kind = KIND_AUDIO
    else:
        return None
    offset = payload_offset(packet)
    if offset < 0 or offset >= len(packet):
        return None
    payload = packet[offset:]
    if kind == KIND_VIDEO and is_keyframe_start(codec, payload):
        kind = KIND_KEYFRAME
    return key_of(payload), kind


@dataclass(slots=True)
class Arrivals:
    """A subscriber's receive tap: counts, first arrivals, latencies (window only)."""

    ledger: SendLedger
    packets: int = 0
    octets: int = 0
    unmatched: int = 0
    first_rtp_at: float | None = None
    first_media_at: float | None = None
    first_video_at: float | None = None
    first_keyframe_at: float | None = None
    window_received: dict[int, int] = field(default_factory=dict)
    window_video: dict[int, int] = field(default_factory=dict)
    """Of those, video packets."""
    window_keys: set[tuple[int, float]] = field(default_factory=set)
    """Packets of the window already counted: a second copy (RTX) is not a second packet."""
    duplicates: int = 0
    """publisher index → packets sent in the window and received here."""
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    publishers_seen: set[int] = field(default_factory=set)

    def __call__(self, packet: bytes) -> None:
        now = time.perf_counter()
        offset = payload_offset(packet)
        key = None if offset < 0 or offset >= len(packet) else key_of(packet[offset:])
        self.record(key, len(packet), now)

    def record(self, key: int | None, octets: int, now: float) -> None:
        """One packet received at ``now`` (also fed from generator processes)."""
        self.packets += 1
        self.octets += octets
        if self.first_rtp_at is None:
            self.first_rtp_at = now
        entry = None if key is None else self.ledger.sent.get(key)
        if entry is None or key is None:
            self.unmatched += 1
            return
        sent_at, publisher, kind = entry
        if self.first_media_at is None:
            self.first_media_at = now
        if publisher not in self.publishers_seen:
            self.publishers_seen.add(publisher)
        if kind != KIND_AUDIO:
            if self.first_video_at is None:
                self.first_video_at = now
            if kind == KIND_KEYFRAME and self.first_keyframe_at is None:
                self.first_keyframe_at = now
        if self.ledger.in_window(sent_at) and now >= sent_at:
            # The same send (key and send time: clips loop, so a payload recurs every few
            # seconds as a new packet) arriving again is a retransmission, not a packet.
            if (key, sent_at) in self.window_keys:
                self.duplicates += 1
                return
            self.window_keys.add((key, sent_at))
            self.window_received[publisher] = self.window_received.get(publisher, 0) + 1
            if kind != KIND_AUDIO:
                self.window_video[publisher] = self.window_video.get(publisher, 0) + 1
            self.latencies_s.append(now - sent_at)

    def reset_window(self) -> None:
        self.window_received = {}
        self.window_video = {}
        self.window_keys = set()
        self.latencies_s = array("d")

    def received_from(self, publishers: set[int] | None = None) -> int:
        return sum(
            n for p, n in self.window_received.items() if publishers is None or p in publishers
        )

    def video_received_from(self, publishers: set[int]) -> int:
        return sum(n for p, n in self.window_video.items() if p in publishers)
