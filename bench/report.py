"""Print benchmark results as Markdown and write them as JSON."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.fanout import ScenarioResult
from bench.joinstorm import JoinStormFigures
from bench.procfs import clock_ticks_per_second
from bench.scenario import RunFigures
from bench.stats import median, percentile

__all__ = [
    "command_line",
    "environment",
    "join_storm_json",
    "join_storm_markdown",
    "scenario_json",
    "scenario_markdown",
    "write_json",
]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def _git_revision() -> str:
    """Commit and a ``+dirty`` mark; read-only (no optional index refresh)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env=env,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env=env,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return head + ("+dirty" if dirty else "")


def environment(loop_name: str, generator_cpus: Sequence[int] = ()) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": clock_ticks_per_second(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiortc": _version("aiortc"),
        "av": _version("av"),
        "uvloop": _version("uvloop"),
        "generator_loop": loop_name,
        "generator_cpus": list(generator_cpus),
        "git": _git_revision(),
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mb(value: float) -> str:
    return f"{value / 2**20:.1f}"


def _ms_list(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):.0f} / {max(values):.0f} ({len(values)})"


def _lat(run: RunFigures) -> str:
    lat = run.latency_ms
    if not lat:
        return "-"
    return f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f}"


def _loss(run: RunFigures) -> str:
    loss = run.loss
    if loss is None:
        return "-"
    video = run.video_loss
    video_text = "" if video is None else f"; video {video * 100:.2f} %"
    return f"{loss * 100:.2f} % (worst {run.worst_subscriber_loss * 100:.2f} %{video_text})"


def _server_row(run: RunFigures) -> str:
    rss = run.rss_per_participant_bytes
    wake = "-" if run.server_wakeups is None else f"{run.server_wakeups / run.window_s:.0f}"
    return (
        f"| {run.target} | {run.label} | {run.forwarded_pps:.0f} | {run.forwarded_mbps:.2f} "
        f"| {run.server_cpu_share * 100:.1f} | **{_num(run.cpu_us_per_forwarded)}** "
        f"| {_num(run.cpu_ms_per_s_per_stream, 2)} | **{_lat(run)}** | {_loss(run)} "
        f"| {_mb(run.server_rss_idle_bytes)} → {_mb(run.server_rss_bytes)} "
        f"| {'-' if rss is None else _mb(rss)} "
        f"| {run.server_udp_drops} / {run.generator_udp_drops} / {run.softnet_drops} "
        f"| {run.other_cpu_share * 100:.0f} | {wake} |"
    )


def _client_row(run: RunFigures) -> str:
    lag = run.loop_lag_ms
    lag_text = f"{lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f}" if lag else "-"
    ratio = run.counted_ratio
    return (
        f"| {run.target} | {run.label} | {_ms_list(run.join_first_media_ms)} "
        f"| {_ms_list(run.join_first_keyframe_ms)} | **{_ms_list(run.probe_first_frame_ms)}** "
        f"| {'-' if ratio is None else f'{ratio:.3f}'} "
        f"| {run.generator_cpu_share * 100:.1f} | {lag_text} |"
    )


def _process_rows(run: RunFigures) -> list[str]:
    rows = []
    for p in run.generator_processes:
        lag = p.lag_ms
        lag_text = f"{lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f}" if lag else "-"
        rows.append(
            f"| {run.target} | {run.label} | {p.name} | {p.pid} | {p.members} "
            f"| {p.cpu_share * 100:.1f} | {lag_text} | {p.udp_drops} |"
        )
    return rows


_TITLES = {
    "fanout": "fanout: 1 publisher (VP8 + Opus) → N subscribers",
    "meeting": "meeting: N participants, each publishing VP8 + Opus and receiving the others",
    "audio-rooms": "audio-rooms: R rooms x P participants, Opus only",
}


def scenario_markdown(result: ScenarioResult, command: str, env: dict[str, Any]) -> str:
    video = result.clips.video
    audio = result.clips.audio[0]
    options = result.options
    lines = [
        f"## {_TITLES.get(result.scenario, result.scenario)}",
        "",
        f"- command: `{command}`",
        f"- media: {video.description} {video.bitrate_kbps:.0f} kbps"
        f" + {audio.description} {audio.bitrate_kbps:.0f} kbps, pre-encoded "
        f"{video.duration_s:g} s loops (video keyframe at loop start and on PLI)"
        if result.scenario != "audio-rooms"
        else f"- media: {audio.description} {audio.bitrate_kbps:.0f} kbps per participant, "
        "pre-encoded, a distinct clip per publisher",
        f"- window: {options.duration_s:g} s after {options.warmup_s:g} s warm-up; "
        "a fresh server per run; sizes interleaved across targets",
        f"- host: {env['cpus']} CPUs, {env['platform']}, Python {env['python']}, "
        f"aiortc {env['aiortc']}, generator loop {env['generator_loop']} on CPU(s) "
        f"{','.join(map(str, env.get('generator_cpus', []))) or 'any'}, git {env['git']}",
    ]
    if options.generators != 1:
        asked = "auto" if options.generators == 0 else str(options.generators)
        lines.append(
            f"- generator processes (`--generators {asked}`): "
            + ", ".join(f"{r.target} {r.label} → {r.generators_planned}" for r in result.runs)
        )
    if options.impair:
        lines.append(
            "- impaired links (below SRTP, seeded): "
            + "; ".join(f"`{rule.describe()}`" for rule in options.impair)
            + ". The bench's subscribers NACK video (not audio, like browsers with Opus): "
            "video loss is loss after repair"
        )
    nacks = [(r.label, r.nacks_sent, r.nack_repaired) for r in result.runs if r.nacks_sent]
    if nacks:
        lines.append(
            "- subscribers' NACKs sent / packets repaired: "
            + ", ".join(f"{label} {sent} / {repaired}" for label, sent, repaired in nacks)
        )
    for name, description in result.descriptions.items():
        lines.append(f"- target `{name}`: {description}")
    for name, reason in result.unavailable.items():
        lines.append(f"- target `{name}`: **unavailable** — {reason}")
    lines += [
        "",
        "| target | size | fwd pkt/s | fwd Mbit/s | server CPU % | **CPU µs / fwd pkt** "
        "| CPU ms/s per stream | **added latency p50 / p95 / p99 ms** | loss "
        "| RSS MB idle → loaded | RSS MB / participant | drops: server / gen / backlog "
        "| others' CPU % | wake-ups/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_server_row(run) for run in result.runs),
        "",
        "| target | size | join → first media ms | join → first keyframe ms "
        "| join → first decoded frame ms (probe) | subs counted / server sent "
        "| generator CPU % | generator loop lag p50 / p99 / max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(_client_row(run) for run in result.runs),
        "",
    ]
    processes = [row for run in result.runs for row in _process_rows(run)]
    if processes:
        lines += [
            "Generator processes (`--generators`): a run is generator-limited when any one "
            "of them was above its CPU or loop-lag limit.",
            "",
            "| target | size | process | pid | members | CPU % | loop lag p50 / p99 / max ms "
            "| UDP drops |",
            "|---|---|---|---:|---:|---:|---:|---:|",
            *processes,
            "",
        ]
    limited = [f"{r.target} {r.label}" for r in result.runs if r.generator_limited]
    if limited:
        lines += [f"**generator-limited runs**: {', '.join(limited)}", ""]
    for target in result.targets():
        marginal = result.marginal(target)
        if marginal is not None:
            sizes = ",".join(r.label for r in result.runs_of(target))
            lines.append(
                f"- marginal cost `{target}` (least squares over {sizes}): "
                f"**{marginal.us_per_forwarded_packet:.1f} µs per extra forwarded packet**, "
                f"{marginal.cpu_ms_per_s_per_stream:.2f} ms CPU/s per extra stream, fixed "
                f"{marginal.fixed_cpu_share * 100:.1f} % of a core at zero forwarding"
            )
    warnings = [f"{r.target} {r.label}: {w}" for r in result.runs for w in r.warnings]
    warnings += [f"run failed: {f}" for f in result.failures]
    lines += (
        ["", *(f"- ⚠ {w}" for w in warnings)]
        if warnings
        else [
            "",
            "No warnings: the generator stayed below its CPU and lag limits, nothing dropped.",
        ]
    )
    lines.append("")
    return "\n".join(lines)


def scenario_json(result: ScenarioResult, command: str, env: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": result.scenario,
        "command": command,
        "environment": env,
        "options": {
            "duration_s": result.options.duration_s,
            "warmup_s": result.options.warmup_s,
            "probes": result.options.probes,
            "generators": result.options.generators,
            "impair": [rule.describe() for rule in result.options.impair],
        },
        "media": {
            "video": {
                "description": result.clips.video.description,
                "bitrate_kbps": result.clips.video.bitrate_kbps,
                "loop_s": result.clips.video.duration_s,
            },
            "audio": {
                "description": result.clips.audio[0].description,
                "bitrate_kbps": result.clips.audio[0].bitrate_kbps,
                "clips": len(result.clips.audio),
            },
        },
        "targets": result.descriptions,
        "unavailable": result.unavailable,
        "failures": result.failures,
        "runs": [run.as_dict() for run in result.runs],
        "marginal": {
            target: None
            if (m := result.marginal(target)) is None
            else {
                "us_per_forwarded_packet": m.us_per_forwarded_packet,
                "fixed_cpu_share": m.fixed_cpu_share,
                "cpu_ms_per_s_per_stream": m.cpu_ms_per_s_per_stream,
            }
            for target in result.targets()
        },
    }


def _pcts(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 50):.0f} / {percentile(values, 90):.0f} / {max(values):.0f}"


def join_storm_markdown(
    storms: Sequence[JoinStormFigures],
    unavailable: dict[str, str],
    command: str,
    env: dict[str, Any],
) -> str:
    lines = [
        "## join-storm: subscribers joining a publishing room at a fixed rate",
        "",
        f"- command: `{command}`",
        f"- host: {env['cpus']} CPUs, Python {env['python']}, aiortc {env['aiortc']}, "
        f"git {env['git']}",
        *(f"- target `{s.target}`: {s.description}" for s in storms),
        *(f"- target `{n}`: **unavailable** — {r}" for n, r in unavailable.items()),
        "",
        "ms from starting to join (p50 / p90 / max):",
        "",
        "| target | rate/s | joined | join call returned | → first RTP "
        "| **→ first keyframe** | server CPU % | PLIs heard by publisher |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in storms:
        cpu = s.server_cpu_s / s.storm_s * 100 if s.storm_s else 0.0
        lines.append(
            f"| {s.target} | {s.rate:g} | {s.joined}/{s.joins} | {_pcts(s.signalling_ms)} "
            f"| {_pcts(s.first_rtp_ms)} | **{_pcts(s.first_keyframe_ms)}** | {cpu:.1f} "
            f"| {s.publisher_keyframe_requests} |"
        )
    warnings = [f"{s.target}: {w}" for s in storms for w in s.warnings]
    lines += ["", *(f"- ⚠ {w}" for w in warnings), ""]
    return "\n".join(lines)


def join_storm_json(
    storms: Sequence[JoinStormFigures],
    unavailable: dict[str, str],
    command: str,
    env: dict[str, Any],
) -> dict[str, Any]:
    return {
        "scenario": "join-storm",
        "command": command,
        "environment": env,
        "unavailable": unavailable,
        "runs": [s.as_dict() for s in storms],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def command_line(argv: Sequence[str]) -> str:
    """How this benchmark was started, as a copy-pasteable command."""
    return shlex.join(["python", "-m", "bench", *argv])
