"""TLS for signalling: https/wss with certificates that are re-read when their files change.

* :func:`check_transport_security` — plain http/ws only on a loopback ``--host`` unless
  ``--allow-insecure-http`` says a TLS-terminating proxy is in front.
* :func:`load_context` — a server :class:`ssl.SSLContext` (TLS 1.2+) from PEM files, with a
  one-line error naming the file and the problem for anything malformed.
* :class:`ReloadingTls` — the context aiohttp listens with. Its ``sni_callback`` runs on
  every handshake (with or without SNI) and swaps in the freshest context, so a renewed
  certificate is used by new connections while open ones keep theirs: nothing is dropped.
  The files are polled every ``--tls-reload-interval`` seconds (SIGHUP forces a check); a
  half-written or broken pair is ignored (the old one stays) and logged once.
* :func:`self_signed` — ``--tls-self-signed``: an ECDSA P-256 certificate kept in
  ``<data dir>/tls/`` (so its fingerprint stays stable across restarts) for a first try on a LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sfu.settings import Settings, SettingsError, is_loopback_host

__all__ = [
    "CertificateInfo",
    "ReloadingTls",
    "TlsError",
    "certificate_info",
    "check_transport_security",
    "load_context",
    "self_signed",
]

log = structlog.get_logger(__name__)

SELF_SIGNED_DAYS = 365
_RENEW_BEFORE = datetime.timedelta(days=14)


class TlsError(SettingsError):
    """A TLS certificate or key cannot be used; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What operators want to see in the logs about the certificate being served."""

    subject: str
    not_after: str  # ISO 8601, UTC
    fingerprint_sha256: str  # AA:BB:... of the leaf certificate (DER)


def check_transport_security(settings: Settings) -> None:
    """Refuse plain http/ws on an address other machines can reach, unless allowed."""
    if settings.tls or settings.allow_insecure_http or is_loopback_host(settings.host):
        return
    raise SettingsError(
        f"--host {settings.host} is reachable from other machines: serve TLS with "
        "--tls-cert/--tls-key (or --tls-self-signed to try it on a LAN), or pass "
        "--allow-insecure-http (SFU_ALLOW_INSECURE_HTTP=1) when a TLS-terminating proxy is "
        "in front"
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{what} {path}: is a directory") from None
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def certificate_info(pem: bytes) -> CertificateInfo:
    """Subject, expiry and fingerprint of the first certificate of a PEM chain."""
    leaf = x509.load_pem_x509_certificates(pem)[0]
    digest = leaf.fingerprint(hashes.SHA256()).hex().upper()
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.isoformat(),
        fingerprint_sha256=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
    )


def load_context(cert: Path, key: Path) -> tuple[ssl.SSLContext, CertificateInfo]:
    """A TLS 1.2+ server context from PEM files; TlsError says what is wrong with which file."""
    cert_pem = _read(cert, "--tls-cert")
    key_pem = _read(key, "--tls-key")
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TlsError(f"--tls-cert {cert}: not a PEM certificate (no BEGIN CERTIFICATE block)")
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsError(f"--tls-key {key}: not a PEM private key (no BEGIN ... PRIVATE KEY block)")
    try:
        info = certificate_info(cert_pem)
    except ValueError as exc:
        raise TlsError(f"--tls-cert {cert}: not a valid certificate ({exc})") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "mismatch" in str(reason).lower():
            raise TlsError(f"--tls-key {key} does not belong to --tls-cert {cert}") from None
        raise TlsError(
            f"--tls-cert {cert} / --tls-key {key}: cannot be loaded ({reason})"
        ) from None
    except OSError as exc:
        raise TlsError(f"--tls-cert {cert} / --tls-key {key}: {exc.strerror or exc}") from None
    return context, info


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class ReloadingTls:
    """The listening context plus the freshest certificate, swapped in per handshake."""

    def __init__(self, cert: Path, key: Path, *, interval_s: float = 10.0) -> None:
        self.cert = cert
        self.key = key
        self.interval_s = interval_s
        self._stamp = _stamp(cert, key)
        self.context, self.info = load_context(cert, key)
        self._current = self.context
        self._failed: tuple[tuple[int, int, int], ...] | None = None
        self.reloads = 0
        self.context.sni_callback = self._on_hello

    def _on_hello(
        self, sslobj: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not context:
            sslobj.context = current

    def check(self) -> bool:
        """Re-read the files if they changed; True when a new certificate is now served."""
        stamp = _stamp(self.cert, self.key)
        if stamp == self._stamp or stamp == self._failed:
            return False
        try:
            context, info = load_context(self.cert, self.key)
        except TlsError as exc:
            self._failed = stamp  # log once per change; retried when the files change again
            log.warning("tls_reload_failed", error=str(exc))
            return False
        self._stamp, self._failed = stamp, None
        self._current, self.info = context, info
        self.reloads += 1
        log.info(
            "tls_reloaded",
            subject=info.subject,
            not_after=info.not_after,
            fingerprint_sha256=info.fingerprint_sha256,
        )
        return True

    async def watch(self) -> None:
        """Poll the files until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:
                log.exception("tls_watch_failed")


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names.append(x509.DNSName(host))
        else:
            if not address.is_unspecified:
                names.append(x509.IPAddress(address))
    return names


def self_signed(settings: Settings) -> tuple[Path, Path]:
    """The data dir's self-signed certificate and key (created, or renewed near expiry)."""
    directory = settings.data_dir / "tls"
    cert_path, key_path = directory / "self-signed.pem", directory / "self-signed-key.pem"
    hosts = [
        "localhost", "127.0.0.1", "::1", settings.host, *settings.ice_hosts,
        settings.announce_ip or "", socket.gethostname(),
    ]  # fmt: skip
    wanted = {str(name.value) for name in _san_entries(hosts)}
    if cert_path.exists() and key_path.exists():
        with contextlib.suppress(ValueError, OSError):
            leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(name.value) for name in san}
            fresh = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > _RENEW_BEFORE
            if fresh and wanted <= have:
                return cert_path, key_path
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oktorus-sfu self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("tls_self_signed_created", path=str(cert_path))
    return cert_path, key_path
