"""ICE restart in place: a client moves to another network mid-call and media resumes.

Real server process, real aiortc peers. "Moving" is done in user space: every socket the
client had is blackholed (both directions), then the client gathers a host candidate on
another loopback address and restarts ICE on both peer connections. The server keeps the
same peer connections, DTLS and SRTP; only ICE is renegotiated.
"""

from __future__ import annotations

import asyncio
import time

import av
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection
from helpers.media import FrameCounterTrack, ToneTrack, collect, read_frame_counter
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from signaling.client import Participant

pytestmark = pytest.mark.integration

STEP_TIMEOUT_S = 10.0
# Issue 6: "an ICE restart mid-call resumes media within 2 s" (measured: 0.05-0.3 s here).
RESUME_DEADLINE_S = 2.0


def _blackhole(*pcs: RTCPeerConnection | None) -> None:
    """The client's old network is gone: nothing leaves or arrives on its old sockets."""
    for pc in pcs:
        if pc is not None:
            bridge.impair_datagrams(pc, drop_outgoing=lambda _: True, drop_incoming=lambda _: True)


async def _last_counter(track: MediaStreamTrack, quiet_s: float = 0.4) -> int:
    """Read frames until none arrives for ``quiet_s``; the last counter seen."""
    last = -1
    while True:
        try:
            frame = await asyncio.wait_for(track.recv(), quiet_s)
        except TimeoutError:
            return last
        if isinstance(frame, av.VideoFrame):
            last = max(last, read_frame_counter(frame) or -1)


async def _first_newer(track: MediaStreamTrack, than: int, timeout: float) -> float:
    """Seconds until a frame newer than ``than`` is decoded."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            frame = await track.recv()
            counter = read_frame_counter(frame) if isinstance(frame, av.VideoFrame) else None
            if counter is not None and counter > than:
                return time.monotonic() - started


async def _server_restarts(server: ServerProcess, at_least: int) -> int:
    """ICE restarts the server logged as completed (it keeps the same peer connections)."""
    async with asyncio.timeout(10.0):
        while True:
            count = sum('"ice_restarted"' in line for line in server.log_lines)
            if count >= at_least:
                return count
            await asyncio.sleep(0.1)


async def test_publisher_moves_network_media_resumes(server: ServerProcess, room: str) -> None:
    alice = await Participant.join(
        server.url, server.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
    )
    bob = await Participant.join(
        server.url, server.token(room, "bob"), publish_tracks=[ToneTrack()]
    )
    try:
        [video], [audio] = alice.published, bob.published
        track = (await bob.wait_remote_tracks([video], timeout=15.0))[video]
        heard = (await alice.wait_remote_tracks([audio], timeout=15.0))[audio]
        await collect(track, 10, timeout=15.0)  # flowing

        restarts_before = await _server_restarts(server, 0)
        _blackhole(alice.publish_pc, alice.subscribe_pc)
        stalled_at = await _last_counter(track)  # media has stopped
        started = time.monotonic()
        await alice.restart_ice(host_addresses=["127.0.0.2"])
        await _first_newer(track, stalled_at, STEP_TIMEOUT_S)
        total = time.monotonic() - started
        print(f"\nICE restart (publisher moved): restart -> first new frame {total:.3f} s")
        assert total < RESUME_DEADLINE_S
        assert all(await asyncio.gather(*alice.ice_restarts))
        # The server restarted alice's subscribe PC too (her whole network changed).
        assert len(alice.ice_restarts) == 2
        await _server_restarts(server, restarts_before + 2)
        after = await collect(track, 30, timeout=10.0)  # video keeps flowing
        counters = [read_frame_counter(f) for f in after if isinstance(f, av.VideoFrame)]
        values = [c for c in counters if c is not None]
        assert values == sorted(values) and values[-1] > stalled_at + 20
        await collect(heard, 20, timeout=5.0)  # and alice hears bob again
        assert alice.published.keys() == {video}  # same track id: no unpublish/publish
        assert not [m for m in bob.signal.buffered() if m["type"] == "track.unpublished"]
    finally:
        await alice.leave()
        await bob.leave()


async def test_subscriber_moves_network_media_resumes(server: ServerProcess, room: str) -> None:
    alice = await Participant.join(
        server.url, server.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
    )
    bob = await Participant.join(server.url, server.token(room, "bob"))
    try:
        [video] = alice.published
        track = (await bob.wait_remote_tracks([video], timeout=15.0))[video]
        await collect(track, 10, timeout=15.0)

        restarts_before = await _server_restarts(server, 0)
        _blackhole(bob.subscribe_pc)
        stalled_at = await _last_counter(track)
        started = time.monotonic()
        await bob.restart_ice(host_addresses=["127.0.0.3"])  # no publish PC: ice.restart
        await _first_newer(track, stalled_at, STEP_TIMEOUT_S)
        total = time.monotonic() - started
        print(f"\nICE restart (subscriber moved): restart -> first new frame {total:.3f} s")
        assert total < RESUME_DEADLINE_S
        assert all(await asyncio.gather(*bob.ice_restarts))
        await _server_restarts(server, restarts_before + 1)
    finally:
        await alice.leave()
        await bob.leave()
