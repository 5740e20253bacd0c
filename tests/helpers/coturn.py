"""Run Debian's coturn (`turnserver`) on 127.0.0.1 for tests: REST-secret auth, loopback relay."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

__all__ = ["Coturn", "free_udp_port"]

STARTUP_TIMEOUT_S = 10.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stun_binding_ok(port: int) -> bool:
    """True when a STUN Binding request to 127.0.0.1:port gets a success response."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            data, _ = sock.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction


class Coturn:
    """One turnserver process with ``use-auth-secret``; relay ports in a private range."""

    def __init__(self, workdir: Path, secret: str | None = None) -> None:
        self.workdir = workdir
        self.secret = secret or secrets.token_hex(16)
        self.port = 0
        self.min_port = 0
        self.max_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "turnserver.log"

    @staticmethod
    def available() -> bool:
        return shutil.which("turnserver") is not None

    @property
    def uri(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def start(self) -> Coturn:
        binary = shutil.which("turnserver")
        if binary is None:
            raise RuntimeError("turnserver (Debian package coturn) is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        # A relay range of its own, so a relayed address is recognisable in tests.
        self.min_port = random.randrange(20000, 29000, 100)
        self.max_port = self.min_port + 99
        config = self.workdir / "turnserver.conf"
        config.write_text(
            "\n".join(
                [
                    "listening-ip=127.0.0.1",
                    "relay-ip=127.0.0.1",
                    f"listening-port={self.port}",
                    f"min-port={self.min_port}",
                    f"max-port={self.max_port}",
                    "use-auth-secret",
                    f"static-auth-secret={self.secret}",
                    "realm=oktorus.test",
                    "allow-loopback-peers",
                    "no-cli",
                    "no-tls",
                    "no-dtls",
                    "no-tcp-relay",
                    "fingerprint",
                    "no-multicast-peers",
                    "verbose",
                    f"log-file={self.log_path}",
                    "simple-log",
                    f"pidfile={self.workdir / 'turnserver.pid'}",
                    f"userdb={self.workdir / 'turndb'}",
                    "no-software-attribute",
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "HOME": str(self.workdir)},
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _stun_binding_ok(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError("turnserver exited during start-up:\n" + self.log())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("turnserver did not answer STUN in time:\n" + self.log())
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
