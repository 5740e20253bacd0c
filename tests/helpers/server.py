"""Run the real server (`python -m sfu serve`) as a child process for integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from sfu.keys import KeyStore
from signaling.access import issue_access_token

__all__ = ["ServerProcess"]

STARTUP_TIMEOUT_S = 40.0  # a supervisor and its workers, on a busy shared machine
_WORKER_LABEL = re.compile(r'(?<=[{,])worker="[^"]*",?')


class ServerProcess:
    """One server on 127.0.0.1 with its own data dir; knows its port and PID."""

    def __init__(self, data_dir: Path, extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log_lines: list[str] = []
        self._keys: KeyStore | None = None

    def start(self) -> ServerProcess:
        env = dict(os.environ, SFU_LOG_FORMAT="json")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sfu",
                "serve",
                "--port",
                "0",
                "--data-dir",
                str(self.data_dir),
                *self.extra_args,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            self._wait_listening()
        except BaseException:
            # Never leave a half-started server (and its workers) behind: stop it by its PID.
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise
        threading.Thread(target=self._drain_log, daemon=True).start()
        self._keys = KeyStore.open(self.data_dir)
        return self

    def _wait_listening(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.port:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited during start-up:\n" + "".join(self.log_lines))
            self.log_lines.append(line)
            if '"listening"' in line:
                self.port = int(json.loads(line)["port"])
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")

    def _drain_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/signal"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(
        self,
        room: str,
        identity: str,
        *,
        role: str = "customer",
        grants: Sequence[str] = ("publish", "subscribe"),
        ttl_s: int = 600,
    ) -> str:
        assert self._keys is not None
        return issue_access_token(
            self._keys, room=room, identity=identity, role=role, grants=tuple(grants), ttl_s=ttl_s
        )

    def metrics(self) -> dict[str, float]:
        """Prometheus samples as {'name{labels}': value}, without the ``worker`` label."""
        with urllib.request.urlopen(self.http + "/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                name = _WORKER_LABEL.sub("", name).replace(",}", "}").replace("{}", "")
                samples[name] = float(value)
        return samples

    def thread_names(self) -> list[str]:
        """Names of the server's threads (aiortc names its decoder threads '*-decoder')."""
        task_dir = Path(f"/proc/{self.pid}/task")
        return [(t / "comm").read_text().strip() for t in task_dir.iterdir()]

    def stop(self) -> int:
        """SIGTERM (drain: exits once no participant is left), a second SIGTERM after 10 s
        (shut down now), then SIGKILL if it hangs; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Still draining (participants left behind): a second signal shuts down at once.
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)
