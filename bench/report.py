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

from bench.fanout import FanoutResult, FanoutRun
from bench.procfs import clock_ticks_per_second
from bench.stats import median

__all__ = ["command_line", "environment", "fanout_json", "fanout_markdown", "write_json"]


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
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=5, check=True, env=env,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5, check=True, env=env,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return head + ("+dirty" if dirty else "")


def environment(loop_name: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": clock_ticks_per_second(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiortc": _version("aiortc"),
        "av": _version("av"),
        "uvloop": _version("uvloop"),
        "generator_loop": loop_name,
        "git": _git_revision(),
    }


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):.0f} / {max(values):.0f} ({len(values)})"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mb(value: int) -> str:
    return f"{value / 2**20:.0f}"


def _server_row(run: FanoutRun) -> str:
    return (
        f"| {run.subscribers} | {run.forwarded_pps:.0f} | {run.forwarded_mbps:.2f} "
        f"| {run.incoming_pps:.0f} | {run.server_cpu_share * 100:.1f} "
        f"| **{_num(run.cpu_us_per_forwarded)}** | {_num(run.cpu_us_per_incoming)} "
        f"| {run.wakeups_per_s:.0f} | {_num(run.cpu_us_per_wakeup, 0)} "
        f"| {_mb(run.server_rss_idle_bytes)} → {_mb(run.server_rss_bytes)} |"
    )


def _client_row(run: FanoutRun) -> str:
    lag = run.loop_lag_ms
    lag_text = (
        f"{lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f}" if lag else "-"
    )
    ratio = run.counted_ratio
    return (
        f"| {run.subscribers} | **{_ms(run.probe_first_frame_ms)}** "
        f"| {_ms(run.join_first_video_packet_ms)} "
        f"| {'-' if ratio is None else f'{ratio:.3f}'} "
        f"| {run.generator_cpu_share * 100:.1f} | {lag_text} |"
    )


def fanout_markdown(result: FanoutResult, command: str, env: dict[str, Any]) -> str:
    video, audio = result.clips.video, result.clips.audio
    options = result.options
    lines = [
        f"## fanout: 1 publisher → N subscribers ({result.target})",
        "",
        f"- command: `{command}`",
        f"- media: {video.description} {video.bitrate_kbps:.0f} kbps + "
        f"{audio.description} {audio.bitrate_kbps:.0f} kbps, pre-encoded "
        f"{video.duration_s:g} s loop (keyframe at loop start and on PLI)",
        f"- window: {options.duration_s:g} s after {options.warmup_s:g} s warm-up; "
        f"a fresh server per N",
        f"- host: {env['cpus']} CPUs, {env['platform']}, Python {env['python']}, "
        f"aiortc {env['aiortc']}, generator loop {env['generator_loop']}, git {env['git']}",
        "",
        "Server (CPU = utime+stime of the server process over the window, 10 ms ticks; "
        "forwarded = `rtp_out` delta; wake-ups = voluntary context switches of its main "
        "thread):",
        "",
        "| N | fwd pkt/s | fwd Mbit/s | in pkt/s | server CPU % of a core "
        "| CPU µs / fwd pkt | CPU µs / in pkt | loop wake-ups/s | CPU µs / wake-up "
        "| RSS MB idle → loaded |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_server_row(run) for run in result.runs),
        "",
        "Latency and load generator (ms: median / max (samples)):",
        "",
        "| N | join → first decoded frame (probe) | join → first video packet (fan-out subs) "
        "| subs counted / server sent | generator CPU % | loop lag p50 / p99 / max ms |",
        "|---:|---:|---:|---:|---:|---:|",
        *(_client_row(run) for run in result.runs),
        "",
    ]
    marginal = result.marginal
    if marginal is not None:
        ns = ",".join(str(r.subscribers) for r in result.runs)
        lines += [
            f"Marginal cost (least squares over N={ns}): "
            f"**{marginal.us_per_forwarded_packet:.1f} µs of server CPU per extra forwarded "
            f"packet**; {marginal.cpu_ms_per_s_per_subscriber:.1f} ms of CPU per second per "
            f"extra subscriber; fixed {marginal.fixed_cpu_share * 100:.1f} % of a core at zero "
            "forwarding (intercept).",
            "",
        ]
    warnings = [f"N={run.subscribers}: {w}" for run in result.runs for w in run.warnings]
    if warnings:
        lines += ["Warnings:", "", *(f"- ⚠ {w}" for w in warnings), ""]
    else:
        lines += ["No warnings: the generator stayed below its CPU and lag limits.", ""]
    return "\n".join(lines)


def fanout_json(result: FanoutResult, command: str, env: dict[str, Any]) -> dict[str, Any]:
    marginal = result.marginal
    return {
        "scenario": "fanout",
        "target": result.target,
        "command": command,
        "environment": env,
        "options": {
            "subscribers": list(result.options.subscribers),
            "duration_s": result.options.duration_s,
            "warmup_s": result.options.warmup_s,
            "probes": result.options.probes,
        },
        "media": {
            clip.kind: {
                "description": clip.description,
                "bitrate_kbps": clip.bitrate_kbps,
                "loop_s": clip.duration_s,
                "frames": len(clip.frames),
            }
            for clip in (result.clips.video, result.clips.audio)
        },
        "runs": [run.as_dict() for run in result.runs],
        "marginal": None if marginal is None else {
            "us_per_forwarded_packet": marginal.us_per_forwarded_packet,
            "fixed_cpu_share": marginal.fixed_cpu_share,
            "cpu_ms_per_s_per_subscriber": marginal.cpu_ms_per_s_per_subscriber,
        },
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def command_line(argv: Sequence[str]) -> str:
    """How this benchmark was started, as a copy-pasteable command."""
    return shlex.join(["python", "-m", "bench", *argv])
