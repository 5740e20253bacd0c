"""The step figures and saturation rules of ``python -m bench capacity`` (pure)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bench.capacity import worker_sockets
from bench.capacity_steps import (
    Limits,
    StepFigures,
    capacity_summary,
    saturation_reasons,
    sum_counter,
)


def step(
    rooms: int,
    *,
    rtp_out: int | None = None,
    cpu: tuple[float, ...] = (0.5,),
    udp_drops: int = 0,
    sfu_dropped: int = 0,
    subscribers_per_room: int = 100,
) -> StepFigures:
    """R rooms, each publisher sending 150 pkt/s over a 10 s window to its subscribers."""
    rtp_in = 1500 * rooms
    offered = rtp_in * subscribers_per_room
    return StepFigures(
        rooms=rooms,
        subscribers=rooms * subscribers_per_room,
        window_s=10.0,
        rtp_in=rtp_in,
        rtp_out=offered if rtp_out is None else rtp_out,
        sfu_dropped=sfu_dropped,
        udp_drops=udp_drops,
        cpu_shares=cpu,
    )


def test_derived_figures() -> None:
    s = step(2, cpu=(0.02, 0.4, 0.3))
    assert s.offered == 300_000
    assert s.forwarded_pps == 30_000
    assert s.forwarded_ratio == 1.0
    assert s.busiest_cpu_share == 0.4
    assert s.server_cpu_share == pytest.approx(0.72)
    assert s.us_per_forwarded_packet == pytest.approx(0.72 * 10 / 300_000 * 1e6)
    assert s.as_dict()["forwarded_pps"] == 30_000


def test_a_server_that_keeps_up_is_not_saturated() -> None:
    assert saturation_reasons(step(1, cpu=(0.94,))) == []


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        (step(1, cpu=(0.1, 0.95)), "of a core"),
        (step(1, udp_drops=1), "UDP receive drops"),
        (step(1, sfu_dropped=3), "dropped by the server"),
        (step(1, rtp_out=148_000), "forwarded 98.7%"),
        (step(0), "no media"),
    ],
)
def test_each_limit_saturates(figures: StepFigures, reason: str) -> None:
    reasons = saturation_reasons(figures)
    assert len(reasons) == 1
    assert reason in reasons[0]


def test_limits_are_configurable() -> None:
    assert saturation_reasons(step(1, cpu=(0.8,)), Limits(cpu_share=0.75)) != []
    assert saturation_reasons(step(1, rtp_out=148_000), Limits(forwarded_ratio=0.98)) == []


def test_summary_stops_counting_at_the_first_saturated_step() -> None:
    steps = [
        step(1),
        step(2),
        step(3, cpu=(0.97,)),  # saturated by CPU, no drop yet
        step(4, cpu=(1.0,), udp_drops=50, rtp_out=500_000),
    ]
    summary = capacity_summary(steps)
    assert summary["clean_pps"] == 30_000
    assert summary["before_drops_pps"] == 45_000
    assert summary["peak_pps"] == 50_000
    assert summary["saturated_at_rooms"] == 3
    assert summary["first_drop_at_rooms"] == 4


def test_summary_of_nothing() -> None:
    assert capacity_summary([]) == {
        "clean_pps": 0.0,
        "before_drops_pps": 0.0,
        "peak_pps": 0.0,
        "saturated_at_rooms": None,
        "first_drop_at_rooms": None,
    }


def test_counters_sum_over_workers() -> None:
    samples = {
        'sfu_transport_packets{counter="rtp_out",worker="0"}': 10.0,
        'sfu_transport_packets{worker="1",counter="rtp_out"}': 5.0,
        'sfu_transport_packets{counter="rtp_out_bytes",worker="1"}': 99.0,
        'sfu_transport_packets{counter="rtp_in"}': 7.0,
        'other{counter="rtp_out"}': 1000.0,
    }
    assert sum_counter(samples, "sfu_transport_packets", "rtp_out") == 15
    assert sum_counter(samples, "sfu_transport_packets", "rtp_in") == 7
    assert sum_counter(samples, "sfu_transport_packets", "missing") == 0


def test_worker_sockets_are_found_by_inode(tmp_path: Path) -> None:
    """The bench finds the ``worker-N.sock`` sockets a process listens on (here: ours)."""
    listening = []
    for name in ("worker-1.sock", "worker-0.sock", "other.sock"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / name))
        sock.listen()
        listening.append(sock)
    try:
        found = worker_sockets([os.getpid()])
        assert found == [str(tmp_path / "worker-0.sock"), str(tmp_path / "worker-1.sock")]
        assert worker_sockets([os.getpid()], unix_table="Num RefCount\n") == []
    finally:
        for sock in listening:
            sock.close()


def test_a_cpu_limit_above_one_core_steps_on_until_the_first_drop() -> None:
    steps = [step(1), step(2, cpu=(1.0,)), step(3, cpu=(1.02,), udp_drops=9, rtp_out=400_000)]
    summary = capacity_summary(steps, Limits(cpu_share=2.0))
    assert summary["clean_pps"] == 30_000
    assert summary["saturated_at_rooms"] == 3
    assert summary["before_drops_pps"] == 30_000
