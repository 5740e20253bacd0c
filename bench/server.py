"""Our SFU (``python -m sfu serve``) as a child process: a :class:`bench.target.Target`.

Each server gets a fresh temporary data dir (its signing key is created there) and
listens on 127.0.0.1 on a free port, read from its JSON "listening" log line. With
``cpu`` set it runs under ``taskset -c CPU`` (one worker process, one core: the same
pinning as the Janus target). It is stopped by its PID: SIGTERM, then SIGKILL if it has
not exited within 15 s. Participants join with protocol v1 (``signaling.client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiortc import MediaStreamTrack

from bench.procfs import read_cpu_seconds, read_rss_bytes, read_voluntary_switches
from bench.stats import parse_prometheus
from bench.target import PacketCounters, Peer, RtpTap, install_subscriber_tap
from sfu.keys import KeyStore
from signaling.access import issue_access_token
from signaling.client import Participant
from signaling.client.impair import Impairment

__all__ = ["OktorusPeer", "SfuServer", "grants_for", "join_oktorus"]

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
JOIN_TIMEOUT_S = 15.0
SUBSCRIBE_PC_WAIT_S = 60.0
_TAP_POLL_S = 0.002
_LOG_TAIL = 200
_DROP_COUNTERS = (
    "dropped_empty",
    "dropped_oversize",
    "dropped_foreign",
    "dropped_unready",
    "dropped_srtp",
    "dropped_queue_full",
)


class SfuServer:
    """One ``python -m sfu serve`` child on 127.0.0.1, with its own temporary data dir."""

    name = "oktorus"

    def __init__(self, extra_args: Sequence[str] = (), cpu: int | None = None) -> None:
        self._extra_args = list(extra_args)
        self.cpu = cpu
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._keys: KeyStore | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0
        self.log_tail: deque[str] = deque(maxlen=_LOG_TAIL)

    # lifecycle (blocking: call from a thread when a loop is running)

    def start(self) -> SfuServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-sfu-")
        data_dir = Path(self._tmp.name) / "data"
        env = dict(os.environ, SFU_LOG_FORMAT="json")
        pin = (
            ["taskset", "-c", str(self.cpu)]
            if self.cpu is not None and shutil.which("taskset")
            else []
        )
        self._proc = subprocess.Popen(
            [
                *pin,
                sys.executable,
                "-m",
                "sfu",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                *self._extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise
        if self.cpu is not None and not pin:
            os.sched_setaffinity(self._proc.pid, {self.cpu})
        threading.Thread(target=self._drain_log, name="sfu-log", daemon=True).start()
        self._keys = KeyStore.open(data_dir)
        return self

    def _wait_listening(self) -> int:
        assert self._proc is not None and self._proc.stderr is not None
        result: list[int] = []

        def read() -> None:
            assert self._proc is not None and self._proc.stderr is not None
            for line in self._proc.stderr:
                self.log_tail.append(line)
                if '"listening"' in line:
                    result.append(int(json.loads(line)["port"]))
                    return

        reader = threading.Thread(target=read, name="sfu-startup", daemon=True)
        reader.start()
        reader.join(STARTUP_TIMEOUT_S)
        if not result:
            tail = "".join(self.log_tail)
            if reader.is_alive():
                raise RuntimeError(f"the server did not start in {STARTUP_TIMEOUT_S} s:\n{tail}")
            raise RuntimeError(f"the server exited during start-up:\n{tail}")
        return result[0]

    def _drain_log(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self.log_tail.append(line)

    def stop(self) -> int | None:
        """Stop the child by PID (SIGTERM, then SIGKILL); returns its exit code."""
        code: int | None = None
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    code = proc.wait(timeout=5)
            else:
                code = proc.returncode
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    async def aclose(self) -> None:
        """Release the HTTP session used for /metrics (call before :meth:`stop`)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    # Target

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/signal"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the server is not started")
        return self._proc.pid

    def token(self, room: str, identity: str, grants: Sequence[str]) -> str:
        if self._keys is None:
            raise RuntimeError("the server is not started")
        return issue_access_token(
            self._keys,
            room=room,
            identity=identity,
            role="customer",
            grants=tuple(grants),
            ttl_s=600,
        )

    def _pids(self) -> list[int]:
        """The server and, with ``SFU_WORKERS``/``--workers``, its worker processes."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [self.pid, *(int(pid) for pid in children.read_text().split())]
        except OSError:
            return [self.pid]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError):  # a worker that just exited
                total += read_cpu_seconds(pid)
        return total

    def rss_bytes(self) -> int:
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                total += read_rss_bytes(pid)
        return total

    def wakeups(self) -> int | None:
        return read_voluntary_switches(self.pid)

    @property
    def description(self) -> str:
        pinned = f"pinned to CPU {self.cpu}" if self.cpu is not None else "not pinned"
        workers = len(self._pids()) - 1 if self._proc is not None else 0
        process = f"{workers} worker processes" if workers else "one worker process (event loop)"
        return f"oktorus-sfu, {process}, {pinned}, on 127.0.0.1"

    @property
    def host_addresses(self) -> list[str]:
        return ["127.0.0.1"]

    def network(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def open_room(self, room: str, publishers: int) -> None:
        """Rooms are created by the first join."""

    async def join(
        self,
        room: str,
        identity: str,
        *,
        tracks: Sequence[MediaStreamTrack] = (),
        subscribe: bool = True,
        tap: RtpTap | None = None,
        swallow: bool = True,
        timeout: float = JOIN_TIMEOUT_S,
        impair_send: Impairment | None = None,
        impair_receive: Impairment | None = None,
    ) -> Peer:
        token = self.token(room, identity, grants_for(bool(tracks), subscribe))
        return await join_oktorus(
            self.url,
            token,
            identity,
            tracks=tracks,
            subscribe=subscribe,
            tap=tap,
            swallow=swallow,
            timeout=timeout,
            impair_send=impair_send,
            impair_receive=impair_receive,
        )

    async def metrics(self) -> dict[str, float]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self._http.get(self.http_url + "/metrics") as response:
            response.raise_for_status()
            return parse_prometheus(await response.text())

    async def packet_counters(self) -> PacketCounters:
        samples = await self.metrics()

        def counter(name: str) -> int:
            key = f'sfu_transport_packets{{counter="{name}"}}'
            if key not in samples:
                raise RuntimeError(f"/metrics has no {key}")
            return int(samples[key])

        return PacketCounters(
            rtp_in=counter("rtp_in"),
            rtp_out=counter("rtp_out"),
            rtcp_in=counter("rtcp_in"),
            rtcp_out=counter("rtcp_out"),
            bytes_out=counter("bytes_out"),
            dropped=sum(
                int(samples.get(f'sfu_transport_packets{{counter="{name}"}}', 0))
                for name in _DROP_COUNTERS
            ),
        )


def grants_for(publishes: bool, subscribe: bool) -> list[str]:
    return [*(["publish"] if publishes else []), *(["subscribe"] if subscribe else [])]


async def join_oktorus(
    url: str,
    token: str,
    identity: str,
    *,
    tracks: Sequence[MediaStreamTrack] = (),
    subscribe: bool = True,
    tap: RtpTap | None = None,
    swallow: bool = True,
    timeout: float = JOIN_TIMEOUT_S,
    impair_send: Impairment | None = None,
    impair_receive: Impairment | None = None,
) -> OktorusPeer:
    """Join with protocol v1 (also used by generator processes, given a token)."""
    participant = await Participant.join(
        url,
        token,
        publish_tracks=tracks,
        timeout=timeout,
        impair_send=impair_send,
        impair_receive=impair_receive,
        renack=False,  # the bench's subscribers NACK by themselves (bench/nack.py)
    )
    peer = OktorusPeer(identity, participant)
    if subscribe and tap is not None:
        if tracks:
            peer.tap_later(tap, swallow)
        else:
            try:
                await peer.wait_tap(tap, swallow, timeout)
            except BaseException:
                await peer.close()
                raise
    return peer


class OktorusPeer(Peer):
    """A protocol v1 participant (:class:`signaling.client.Participant`)."""

    def __init__(self, identity: str, participant: Participant) -> None:
        super().__init__(identity)
        self.participant = participant
        self.publish_pc = participant.publish_pc
        self.track_ids = list(participant.published)
        self._task: asyncio.Task[None] | None = None

    async def wait_tap(self, tap: RtpTap, swallow: bool, timeout: float) -> None:
        """Tap the subscribe PC as soon as the server's first offer created it."""
        deadline = time.monotonic() + timeout
        while True:
            pc = self.participant.subscribe_pc
            if pc is not None and pc.getTransceivers():
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the server sent no subscribe offer")
            await asyncio.sleep(_TAP_POLL_S)
        self.subscribe_pc = pc
        install_subscriber_tap(self, tap, swallow)

    def tap_later(self, tap: RtpTap, swallow: bool) -> None:
        async def run() -> None:
            with contextlib.suppress(TimeoutError):
                await self.wait_tap(tap, swallow, SUBSCRIBE_PC_WAIT_S)

        self._task = asyncio.get_running_loop().create_task(run(), name="tap-later")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.participant.close()
