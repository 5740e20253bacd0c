"""``python -m bench SCENARIO ...``: run a named benchmark scenario and print its figures.

Scenarios: ``fanout``, ``meeting``, ``audio-rooms``, ``join-storm`` (each against the
targets in ``--targets``: ``oktorus`` and/or ``janus``), ``micro`` (hot-path
micro-benchmarks, no server) and ``all`` (every scenario, both targets, in < 10 min).
Results: Markdown on stdout, and JSON, Markdown and PNG plots under ``--out``
(``bench/results/`` by default).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import janus
from bench.fanout import (
    ScenarioResult,
    TargetFactory,
    audio_rooms_layout,
    fanout_layout,
    meeting_layout,
    run_sizes,
)
from bench.impairments import LinkRule, parse_rule
from bench.joinstorm import JoinStormFigures, run_join_storm
from bench.media import encode_audio_clip, encode_video_clip
from bench.report import (
    command_line,
    environment,
    join_storm_json,
    join_storm_markdown,
    scenario_json,
    scenario_markdown,
    write_json,
)
from bench.scenario import Clips, Layout, RunOptions
from bench.server import SfuServer

__all__ = ["SCENARIOS", "build_parser", "main"]

T = TypeVar("T")

MAX_SUBSCRIBERS = 200
MAX_DURATION_S = 600.0
TARGET_NAMES = ("oktorus", "janus")
DEFAULT_OUT = Path("bench/results")


@dataclass(frozen=True, slots=True)
class Scenario:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], int]


# --- argument types ---------------------------------------------------------------------


def _counts(low: int, high: int) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            counts = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a comma-separated list of integers: {text!r}"
            ) from None
        if not counts or any(not low <= n <= high for n in counts):
            raise argparse.ArgumentTypeError(f"each count must be within {low}..{high}")
        return counts

    return parse


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}")
        return value

    return parse


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


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in TARGET_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"targets are a comma-separated subset of {','.join(TARGET_NAMES)}"
        )
    return names


def _cpu(text: str) -> int | None:
    if text == "none":
        return None
    value = _int_in(0, 1023)(text)
    if value not in os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"CPU {value} is not available here")
    return value


def _default_server_cpu() -> int | None:
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1] if len(cpus) >= 2 else None


_kbps = _int_in(100, 5000)
MAX_GENERATORS = 16


def _generators(text: str) -> int:
    """``auto`` → 0 (planned per run), else 1..16 processes."""
    if text == "auto":
        return 0
    return _int_in(1, MAX_GENERATORS)(text)


def _impair_rule(text: str) -> LinkRule:
    try:
        return parse_rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _generators_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--impair", type=_impair_rule, action="append", default=[],
        metavar="GROUP[.send|.receive]:SPEC",
        help="impair a client group's links below SRTP, e.g. subscribers:loss=5 or "
        "publishers.send:delay=40,jitter=10 (GROUP: publishers, subscribers, all; SPEC keys: "
        "loss, burst, delay, jitter, reorder, rate, queue, seed); repeatable",
    )
    parser.add_argument(
        "--generators", type=_generators, default=1, metavar="N|auto",
        help="generator processes: 1 (default) runs every peer in this process; N > 1 "
        "spreads publishers and subscribers over N worker processes (oktorus target); "
        "auto: enough that none is predicted above 70%% of a core, at most the CPUs "
        "not used by the server",
    )


def _common_arguments(parser: argparse.ArgumentParser, *, window: bool = True) -> None:
    parser.add_argument(
        "--targets", type=_targets, default=TARGET_NAMES, metavar="T[,T]",
        help="targets to run, from oktorus,janus (default both; an unavailable one is "
        "reported as such)",
    )
    parser.add_argument(
        "--server-cpu", type=_cpu, default=_default_server_cpu(), metavar="CPU|none",
        help="pin the server (either target, all its threads) to this CPU (default: the "
        "last CPU when there are two or more)",
    )
    parser.add_argument(
        "--nice", type=_int_in(-20, 19), default=0, metavar="N",
        help="run the generator and the servers at this nice value (e.g. -10 on a shared "
        "machine; default 0)",
    )
    parser.add_argument(
        "--pin-generator", action="store_true",
        help="keep the generator off the server's CPU (default: it may run on any CPU)",
    )
    if window:
        parser.add_argument("--duration", type=_seconds(1, MAX_DURATION_S), default=10.0,
                            metavar="S", help="measured window per run (default 10 s)")
        parser.add_argument("--warmup", type=_seconds(0, 60), default=3.0, metavar="S",
                            help="settling time before the window (default 3 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where JSON, Markdown and PNG results go (default bench/results)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the JSON results to this path")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _fanout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscribers", type=_counts(0, MAX_SUBSCRIBERS), default=(1, 20, 40), metavar="N[,N]",
        help="subscriber counts to run (default 1,20,40; a fresh server for each)",
    )
    parser.add_argument("--video-kbps", type=_kbps, default=900, metavar="K",
                        help="VP8 640x360@30 target bitrate (default 900)")
    parser.add_argument("--probes", type=_int_in(0, 20), default=3, metavar="K",
                        help="join → first decoded frame probes per run (default 3)")
    _generators_argument(parser)
    _common_arguments(parser)


def _meeting_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--participants", type=_counts(2, 12), default=(4,), metavar="N[,N]",
                        help="participants per meeting (default 4; Nx(N-1) streams)")
    parser.add_argument("--video-kbps", type=_kbps, default=900, metavar="K",
                        help="VP8 640x360@30 target bitrate (default 900)")
    _generators_argument(parser)
    _common_arguments(parser)


def _audio_rooms_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rooms", type=_counts(1, 50), default=(10,), metavar="R[,R]",
                        help="rooms (default 10; several values give the marginal cost)")
    parser.add_argument("--participants", type=_int_in(2, 10), default=4, metavar="P",
                        help="participants per room, each publishing Opus (default 4)")
    _generators_argument(parser)
    _common_arguments(parser)


def _join_storm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=_seconds(0.2, 50), default=5.0, metavar="R",
                        help="joins per second (default 5)")
    parser.add_argument("--joins", type=_int_in(1, MAX_SUBSCRIBERS), default=20, metavar="N",
                        help="subscribers joining (default 20)")
    _common_arguments(parser, window=False)


def _micro_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=_seconds(0.05, 10), default=0.3, metavar="S",
                        help="time budget per micro-benchmark (default 0.3 s)")
    parser.add_argument("--consumers", type=_counts(1, 200), default=(1, 20, 40),
                        metavar="N[,N]", help="consumers in the fan-out loop (default 1,20,40)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write JSON here")


def _capacity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_counts(1, 16), default=(1,), metavar="N[,N]",
                        help="server worker processes, one run each (default 1; 1,2 also "
                        "prints the ratio)")
    parser.add_argument("--subscribers", type=_int_in(1, 400), default=28, metavar="S",
                        help="non-reading subscribers per room (default 28: with --workers, "
                        "keep a worker under 100 participants, see the README)")
    parser.add_argument("--publishers", type=_int_in(1, 20), default=4, metavar="P",
                        help="publishers (VP8 + Opus) per room, each sent to every "
                        "subscriber of the room (default 4)")
    parser.add_argument("--max-rooms", type=_int_in(1, 20), default=6, metavar="R",
                        help="stop adding rooms here if the server has not saturated "
                        "(default 6)")
    parser.add_argument("--video-kbps", type=_kbps, default=900, metavar="K",
                        help="VP8 640x360@30 target bitrate (default 900)")
    parser.add_argument("--cpu-limit", type=_seconds(0.1, 4.0), default=0.95, metavar="F",
                        help="a server process at this share of a core counts as saturated "
                        "(default 0.95; above 1 to step on until drops)")
    parser.add_argument("--duration", type=_seconds(1, 20), default=10.0, metavar="S",
                        help="measured window per step (default 10 s)")
    parser.add_argument("--warmup", type=_seconds(0, 5), default=2.0, metavar="S",
                        help="after pausing the subscribers, before the window (default 2 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where capacity.json and .md go (default bench/results)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the JSON results to this path")


def _all_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=_seconds(1, MAX_DURATION_S), default=8.0,
                        metavar="S", help="measured window per run (default 8 s)")
    parser.add_argument("--warmup", type=_seconds(0, 60), default=2.0, metavar="S",
                        help="settling time before each window (default 2 s)")
    parser.add_argument(
        "--targets", type=_targets, default=TARGET_NAMES, metavar="T[,T]",
        help="targets (default oktorus,janus)",
    )
    parser.add_argument("--server-cpu", type=_cpu, default=_default_server_cpu(),
                        metavar="CPU|none", help="as for the other scenarios")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="results folder (default bench/results)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--nice", type=_int_in(-20, 19), default=0, metavar="N",
                        help="nice value of the bench and its servers (default 0)")


# --- running ----------------------------------------------------------------------------


def _run_loop(coro: Awaitable[T]) -> tuple[T, str]:
    """Run ``coro`` on uvloop when installed, else asyncio's default loop."""

    async def wrapper() -> T:
        return await coro

    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrapper()), "asyncio"
    return uvloop.run(wrapper()), "uvloop"


def _pin_generator(server_cpu: int | None, pin: bool = False) -> list[int]:
    """With ``pin``, keep the generator (this process and the threads it starts) off the
    server's CPU. Not by default: on a shared machine a generator held to one core is
    starved by other work on it and falls behind (its loop lag shows it), while CPU time
    per process is measured the same wherever it runs."""
    cpus = set(os.sched_getaffinity(0))
    if pin and server_cpu is not None and len(cpus) > 1:
        cpus.discard(server_cpu)
        os.sched_setaffinity(0, cpus)
    return sorted(cpus)


def _factories(
    names: Sequence[str], server_cpu: int | None
) -> tuple[list[tuple[str, TargetFactory]], dict[str, str]]:
    factories: list[tuple[str, TargetFactory]] = []
    unavailable: dict[str, str] = {}
    for name in names:
        if name == "oktorus":
            factories.append((name, lambda: SfuServer(cpu=server_cpu)))
        elif name == "janus":
            reason = janus.unavailable_reason()
            if reason is not None:
                unavailable[name] = reason
                print(f"[bench] target janus unavailable: {reason}", file=sys.stderr)
            factories.append((name, lambda: janus.JanusServer(cpu=server_cpu)))
    return factories, unavailable


_clip_cache: dict[tuple[str, int, int], Any] = {}


def _clips(video_kbps: int, audio_clips: int) -> Clips:
    print(f"[bench] encoding the clips once (VP8 + {audio_clips} Opus)", file=sys.stderr,
          flush=True)
    key = ("video", video_kbps, 0)
    if key not in _clip_cache:
        _clip_cache[key] = encode_video_clip(kbps=video_kbps)
    audio = []
    for voice in range(max(1, audio_clips)):
        akey = ("audio", 0, voice)
        if akey not in _clip_cache:
            _clip_cache[akey] = encode_audio_clip(voice=voice)
        audio.append(_clip_cache[akey])
    return Clips(video=_clip_cache[key], audio=tuple(audio))


def _emit(
    name: str, markdown: str, document: dict[str, Any], args: argparse.Namespace
) -> None:
    print(markdown, flush=True)
    out: Path = args.out
    write_json(out / f"{name}.json", document)
    (out / f"{name}.md").write_text(markdown)
    print(f"[bench] results written to {out}/{name}.json and .md", file=sys.stderr)
    json_path: Path | None = getattr(args, "json", None)
    if json_path is not None:
        write_json(json_path, document)


def _plot(result: ScenarioResult, args: argparse.Namespace, title: str) -> None:
    if args.no_plots or len(result.runs) == 0:
        return
    from bench.plots import matplotlib_missing, plot_scenario

    missing = matplotlib_missing()
    if missing is not None:
        print(f"[bench] {missing}", file=sys.stderr)
        return
    path = plot_scenario(result, args.out / f"{result.scenario}.png", title)
    print(f"[bench] plot written to {path}", file=sys.stderr)


def _run_layouts(
    scenario: str, layouts: Sequence[Layout], args: argparse.Namespace, command: str,
    clips: Clips, probes: int = 0,
) -> ScenarioResult:
    generator_cpus = _pin_generator(args.server_cpu, args.pin_generator)
    factories, unavailable = _factories(args.targets, args.server_cpu)
    options = RunOptions(
        duration_s=args.duration, warmup_s=args.warmup, probes=probes,
        generators=getattr(args, "generators", 1),
        impair=tuple(getattr(args, "impair", ())),
    )
    result, loop_name = _run_loop(
        run_sizes(scenario, layouts, factories, clips, options, unavailable)
    )
    env = environment(loop_name, generator_cpus)
    _emit(scenario, scenario_markdown(result, command, env),
          scenario_json(result, command, env), args)
    _plot(result, args, f"{scenario} ({env['cpus']} CPUs, git {env['git']})")
    return result


def _run_fanout(args: argparse.Namespace, command: str) -> int:
    layouts = [fanout_layout(n) for n in args.subscribers]
    result = _run_layouts("fanout", layouts, args, command, _clips(args.video_kbps, 1),
                          args.probes)
    return 1 if result.failures else 0


def _run_meeting(args: argparse.Namespace, command: str) -> int:
    layouts = [meeting_layout(n) for n in args.participants]
    clips = _clips(args.video_kbps, max(args.participants))
    result = _run_layouts("meeting", layouts, args, command, clips)
    return 1 if result.failures else 0


def _run_audio_rooms(args: argparse.Namespace, command: str) -> int:
    layouts = [audio_rooms_layout(r, args.participants) for r in args.rooms]
    clips = _clips(900, max(args.rooms) * args.participants)
    result = _run_layouts("audio-rooms", layouts, args, command, clips)
    return 1 if result.failures else 0


def _run_join_storm(args: argparse.Namespace, command: str) -> int:
    generator_cpus = _pin_generator(args.server_cpu, args.pin_generator)
    factories, unavailable = _factories(args.targets, args.server_cpu)
    clips = _clips(900, 1)

    async def run_all() -> list[JoinStormFigures]:
        storms = []
        for name, make in factories:
            if name in unavailable:
                continue
            try:
                storms.append(await run_join_storm(make(), clips, args.rate, args.joins))
            except Exception as exc:  # noqa: BLE001 - reported, the other target still runs
                unavailable[name] = f"run failed: {exc!r}"
        return storms

    storms, loop_name = _run_loop(run_all())
    env = environment(loop_name, generator_cpus)
    _emit("join-storm", join_storm_markdown(storms, unavailable, command, env),
          join_storm_json(storms, unavailable, command, env), args)
    return 0 if storms else 1


def _run_micro(args: argparse.Namespace, command: str) -> int:
    from bench.micro import micro_markdown, run_micro

    rows = run_micro(seconds=args.seconds, consumers=args.consumers)
    print(micro_markdown(rows, command))
    if args.json is not None:
        write_json(args.json, {"scenario": "micro", "command": command,
                               "rows": [row.as_dict() for row in rows]})
    return 0


def _run_capacity(args: argparse.Namespace, command: str) -> int:
    from bench.capacity import CapacityRun, capacity_markdown, run_capacity
    from bench.capacity_steps import Limits

    clips = _clips(args.video_kbps, 4)  # cycled: payloads need not be unique here

    async def run_all() -> list[CapacityRun]:
        return [
            await run_capacity(
                workers, clips, subscribers_per_room=args.subscribers,
                publishers_per_room=args.publishers, limits=Limits(cpu_share=args.cpu_limit),
                max_rooms=args.max_rooms, warmup_s=args.warmup, window_s=args.duration,
            )
            for workers in args.workers
        ]

    # asyncio's own loop: its datagram transports can pause reading, uvloop's cannot.
    runs = asyncio.run(run_all())
    env = environment("asyncio", sorted(os.sched_getaffinity(0)))
    document = {"scenario": "capacity", "command": command, "environment": env,
                "runs": [run.as_dict() for run in runs]}
    _emit("capacity", capacity_markdown(runs, command), document, args)
    return 0 if all(run.steps for run in runs) else 1


def _run_all(args: argparse.Namespace, command: str) -> int:
    started = time.perf_counter()
    codes = []
    base = ["--duration", str(args.duration), "--warmup", str(args.warmup),
            "--targets", ",".join(args.targets), "--out", str(args.out),
            "--server-cpu", "none" if args.server_cpu is None else str(args.server_cpu),
            *(["--no-plots"] if args.no_plots else [])]
    storm_base = [a for a in base if a not in ("--duration", "--warmup", str(args.duration),
                                               str(args.warmup))]
    for argv in (
        ["fanout", "--subscribers", "1,20,40", "--probes", "3", *base],
        ["audio-rooms", "--rooms", "10", "--participants", "4", *base],
        ["meeting", "--participants", "4", *base],
        ["join-storm", "--rate", "5", "--joins", "20", *storm_base],
    ):
        parsed = build_parser().parse_args(argv)
        codes.append(SCENARIOS[argv[0]].run(parsed, command_line(argv)))
    codes.append(_run_micro(build_parser().parse_args(["micro"]), command_line(["micro"])))
    print(f"[bench] suite done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return max(codes)


SCENARIOS: dict[str, Scenario] = {
    "fanout": Scenario(
        "one publisher (VP8 + Opus) → N subscribers: CPU per forwarded packet, latency",
        _fanout_arguments, _run_fanout,
    ),
    "meeting": Scenario(
        "N participants each publishing VP8 + Opus and receiving the others",
        _meeting_arguments, _run_meeting,
    ),
    "audio-rooms": Scenario(
        "R rooms x P participants, Opus only", _audio_rooms_arguments, _run_audio_rooms,
    ),
    "join-storm": Scenario(
        "N subscribers joining at R per second: join → first RTP / first keyframe",
        _join_storm_arguments, _run_join_storm,
    ),
    "capacity": Scenario(
        "rooms of 1 publisher → S non-reading subscribers, added until the server "
        "saturates: max forwarded packets/s per --workers",
        _capacity_arguments, _run_capacity,
    ),
    "micro": Scenario(
        "hot-path micro-benchmarks (µs per operation), no server", _micro_arguments,
        _run_micro,
    ),
    "all": Scenario(
        "every scenario against both targets, then micro (< 10 min on 2 cores)",
        _all_arguments, _run_all,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the SFU against Janus (loopback and a private namespace "
        "only).",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, scenario in SCENARIOS.items():
        scenario.add_arguments(sub.add_parser(name, help=scenario.help, description=scenario.help))
    return parser


def _set_priority(nice: int) -> None:
    """Run the bench (and the servers it starts, which inherit it) at this nice value, so
    other work on a shared machine takes less of its CPU (below 0 needs root)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:
            print(f"[bench] could not set nice {nice}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    _set_priority(getattr(args, "nice", 0))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code = SCENARIOS[args.scenario].run(args, command_line(arguments))
    print(f"[bench] total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
