"""``GET /metrics``: Prometheus text exposition, read from the live objects at scrape time.

A custom prometheus-client collector walks the server once per scrape (nothing is counted on
the media path for it): rooms, participants, tracks and consumers, the packet/byte/RTCP
counters the media objects keep (plus the final values of objects that are gone, see
:mod:`sfu.stats`), RTCP report histograms, event-loop lag, webhook delivery, signalling
errors by code. Base units (seconds, bytes, ratios 0..1). Every sample carries a ``worker``
label (``0`` while there is one process; with several workers each one's samples stay
apart) and no per-room or per-user label: nothing here identifies a room or a person.

``sfu_transport_packets`` is kept as it was (no ``worker`` label) for the benchmark tools;
prefer ``sfu_packets_total``, ``sfu_rtcp_packets_total`` and ``sfu_packets_dropped_total``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sfu import __version__
from sfu import aiortc_bridge as bridge
from sfu.server import Server
from sfu.shard import ShardLink
from sfu.stats import Histogram, Key, contribute, participant_objects
from sfu.transport import TransportCounters
from sfu.webhooks import LATENCY_BUCKETS

__all__ = ["METRICS_CONTENT_TYPE", "ServerCollector", "render_metrics"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("audio", "video")
TRANSMISSIONS = ("initial", "retransmit")
DROP_REASONS = ("empty", "oversize", "foreign", "unready", "srtp", "queue_full")
SIGNAL_ERROR_CODES = (
    "bad_request", "unauthenticated", "forbidden", "not_found", "conflict", "too_large",
    "rate_limited", "consent_invalid", "internal",
)  # fmt: skip
CONSENT_KINDS = ("granted", "withdrawn")


class ServerCollector(Collector):
    """Yields every family from one walk of the server's live state."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        w = server.worker_id
        rooms = server.rooms.all()
        participants = [p for room in rooms for p in room.participants.values()]
        producers = [t for room in rooms for t in room.tracks.values()]
        consumers = [c for p in participants for c in p.subscriber.consumers.values()]
        traffic = server.stats.traffic.snapshot(server.rooms)
        server.stats.reports.sample(consumers)

        info = GaugeMetricFamily("sfu_info", "Server version.", labels=["version", "worker"])
        info.add_metric([__version__, w], 1)
        yield info
        yield _gauge("sfu_up_seconds", "Seconds since this worker started.", w,
                     _uptime(server))  # fmt: skip
        yield _gauge("sfu_draining", "1 while draining (joins refused).", w,
                     1.0 if server.draining else 0.0)  # fmt: skip
        yield from _cluster(server)
        yield _gauge("sfu_rooms", "Rooms with at least one participant.", w, len(rooms))
        yield _gauge("sfu_participants", "Joined participants.", w, len(participants))
        yield _gauge("sfu_producers", "Published tracks.", w, len(producers))
        yield _gauge("sfu_consumers", "Forwarded copies of tracks (one per subscriber).", w,
                     len(consumers))  # fmt: skip
        tracks = GaugeMetricFamily("sfu_tracks", "Published tracks by kind.",
                                   labels=["kind", "worker"])  # fmt: skip
        by_kind = Counter(p.kind for p in producers)
        for kind in KINDS:
            tracks.add_metric([kind, w], by_kind[kind])
        yield tracks

        yield from _traffic(traffic, w)
        yield from _reports(server, w)
        yield from _events(server, w)
        yield from _pipe_metrics(server, w)

        lag = HistogramMetricFamily(
            "sfu_event_loop_lag_seconds",
            "How late the event loop ran a 250 ms timer (probed every 250 ms).",
            labels=["worker"],
        )
        _add_histogram(lag, [w], server.stats.loop_lag.histogram)
        yield lag

        errors = CounterMetricFamily("sfu_signalling_errors", "Protocol errors sent, by code.",
                                     labels=["code", "worker"])  # fmt: skip
        counts = server.stats.signal_errors
        for code in sorted(set(SIGNAL_ERROR_CODES) | set(counts)):
            errors.add_metric([code, w], counts.get(code, 0))
        yield errors

        codecs = bridge.codec_instances()
        requests = CounterMetricFamily(
            "sfu_codec_requests",
            "Decoders/encoders requested (always 0: the server never transcodes).",
            labels=["kind", "worker"],
        )
        requests.add_metric(["decoder", w], codecs["decoders"])
        requests.add_metric(["encoder", w], codecs["encoders"])
        yield requests
        stun = CounterMetricFamily("sfu_stun_errors", "Malformed STUN datagrams contained.",
                                   labels=["worker"])  # fmt: skip
        stun.add_metric([w], bridge.stun_errors())
        yield stun

        # Deprecated, kept unchanged for bench/ (no worker label).
        legacy = GaugeMetricFamily(
            "sfu_transport_packets",
            "Deprecated: packets and drops of live peer connections (see sfu_packets_total).",
            labels=["counter"],
        )
        live = Counter[Key]()
        for participant in participants:
            for obj in participant_objects(participant):
                contribute(obj, live)
        for name in TransportCounters.__dataclass_fields__:
            legacy.add_metric([name], live["transport", name])
        yield legacy
        recovery = GaugeMetricFamily(
            "sfu_media_recovery",
            "Deprecated: loss recovery in live rooms (see sfu_nacks_total).",
            labels=["counter", "worker"],
        )
        recovery.add_metric(["nacked_upstream", w], live["nacks", "out"])
        recovery.add_metric(["retransmitted", w], sum(c.retransmitted for c in consumers))
        recovery.add_metric(["keyframe_requests", w], sum(p.keyframe_requests for p in producers))
        yield recovery


def _uptime(server: Server) -> float:
    return round(time.time() - server.started_at, 3)


def _gauge(name: str, doc: str, worker: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["worker"])
    family.add_metric([worker], value)
    return family


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    family.add_metric(labels, buckets=hist.cumulative(), sum_value=hist.total)


def _traffic(traffic: Counter[Key], w: str) -> Iterable[Metric]:
    labels = ["direction", "kind", "transmission", "worker"]
    packets = CounterMetricFamily(
        "sfu_packets", "RTP packets received from publishers / sent to subscribers.", labels=labels
    )
    payload = CounterMetricFamily(
        "sfu_rtp_payload_bytes",
        "RTP payload bytes received / sent (as in RTCP sender reports: no headers).",
        labels=labels,
    )
    for direction in ("in", "out"):
        for kind in KINDS:
            for transmission in TRANSMISSIONS:
                key = (direction, kind, transmission)
                if ("packets", *key) in traffic:
                    packets.add_metric([*key, w], traffic["packets", *key])
                if ("payload_bytes", *key) in traffic:
                    payload.add_metric([*key, w], traffic["payload_bytes", *key])
    yield packets
    yield payload

    rtcp = CounterMetricFamily("sfu_rtcp_packets", "RTCP packets (compound).",
                               labels=["direction", "worker"])  # fmt: skip
    rtcp.add_metric(["in", w], traffic["transport", "rtcp_in"])
    rtcp.add_metric(["out", w], traffic["transport", "rtcp_out"])
    yield rtcp
    wire = CounterMetricFamily("sfu_transport_bytes", "SRTP bytes on the wire.",
                               labels=["direction", "worker"])  # fmt: skip
    wire.add_metric(["out", w], traffic["transport", "bytes_out"])
    if ("transport", "bytes_in") in traffic:
        wire.add_metric(["in", w], traffic["transport", "bytes_in"])
    yield wire
    drops = CounterMetricFamily("sfu_packets_dropped", "Datagrams/packets dropped, by reason.",
                                labels=["reason", "worker"])  # fmt: skip
    for reason in DROP_REASONS:
        drops.add_metric([reason, w], traffic["transport", f"dropped_{reason}"])
    yield drops

    nacks = CounterMetricFamily(
        "sfu_nacks",
        "Packets NACKed: out = asked of publishers, in = asked by subscribers.",
        labels=["direction", "worker"],
    )
    for direction in ("in", "out"):
        if ("nacks", direction) in traffic:
            nacks.add_metric([direction, w], traffic["nacks", direction])
    yield nacks
    keyframe_requests = CounterMetricFamily(
        "sfu_keyframe_requests",
        "PLI/FIR: out = sent to publishers, in = received from subscribers.",
        labels=["direction", "type", "worker"],
    )
    for direction, kind in (("out", "pli"), ("in", "pli"), ("in", "fir")):
        if ("keyframe_requests", direction, kind) in traffic:
            keyframe_requests.add_metric(
                [direction, kind, w], traffic["keyframe_requests", direction, kind]
            )
    yield keyframe_requests
    keyframes = CounterMetricFamily("sfu_keyframes", "Video keyframes received from publishers.",
                                    labels=["worker"])  # fmt: skip
    if ("keyframes", "in") in traffic:
        keyframes.add_metric([w], traffic["keyframes", "in"])
    yield keyframes


def _reports(server: Server, w: str) -> Iterable[Metric]:
    reports = server.stats.reports
    for name, doc, table in (
        ("sfu_rtt_seconds", "Round-trip time to subscribers (RTCP LSR/DLSR).", reports.rtt),
        ("sfu_jitter_seconds", "Interarrival jitter reported by subscribers.", reports.jitter),
        ("sfu_packet_loss_ratio", "Fraction lost reported by subscribers (0..1).", reports.loss),
    ):
        family = HistogramMetricFamily(name, doc, labels=["kind", "worker"])
        for kind in KINDS:
            _add_histogram(family, [kind, w], table[kind])
        yield family


def _events(server: Server, w: str) -> Iterable[Metric]:
    hooks = server.webhooks
    emitted = hooks.stats.emitted
    events = CounterMetricFamily("sfu_events", "Room/participant/track/recording/consent events.",
                                 labels=["event", "worker"])  # fmt: skip
    for event, count in sorted(emitted.items()):
        events.add_metric([event, w], count)
    yield events
    consent = CounterMetricFamily("sfu_consent_events", "Consent events by kind.",
                                  labels=["kind", "worker"])  # fmt: skip
    seen = {e.removeprefix("consent_") for e in emitted if e.startswith("consent_")}
    kinds = sorted(set(CONSENT_KINDS) | seen)
    for kind in kinds:
        consent.add_metric([kind, w], emitted.get(f"consent_{kind}", 0))
    yield consent
    active = emitted.get("recording_started", 0) - emitted.get("recording_stopped", 0)
    yield _gauge("sfu_recordings_active", "Recordings in progress.", w, max(0, active))

    deliveries = CounterMetricFamily("sfu_webhook_deliveries", "Webhook POSTs by result.",
                                     labels=["result", "worker"])  # fmt: skip
    deliveries.add_metric(["delivered", w], hooks.stats.delivered)
    deliveries.add_metric(["failed_attempt", w], hooks.stats.failed_attempts)
    deliveries.add_metric(["dropped", w], hooks.stats.dropped)
    yield deliveries
    yield _gauge("sfu_webhook_queue_depth", "Webhook deliveries waiting or in flight.", w,
                 hooks.depth)  # fmt: skip
    latency = HistogramMetricFamily(
        "sfu_webhook_delivery_seconds",
        "From the event to its acknowledged delivery (retries included).",
        labels=["worker"],
    )
    stats = hooks.stats
    hist = Histogram(bounds=LATENCY_BUCKETS, counts=list(stats.latency_buckets))
    hist.total = stats.latency_sum
    hist.observations = sum(stats.latency_buckets)
    _add_histogram(latency, [w], hist)
    yield latency


def _pipe_metrics(server: Server, w: str) -> Iterator[Metric]:
    """Rooms spanning workers and their pipes (links open now; they reset with the link)."""
    links = [room.shard for room in server.rooms.all() if isinstance(room.shard, ShardLink)]
    yield _gauge("sfu_spanning_rooms", "Rooms with a shard on another worker.", w, len(links))
    packets = GaugeMetricFamily(
        "sfu_pipe_rtp_packets",
        "RTP packets through the open pipes to other workers (out: piped; in: received).",
        labels=["direction", "worker"],
    )
    packets.add_metric(["in", w], sum(link.endpoint.rtp_in for link in links))
    packets.add_metric(
        ["out", w], sum(s.packets for link in links for s in link.endpoint.sinks.values())
    )
    yield packets
    yield _gauge("sfu_pipe_keyframe_requests", "PLIs received from other workers' shards.", w,
                 sum(link.endpoint.keyframe_requests_in for link in links))  # fmt: skip
    yield _gauge("sfu_pipe_tracks", "Tracks piped to another worker now (it has subscribers).",
                 w, sum(len(link.endpoint.sinks) for link in links))  # fmt: skip
    crypto = [link.endpoint.crypto for link in links if link.endpoint.crypto is not None]
    yield _gauge("sfu_pipe_srtp_auth_failures",
                 "Datagrams on open pipes to other nodes that failed SRTP authentication.",
                 w, sum(c.auth_failures for c in crypto))  # fmt: skip
    if server.node_spans is not None:
        yield _gauge("sfu_node_link_refused", "Shard links from other nodes refused so far.",
                     w, server.node_spans.refused)  # fmt: skip


def _cluster(server: Server) -> Iterator[Metric]:
    """This node's view of the cluster (``--redis`` only; labelled by ``node``, not worker)."""
    cluster = server.cluster
    if cluster is None:
        return
    node = server.node_id

    def family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str,
               doc: str, value: float) -> Metric:  # fmt: skip
        metric = kind(name, doc, labels=["node"])
        metric.add_metric([node], value)
        return metric

    yield family(GaugeMetricFamily, "sfu_cluster_available",
                 "1 while Redis answers (joins accepted), 0 while it does not.",
                 1.0 if cluster.available else 0.0)  # fmt: skip
    yield family(GaugeMetricFamily, "sfu_cluster_rooms_claimed",
                 "Rooms this node holds a claim on.", len(cluster.held()))  # fmt: skip
    yield family(GaugeMetricFamily, "sfu_cluster_nodes",
                 "Live nodes as of the last heartbeat.", len(cluster.node_urls))  # fmt: skip
    yield family(CounterMetricFamily, "sfu_cluster_redirects",
                 "Joins answered with redirect to another node.", cluster.redirects)  # fmt: skip
    yield family(CounterMetricFamily, "sfu_cluster_rooms_lost",
                 "Claims another node took over (rooms evicted here).",
                 cluster.rooms_lost)  # fmt: skip
    yield family(CounterMetricFamily, "sfu_cluster_rooms_reclaimed",
                 "Claims re-taken with a new epoch after they expired (Redis outage).",
                 cluster.rooms_reclaimed)  # fmt: skip


def render_metrics(server: Server) -> str:
    """The whole exposition (Prometheus text format 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return generate_latest(registry).decode()
