"""A Python client for signalling protocol v1 (``/work/shared/protocol.md``, ``docs/``).

Two layers, usable separately:

* :class:`SignalClient` speaks the WebSocket protocol only: it matches replies to
  requests by ``id``, buffers everything else as *events* and lets tests send raw or
  malformed frames and observe the close code (4401, 4429, 1009).
* :class:`Participant` is a whole peer: it joins, publishes local tracks on the
  *publish* peer connection (client offers, ``publish``/``published``) and answers the
  server's offers on the *subscribe* peer connection (``offer``/``answer``,
  renegotiated on the same ``RTCPeerConnection`` whenever the server re-offers).

Loopback: aioice never gathers host candidates on 127.0.0.1. This module patches
nothing; a caller that talks to a server on loopback must first call
``sfu.aiortc_bridge.restrict_host_addresses(["127.0.0.1"])`` (process-wide), or
monkeypatch ``aioice.ice.get_host_addresses`` in a test.

Example::

    alice = await Participant.join(url, token, publish_tracks=[FrameCounterTrack()])
    bob = await Participant.join(url, token2)
    tracks = await bob.wait_remote_tracks(alice.published)   # SFU track id -> track
    ...
    await bob.close(); await alice.close()

Received tracks are decoded by aiortc into an unbounded per-track queue: consume them
(``track.recv()``) or pass ``drain=True`` so the participant discards frames itself.
Local tracks passed to :meth:`Participant.publish` stay owned by the caller (never stopped).
"""

from signaling.client.impair import Impairment, LinkModel
from signaling.client.participant import Participant, impair_peer_connection
from signaling.client.sdp import (
    answer_offer,
    create_offer,
    ice_candidate,
    offered_tracks,
    received_tracks,
    rtc_configuration,
)
from signaling.client.signal import (
    Message,
    ProtocolError,
    SignalClient,
    SignalClosed,
    SignalError,
    TrackCallback,
)

__all__ = [
    "Impairment",
    "LinkModel",
    "Message",
    "Participant",
    "ProtocolError",
    "SignalClient",
    "SignalClosed",
    "SignalError",
    "TrackCallback",
    "answer_offer",
    "create_offer",
    "ice_candidate",
    "impair_peer_connection",
    "offered_tracks",
    "received_tracks",
    "rtc_configuration",
]
