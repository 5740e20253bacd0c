"""Bench runs through the real server: a tiny fan-out (1 → 4) spread over two generator
processes and merged back into one set of figures; subscribers' NACKs under --impair."""

from __future__ import annotations

import asyncio
import os

from bench.fanout import fanout_layout
from bench.impairments import parse_rule
from bench.media import encode_audio_clip, encode_video_clip
from bench.scenario import Clips, RunOptions, run_layout
from bench.server import SfuServer


def test_two_generator_processes_count_every_subscribers_packets() -> None:
    clips = Clips(
        video=encode_video_clip(seconds=1.0, width=320, height=180, kbps=300),
        audio=(encode_audio_clip(seconds=1.0),),
    )
    options = RunOptions(duration_s=3.0, warmup_s=0.5, generators=2)
    figures = asyncio.run(run_layout(SfuServer(), fanout_layout(4), clips, options))

    names = [p.name for p in figures.generator_processes]
    assert names == ["coordinator", "generator 1", "generator 2"]
    assert figures.generator_processes[0].pid == os.getpid()
    workers = figures.generator_processes[1:]
    assert len({p.pid for p in workers}) == 2 and os.getpid() not in {p.pid for p in workers}
    assert sorted(p.members for p in workers) == [2, 3]  # 5 members dealt round-robin
    assert all(p.cpu_share > 0 and p.lag_ms["samples"] > 0 for p in workers)

    # every subscriber got (nearly) every packet the publisher sent in the window,
    # matched for latency although it ran in another process than the publisher
    assert figures.expected_packets > 4 * 3 * 50  # ≥ audio alone, 4 subscribers, 3 s
    assert figures.received_packets >= 0.9 * figures.expected_packets
    assert figures.latency_ms["samples"] == figures.received_packets
    assert 0 < figures.latency_ms["p50"] < 50
    ratio = figures.counted_ratio
    assert ratio is not None and 0.95 < ratio < 1.05  # vs the server's own rtp_out
    assert len(figures.join_first_keyframe_ms) == 4


def test_bench_subscribers_nack_what_their_impaired_link_lost() -> None:
    """10 % loss on each subscriber's downlink: their NACKs get the video repaired
    (audio is not NACKed, as a browser's Opus is not)."""
    clips = Clips(
        video=encode_video_clip(seconds=1.0, width=320, height=180, kbps=300),
        audio=(encode_audio_clip(seconds=1.0),),
    )
    rule = parse_rule("subscribers.receive:loss=10,seed=4")
    options = RunOptions(duration_s=3.0, warmup_s=0.5, impair=(rule,))
    figures = asyncio.run(run_layout(SfuServer(), fanout_layout(2), clips, options))

    assert figures.nacks_sent > 0 and figures.nack_repaired > 0
    assert figures.video_expected_packets > 2 * 3 * 20
    video_loss = figures.video_loss
    assert video_loss is not None and video_loss < 0.02, video_loss
    loss = figures.loss
    assert loss is not None and 0.01 < loss < 0.2  # the audio share stays lost
