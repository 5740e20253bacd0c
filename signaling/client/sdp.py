"""Peer-connection and SDP helpers shared by the client's two peer connections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

_SENDING_DIRECTIONS = frozenset({"sendrecv", "sendonly"})


def rtc_configuration(ice_servers: Sequence[RTCIceServer] = ()) -> RTCConfiguration:
    """The configuration of both peer connections: given ICE servers only, max-bundle.

    aiortc's default adds a public STUN server; never use it (tests run on loopback).
    """
    return RTCConfiguration(iceServers=list(ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def offered_tracks(sdp: str) -> dict[str, str | None]:
    """Map mid → track id (``a=msid:<stream> <track>``) for the audio/video m-lines of a
    remote offer that send media to us (direction sendrecv/sendonly, port ≠ 0).

    The track id is None when the m-line has no two-part ``a=msid``.
    """
    tracks: dict[str, str | None] = {}
    for section in sdp.replace("\r\n", "\n").split("\nm=")[1:]:
        lines = section.split("\n")
        words = lines[0].split()
        if len(words) < 2 or words[0] not in ("audio", "video") or words[1] == "0":
            continue
        attributes = [line[2:].strip() for line in lines[1:] if line.startswith("a=")]
        mid = next((a[4:] for a in attributes if a.startswith("mid:")), None)
        direction = next(
            (a for a in attributes if a in ("sendrecv", "sendonly", "recvonly", "inactive")),
            "sendrecv",
        )
        if mid is None or direction not in _SENDING_DIRECTIONS:
            continue
        msid = next((a[5:].split() for a in attributes if a.startswith("msid:")), [])
        tracks[mid] = msid[1] if len(msid) >= 2 else None
    return tracks


def ice_candidate(payload: Mapping[str, Any]) -> Any:
    """aiortc ``RTCIceCandidate`` from a protocol ``candidate`` object
    {``candidate``, ``sdpMid``, ``sdpMLineIndex``} (``candidate:`` prefix optional)."""
    text = str(payload["candidate"])
    candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
    candidate.sdpMid = payload.get("sdpMid")
    candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
    return candidate


async def create_offer(pc: RTCPeerConnection) -> str:
    """Create and apply a local offer; returns its SDP (candidates inline)."""
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def answer_offer(pc: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply a remote offer (first or re-offer, same ``pc``) and return the local answer SDP."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return str(pc.localDescription.sdp)


def received_tracks(
    pc: RTCPeerConnection, offered: Mapping[str, str | None]
) -> dict[str, MediaStreamTrack]:
    """Track id → receiving track for the m-lines of the last remote offer that send to us.

    ``offered`` is :func:`offered_tracks` of that offer; the id is its ``a=msid`` track id
    (so a reused m-line maps to its new track id), else aiortc's track id.
    """
    active: dict[str, MediaStreamTrack] = {}
    for transceiver in pc.getTransceivers():
        track, mid = transceiver.receiver.track, transceiver.mid
        if mid is not None and mid in offered and track is not None:
            active[offered[mid] or track.id] = track
    return active
