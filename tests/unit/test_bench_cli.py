"""Tests for ``python -m bench``'s argument parsing (no benchmark is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS, build_parser
from bench.report import command_line


def test_fanout_arguments_and_defaults() -> None:
    args = build_parser().parse_args(["fanout", "--subscribers", "1,10"])
    assert args.scenario == "fanout" and "fanout" in SCENARIOS
    assert args.subscribers == (1, 10)
    assert (args.duration, args.warmup, args.video_kbps, args.probes) == (10.0, 3.0, 900, 5)
    assert args.json is None


def test_fanout_all_options() -> None:
    args = build_parser().parse_args([
        "fanout", "--subscribers", "0,2, 4,8", "--duration", "5", "--warmup", "0",
        "--video-kbps", "1200", "--probes", "0", "--json", "out/r.json",
    ])
    assert args.subscribers == (0, 2, 4, 8)
    assert (args.duration, args.warmup, args.video_kbps, args.probes) == (5.0, 0.0, 1200, 0)
    assert args.json == Path("out/r.json")


@pytest.mark.parametrize(
    "argv",
    [
        ["fanout"],
        ["fanout", "--subscribers", "-1"],
        ["fanout", "--subscribers", ","],
        ["fanout", "--subscribers", "1,x"],
        ["fanout", "--subscribers", "1,1000"],
        ["fanout", "--subscribers", "1", "--duration", "0"],
        ["fanout", "--subscribers", "1", "--duration", "1e9"],
        ["fanout", "--subscribers", "1", "--video-kbps", "10"],
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
