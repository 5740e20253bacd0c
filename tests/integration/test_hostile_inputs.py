"""A hostile participant must never affect another room or another participant's media.

A publisher (frame-counter video + 440 Hz tone) and a subscriber share room A. While their
media flows, three things happen at once, each bounded:

(a) a hostile participant of room A sends every kind of garbage signalling, bad SDP offers and
    bogus answers, round after round (it is cut off with 4429/1009 and comes back);
(b) a raw UDP socket on 127.0.0.1 (a foreign address) sprays the server's ICE ports of both
    legitimate peer connections: empty datagrams, 2000-byte "RTP", random fake RTP, STUN with
    broken attribute lengths and DTLS-looking garbage;
(c) someone in room B joins and leaves over and over (sometimes publishing).

The subscriber must keep decoding frames with strictly increasing counters without a stall
over 1 s, the tone must stay 440 Hz, both peer connections must stay connected, and the
server's metrics must show the datagrams dropped by its guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from helpers.media import (
    FrameCounterTrack,
    ToneTrack,
    dominant_frequency,
    frames_to_samples,
    read_frame_counter,
)
from helpers.server import ServerProcess

from signaling.client import Participant, SignalClient, create_offer, rtc_configuration

pytestmark = pytest.mark.integration

T = 5.0
"""Timeout of every single await on the server (seconds)."""
TONE_HZ = 440.0
BARRAGE_TIMEOUT_S = 25.0
AFTER_S = 3.0
MAX_STALL_S = 1.0
HOSTILE_ROUNDS = [("garbage", 0), ("1MiB", 5), ("garbage", 16), ("flood", 0),
                  ("garbage", 32), ("1MiB", 40), ("garbage", 48), ("flood", 0)]
"""The hostile participant's connections: what each sends, from which bad frame on."""
ROOM_B_CYCLES = 12
DATAGRAMS_PER_KIND = 300
"""Per kind and per target port."""
SPRAY_PAUSE_S = 0.02
"""Pause after every 25 datagrams: the spray lasts a few seconds, overlapping (a) and (c)."""
SEED = 20_240_501
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", re.MULTILINE)


# --- what the legitimate subscriber receives ------------------------------------------------


@dataclass
class Reception:
    """Frames the subscriber decoded, with their arrival times (monotonic seconds)."""

    video: list[tuple[float, int | None]] = field(default_factory=list)
    audio: list[tuple[float, av.AudioFrame]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    def on_frame(self, kind: str, frame: Any) -> None:
        now = time.monotonic()
        if kind == "video":
            self.video.append((now, read_frame_counter(frame)))
        else:
            self.audio.append((now, frame))


async def _read(track: MediaStreamTrack, reception: Reception, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            frame = await asyncio.wait_for(track.recv(), 0.25)
        except TimeoutError:
            continue
        except MediaStreamError:
            reception.ended.append(track.kind)
            return
        reception.on_frame(track.kind, frame)


class StateLog:
    """Every connectionState a peer connection goes through."""

    def __init__(self, name: str, pc: RTCPeerConnection | None) -> None:
        assert pc is not None, f"{name} has no peer connection"
        self.name, self.pc = name, pc
        self.states: list[str] = [pc.connectionState]
        pc.on("connectionstatechange", self._changed)

    def _changed(self) -> None:
        self.states.append(self.pc.connectionState)

    def check(self) -> None:
        assert self.pc.connectionState == "connected", (self.name, self.states)
        assert self.states == ["connected"], f"{self.name} left 'connected': {self.states}"


async def _connected(pc: RTCPeerConnection | None) -> None:
    assert pc is not None
    deadline = time.monotonic() + T
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, f"peer connection still {pc.connectionState}"
        await asyncio.sleep(0.01)


def _server_ports(*sdps: str | None) -> list[int]:
    ports = sorted({int(p) for sdp in sdps if sdp for p in _CANDIDATE.findall(sdp)})
    assert ports, "no 127.0.0.1 host candidate in the server's SDP"
    return ports


# --- (a) garbage signalling -----------------------------------------------------------------


async def _real_offer() -> str:
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


def _bad_offers(offer: str) -> list[str]:
    """SDP aiortc chokes on or the SFU cannot use (design.md §3)."""
    text = offer.replace("\r\n", "\n")

    def edit(pattern: str, replacement: str) -> str:
        return re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE).replace(
            "\n", "\r\n")

    return [
        "not an sdp",
        offer[: len(offer) // 2],
        edit(r"^a=setup:actpass$", "a=setup:foo"),
        edit(r"^a=rtpmap:97 VP8/90000$", "a=rtpmap:97 VP8"),
        edit(r"^a=fmtp:98 apt=97$", "a=fmtp:103 apt=97"),
        edit(r"^(m=video \d+ \S+) 97", r"\1 300"),
        edit(r"^a=candidate:.*$", "a=candidate:1 1 udp 1"),
        edit(r"^m=audio", "m=text"),
        edit(r"^a=msid:.*$", "a=msid:"),
        edit(r"^m=video \d+", "m=video 99999"),
        edit(r"^a=extmap:1 ", "a=extmap:0 "),
        "\r\n".join(line for line in text.split("\n") if not line.startswith("a=fingerprint")),
        re.sub(r"VP8/90000|H264/90000", "VP9/90000", offer),
        offer + "a=x-pad:" + "A" * 60_000 + "\r\n",
    ]


def _hostile_frames(track_ids: Sequence[str], offer: str) -> list[str | bytes]:
    """Every kind of bad frame, plus requests aimed at the victims' tracks."""
    frames: list[str | bytes] = [
        "{not json", "", "[]", "null", "42", '"ping"', "[" * 50_000,
        '{"id": "no-type"}', '{"type": 5}', '{"type": "frobnicate", "id": "x"}',
        json.dumps({"type": "ping", "id": "i" * 65}), '{"type": "ping", "id": 5}',
        b'{"type": "ping"}', bytes(range(256)),
        '{"type": "join", "token": "garbage"}',
        '{"type": "publish"}', '{"type": "publish", "sdp": 5}',
        '{"type": "answer"}', '{"type": "answer", "sdp": "garbage"}',
        '{"type": "candidate", "pc": "foo", "candidate": null}',
        '{"type": "candidate", "pc": "publish", "candidate": null}',
        json.dumps({"type": "candidate", "pc": "subscribe",
                    "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 99999 typ host",
                                  "sdpMid": "0"}}),
        '{"type": "subscribe", "tracks": "all"}',
        json.dumps({"type": "subscribe", "tracks": [f"TR{i}" for i in range(64)]}),
        '{"type": "mute", "track": "TRx", "muted": "yes"}',
        '{"type": "track.settings", "track": "TRx"}',
        '{"type": "ping", "pad": "' + "x" * 100_000 + '"}',
    ]
    for track_id in track_ids:
        frames += [
            json.dumps({"type": "mute", "track": track_id, "muted": True}),
            json.dumps({"type": "track.settings", "track": track_id, "width": -5, "height": 1}),
            json.dumps({"type": "track.settings", "track": track_id, "paused": True}),
            json.dumps({"type": "unsubscribe", "tracks": [track_id]}),
        ]
    frames += [json.dumps({"type": "publish", "sdp": sdp}) for sdp in _bad_offers(offer)]
    return frames


@dataclass
class HostileReport:
    close_codes: list[int | None] = field(default_factory=list)
    error_codes: list[str] = field(default_factory=list)
    sent: int = 0


async def _send_all(client: SignalClient, frames: Sequence[str | bytes],
                    report: HostileReport) -> None:
    with contextlib.suppress(ConnectionError):
        for frame in frames:
            await client.send_raw(frame)
            report.sent += 1
            await asyncio.sleep(0)


async def _hostile_round(server: ServerProcess, room: str, n: int,
                         frames: Sequence[str | bytes], report: HostileReport) -> None:
    client = await SignalClient.connect(server.url, timeout=T)
    try:
        joined = await client.request(
            {"type": "join", "token": server.token(room, f"hostile-{n}")}, T)
        assert joined["type"] == "joined"
        # Answer our own subscribe offer with nonsense: first the server's offer echoed back
        # (well-formed, wrong role), later anything at all.
        with contextlib.suppress(TimeoutError):  # no offer if the victims' tracks are gone
            offer = await client.next_event("offer", timeout=1.0)
            await client.send({"type": "answer", "sdp": offer["sdp"]})
        kind, start = HOSTILE_ROUNDS[n]
        # Garbage rounds start at different places (the rate limit cuts each one short after
        # about 20 errors), so that every frame is sent in one round or another.
        batch = [*frames[start:], *frames[:start]]
        if kind == "1MiB":
            # A 1 MiB frame before the rate limit strikes: close 1009. Nothing after it (the
            # server's reset of a socket with unread data could turn the close into 1006).
            batch = [*batch[:3], '{"type": "ping", "pad": "' + "x" * (1024 * 1024) + '"}']
        elif kind == "flood":
            batch = [json.dumps({"type": "ping"})] * 600
        await _send_all(client, batch, report)
        await client.wait_closed(T)
        report.close_codes.append(client.closed_code)
        report.error_codes += [str(m.get("code")) for m in client.buffered("error")]
    finally:
        await client.close()


async def _hostile(server: ServerProcess, room: str, frames: Sequence[str | bytes],
                   report: HostileReport) -> None:
    for n in range(len(HOSTILE_ROUNDS)):
        await asyncio.wait_for(_hostile_round(server, room, n, frames, report), 3 * T)
        await asyncio.sleep(0.2)


# --- (b) hostile datagrams ------------------------------------------------------------------


STUN_MAGIC = 0x2112A442


def _stun_garbage(rng: random.Random) -> bytes:
    """A STUN binding request whose attributes have the wrong lengths."""
    attribute_type, length = rng.choice([
        (0x0024, 2),   # PRIORITY: 4 bytes
        (0x8028, 1),   # FINGERPRINT: 4 bytes
        (0x802A, 3),   # ICE-CONTROLLING: 8 bytes
        (0x8029, 5),   # ICE-CONTROLLED: 8 bytes
        (0x0020, 2),   # XOR-MAPPED-ADDRESS: at least 8 bytes
        (0x0009, 1),   # ERROR-CODE: at least 4 bytes
    ])
    value = rng.randbytes(length) + b"\x00" * (-length % 4)
    attributes = struct.pack("!HH", attribute_type, length) + value
    if rng.random() < 0.3:  # a USERNAME that claims more bytes than the message holds
        attributes += struct.pack("!HH", 0x0006, 400) + rng.randbytes(4)
    header = struct.pack("!HHI", 0x0001, len(attributes), STUN_MAGIC) + rng.randbytes(12)
    return header + attributes


def _dtls_garbage(rng: random.Random) -> bytes:
    """A DTLS 1.2 handshake record header followed by noise."""
    body = rng.randbytes(rng.randint(0, 300))
    header = struct.pack("!BHH6sH", 22, 0xFEFD, rng.randint(0, 2), rng.randbytes(6), len(body))
    return header + body


def _datagrams(rng: random.Random) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for _ in range(DATAGRAMS_PER_KIND):
        out.append(("empty", b""))
        out.append(("oversize", bytes([rng.randint(0x80, 0xBF)]) + rng.randbytes(1999)))
        out.append(("fake-rtp", b"\x80" + rng.randbytes(rng.randint(19, 1399))))
        out.append(("stun", _stun_garbage(rng)))
        out.append(("dtls", _dtls_garbage(rng)))
    rng.shuffle(out)
    return out


async def _spray(ports: Sequence[int], sent: dict[str, int]) -> None:
    rng = random.Random(SEED)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        for port in ports:
            for n, (kind, data) in enumerate(_datagrams(rng)):
                with contextlib.suppress(BlockingIOError):
                    sockets[n % len(sockets)].sendto(data, ("127.0.0.1", port))
                    sent[kind] = sent.get(kind, 0) + 1
                if n % 25 == 24:
                    await asyncio.sleep(SPRAY_PAUSE_S)
    finally:
        for sock in sockets:
            sock.close()


# --- (c) room B churn --------------------------------------------------------------------------


async def _churn(server: ServerProcess, room_b: str) -> None:
    for n in range(ROOM_B_CYCLES):
        await asyncio.sleep(0.1)
        if n % 4 == 3:
            video = FrameCounterTrack()
            try:
                visitor = await Participant.join(server.url, server.token(room_b, f"b-{n}"),
                                                 publish_tracks=[video], timeout=T)
                await asyncio.sleep(0.2)
                await visitor.leave(timeout=T)
            finally:
                video.stop()
            continue
        client = await SignalClient.connect(server.url, timeout=T)
        try:
            joined = await client.request(
                {"type": "join", "token": server.token(room_b, f"b-{n}")}, T)
            assert joined["type"] == "joined" and joined["room"]["id"] == room_b
            assert joined["tracks"] == []
            await client.send({"type": "leave"})
            assert await client.wait_closed(T) == 1000
        finally:
            await client.close()


# --- the test ----------------------------------------------------------------------------------


def _longest_gap(times: Sequence[float], start: float, end: float) -> float:
    points = [start, *[t for t in times if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(points))


async def _wait_for(condition: Callable[[], bool], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_hostile_participant_and_datagrams_do_not_disturb_other_media(
    server: ServerProcess, room: str
) -> None:
    video, tone = FrameCounterTrack(), ToneTrack(TONE_HZ)
    publisher = await Participant.join(server.url, server.token(room, "publisher"),
                                       publish_tracks=[video, tone], timeout=T)
    subscriber: Participant | None = None
    stop = asyncio.Event()
    readers: list[asyncio.Task[None]] = []
    try:
        subscriber = await Participant.join(server.url, server.token(room, "subscriber"),
                                            timeout=T)
        remote = await subscriber.wait_remote_tracks(set(publisher.published), timeout=T)
        await _connected(publisher.publish_pc)
        await _connected(subscriber.subscribe_pc)
        states = [StateLog("publisher's publish PC", publisher.publish_pc),
                  StateLog("subscriber's subscribe PC", subscriber.subscribe_pc)]
        reception = Reception()
        readers = [asyncio.create_task(_read(track, reception, stop)) for track in remote.values()]
        await _wait_for(lambda: sum(c is not None for _, c in reception.video) >= 10,
                        "the first decoded video frames")
        assert publisher.publish_pc is not None and subscriber.subscribe_pc is not None
        ports = _server_ports(publisher.publish_pc.remoteDescription.sdp,
                              subscriber.subscribe_pc.remoteDescription.sdp)
        frames = _hostile_frames(list(publisher.published), await _real_offer())
        before = server.metrics()

        report, sent = HostileReport(), dict[str, int]()
        barrage_start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(
            _hostile(server, room, frames, report),
            _spray(ports, sent),
            _churn(server, room + "-b"),
        ), BARRAGE_TIMEOUT_S)
        barrage_end = time.monotonic()
        await asyncio.sleep(AFTER_S)
        end = time.monotonic()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*readers), T)
        after = server.metrics()
        print(f"barrage {barrage_end - barrage_start:.2f} s to ports {ports}: datagrams {sent}; "
              f"hostile closes {report.close_codes}, {len(report.error_codes)} errors; "
              f"received {len(reception.video)} video, {len(reception.audio)} audio frames; "
              f"metrics {({k: v for k, v in after.items() if before.get(k) != v})}")

        # (a) the hostile participant was refused and cut off, never crashed anything.
        assert len(report.close_codes) == len(HOSTILE_ROUNDS), report.close_codes
        assert set(report.close_codes) == {4429, 1009}, report.close_codes
        assert "internal" not in report.error_codes, report.error_codes
        assert {"bad_request", "too_large", "rate_limited"} <= set(report.error_codes), \
            sorted(set(report.error_codes))

        # The subscriber kept decoding the publisher's frames, in order, without a stall.
        assert reception.ended == []
        window = [(t, c) for t, c in reception.video if t >= barrage_start]
        counters = [c for _, c in window if c is not None]
        assert len(counters) >= 12 * (end - barrage_start), \
            f"only {len(counters)} readable frames in {end - barrage_start:.1f} s"
        every = [c for _, c in reception.video if c is not None]
        assert all(a < b for a, b in itertools.pairwise(every)), \
            "frame counters must strictly increase"
        gap = _longest_gap([t for t, _ in window], barrage_start, end)
        assert gap <= MAX_STALL_S, f"video stalled for {gap:.2f} s"
        tail = [c for t, c in window if t >= barrage_end and c is not None]
        assert len(tail) >= 0.5 * 30 * AFTER_S, f"only {len(tail)} frames after the barrage"
        audio_gap = _longest_gap([t for t, _ in reception.audio], barrage_start, end)
        assert audio_gap <= MAX_STALL_S, f"audio stalled for {audio_gap:.2f} s"
        late_audio = [f for t, f in reception.audio if t >= barrage_end]
        assert len(late_audio) >= 50, f"only {len(late_audio)} audio frames after the barrage"
        samples = frames_to_samples(late_audio[5:])
        frequency = dominant_frequency(samples, late_audio[-1].sample_rate)
        assert abs(frequency - TONE_HZ) < 5, f"the tone is {frequency:.1f} Hz"

        # Both legitimate peer connections never left 'connected'; nothing was renegotiated
        # away or muted.
        for log in states:
            log.check()
        assert set(subscriber.remote_tracks) == set(publisher.published)
        assert all(t["muted"] is False for t in subscriber.tracks.values())
        assert not subscriber.errors and not publisher.errors

        # (b) the guards counted what they dropped (counters of the live transports).
        expected = DATAGRAMS_PER_KIND * len(ports)
        assert all(sent.get(kind, 0) >= 0.9 * expected
                   for kind in ("empty", "oversize", "fake-rtp", "stun", "dtls")), sent
        for counter in ("dropped_empty", "dropped_oversize", "dropped_foreign"):
            key = f'sfu_transport_packets{{counter="{counter}"}}'
            assert after[key] > before.get(key, 0), (counter, before.get(key), after[key])
        assert after["sfu_stun_errors_total"] > before["sfu_stun_errors_total"]
        assert after["sfu_codec_requests_total{kind=\"decoder\"}"] == 0

        # Nothing leaked: only the two legitimate participants and their tracks remain.
        def settled() -> bool:
            metrics = server.metrics()
            return (metrics["sfu_participants"], metrics["sfu_rooms"],
                    metrics["sfu_producers"], metrics["sfu_consumers"]) == (2, 1, 2, 2)

        await _wait_for(settled, "hostile and room-B sessions to be cleaned up")
        assert server.proc is not None and server.proc.poll() is None
    finally:
        stop.set()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if subscriber is not None:
            await subscriber.close()
        await publisher.close()
        video.stop()
        tone.stop()
