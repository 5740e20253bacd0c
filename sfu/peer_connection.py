"""Server-side peer connections and the SDP they hand out."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy

__all__ = ["MediaConfig", "ReportObserver", "announce_address", "new_peer_connection"]

ReportObserver = Callable[[str, "float | None", float, float], None]
"""``observe(kind, rtt_s or None, jitter_s, loss 0..1)``: one RTCP report block of a subscriber."""

_HOST_CANDIDATE = re.compile(
    r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The media settings every participant's peer connections share.

    ``ice_servers`` is iterated once per new peer connection; the server passes a view that
    mints fresh TURN REST credentials each time (:class:`sfu.turn.ServerIceServers`).
    ``observe_report`` (for /metrics histograms) is to be called from RTCP report handling.
    """

    ice_servers: Sequence[Mapping[str, Any]] = ()
    announce_ip: str | None = None
    queue_limit: int = 256 * 1024  # bytes pending on a subscriber's socket before dropping
    stale_after_s: float = 15.0  # a producer silent this long is removed
    observe_report: ReportObserver | None = None


def new_peer_connection(ice_servers: Sequence[Mapping[str, Any]]) -> RTCPeerConnection:
    """A bundled peer connection that never uses aiortc's default public STUN server."""
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in list(ice_servers)  # one snapshot: a minting view yields fresh credentials
    ]
    config = RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    return RTCPeerConnection(config)


def announce_address(sdp: str, address: str | None) -> str:
    """Write the public address into host candidates (a server behind 1:1 NAT)."""
    if not address:
        return sdp
    return _HOST_CANDIDATE.sub(lambda m: m.group(1) + address + m.group(3), sdp)
