"""TLS contexts: clear errors for bad files, reload by swapping contexts, self-signed."""

from __future__ import annotations

import contextlib
import ssl
import stat
from pathlib import Path

import pytest
import trustme

from sfu.settings import Settings
from sfu.tls import ReloadingTls, TlsError, certificate_info, load_context, self_signed


def _pair(ca: trustme.CA, directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    leaf = ca.issue_cert(name, "127.0.0.1")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """One in-memory TLS handshake; returns the certificate the server presented (DER)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if c.version() and s.version():
            break
    cert = c.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def test_loads_a_valid_pair(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _pair(ca, tmp_path)
    context, info = load_context(cert, key)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert "localhost" in info.subject or info.subject
    assert len(info.fingerprint_sha256.split(":")) == 32


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing_cert", "--tls-cert"),
        ("missing_key", "--tls-key"),
        ("cert_not_pem", "not a PEM certificate"),
        ("key_not_pem", "not a PEM private key"),
        ("garbled_cert", "not a valid certificate"),
        ("other_key", "does not belong"),
        ("directory", "is a directory"),
    ],
)
def test_malformed_files_give_one_clear_error(tmp_path: Path, setup: str, fragment: str) -> None:
    ca = trustme.CA()
    cert, key = _pair(ca, tmp_path / "a")
    _, other_key = _pair(ca, tmp_path / "b")
    if setup == "missing_cert":
        cert = tmp_path / "nope.pem"
    elif setup == "missing_key":
        key = tmp_path / "nope.pem"
    elif setup == "cert_not_pem":
        cert.write_text("hello")
    elif setup == "key_not_pem":
        key.write_text("hello")
    elif setup == "garbled_cert":
        cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    elif setup == "other_key":
        key = other_key
    elif setup == "directory":
        cert = tmp_path
    with pytest.raises(TlsError) as caught:
        load_context(cert, key)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_reload_swaps_the_certificate_for_new_handshakes(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _pair(ca, tmp_path, "first.example")
    tls = ReloadingTls(cert, key, interval_s=60)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.check_hostname = False
    first = _handshake(tls.context, client)
    assert not tls.check()  # unchanged files: nothing to do

    new_cert, new_key = _pair(ca, tmp_path / "next", "second.example")
    key.write_bytes(new_key.read_bytes())
    assert not tls.check()  # half-written pair (new key, old cert): keep the old one
    assert _handshake(tls.context, client) == first
    cert.write_bytes(new_cert.read_bytes())
    assert tls.check() and tls.reloads == 1
    second = _handshake(tls.context, client)
    assert second != first
    assert certificate_info(new_cert.read_bytes()).fingerprint_sha256 == tls.info.fingerprint_sha256


def test_self_signed_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tls_self_signed=True, ice_hosts=("127.0.0.2",))
    cert, key = self_signed(settings)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    fingerprint = certificate_info(cert.read_bytes()).fingerprint_sha256
    assert self_signed(settings) == (cert, key)  # reused: the fingerprint stays stable
    assert certificate_info(cert.read_bytes()).fingerprint_sha256 == fingerprint
    context, _ = load_context(cert, key)
    assert isinstance(context, ssl.SSLContext)
