"""The media path of one server-side peer connection: datagrams in, datagrams out.

``datagram → guards → SRTP unprotect → sink`` runs synchronously inside the socket's
``datagram_received``; sending is ``rewrite + SRTP protect`` in libsrtp's buffer and a
``sendto`` on the selected ICE pair. No ``await``, task or queue per packet. RTCP reports
and other timers run as one periodic task per transport.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiortc import RTCPeerConnection

from sfu import aiortc_bridge as bridge

__all__ = ["MediaTransport", "RtcpPeer", "TransportCounters"]

log = structlog.get_logger(__name__)

MAX_DATAGRAM = 1500
RTCP_INTERVAL_S = 1.0


class RtcpPeer(Protocol):
    """What a transport's owner provides: where packets go and what reports to send."""

    def on_rtp(self, packet: bytes, now: float) -> None: ...

    def on_rtcp(self, packet: bytes, now: float) -> None: ...

    def periodic(self, now: float) -> list[bytes]: ...


@dataclass(slots=True)
class TransportCounters:
    rtp_in: int = 0
    bytes_in: int = 0
    rtcp_in: int = 0
    rtp_out: int = 0
    rtcp_out: int = 0
    bytes_out: int = 0
    dropped_empty: int = 0
    dropped_oversize: int = 0
    dropped_foreign: int = 0  # from an unknown path and not authentic SRTP
    rerouted: int = 0  # authentic media arrived on another ICE path: we follow it
    dropped_unready: int = 0
    dropped_srtp: int = 0
    dropped_queue_full: int = 0
    ice_restarts: int = 0  # in-place ICE restarts completed (a new pair nominated)
    ice_restart_failures: int = 0


class MediaTransport:
    """Owns the fast path of one bundled peer connection."""

    def __init__(self, pc: RTCPeerConnection, peer: RtcpPeer, *, queue_limit: int) -> None:
        self.pc = pc
        self.peer = peer
        self.counters = TransportCounters()
        self._queue_limit = queue_limit
        self._dtls: Any = None
        self._rx: bridge.FastSrtp | None = None
        self._tx: bridge.FastSrtp | None = None
        self._route: bridge.IceRoute | None = None
        self._remote: tuple[Any, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifecycle --------------------------------------------------------------

    def attach(self) -> None:
        """Hook the ICE sockets; call after every setLocalDescription (idempotent)."""
        dtls = bridge.dtls_transport(self.pc)
        if dtls is None:
            return
        if self._dtls is None:
            self._dtls = dtls
            dtls.on("statechange", self._on_dtls_state)
            self._task = asyncio.get_running_loop().create_task(self._run_periodic())
        bridge.install_datagram_hook(dtls, self._on_datagram)
        self._on_dtls_state()

    @property
    def ready(self) -> bool:
        return self._tx is not None and self._route is not None

    def _on_dtls_state(self) -> None:
        if self._dtls is None or self._dtls.state != "connected" or self._tx is not None:
            return
        sessions = bridge.srtp_sessions(self._dtls)
        route = bridge.selected_route(self._dtls)
        if sessions is None or route is None:
            return
        self._rx, self._tx = sessions
        self._route = route
        self._remote = route.remote

    def restart_ice(self, remote_sdp: str) -> None:
        """After a description with new ICE credentials has been applied (ours and theirs
        both known): check the new candidate pairs, then send on the nominated one."""
        task = bridge.finish_ice_restart(self.pc, remote_sdp)
        started = time.monotonic()

        def done(task: asyncio.Task[bool]) -> None:
            if task.cancelled() or self._closed:
                return
            if task.exception() is not None or not task.result():
                self.counters.ice_restart_failures += 1
                log.warning("ice_restart_failed")
                return
            self.counters.ice_restarts += 1
            if self._dtls is not None:
                route = bridge.selected_route(self._dtls)
                if route is not None:
                    self._route, self._remote = route, route.remote
            log.info("ice_restarted", seconds=round(time.monotonic() - started, 3))

        task.add_done_callback(done)

    async def close(self) -> None:
        self._closed = True
        self._rx = self._tx = None
        self._route = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await self.pc.close()
        except Exception as exc:  # noqa: BLE001 - aiortc can raise from half-built PCs
            log.warning("pc_close_failed", error=repr(exc))

    # --- receive ------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...], via: Any) -> bool:
        """First look at every datagram of this PC's sockets; True = consumed."""
        n = len(data)
        if n == 0:
            # aiortc's _recv_next dies on an empty datagram (IndexError).
            self.counters.dropped_empty += 1
            return True
        first = data[0]
        if first < 128 or first > 191:
            return False  # STUN or DTLS: aioice and aiortc handle those
        counters = self.counters
        if n > MAX_DATAGRAM or n < 12:
            counters.dropped_oversize += 1  # pylibsrtp raises "packet is too long"
            return True
        rx = self._rx
        if rx is None:
            counters.dropped_unready += 1
            return True
        # Media from another path than the one aioice nominated is accepted only if it
        # authenticates (the peer may have picked another pair); then we answer that way.
        other_path = addr != self._remote and not self._follow_route(addr)
        rtcp = 191 < data[1] < 224
        plain = rx.unprotect_rtcp(data) if rtcp else rx.unprotect(data)
        if plain is None:
            if other_path:
                counters.dropped_foreign += 1
            else:
                counters.dropped_srtp += 1
            return True
        if other_path:
            self._latch(addr, via)
        now = time.monotonic()
        counters.bytes_in += n
        if rtcp:
            counters.rtcp_in += 1
            self.peer.on_rtcp(plain, now)
        else:
            counters.rtp_in += 1
            self.peer.on_rtp(plain, now)
        return True

    def _latch(self, addr: tuple[Any, ...], via: Any) -> None:
        """Send where authenticated media comes from (the peer's choice of ICE pair)."""
        self._route = bridge.route_via(via, (addr[0], addr[1]))
        self._remote = addr
        self.counters.rerouted += 1
        if self.counters.rerouted == 1:  # once: a peer alternating paths must not flood logs
            log.info("media_path_changed", remote=f"{addr[0]}:{addr[1]}")

    def _follow_route(self, addr: tuple[Any, ...]) -> bool:
        """Accept media only from the selected ICE pair (re-read if ICE moved it)."""
        if self._dtls is None:
            return False
        route = bridge.selected_route(self._dtls)
        if route is None or (addr[0], addr[1]) != route.remote:
            return False
        self._route = route
        self._remote = addr
        return True

    # --- send ---------------------------------------------------------------------

    def send_rtp(self, packet: bytes, second_byte: int, seq: int, ts: int, ssrc: int) -> bool:
        """Rewrite, protect and send one RTP packet; False if it was dropped."""
        tx, route = self._tx, self._route
        if tx is None or route is None:
            self.counters.dropped_unready += 1
            return False
        if route.pending() > self._queue_limit:
            # Bounded queue: a slow subscriber loses packets, nobody else waits.
            self.counters.dropped_queue_full += 1
            return False
        data = tx.protect_rewritten(packet, second_byte, seq, ts, ssrc)
        if data is None:
            self.counters.dropped_srtp += 1
            return False
        route.transport.sendto(data, route.remote)
        self.counters.rtp_out += 1
        self.counters.bytes_out += len(data)
        return True

    def send_rtcp(self, packet: bytes) -> None:
        tx, route = self._tx, self._route
        if tx is None or route is None:
            return
        data = tx.protect_rtcp(packet)
        if data is None:
            self.counters.dropped_srtp += 1
            return
        route.transport.sendto(data, route.remote)
        self.counters.rtcp_out += 1

    # --- timers ---------------------------------------------------------------------

    async def _run_periodic(self) -> None:
        """RTCP reports (RFC 3550 interval randomised to 0.5-1.5x) and housekeeping."""
        while not self._closed:
            await asyncio.sleep(RTCP_INTERVAL_S * (0.5 + random.random()))
            try:
                for packet in self.peer.periodic(time.monotonic()):
                    self.send_rtcp(packet)
            except Exception:
                log.exception("rtcp_periodic_failed")
