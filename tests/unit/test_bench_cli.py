"""Tests for ``python -m bench``'s argument parsing (no benchmark is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS, TARGET_NAMES, build_parser
from bench.report import command_line


def test_every_issue_scenario_is_registered() -> None:
    assert {"fanout", "meeting", "audio-rooms", "join-storm", "micro", "all"} <= set(SCENARIOS)


def test_fanout_arguments_and_defaults() -> None:
    args = build_parser().parse_args(["fanout"])
    assert args.scenario == "fanout"
    assert args.subscribers == (1, 20, 40)
    assert args.targets == TARGET_NAMES == ("oktorus", "janus")
    assert (args.duration, args.warmup, args.video_kbps, args.probes) == (10.0, 3.0, 900, 3)
    assert args.json is None and args.out == Path("bench/results") and not args.no_plots


def test_fanout_all_options() -> None:
    args = build_parser().parse_args([
        "fanout", "--subscribers", "0,2, 4,8", "--duration", "5", "--warmup", "0",
        "--video-kbps", "1200", "--probes", "0", "--json", "out/r.json", "--targets", "janus",
        "--server-cpu", "none", "--out", "x", "--no-plots",
    ])
    assert args.subscribers == (0, 2, 4, 8)
    assert (args.duration, args.warmup, args.video_kbps, args.probes) == (5.0, 0.0, 1200, 0)
    assert args.json == Path("out/r.json") and args.out == Path("x") and args.no_plots
    assert args.targets == ("janus",) and args.server_cpu is None


def test_other_scenarios_parse() -> None:
    parser = build_parser()
    rooms = parser.parse_args(["audio-rooms", "--rooms", "10", "--participants", "4"])
    assert (rooms.rooms, rooms.participants) == ((10,), 4)
    meeting = parser.parse_args(["meeting", "--participants", "4"])
    assert meeting.participants == (4,)
    storm = parser.parse_args(["join-storm", "--rate", "5", "--joins", "20",
                               "--targets", "oktorus,janus,oktorus"])
    assert (storm.rate, storm.joins, storm.targets) == (5.0, 20, ("oktorus", "janus"))
    micro = parser.parse_args(["micro", "--seconds", "0.1", "--consumers", "1,2"])
    assert (micro.seconds, micro.consumers) == (0.1, (1, 2))


@pytest.mark.parametrize(
    "argv",
    [
        ["fanout", "--subscribers", "-1"],
        ["fanout", "--subscribers", ","],
        ["fanout", "--subscribers", "1,x"],
        ["fanout", "--subscribers", "1,1000"],
        ["fanout", "--subscribers", "1", "--duration", "0"],
        ["fanout", "--subscribers", "1", "--duration", "1e9"],
        ["fanout", "--subscribers", "1", "--video-kbps", "10"],
        ["fanout", "--targets", "mediasoup"],
        ["fanout", "--targets", ","],
        ["fanout", "--server-cpu", "4096"],
        ["meeting", "--participants", "1"],
        ["audio-rooms", "--participants", "0"],
        ["join-storm", "--rate", "0"],
        ["unknown-scenario"],
        [],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_command_line_is_copy_pasteable() -> None:
    assert command_line(["fanout", "--subscribers", "1,10", "--json", "a b.json"]) == (
        "python -m bench fanout --subscribers 1,10 --json 'a b.json'"
    )


def test_generators_and_impair_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["fanout"])
    assert args.generators == 1 and args.impair == []
    args = parser.parse_args([
        "meeting", "--generators", "auto", "--impair", "subscribers:loss=5",
        "--impair", "publishers.send:delay=40,jitter=10,seed=3",
    ])
    assert args.generators == 0  # auto: planned per run
    assert [r.describe() for r in args.impair] == [
        "subscribers:loss=5,seed=0", "publishers.send:delay=40,jitter=10,seed=3",
    ]
    assert parser.parse_args(["audio-rooms", "--generators", "3"]).generators == 3
    for bad in (["--generators", "0"], ["--generators", "17"], ["--impair", "viewers:loss=5"],
                ["--impair", "subscribers:loss=500"], ["--impair", "subscribers:"],
                ["--impair", "all.both:loss=1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["fanout", *bad])
