"""A private network namespace for targets that will not use loopback (Janus).

Janus 1.1.2 skips every interface flagged ``IFF_LOOPBACK`` when it gathers ICE
candidates (even with ``ice_enforce_list = "lo"``), so on ``lo`` it offers no candidate
that works. The bench therefore creates its own namespace, ``oktbench-<pid>``, holding one
veth pair with two private addresses (``10.213.7.1`` for the target, ``10.213.7.2`` for
the generator), and runs the target in it (``ip netns exec``). Both addresses are local to
that namespace, so the kernel delivers between them on its loopback path, exactly as on
``127.0.0.1``: no traffic ever leaves the namespace, and the cost per packet is comparable
with a target on ``lo``.

The generator joins the namespace only for the Janus runs: :meth:`NetNamespace.entered`
moves the *calling thread* (the event loop's) into it with ``setns(2)``; every socket
created meanwhile (aioice's, the WebSocket to Janus) lives there, and the thread returns
to its own namespace afterwards. Needs root (``CAP_SYS_ADMIN``) and ``ip`` (iproute2).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "GENERATOR_ADDRESS",
    "TARGET_ADDRESS",
    "NetNamespace",
    "NetNamespaceError",
    "stale_namespaces",
]

PREFIX = "oktbench-"
TARGET_ADDRESS = "10.213.7.1"
GENERATOR_ADDRESS = "10.213.7.2"
_PREFIX_LEN = 30
_CLONE_NEWNET = 0x40000000
_IP_TIMEOUT_S = 10.0
_NETNS_DIR = Path("/run/netns")


class NetNamespaceError(RuntimeError):
    """The namespace could not be created or entered (not root, no ``ip``, ...)."""


def stale_namespaces(names: list[str], alive: set[int]) -> list[str]:
    """Our namespaces (``oktbench-<pid>``) whose creating process is gone."""
    stale = []
    for name in names:
        match = re.fullmatch(re.escape(PREFIX) + r"(\d+)", name)
        if match and int(match.group(1)) not in alive:
            stale.append(name)
    return stale


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _ip(*args: str) -> None:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise NetNamespaceError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetNamespaceError(f"setns failed: {os.strerror(errno)}")


class NetNamespace:
    """``oktbench-<pid>`` with a veth pair (``okt0`` ↔ ``okt1``) and two private addresses,
    both inside it. :meth:`create`, use, :meth:`delete` (idempotent)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{PREFIX}{os.getpid()}"
        self.target_address = TARGET_ADDRESS
        self.generator_address = GENERATOR_ADDRESS
        self._created = False

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a namespace cannot be made here, or None."""
        if shutil.which("ip") is None:
            return "`ip` (iproute2) is not installed"
        if os.geteuid() != 0:
            return "creating a network namespace needs root"
        return None

    def create(self) -> NetNamespace:
        reason = self.unavailable_reason()
        if reason is not None:
            raise NetNamespaceError(reason)
        if _NETNS_DIR.is_dir():
            existing = [p.name for p in _NETNS_DIR.iterdir()]
            for stale in stale_namespaces(existing, set(_alive_pids(existing))):
                with contextlib.suppress(NetNamespaceError):
                    _ip("netns", "delete", stale)
            if self.name in existing:
                _ip("netns", "delete", self.name)
        _ip("netns", "add", self.name)
        self._created = True
        try:
            ns = ("-n", self.name)
            _ip(*ns, "link", "set", "lo", "up")
            _ip(*ns, "link", "add", "okt0", "type", "veth", "peer", "name", "okt1")
            _ip(*ns, "addr", "add", f"{self.target_address}/{_PREFIX_LEN}", "dev", "okt0")
            _ip(*ns, "addr", "add", f"{self.generator_address}/{_PREFIX_LEN}", "dev", "okt1")
            _ip(*ns, "link", "set", "okt0", "up")
            _ip(*ns, "link", "set", "okt1", "up")
            self._accept_local()
        except BaseException:
            self.delete()
            raise
        return self

    def _accept_local(self) -> None:
        """Janus's ICE (libnice) sends out of the interface that holds its address, so its
        packets to the generator's address come back in on the peer veth with a source
        address that is local: let the namespace accept them instead of dropping them
        as martians. Sysctls of a namespace of our own, nothing else changes."""
        for device in ("all", "default", "okt0", "okt1"):
            for key, value in (("accept_local", "1"), ("rp_filter", "0")):
                path = Path(f"/proc/sys/net/ipv4/conf/{device}/{key}")
                subprocess.run(
                    [*self.exec_prefix(), "sh", "-c", f"echo {value} > {path}"],
                    capture_output=True, timeout=_IP_TIMEOUT_S, check=False,
                )

    def delete(self) -> None:
        if self._created:
            self._created = False
            with contextlib.suppress(NetNamespaceError, OSError, subprocess.SubprocessError):
                _ip("netns", "delete", self.name)

    def exec_prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into the namespace for the ``with`` block."""
        if not self._created:
            raise NetNamespaceError("the namespace is not created")
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        try:
            target = os.open(_NETNS_DIR / self.name, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)


def _alive_pids(names: list[str]) -> list[int]:
    pids = []
    for name in names:
        match = re.fullmatch(re.escape(PREFIX) + r"(\d+)", name)
        if match and _pid_alive(int(match.group(1))):
            pids.append(int(match.group(1)))
    return pids
