"""Media really flows: real aiortc peers on loopback through the real server process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from helpers.media import (
    FrameCounterTrack,
    ToneTrack,
    collect,
    dominant_frequency,
    frames_to_samples,
    read_frame_counter,
)
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from sfu.rtp import is_rtcp, payload_end, payload_offset
from signaling.client import Participant

pytestmark = pytest.mark.integration

TONE_HZ = 440.0


def _payload(packet: bytes) -> bytes | None:
    if is_rtcp(packet):
        return None
    start, end = payload_offset(packet), payload_end(packet)
    return packet[start:end] if 0 <= start <= end else None


class PayloadLog:
    """RTP payloads seen at one aiortc peer (after SRTP, before any decoder)."""

    def __init__(self) -> None:
        self.payloads: Counter[bytes] = Counter()

    def __call__(self, packet: bytes) -> None:
        payload = _payload(packet)
        if payload:
            self.payloads[payload] += 1


async def _publisher(
    server: ServerProcess, room: str, sent: PayloadLog, video: FrameCounterTrack | None = None
) -> Participant:
    publisher = await Participant.join(
        server.url,
        server.token(room, "publisher"),
        publish_tracks=[video or FrameCounterTrack(), ToneTrack(TONE_HZ)],
    )
    assert publisher.publish_pc is not None
    bridge.tap_sent_rtp(publisher.publish_pc, sent)
    return publisher


async def _subscriber(
    server: ServerProcess, room: str, name: str, received: PayloadLog | None = None
) -> Participant:
    participant = await Participant.join(server.url, server.token(room, name))
    await participant.wait_remote_tracks(2, timeout=10)
    if received is not None:
        assert participant.subscribe_pc is not None
        bridge.tap_received_rtp(participant.subscribe_pc, received)
    return participant


def _tracks_by_kind(participant: Participant) -> dict[str, object]:
    return {track.kind: track for track in participant.remote_tracks.values()}


async def test_one_publisher_three_subscribers_get_identical_media(
    server: ServerProcess, room: str
) -> None:
    sent = PayloadLog()
    publisher = await _publisher(server, room, sent)
    logs = [PayloadLog() for _ in range(3)]
    subscribers = [await _subscriber(server, room, f"viewer-{i}", logs[i]) for i in range(3)]
    try:
        for subscriber in subscribers:
            tracks = _tracks_by_kind(subscriber)
            video = await collect(tracks["video"], 45, timeout=10)  # type: ignore[arg-type]
            counters = [read_frame_counter(frame) for frame in video]  # type: ignore[arg-type]
            readable = [c for c in counters if c is not None]
            assert len(readable) >= 40, counters
            assert readable == sorted(readable) and len(set(readable)) == len(readable)
            audio = await collect(tracks["audio"], 50, timeout=10)  # type: ignore[arg-type]
            samples = frames_to_samples(audio[10:])  # type: ignore[arg-type]
            assert abs(dominant_frequency(samples, 48_000) - TONE_HZ) < 5
        for log in logs:
            assert sum(log.payloads.values()) > 100
            foreign = [p for p in log.payloads if p not in sent.payloads]
            assert not foreign, f"{len(foreign)} payloads were altered in forwarding"
        # Nothing on the server decoded or encoded anything.
        assert not [n for n in server.thread_names() if "decoder" in n or "encoder" in n]
        metrics = server.metrics()
        assert metrics['sfu_codec_requests_total{kind="decoder"}'] == 0
        assert metrics['sfu_codec_requests_total{kind="encoder"}'] == 0
    finally:
        for participant in [*subscribers, publisher]:
            await participant.close()


async def test_late_subscriber_gets_a_keyframe_within_one_second(
    server: ServerProcess, room: str
) -> None:
    publisher = await _publisher(server, room, PayloadLog())
    try:
        await asyncio.sleep(3.0)  # the publisher's first keyframe is long gone
        started = time.monotonic()
        late = await Participant.join(server.url, server.token(room, "late"))
        await late.wait_remote_tracks(2, timeout=10)
        pc = late.subscribe_pc
        assert pc is not None
        while pc.connectionState != "connected":
            await asyncio.sleep(0.005)
        connected = time.monotonic()
        video = _tracks_by_kind(late)["video"]
        frame = await asyncio.wait_for(video.recv(), 5)  # type: ignore[attr-defined]
        first_frame = time.monotonic()
        assert read_frame_counter(frame) is not None
        print(
            f"join→first decoded frame {1000 * (first_frame - started):.0f} ms, "
            f"connected→first frame {1000 * (first_frame - connected):.0f} ms"
        )
        assert first_frame - connected < 1.0
        await late.close()
    finally:
        await publisher.close()


async def test_rooms_are_isolated(server: ServerProcess, room: str) -> None:
    publisher = await _publisher(server, room, PayloadLog())
    other = await Participant.join(server.url, server.token(room + "-other", "elsewhere"))
    try:
        assert other.joined["tracks"] == [] and other.joined["participants"] == []
        same_room = await _subscriber(server, room, "neighbour")
        await asyncio.sleep(1.0)
        assert other.remote_tracks == {} and other.subscribe_pc is None
        assert other.tracks == {} and other.participants == {}
        assert len(same_room.remote_tracks) == 2
        await same_room.close()
    finally:
        await other.close()
        await publisher.close()


async def test_leaving_publisher_is_unpublished_everywhere(
    server: ServerProcess, room: str
) -> None:
    publisher = await _publisher(server, room, PayloadLog())
    subscribers = [await _subscriber(server, room, f"s{i}") for i in range(2)]
    track_ids = set(publisher.published)
    try:
        await publisher.leave()
        for subscriber in subscribers:
            gone: set[str] = set()
            while gone != track_ids:
                event = await subscriber.next_event("track.unpublished", timeout=5)
                gone.add(event["track"]["id"])
            left = await subscriber.next_event("participant.left", timeout=5)
            assert left["participant"]["id"] == publisher.id
            assert not track_ids & set(subscriber.tracks)
    finally:
        for subscriber in subscribers:
            await subscriber.close()


async def test_mute_is_announced_and_stops_forwarding(server: ServerProcess, room: str) -> None:
    publisher = await _publisher(server, room, PayloadLog())
    received = PayloadLog()
    viewer = await _subscriber(server, room, "viewer", received)
    video_id = next(i for i, t in publisher.published.items() if t["kind"] == "video")
    try:
        await publisher.mute(video_id, True)
        event = await viewer.next_event("track.updated", timeout=5)
        assert event["track"] == {**event["track"], "id": video_id, "muted": True}
        await asyncio.sleep(0.3)  # let in-flight packets land
        before = sum(received.payloads.values())
        await asyncio.sleep(1.0)
        audio_only = sum(received.payloads.values()) - before
        assert audio_only < 70, "about 50 audio packets a second, and no video while muted"
        await publisher.mute(video_id, False)
        event = await viewer.next_event("track.updated", timeout=5)
        assert event["track"]["muted"] is False
        video = _tracks_by_kind(viewer)["video"]
        frames = await collect(video, 10, timeout=5, allow_partial=True)  # type: ignore[arg-type]
        assert frames and read_frame_counter(frames[-1]) is not None  # type: ignore[arg-type]
    finally:
        await viewer.close()
        await publisher.close()
