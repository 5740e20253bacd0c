"""Where a participant's media is served, and that it decodes: shared by the tests of
workers, spanning rooms and clusters (each gives every server process its own ICE ports)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiortc import MediaStreamTrack
from helpers.media import collect, dominant_frequency, frames_to_samples, read_frame_counter

from signaling.client import Participant

__all__ = ["assert_decodes", "served_by"]

_CANDIDATE_PORT = re.compile(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+) typ")


def served_by(participant: Participant, port_ranges: Mapping[str, tuple[int, int]]) -> str:
    """The one name in ``port_ranges`` whose ICE ports the server's candidates use."""
    pc = participant.subscribe_pc or participant.publish_pc
    assert pc is not None and pc.remoteDescription is not None
    ports = {int(m.group(1)) for m in _CANDIDATE_PORT.finditer(pc.remoteDescription.sdp)}
    found = {name for name, (low, high) in port_ranges.items() for p in ports if low <= p <= high}
    assert len(found) == 1, (ports, found)
    return found.pop()


async def assert_decodes(
    participant: Participant, track_id: str, *, tone: float | None, timeout: float
) -> None:
    """Frames of the frame-counter video decode, or the tone is heard at ``tone`` Hz."""
    tracks = await participant.wait_remote_tracks([track_id], timeout)
    track: MediaStreamTrack = tracks[track_id]
    if tone is None:
        frames = await collect(track, 10, timeout=timeout)
        assert all(read_frame_counter(f) is not None for f in frames)  # type: ignore[arg-type]
    else:
        frames = await collect(track, 60, timeout=timeout)
        samples = frames_to_samples(frames[20:])  # type: ignore[arg-type]
        assert abs(dominant_frequency(samples, 48_000) - tone) < 5
