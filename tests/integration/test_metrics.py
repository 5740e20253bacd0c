"""/metrics in Prometheus format: live counts, traffic counters that never go down, RTCP and
loop-lag histograms, signalling errors by code; no personal data; scrape time at 100 people."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.media import FrameCounterTrack, ToneTrack
from helpers.server import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

from signaling.client import Participant, SignalClient, SignalError

pytestmark = pytest.mark.integration

ROOM = "acme-private-room-42"
IDENTITIES = ("alice@customer.example", "bob.agent@acme.example")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("sfu-metrics"))).start()
    try:
        yield process
    finally:
        assert process.stop() == 0


def _scrape(server: ServerProcess) -> tuple[str, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return text, time.perf_counter() - started


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parsed with prometheus-client's own parser (so the format is valid)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _get(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
         **labels: str) -> float:  # fmt: skip
    return samples[name, tuple(sorted({**labels, "worker": "0"}.items()))]


@pytest.mark.asyncio
async def test_metrics_of_a_call(server: ServerProcess) -> None:
    alice = await Participant.join(
        server.url, server.token(ROOM, IDENTITIES[0]),
        publish_tracks=[FrameCounterTrack(), ToneTrack(440.0)],
    )  # fmt: skip
    bob = await Participant.join(server.url, server.token(ROOM, IDENTITIES[1]), drain=True)
    try:
        await bob.wait_remote_tracks(2, timeout=10)
        with pytest.raises(SignalError, match="bad_request"):
            await bob.signal.request({"type": "no.such.type"}, timeout=5)
        # bob's video may have started from the cached keyframe (no PLI); after an unmute
        # nothing is replayed, so the server asks alice for a keyframe (counted below).
        video_id = next(i for i, t in alice.published.items() if t["kind"] == "video")
        await asyncio.sleep(1.5)  # bob is forwarded to; any PLI of his start is > 500 ms old
        await alice.mute(video_id, True)
        await alice.mute(video_id, False)
        await asyncio.sleep(3.0)  # media flows, RTCP reports arrive, the loop-lag probe runs
        text, _ = _scrape(server)
        samples = _samples(text)
        assert _get(samples, "sfu_rooms") == 1
        assert _get(samples, "sfu_participants") == 2
        assert _get(samples, "sfu_tracks", kind="video") == 1
        assert _get(samples, "sfu_tracks", kind="audio") == 1
        for kind in ("audio", "video"):
            assert _get(samples, "sfu_packets_total", direction="in", kind=kind,
                        transmission="initial") > 10  # fmt: skip
            assert _get(samples, "sfu_packets_total", direction="out", kind=kind,
                        transmission="initial") > 10  # fmt: skip
            assert _get(samples, "sfu_rtp_payload_bytes_total", direction="out", kind=kind,
                        transmission="initial") > 1000  # fmt: skip
        assert _get(samples, "sfu_rtcp_packets_total", direction="in") > 0
        assert _get(samples, "sfu_keyframe_requests_total", direction="out", type="pli") >= 1
        assert _get(samples, "sfu_jitter_seconds_count", kind="video") > 0
        assert _get(samples, "sfu_packet_loss_ratio_count", kind="audio") > 0
        assert _get(samples, "sfu_event_loop_lag_seconds_count") >= 5
        assert _get(samples, "sfu_signalling_errors_total", code="bad_request") >= 1
        assert _get(samples, "sfu_codec_requests_total", kind="decoder") == 0
        # No personal data and no per-room/per-user labels.
        for secret in (ROOM, *IDENTITIES, alice.id, bob.id, *alice.published):
            assert secret not in text
        labels = {label for _, pairs in samples for label, _ in pairs}
        assert labels <= {"worker", "kind", "direction", "transmission", "type", "reason",
                          "code", "event", "result", "le", "counter", "version"}  # fmt: skip
        sent_before = _get(samples, "sfu_packets_total", direction="out", kind="video",
                           transmission="initial")  # fmt: skip
    finally:
        await bob.close()
        await alice.close()
    # Counters keep what departed participants did (they never go down).
    await asyncio.sleep(0.2)
    after = _samples(_scrape(server)[0])
    assert _get(after, "sfu_participants") == 0
    assert _get(after, "sfu_packets_total", direction="out", kind="video",
                transmission="initial") >= sent_before  # fmt: skip
    assert _get(after, "sfu_events_total", event="participant_left") >= 2


@pytest.mark.asyncio
async def test_scrape_time_with_100_participants(server: ServerProcess) -> None:
    clients: list[SignalClient] = []
    publisher = await Participant.join(
        server.url, server.token("scrape-media", "pub"), publish_tracks=[FrameCounterTrack()]
    )
    viewers = [
        await Participant.join(server.url, server.token("scrape-media", f"v{i}"), drain=True)
        for i in range(3)
    ]
    try:
        for i in range(100):
            signal = await SignalClient.connect(server.url)
            reply = await signal.request(
                {"type": "join", "token": server.token(f"scrape-{i % 20}", f"user{i}")}
            )
            assert reply["type"] == "joined"
            clients.append(signal)
        for viewer in viewers:
            await viewer.wait_remote_tracks(1, timeout=10)
        timings = []
        for _ in range(20):
            text, elapsed = _scrape(server)
            timings.append(elapsed)
        samples = _samples(text)
        assert _get(samples, "sfu_participants") == 104
        timings.sort()
        print(f"\n/metrics with 104 participants: p50 {timings[10] * 1000:.1f} ms, "
              f"max {timings[-1] * 1000:.1f} ms, {len(text)} bytes")  # fmt: skip
        assert timings[10] < 0.5
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await asyncio.gather(*(v.close() for v in viewers), publisher.close())
