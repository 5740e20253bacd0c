"""``python -m bench SCENARIO ...``: run a named benchmark scenario and print its figures.

Scenarios today: ``fanout`` (one publisher → N subscribers: server CPU per forwarded
packet, join → first decoded frame). Each scenario registers its argparse options and
its runner in :data:`SCENARIOS`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.fanout import Clips, FanoutOptions, run_fanout
from bench.media import encode_audio_clip, encode_video_clip
from bench.report import command_line, environment, fanout_json, fanout_markdown, write_json
from sfu import aiortc_bridge as bridge

__all__ = ["SCENARIOS", "main"]

T = TypeVar("T")

MAX_SUBSCRIBERS = 200
MAX_DURATION_S = 600.0


@dataclass(frozen=True, slots=True)
class Scenario:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], int]


def _subscriber_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not counts or any(not 0 <= n <= MAX_SUBSCRIBERS for n in counts):
        raise argparse.ArgumentTypeError(f"each count must be within 0..{MAX_SUBSCRIBERS}")
    return counts


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low:g}..{high:g}")
        return value

    return parse


def _kbps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 100 <= value <= 5000:
        raise argparse.ArgumentTypeError("must be within 100..5000")
    return value


def _fanout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscribers", type=_subscriber_counts, required=True, metavar="N[,N...]",
        help="subscriber counts to run, e.g. 1,10 (a fresh server for each; "
        "0 measures the publisher alone)",
    )
    parser.add_argument("--duration", type=_seconds(1, MAX_DURATION_S), default=10.0,
                        metavar="S", help="measured window per N (default 10 s)")
    parser.add_argument("--warmup", type=_seconds(0, 60), default=3.0, metavar="S",
                        help="settling time before the window (default 3 s)")
    parser.add_argument("--video-kbps", type=_kbps, default=900, metavar="K",
                        help="VP8 640x360@30 target bitrate (default 900)")
    parser.add_argument("--probes", type=int, choices=range(0, 21), default=5, metavar="K",
                        help="join → first decoded frame probes per N (default 5)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")


def _run_fanout(args: argparse.Namespace, command: str) -> int:
    started = time.perf_counter()
    print("[bench] encoding the publisher's clip once (VP8 + Opus)", file=sys.stderr, flush=True)
    clips = Clips(video=encode_video_clip(kbps=args.video_kbps), audio=encode_audio_clip())
    options = FanoutOptions(
        subscribers=args.subscribers, duration_s=args.duration, warmup_s=args.warmup,
        probes=args.probes,
    )
    bridge.restrict_host_addresses(["127.0.0.1"])  # aioice skips loopback otherwise
    result, loop_name = _run_loop(run_fanout(options, clips))
    env = environment(loop_name)
    print(fanout_markdown(result, command, env))
    if args.json is not None:
        write_json(args.json, fanout_json(result, command, env))
        print(f"JSON written to {args.json}")
    print(f"[bench] total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


SCENARIOS: dict[str, Scenario] = {
    "fanout": Scenario(
        help="one publisher → N subscribers: server CPU per forwarded packet, join latency",
        add_arguments=_fanout_arguments,
        run=_run_fanout,
    ),
}


def _run_loop(coro: Awaitable[T]) -> tuple[T, str]:
    """Run ``coro`` on uvloop when installed, else asyncio's default loop."""

    async def wrapper() -> T:
        return await coro

    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrapper()), "asyncio"
    return uvloop.run(wrapper()), "uvloop"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmarks of the SFU (loopback only)."
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, scenario in SCENARIOS.items():
        scenario.add_arguments(sub.add_parser(name, help=scenario.help, description=scenario.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return SCENARIOS[args.scenario].run(args, command_line(arguments))


if __name__ == "__main__":
    sys.exit(main())
