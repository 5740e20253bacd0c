"""What a scenario needs from the system under test: the target adapter interface.

A scenario only talks to a :class:`Target`: it starts and stops the server, opens rooms,
joins participants (aiortc peers that publish the replayed clips and/or receive every
other participant's tracks through a counting tap), and reads process-level figures.

Two adapters: ``bench.server.SfuServer`` (our server, protocol v1, as a child process on
``127.0.0.1``) and ``bench.janus.JanusServer`` (Janus VideoRoom, in the bench's own
network namespace). Another SFU can be benchmarked in the same harness by writing an
adapter with these members.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiortc import MediaStreamTrack, RTCPeerConnection

from bench.nack import NackingTap, nack_plan
from sfu import aiortc_bridge as bridge
from signaling.client.impair import Impairment

__all__ = ["PacketCounters", "Peer", "RtpTap", "Target", "install_subscriber_tap"]

RtpTap = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class PacketCounters:
    """Cumulative media counters of the target (summed over its live peer connections)."""

    rtp_in: int
    rtp_out: int
    rtcp_in: int
    rtcp_out: int
    bytes_out: int
    dropped: int
    """Every packet the target dropped on purpose (queue full, SRTP errors, ...)."""

    @classmethod
    def zero(cls) -> PacketCounters:
        return cls(0, 0, 0, 0, 0, 0)

    def minus(self, before: PacketCounters) -> PacketCounters:
        return PacketCounters(
            self.rtp_in - before.rtp_in,
            self.rtp_out - before.rtp_out,
            self.rtcp_in - before.rtcp_in,
            self.rtcp_out - before.rtcp_out,
            self.bytes_out - before.bytes_out,
            self.dropped - before.dropped,
        )


class Peer:
    """One participant as the generator sees it: its publish and subscribe peer
    connections (either may be None) and the target's ids of its published tracks."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        self.track_ids: list[str] = []
        self.tapped = False
        self.tapped_late = False
        self.nacker: NackingTap | None = None
        """Asks for what the subscribe connection lost (bench subscribers only)."""
        """True if DTLS was already up when the receive tap went in (packets missed)."""

    async def close(self) -> None:
        raise NotImplementedError


def install_subscriber_tap(peer: Peer, tap: RtpTap, swallow: bool) -> None:
    """Put ``tap`` on ``peer.subscribe_pc``'s received RTP (before any jitter buffer)."""
    pc = peer.subscribe_pc
    assert pc is not None
    dtls = bridge.dtls_transport(pc)
    peer.tapped_late = dtls is not None and dtls.state == "connected"
    if swallow:  # aiortc's receiver will not see the packets: NACK gaps here instead
        loop = asyncio.get_running_loop()
        peer.nacker = NackingTap(
            tap,
            lambda rtcp: bridge.send_rtcp(pc, rtcp),
            loop.call_later,
            lambda: nack_plan(_remote_sdp(pc)),
        )
        tap = peer.nacker
    bridge.tap_received_rtp(pc, tap, swallow=swallow)
    peer.tapped = True


def _remote_sdp(pc: RTCPeerConnection) -> str:
    description = pc.remoteDescription
    return "" if description is None else str(description.sdp)


class Target(Protocol):
    """A media server under test. Scenarios call :meth:`start`, use it, then
    :meth:`aclose` and :meth:`stop` (``start``/``stop`` block: run them in a thread).
    Peers are created inside ``with target.network():`` (the target's network)."""

    def start(self) -> object:
        """Start the server and return once it accepts joins."""
        ...

    def stop(self) -> int | None:
        """Stop it; returns its exit code if it is a process (0 = clean)."""
        ...

    async def aclose(self) -> None:
        """Release resources bound to the event loop (HTTP sessions)."""
        ...

    @property
    def name(self) -> str:
        """Short label for reports, e.g. ``oktorus``, ``janus``."""
        ...

    @property
    def description(self) -> str:
        """One line for reports: what runs, how it is pinned and reached."""
        ...

    @property
    def pid(self) -> int:
        """The process whose CPU and memory are measured."""
        ...

    @property
    def host_addresses(self) -> list[str]:
        """The addresses the generator's ICE agents must gather on to reach the target."""
        ...

    def network(self) -> contextlib.AbstractContextManager[None]:
        """Enter the target's network (a namespace for Janus; nothing for loopback)."""
        ...

    async def open_room(self, room: str, publishers: int) -> None:
        """Make ``room`` exist (for targets that need rooms created)."""
        ...

    async def join(
        self,
        room: str,
        identity: str,
        *,
        tracks: Sequence[MediaStreamTrack] = (),
        subscribe: bool = True,
        tap: RtpTap | None = None,
        swallow: bool = True,
        timeout: float = 15.0,
        impair_send: Impairment | None = None,
        impair_receive: Impairment | None = None,
    ) -> Peer:
        """Join ``room``: publish ``tracks``; if ``subscribe``, receive every other
        publisher's tracks (now and later), with ``tap`` on received RTP. ``impair_*``
        impair the peer's links below SRTP (``signaling.client.impair``).

        A subscribe-only peer returns once its tap is in; a peer that also publishes
        gets its tap when its subscribe connection appears."""
        ...

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the target has used so far (all its threads)."""
        ...

    def rss_bytes(self) -> int:
        """The target's resident memory now."""
        ...

    def wakeups(self) -> int | None:
        """Voluntary context switches of the target's main thread so far (for an event-loop
        server: how often it woke up), or None where that means nothing."""
        ...

    async def packet_counters(self) -> PacketCounters | None:
        """The target's cumulative packet counters now, or None if it exposes none."""
        ...
