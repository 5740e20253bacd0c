"""Prometheus text exposition of what the server is doing right now."""

from __future__ import annotations

from dataclasses import fields

from sfu import aiortc_bridge as bridge
from sfu.server import Server
from sfu.transport import MediaTransport, TransportCounters

__all__ = ["render_metrics"]


def _transports(server: Server) -> list[MediaTransport]:
    found = []
    for room in server.rooms.all():
        for participant in room.participants.values():
            for transport in (participant.publisher.transport, participant.subscriber.transport):
                if transport is not None:
                    found.append(transport)
    return found


def render_metrics(server: Server) -> str:
    rooms = server.rooms.all()
    participants = [p for room in rooms for p in room.participants.values()]
    producers = [t for room in rooms for t in room.tracks.values()]
    totals = TransportCounters()
    for transport in _transports(server):
        for f in fields(TransportCounters):
            setattr(totals, f.name, getattr(totals, f.name) + getattr(transport.counters, f.name))
    lines = [
        "# TYPE sfu_rooms gauge",
        f"sfu_rooms {len(rooms)}",
        "# TYPE sfu_participants gauge",
        f"sfu_participants {len(participants)}",
        "# TYPE sfu_producers gauge",
        f"sfu_producers {len(producers)}",
        "# TYPE sfu_consumers gauge",
        f"sfu_consumers {sum(len(p.consumers) for p in producers)}",
        "# HELP sfu_transport_packets Packets and drops of live peer connections.",
        "# TYPE sfu_transport_packets gauge",
    ]
    lines += [
        f'sfu_transport_packets{{counter="{f.name}"}} {getattr(totals, f.name)}'
        for f in fields(TransportCounters)
    ]
    consumers = [c for p in producers for c in p.consumers]
    lines += [
        "# HELP sfu_media_recovery Loss recovery in live rooms.",
        "# TYPE sfu_media_recovery gauge",
        f'sfu_media_recovery{{counter="nacked_upstream"}} '
        f"{sum(p.publisher.ingress.nacks_sent for p in participants)}",
        f'sfu_media_recovery{{counter="retransmitted"}} '
        f"{sum(c.retransmitted for c in consumers)}",
        f'sfu_media_recovery{{counter="keyframe_requests"}} '
        f"{sum(p.keyframe_requests for p in producers)}",
    ]
    codecs = bridge.codec_instances()
    lines += [
        "# HELP sfu_codec_requests_total Decoders/encoders requested (always 0: no transcoding).",
        "# TYPE sfu_codec_requests_total counter",
        f'sfu_codec_requests_total{{kind="decoder"}} {codecs["decoders"]}',
        f'sfu_codec_requests_total{{kind="encoder"}} {codecs["encoders"]}',
        "# TYPE sfu_stun_errors_total counter",
        f"sfu_stun_errors_total {bridge.stun_errors()}",
    ]
    return "\n".join(lines) + "\n"
