"""Reading a process's CPU time and resident memory from ``/proc`` (Linux only).

The parsers are pure (unit-tested on fake lines); the readers are thin wrappers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuTicks",
    "clock_ticks_per_second",
    "parse_stat_cpu",
    "parse_status_rss_kib",
    "parse_status_voluntary_switches",
    "read_cpu_seconds",
    "read_rss_bytes",
    "read_voluntary_switches",
]

# Fields of /proc/PID/stat after "pid (comm)": state is field 3, utime 14, stime 15 (1-based).
_UTIME_AFTER_COMM = 14 - 3
_STIME_AFTER_COMM = 15 - 3


@dataclass(frozen=True, slots=True)
class CpuTicks:
    """User and system CPU time of a process (all its threads), in clock ticks."""

    utime: int
    stime: int

    @property
    def total(self) -> int:
        return self.utime + self.stime


def parse_stat_cpu(stat_line: str) -> CpuTicks:
    """utime and stime from one ``/proc/PID/stat`` line.

    The command name (field 2) is in parentheses and may itself contain spaces and
    parentheses, so the fields are counted from the *last* ``)``.
    """
    close = stat_line.rfind(")")
    if close < 0:
        raise ValueError("not a /proc/PID/stat line: no ')' after the command name")
    fields = stat_line[close + 1 :].split()
    if len(fields) <= _STIME_AFTER_COMM:
        raise ValueError(f"not a /proc/PID/stat line: only {len(fields)} fields after comm")
    return CpuTicks(int(fields[_UTIME_AFTER_COMM]), int(fields[_STIME_AFTER_COMM]))


def parse_status_rss_kib(status_text: str) -> int:
    """``VmRSS`` in KiB from ``/proc/PID/status`` (0 if absent, e.g. a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) < 2 or (len(parts) > 2 and parts[2].lower() != "kb"):
                raise ValueError(f"unexpected VmRSS line: {line!r}")
            return int(parts[1])
    return 0


def parse_status_voluntary_switches(status_text: str) -> int:
    """``voluntary_ctxt_switches`` from ``/proc/PID/status``: how often that thread blocked
    (for an event loop: one per wake-up from epoll)."""
    for line in status_text.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise ValueError("no voluntary_ctxt_switches line")


def clock_ticks_per_second() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def read_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds used so far by process ``pid`` (default: this one)."""
    ticks = parse_stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    return ticks.total / clock_ticks_per_second()


def read_rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of process ``pid`` in bytes."""
    return parse_status_rss_kib(Path(f"/proc/{pid}/status").read_text()) * 1024


def read_voluntary_switches(pid: int | str = "self") -> int:
    """Voluntary context switches of the main thread of process ``pid``."""
    return parse_status_voluntary_switches(Path(f"/proc/{pid}/status").read_text())
