"""Tests for the benchmark's pure helpers: percentiles, line fits, /proc and metrics parsing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.clients import PacketCounter, sdp_payload_types
from bench.fanout import marginal_cost
from bench.procfs import (
    CpuTicks,
    parse_stat_cpu,
    parse_status_rss_kib,
    parse_status_voluntary_switches,
    parse_udp_sockets,
    read_cpu_seconds,
    read_rss_bytes,
    read_udp_drops,
    read_voluntary_switches,
    socket_inodes,
)
from bench.scenario import RunFigures
from bench.stats import linear_fit, median, parse_prometheus, percentile
from bench.target import PacketCounters

# ------------------------------------------------------------------ percentiles


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_median() -> None:
    assert percentile([7.0], 99) == 7.0
    assert median([1.0, 2.0, 10.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


# ------------------------------------------------------------------ line fits


def test_two_points_give_the_exact_line() -> None:
    slope, intercept = linear_fit([156.0, 1560.0], [0.03, 0.10])
    assert slope == pytest.approx(0.07 / 1404)
    assert intercept == pytest.approx(0.03 - 156 * 0.07 / 1404)


def test_least_squares_matches_numpy_polyfit() -> None:
    xs = [1.0, 2.0, 4.0, 8.0, 16.0]
    ys = [2.1, 3.9, 8.2, 15.8, 32.3]
    slope, intercept = linear_fit(xs, ys)
    expected_slope, expected_intercept = np.polyfit(xs, ys, 1)
    assert slope == pytest.approx(expected_slope)
    assert intercept == pytest.approx(expected_intercept)


@pytest.mark.parametrize(
    ("xs", "ys"), [([1.0], [1.0]), ([2.0, 2.0], [1.0, 3.0]), ([1.0, 2.0], [1.0])]
)
def test_line_fit_needs_two_distinct_x(xs: list[float], ys: list[float]) -> None:
    with pytest.raises(ValueError):
        linear_fit(xs, ys)


def _run(subscribers: int, forwarded: int, cpu_s: float, window_s: float = 10.0) -> RunFigures:
    run = RunFigures(
        target="t", label=f"1→{subscribers}", size=subscribers, participants=subscribers + 1,
        publishers=1, streams=subscribers, window_s=window_s, server_cpu_s=cpu_s,
    )
    run.server = PacketCounters(rtp_in=1500, rtp_out=forwarded, rtcp_in=0, rtcp_out=0,
                                bytes_out=0, dropped=0)
    return run


def test_marginal_cost_is_the_slope_of_cpu_share_against_forwarded_rate() -> None:
    # 1 subscriber: 1500 packets, 0.3 s CPU; 10: 15000 packets, 0.75 s CPU (10 s windows)
    runs = [_run(1, 1500, 0.30), _run(10, 15000, 0.75)]
    marginal = marginal_cost(runs)
    assert marginal is not None
    assert marginal.us_per_forwarded_packet == pytest.approx(0.45e6 / 13500)  # 33.3 us
    assert marginal.cpu_ms_per_s_per_stream == pytest.approx(45.0 / 9)  # 5 ms/s
    assert marginal.fixed_cpu_share == pytest.approx(0.03 - 150 * 0.045 / 1350)
    assert runs[0].cpu_us_per_forwarded == pytest.approx(200.0)
    assert runs[1].cpu_ms_per_s_per_stream == pytest.approx(7.5)
    assert runs[1].forwarded_pps == pytest.approx(1500.0)


def test_without_server_counters_the_subscribers_count_is_forwarded() -> None:
    run = _run(10, 15000, 0.75)
    run.server = None
    run.subscriber_packets = 14000
    assert run.forwarded_packets == 14000
    assert run.cpu_us_per_forwarded == pytest.approx(0.75e6 / 14000)
    assert run.counted_ratio is None


def test_loss_and_memory_per_participant() -> None:
    run = _run(4, 6000, 0.2)
    run.expected_packets, run.received_packets = 1000, 990
    run.server_rss_idle_bytes, run.server_rss_bytes = 80 << 20, 85 << 20
    assert run.loss == pytest.approx(0.01)
    assert run.rss_per_participant_bytes == pytest.approx((5 << 20) / 5)
    run.expected_packets = 0
    assert run.loss is None


def test_no_marginal_cost_from_a_single_subscriber_count() -> None:
    assert marginal_cost([_run(10, 15000, 0.75)]) is None
    assert marginal_cost([_run(10, 15000, 0.75), _run(10, 14000, 0.70)]) is None


def test_packet_counters_difference() -> None:
    before = PacketCounters(10, 20, 1, 2, 3000, 0)
    after = PacketCounters(15, 40, 2, 4, 6000, 1)
    assert after.minus(before) == PacketCounters(5, 20, 1, 2, 3000, 1)
    assert PacketCounters.zero() == PacketCounters(0, 0, 0, 0, 0, 0)


# ------------------------------------------------------------------ /proc

# A real-looking line whose command name holds spaces and parentheses.
_STAT = (
    "4242 (python (sfu) x) S 4200 4242 4200 34816 4242 4194560 21550 0 12 0 "
    "1234 567 0 0 20 0 3 0 9000000 700000000 20000 18446744073709551615 1 1 0 0 0 0 0 "
    "16781312 134234626 0 0 0 17 1 0 0 0 0 0"
)


def test_stat_line_gives_utime_and_stime() -> None:
    ticks = parse_stat_cpu(_STAT)
    assert ticks == CpuTicks(utime=1234, stime=567)
    assert ticks.total == 1801


@pytest.mark.parametrize("line", ["", "4242 python S 1 2", "4242 (python) S 1 2 3"])
def test_malformed_stat_lines_raise(line: str) -> None:
    with pytest.raises(ValueError):
        parse_stat_cpu(line)


def test_status_gives_vm_rss() -> None:
    status = "Name:\tpython\nVmPeak:\t  900000 kB\nVmRSS:\t   83996 kB\nThreads:\t3\n"
    assert parse_status_rss_kib(status) == 83996
    assert parse_status_rss_kib("Name:\tzombie\nState:\tZ (zombie)\n") == 0


def test_this_process_can_be_measured() -> None:
    before = read_cpu_seconds()
    sum(i * i for i in range(200_000))
    assert read_cpu_seconds(os.getpid()) >= before >= 0.0
    assert read_rss_bytes() > 1 << 20


# ------------------------------------------------------------------ metrics, SDP, taps


def test_prometheus_text_is_parsed_with_labels() -> None:
    text = (
        "# HELP sfu_transport_packets Packets.\n"
        "# TYPE sfu_transport_packets gauge\n"
        'sfu_transport_packets{counter="rtp_in"} 1500\n'
        'sfu_transport_packets{counter="rtp_out"} 15000\n'
        "\n"
        "sfu_rooms 1\n"
        "sfu_uptime_seconds 12.5 1700000000000\n"
    )
    assert parse_prometheus(text) == {
        'sfu_transport_packets{counter="rtp_in"}': 1500.0,
        'sfu_transport_packets{counter="rtp_out"}': 15000.0,
        "sfu_rooms": 1.0,
        "sfu_uptime_seconds": 12.5,
    }


@pytest.mark.parametrize("line", ["sfu_rooms", 'x{a="b"}', "a 1 2 3"])
def test_bad_prometheus_lines_raise(line: str) -> None:
    with pytest.raises(ValueError):
        parse_prometheus(line)


def test_sdp_payload_types_by_kind() -> None:
    sdp = (
        "v=0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
        "a=mid:0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\n"
        "a=mid:1\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 100\r\n"
    )
    assert sdp_payload_types(sdp, "video") == {97, 98}
    assert sdp_payload_types(sdp, "audio") == {111, 0}
    assert sdp_payload_types(sdp, "application") == set()


def test_packet_counter_counts_and_notes_first_arrival_per_payload_type() -> None:
    counter = PacketCounter()
    audio = bytes([0x80, 111]) + bytes(100)
    video = bytes([0x80, 0x80 | 97]) + bytes(1000)  # marker bit set
    counter(audio)
    counter(video)
    counter(video)
    assert (counter.packets, counter.octets) == (3, 102 + 2 * 1002)
    assert set(counter.first_at) == {111, 97}
    assert counter.first_of({97, 98}) == counter.first_at[97]
    assert counter.first_of({100}) is None


def test_status_gives_voluntary_context_switches() -> None:
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t1503\nnonvoluntary_ctxt_switches:\t7\n"
    assert parse_status_voluntary_switches(status) == 1503
    with pytest.raises(ValueError):
        parse_status_voluntary_switches("Name:\tpython\n")
    assert read_voluntary_switches() >= 0


# ------------------------------------------------------------------ UDP drops

_UDP = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode ref pointer drops\n"
    " 1021: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0 "
    "       0 424242 2 0000000000000000 17\n"
    " 1022: 0100007F:A1B3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0 "
    "       0 434343 2 0000000000000000 0\n"
    "garbage\n"
)


def test_udp_table_gives_drops_per_socket_inode() -> None:
    assert parse_udp_sockets(_UDP) == {424242: 17, 434343: 0}
    assert parse_udp_sockets("header only\n") == {}


def test_this_process_udp_sockets_are_found() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        inode = os.fstat(sock.fileno()).st_ino
        assert inode in socket_inodes()
        assert read_udp_drops().get(inode) == 0


def test_drops_between_readings_ignore_sockets_that_closed() -> None:
    from bench.procfs import drops_between

    assert drops_between({1: 5, 2: 100}, {1: 7, 3: 4}) == 2 + 4
    assert drops_between({}, {}) == 0


def test_machine_busy_ticks_leave_idle_and_iowait_out() -> None:
    from bench.procfs import parse_proc_stat_busy, parse_softnet_dropped, read_machine_busy

    stat = "cpu  100 5 20 800 10 0 3 2 0 0\ncpu0 50 2 10 400 5 0 1 1 0 0\n"
    assert parse_proc_stat_busy(stat) == (130, 940)
    with pytest.raises(ValueError):
        parse_proc_stat_busy("intr 1 2 3\n")
    busy, total = read_machine_busy()
    assert 0 <= busy <= total
    softnet = (
        "000c8450 00000002 00000000 00000000\n"
        "0013e66e 0000000a 00000000 00000000\n"
    )
    assert parse_softnet_dropped(softnet) == 12
