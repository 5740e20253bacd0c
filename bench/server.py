"""Our SFU (``python -m sfu serve``) as a child process: a :class:`bench.target.Target`.

Each server gets a fresh temporary data dir (its signing key is created there) and
listens on 127.0.0.1 on a free port, read from its JSON "listening" log line. It is
stopped by its PID: SIGTERM, then SIGKILL if it has not exited within 15 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.procfs import read_cpu_seconds, read_rss_bytes, read_voluntary_switches
from bench.stats import parse_prometheus
from bench.target import PacketCounters
from sfu.keys import KeyStore
from signaling.access import issue_access_token

__all__ = ["SfuServer"]

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
_LOG_TAIL = 200
_DROP_COUNTERS = (
    "dropped_empty", "dropped_oversize", "dropped_foreign", "dropped_unready",
    "dropped_srtp", "dropped_queue_full",
)


class SfuServer:
    """One ``python -m sfu serve`` child on 127.0.0.1, with its own temporary data dir."""

    name = "oktorus-sfu"

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self._extra_args = list(extra_args)
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
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sfu", "serve", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(data_dir), *self._extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise
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
            self._keys, room=room, identity=identity, role="customer", grants=tuple(grants),
            ttl_s=600,
        )

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return read_rss_bytes(self.pid)

    def wakeups(self) -> int:
        return read_voluntary_switches(self.pid)

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
