"""Merge the workers' Prometheus texts into one exposition for the supervisor's /metrics.

Every worker labels its samples ``worker="<id>"``, so their samples stay apart; a family's
samples must be contiguous in the text format, so samples are grouped by family, keeping the
first ``# HELP``/``# TYPE`` seen. A sample with the same name and labels in two workers (the
deprecated, unlabelled ``sfu_transport_packets``) is summed.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["merge_metrics"]


def _family_of(sample_name: str, families: dict[str, list[str]]) -> str:
    """The family a sample belongs to (histograms add _bucket/_sum/_count, counters _total)."""
    if sample_name in families:
        return sample_name
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        base = sample_name.removesuffix(suffix)
        if base != sample_name and base in families:
            return base
    return sample_name


def merge_metrics(texts: Iterable[str]) -> str:
    """One exposition of every worker's samples, grouped by family."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = headers.setdefault(parts[2], [])
                    samples.setdefault(parts[2], {})
                    if not any(h.split(None, 2)[1] == parts[1] for h in family):
                        family.append(line)
                continue
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            family_name = _family_of(name, headers)
            bucket = samples.setdefault(family_name, {})
            try:
                number = float(value)
            except ValueError:
                continue
            bucket[key] = bucket.get(key, 0.0) + number
    out: list[str] = []
    for family_name, bucket in samples.items():
        out.extend(headers.get(family_name, []))
        out.extend(f"{key} {_format(value)}" for key, value in bucket.items())
    return "\n".join(out) + "\n"


def _format(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)
