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
    "drops_between",
    "parse_proc_stat_busy",
    "parse_softnet_dropped",
    "parse_stat_cpu",
    "parse_status_rss_kib",
    "parse_status_voluntary_switches",
    "parse_udp_sockets",
    "read_all_threads_voluntary_switches",
    "read_cpu_seconds",
    "read_machine_busy",
    "read_rss_bytes",
    "read_softnet_dropped",
    "read_udp_drops",
    "read_voluntary_switches",
    "socket_inodes",
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


def parse_udp_sockets(table: str) -> dict[int, int]:
    """``/proc/net/udp`` (or ``udp6``) → {socket inode: receive drops}.

    Columns: ``sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops``.
    """
    sockets: dict[int, int] = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13:
            continue
        sockets[int(fields[9])] = int(fields[12])
    return sockets


def socket_inodes(pid: int | str = "self") -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (from ``/proc/PID/fd``)."""
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for entry in entries:
        try:
            link = os.readlink(entry)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def read_udp_drops(pid: int | str = "self", net_dir: str | None = None) -> dict[int, int]:
    """Receive-buffer drops of each of process ``pid``'s UDP sockets (IPv4 and IPv6), by
    socket inode: compare two readings with :func:`drops_between` (sockets come and go).

    ``net_dir`` is the ``/proc/.../net`` folder of the namespace the sockets live in
    (default ``/proc/PID/net``; ``/proc/thread-self/net`` for the calling thread's).
    """
    folder = Path(net_dir or f"/proc/{pid}/net")
    mine = socket_inodes(pid)
    drops: dict[int, int] = {}
    for name in ("udp", "udp6"):
        try:
            table = (folder / name).read_text()
        except OSError:
            continue
        drops.update((i, d) for i, d in parse_udp_sockets(table).items() if i in mine)
    return drops


def drops_between(before: dict[int, int], after: dict[int, int]) -> int:
    """Drops added between two readings, over the sockets present in both; a socket opened
    in between counts from zero."""
    return sum(max(0, d - before.get(inode, 0)) for inode, d in after.items())


def parse_proc_stat_busy(stat_text: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from ``/proc/stat``'s first line (busy = not
    idle and not iowait): with the server's and the generator's own CPU time, what every
    other process on the machine used."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(v) for v in line.split()[1:]]
            total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return total - idle, total
    raise ValueError("no aggregate cpu line in /proc/stat")


def parse_softnet_dropped(softnet_text: str) -> int:
    """Packets the kernel dropped because a CPU's input backlog was full
    (``/proc/net/softnet_stat``: second hex column, summed over CPUs). Loopback and veth
    deliveries go through that backlog, so a burst of sends larger than
    ``net.core.netdev_max_backlog`` is lost there."""
    dropped = 0
    for line in softnet_text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            dropped += int(fields[1], 16)
    return dropped


def read_machine_busy() -> tuple[int, int]:
    return parse_proc_stat_busy(Path("/proc/stat").read_text())


def read_softnet_dropped() -> int:
    try:
        return parse_softnet_dropped(Path("/proc/net/softnet_stat").read_text())
    except OSError:
        return 0


def read_all_threads_voluntary_switches(pid: int) -> int:
    """Voluntary context switches summed over process ``pid``'s live threads (a server
    with a thread per handle wakes one of them per hand-off)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            total += parse_status_voluntary_switches((task / "status").read_text())
        except (OSError, ValueError):
            continue
    return total
