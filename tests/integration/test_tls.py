"""https/wss with real certificates (trustme CA), reloaded without dropping connections."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from helpers.calls import timed_call
from helpers.server import ServerProcess

from sfu.tls import certificate_info
from signaling.client import SignalClient

pytestmark = pytest.mark.integration


def _issue(ca: trustme.CA, cert: Path, key: Path, *names: str) -> None:
    leaf = ca.issue_cert(*names)
    # Write next to the target and rename: what certbot & co. do (no half-written file).
    tmp_cert, tmp_key = cert.with_suffix(".new"), key.with_suffix(".new")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_cert))
    leaf.private_key_pem.write_to_path(str(tmp_key))
    tmp_key.replace(key)
    tmp_cert.replace(cert)


def _served_certificate(port: int) -> str:
    """The leaf certificate (PEM) a fresh TLS connection gets, unverified."""
    return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)


class TlsServer:
    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        self.cert, self.key = root / "cert.pem", root / "key.pem"
        _issue(self.ca, self.cert, self.key, "localhost", "127.0.0.1")
        self.client_ssl = ssl.create_default_context()
        self.ca.configure_trust(self.client_ssl)
        self.process = ServerProcess(
            root / "data",
            ["--tls-cert", str(self.cert), "--tls-key", str(self.key),
             "--tls-reload-interval", "0.2"],
        )  # fmt: skip

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.process.port}/v1/signal"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.process.port}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path_factory.mktemp("tls"))
    server.process.start()
    try:
        yield server
    finally:
        assert server.process.stop() == 0


@pytest.mark.asyncio
async def test_https_and_wss_with_a_verified_certificate(tls_server: TlsServer, room: str) -> None:
    listening = next(json.loads(line) for line in tls_server.process.log_lines
                     if '"listening"' in line)  # fmt: skip
    assert listening["url"].startswith("https://") and listening["tls"] is True
    async with aiohttp.ClientSession() as http:
        async with http.get(tls_server.https + "/healthz", ssl=tls_server.client_ssl) as resp:
            assert resp.status == 200
        async with http.get(tls_server.https + "/readyz", ssl=tls_server.client_ssl) as resp:
            assert resp.status == 200
        # A client that does not trust the CA is refused, and plain http gets nothing.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(tls_server.https + "/healthz")
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"http://127.0.0.1:{tls_server.process.port}/healthz")
    # A real call: signalling over wss, media over ICE/DTLS-SRTP.
    process = tls_server.process
    call = await timed_call(
        tls_server.wss, process.token(room, "alice"), process.token(room, "bob"),
        relay=False, ssl_context=tls_server.client_ssl,
    )  # fmt: skip
    await call.publisher.close()
    await call.subscriber.close()


@pytest.mark.asyncio
async def test_certificate_reload_keeps_open_connections(tls_server: TlsServer, room: str) -> None:
    port = tls_server.process.port
    before = _served_certificate(port)
    signal = await SignalClient.connect(tls_server.wss, ssl=tls_server.client_ssl)
    try:
        token = tls_server.process.token(room, "a")
        joined = await signal.request({"type": "join", "token": token})
        assert joined["type"] == "joined"
        _issue(tls_server.ca, tls_server.cert, tls_server.key, "localhost", "127.0.0.1")
        renewed = certificate_info(tls_server.cert.read_bytes()).fingerprint_sha256
        deadline = time.monotonic() + 10
        while _served_certificate(port) == before:
            assert time.monotonic() < deadline, "the new certificate was never served"
            await asyncio.sleep(0.1)
        served = certificate_info(_served_certificate(port).encode()).fingerprint_sha256
        assert served == renewed
        # The connection opened before the renewal is still up and answering.
        assert (await signal.request({"type": "ping"}))["type"] == "pong"
        assert not signal.closed
        # New clients verify the new certificate.
        fresh = await SignalClient.connect(tls_server.wss, ssl=tls_server.client_ssl)
        await fresh.close()
        assert any('"tls_reloaded"' in line for line in tls_server.process.log_lines)
    finally:
        await signal.close()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfu", "serve", "--port", "0", "--data-dir",
         str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_malformed_tls_files_are_a_clear_startup_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _issue(ca, cert, key, "localhost")
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    result = _serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"python -m sfu serve: error: --tls-cert {cert}: not a valid")
    assert "Traceback" not in result.stderr
    missing = _serve(tmp_path, "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(key))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_plain_http_only_on_loopback_unless_allowed(tmp_path: Path) -> None:
    refused = _serve(tmp_path, "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "--allow-insecure-http" in refused.stderr and "--tls-cert" in refused.stderr


@pytest.mark.asyncio
async def test_self_signed_logs_its_fingerprint(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "data", ["--tls-self-signed"]).start()
    try:
        listening = next(json.loads(line) for line in process.log_lines if '"listening"' in line)
        served = certificate_info(_served_certificate(process.port).encode())
        assert listening["fingerprint_sha256"] == served.fingerprint_sha256
        assert any(served.fingerprint_sha256 in line and "tls_self_signed" in line
                   for line in process.log_lines)  # fmt: skip
    finally:
        assert process.stop() == 0
