"""PNG plots of a scenario's runs (matplotlib, optional: ``pip install -e '.[bench]'``).

Two panels against the size (N): server CPU per forwarded packet, and SFU-added latency
percentiles (p50 solid, p99 dashed, log scale), one line per target. :func:`plot_runs`
works on the ``runs`` of a result JSON too, so a plot can be redrawn from a saved result.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.fanout import ScenarioResult

__all__ = ["matplotlib_missing", "plot_runs", "plot_scenario"]


def matplotlib_missing() -> str | None:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plots"
    return None


def plot_scenario(result: ScenarioResult, path: Path, title: str) -> Path:
    return plot_runs([run.as_dict() for run in result.runs], path, title)


def plot_runs(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    # Imported by name: matplotlib is an optional extra (and need not be there for mypy).
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    figure, (cpu_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    nan = float("nan")
    for target in dict.fromkeys(r["target"] for r in runs):
        mine = sorted((r for r in runs if r["target"] == target), key=lambda r: r["size"])
        xs = [r["size"] for r in mine]
        cpu = [r["cpu_us_per_forwarded_packet"] or nan for r in mine]
        color = cpu_ax.plot(xs, cpu, marker="o", label=target)[0].get_color()
        p50 = [r["latency_ms"].get("p50", nan) for r in mine]
        p99 = [r["latency_ms"].get("p99", nan) for r in mine]
        lat_ax.plot(xs, p50, marker="o", color=color, label=f"{target} p50")
        lat_ax.plot(xs, p99, marker="s", linestyle="--", color=color, label=f"{target} p99")
    cpu_ax.set_title("server CPU per forwarded packet")
    cpu_ax.set_ylabel("µs")
    cpu_ax.set_ylim(bottom=0)
    lat_ax.set_title("SFU-added one-way latency (incl. the generator's delays)")
    lat_ax.set_ylabel("ms (log)")
    lat_ax.set_yscale("log")
    for ax in (cpu_ax, lat_ax):
        ax.set_xlabel("N")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
