"""Small pure helpers for benchmark figures: percentiles, line fits, Prometheus text."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["linear_fit", "median", "parse_prometheus", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics.

    Same definition as ``numpy.percentile``'s default ("linear"). Raises ValueError on an
    empty input or a ``q`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``y = slope * x + intercept``; returns (slope, intercept).

    Needs at least two points with different x (two points give the exact line).
    """
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    n = len(xs)
    if n < 2:
        raise ValueError("a line needs at least two points")
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0.0:
        raise ValueError("all x values are equal: the slope is undefined")
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition as ``{'name{labels}': value}``.

    Comments and blank lines are skipped; an optional trailing timestamp is ignored.
    Lines that are not ``<name>[{labels}] <value> [timestamp]`` raise ValueError.
    """
    samples: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.rfind("}")
        head, tail = (line[: brace + 1], line[brace + 1 :]) if brace >= 0 else ("", line)
        parts = tail.split()
        if brace < 0:
            if len(parts) < 2:
                raise ValueError(f"not a Prometheus sample: {raw!r}")
            head, parts = parts[0], parts[1:]
        if not head or not 1 <= len(parts) <= 2:
            raise ValueError(f"not a Prometheus sample: {raw!r}")
        samples[head] = float(parts[0])
    return samples
