"""Tests for sfu.aiortc_bridge: the private-API contract, process switches, FastSrtp.

Everything the bridge patches process-wide (aioice's host addresses, aiortc's codec
factories) is first set to its current value with monkeypatch, so it is restored
after each test.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import aioice
import aioice.ice
import aiortc.rtcdtlstransport
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pylibsrtp
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

import sfu.aiortc_bridge as bridge
from sfu.aiortc_bridge import (
    PINNED_VERSIONS,
    ContractError,
    FastSrtp,
    TranscodingForbidden,
    bind_ice_ports,
    check_contract,
    codec_instances,
    forbid_transcoding,
    restrict_host_addresses,
)
from sfu.rtcp import ReceiverReport, ReportBlock, build_rr, build_sdes, parse_rtcp

_HEADER = struct.Struct("!BBHII")
# aiortc's modules do not re-export the codec factories they import (typed as Any here).
receiver_module: Any = aiortc.rtcrtpreceiver
sender_module: Any = aiortc.rtcrtpsender

# (profile, master key + salt length)
PROFILES = [
    pytest.param(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30, 10, id="aes-cm-sha1-80"),
    pytest.param(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28, 16, id="aead-aes-128-gcm"),
]


# --- the contract -----------------------------------------------------------------------


def test_installed_versions_are_the_pinned_ones() -> None:
    assert PINNED_VERSIONS == {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}
    assert {name: version(name) for name in PINNED_VERSIONS} == PINNED_VERSIONS


async def test_check_contract_passes_on_pinned_versions() -> None:
    await check_contract()
    await check_contract(check_versions=False)


@pytest.mark.parametrize(
    ("owner", "name", "message"),
    [
        pytest.param(
            aiortc.rtcrtpsender.RTCRtpSender,
            "send",
            "RTCRtpSender.send is missing",
            id="sender-send",
        ),
        pytest.param(
            aiortc.rtcrtpreceiver.RTCRtpReceiver,
            "_handle_disconnect",
            "RTCRtpReceiver._handle_disconnect is missing",
            id="receiver-disconnect",
        ),
        pytest.param(
            aiortc.rtcrtpreceiver.RTCRtpReceiver,
            "_send_rtcp_nack",
            "RTCRtpReceiver._send_rtcp_nack is missing",
            id="receiver-send-nack",
        ),
        pytest.param(
            aiortc.rtcdtlstransport.RTCDtlsTransport,
            "_send_rtp",
            "RTCDtlsTransport._send_rtp is missing",
            id="dtls-send-rtp",
        ),
        pytest.param(
            aiortc.rtcdtlstransport.RTCDtlsTransport,
            "_handle_rtp_data",
            "RTCDtlsTransport._handle_rtp_data is missing",
            id="dtls-handle-rtp",
        ),
        pytest.param(
            aioice.ice.StunProtocol,
            "send_data",
            "StunProtocol.send_data is missing",
            id="stun-send-data",
        ),
        pytest.param(
            aioice.ice.StunProtocol,
            "send_stun",
            "StunProtocol.send_stun is missing",
            id="stun-send-stun",
        ),
        pytest.param(
            aioice.ice,
            "get_host_addresses",
            "aioice.ice.get_host_addresses is missing",
            id="host-addresses",
        ),
        pytest.param(
            aiortc.rtcrtpreceiver,
            "get_decoder",
            "aiortc.rtcrtpreceiver.get_decoder is missing",
            id="get-decoder",
        ),
        pytest.param(pylibsrtp.Session, "protect", "Session.protect is missing", id="srtp-protect"),
        pytest.param(
            aioice.ice.Connection, "sendto", "Connection.sendto is missing", id="ice-sendto"
        ),
        pytest.param(
            aioice.ice.Connection, "connect", "Connection.connect is missing", id="ice-connect"
        ),
    ],
)
async def test_check_contract_names_a_missing_attribute(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, message: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(ContractError, match=rf"private API changed: .*{message}"):
        await check_contract()


async def test_check_contract_notices_stun_protocol_losing_datagram_received(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """install_datagram_hook wraps StunProtocol.datagram_received and hands STUN/DTLS to it.

    If aioice stopped defining it, the inherited asyncio.DatagramProtocol no-op would
    swallow every STUN and DTLS datagram: the contract must say so, not pass.
    """
    monkeypatch.delattr(aioice.ice.StunProtocol, "datagram_received")
    with pytest.raises(ContractError, match=r"StunProtocol\.datagram_received is missing"):
        await check_contract()


async def test_check_contract_names_a_missing_instance_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instance attributes are checked on a throw-away peer connection."""
    original: Callable[..., None] = aiortc.rtcrtpsender.RTCRtpSender.__init__

    def init_without_rtx_ssrc(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._rtx_ssrc

    monkeypatch.setattr(aiortc.rtcrtpsender.RTCRtpSender, "__init__", init_without_rtx_ssrc)
    with pytest.raises(ContractError, match=r"RTCRtpSender\._rtx_ssrc is missing"):
        await check_contract()


async def test_check_contract_reports_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiortc.rtcrtpsender.RTCRtpSender, "send")
    monkeypatch.delattr(aiortc.rtcrtpreceiver.RTCRtpReceiver, "receive")
    monkeypatch.setattr(bridge, "version", lambda package: "0.0.1")
    with pytest.raises(ContractError) as info:
        await check_contract()
    assert "RTCRtpSender.send is missing" in str(info.value)
    assert "RTCRtpReceiver.receive is missing" in str(info.value)
    assert "aiortc 0.0.1 installed" in str(info.value)


async def test_check_contract_refuses_other_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = dict(PINNED_VERSIONS, aiortc="1.17.0")
    monkeypatch.setattr(bridge, "version", installed.__getitem__)
    with pytest.raises(ContractError, match=r"aiortc 1\.17\.0 installed, 1\.16\.0 pinned"):
        await check_contract()
    await check_contract(check_versions=False)  # the names themselves are all there
    monkeypatch.setattr(bridge, "version", lambda package: "0.0.1")
    with pytest.raises(ContractError) as info:
        await check_contract()
    for package, pinned in PINNED_VERSIONS.items():
        assert f"{package} 0.0.1 installed, {pinned} pinned" in str(info.value)


# --- no transcoding -----------------------------------------------------------------------


def test_forbid_transcoding(monkeypatch: pytest.MonkeyPatch) -> None:
    original_decoder = receiver_module.get_decoder
    original_encoder = sender_module.get_encoder
    monkeypatch.setattr(receiver_module, "get_decoder", original_decoder)
    monkeypatch.setattr(sender_module, "get_encoder", original_encoder)
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    opus = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    before = codec_instances()

    forbid_transcoding()
    with pytest.raises(TranscodingForbidden, match=r"never decodes \(video/VP8\)"):
        receiver_module.get_decoder(vp8)
    assert codec_instances() == dict(before, decoders=before["decoders"] + 1)
    with pytest.raises(TranscodingForbidden, match=r"never encodes \(audio/opus\)"):
        sender_module.get_encoder(opus)
    with pytest.raises(TranscodingForbidden):
        sender_module.get_encoder(vp8)
    assert codec_instances() == {
        "decoders": before["decoders"] + 1,
        "encoders": before["encoders"] + 2,
    }
    codec_instances()["decoders"] = -1  # a copy: the counters cannot be reset from outside
    assert codec_instances()["decoders"] == before["decoders"] + 1

    monkeypatch.undo()
    assert receiver_module.get_decoder is original_decoder
    assert sender_module.get_encoder is original_encoder


# --- host addresses -----------------------------------------------------------------------


def test_restrict_host_addresses_filters_by_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    chosen = ["127.0.0.1", "::1", "10.0.0.7", "fd00::7"]
    restrict_host_addresses(chosen)
    chosen.append("192.0.2.1")  # the bridge keeps its own copy
    get = aioice.ice.get_host_addresses
    assert get(use_ipv4=True, use_ipv6=False) == ["127.0.0.1", "10.0.0.7"]
    assert get(use_ipv4=False, use_ipv6=True) == ["::1", "fd00::7"]
    assert get(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1", "10.0.0.7", "fd00::7"]
    assert get(use_ipv4=False, use_ipv6=False) == []


async def test_restricted_addresses_are_what_aioice_gathers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])
    connection = aioice.Connection(ice_controlling=True, components=1, use_ipv4=True, use_ipv6=True)
    try:
        await connection.gather_candidates()
        assert {c.host for c in connection.local_candidates} == {"127.0.0.1"}
    finally:
        await connection.close()


async def test_bound_ice_ports_are_what_aioice_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    monkeypatch.setattr(aioice.ice, "asyncio", aioice.ice.asyncio)  # type: ignore[attr-defined]
    restrict_host_addresses(["127.0.0.1"])
    bind_ice_ports(61310, 61312)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 61310))  # taken by someone else: skipped, not fatal
    connections = [aioice.Connection(ice_controlling=True, use_ipv6=False) for _ in range(3)]
    try:
        for connection in connections[:2]:
            await connection.gather_candidates()
        ports = [c.port for conn in connections[:2] for c in conn.local_candidates]
        assert sorted(ports) == [61311, 61312]
        await connections[2].gather_candidates()  # the range is full: no candidate, no crash
        assert connections[2].local_candidates == []
    finally:
        blocker.close()
        for connection in connections:
            await connection.close()


def test_contract_lists_what_bind_ice_ports_touches() -> None:
    names = {(owner, name) for owner, name in bridge._MODULE_NAMES}
    assert (aioice.ice, "asyncio") in names
    assert (aioice.ice.Connection, "get_component_candidates") in names


def test_bind_ice_ports_refuses_a_bad_range() -> None:
    with pytest.raises(ValueError, match="invalid UDP port range"):
        bind_ice_ports(5000, 4000)


# --- FastSrtp -----------------------------------------------------------------------------


def _pair(
    profile: int, key_len: int, seed: int = 1
) -> tuple[FastSrtp, FastSrtp, pylibsrtp.Session]:
    """(sender, receiver, a stock pylibsrtp receiver) sharing one master key."""
    key = random.Random(seed).randbytes(key_len)

    def session(ssrc_type: int) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
        return pylibsrtp.Session(policy=policy)

    return (
        FastSrtp(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
        FastSrtp(session(pylibsrtp.Policy.SSRC_ANY_INBOUND)),
        session(pylibsrtp.Policy.SSRC_ANY_INBOUND),
    )


def must(data: bytes | None) -> bytes:
    assert data is not None
    return data


def _rtp(
    seq: int,
    *,
    ssrc: int = 0x01020304,
    pt: int = 96,
    ts: int = 90_000,
    payload: bytes = b"payload" * 20,
    extension: bool = True,
) -> bytes:
    b0 = 0x90 if extension else 0x80
    block = struct.pack("!HH", 0xBEDE, 1) + b"\x10\x07\x00\x00" if extension else b""
    return _HEADER.pack(b0, pt, seq, ts, ssrc) + block + payload


@pytest.mark.parametrize(("profile", "key_len", "tag_len"), PROFILES)
def test_fast_srtp_round_trips_rtp_and_rtcp(profile: int, key_len: int, tag_len: int) -> None:
    tx, rx, stock_rx = _pair(profile, key_len)
    packets = [_rtp(seq) for seq in range(1000, 1010)]
    protected = [tx.protect(p) for p in packets]
    for plain, srtp in zip(packets, protected, strict=True):
        assert srtp is not None
        assert len(srtp) == len(plain) + tag_len
        assert srtp[:12] == plain[:12]  # header in clear
        assert srtp[12 : len(plain)] != plain[12:]  # payload encrypted
    # Every buffer returned is a copy: later calls do not overwrite earlier results.
    assert [rx.unprotect(p) for p in protected if p is not None] == packets
    # Interoperable with pylibsrtp's own Session.
    assert stock_rx.unprotect(must(tx.protect(_rtp(1010)))) == _rtp(1010)

    rtcp = build_rr(0x01020304, [ReportBlock(0x0A0B0C0D, 1, 2, 3, 4, 5, 6)])
    rtcp += build_sdes(0x01020304, "cname")
    srtcp = tx.protect_rtcp(rtcp)
    assert srtcp is not None and srtcp != rtcp
    assert rx.unprotect_rtcp(srtcp) == rtcp
    assert isinstance(parse_rtcp(rtcp)[0], ReceiverReport)
    assert stock_rx.unprotect_rtcp(must(tx.protect_rtcp(rtcp))) == rtcp


@pytest.mark.parametrize(("profile", "key_len", "tag_len"), PROFILES)
def test_protect_rewritten_rewrites_exactly(profile: int, key_len: int, tag_len: int) -> None:
    tx, rx, _ = _pair(profile, key_len)
    original = _rtp(17, ssrc=0x11111111, pt=96, ts=1234)
    for second, seq, ts, ssrc in [
        (0x80 | 100, 0xFFFF, 0xFFFFFFFF, 0xDEADBEEF),
        (101, 0, 0, 0xCAFEF00D),
        (0x80 | 127, 0x1234, 0x89ABCDEF, 0xDEADBEEF),
    ]:
        srtp = tx.protect_rewritten(original, second, seq, ts, ssrc)
        assert srtp is not None and len(srtp) == len(original) + tag_len
        plain = rx.unprotect(srtp)
        assert plain is not None
        assert _HEADER.unpack_from(plain) == (original[0], second, seq, ts, ssrc)
        assert plain[12:] == original[12:]  # extension block and payload untouched
    assert _HEADER.unpack_from(original) == (0x90, 96, 17, 1234, 0x11111111)  # input intact


@pytest.mark.parametrize(("profile", "key_len", "tag_len"), PROFILES)
def test_unprotect_of_garbage_returns_none(profile: int, key_len: int, tag_len: int) -> None:
    tx, rx, _ = _pair(profile, key_len)
    other_tx, _, _ = _pair(profile, key_len, seed=2)  # another key
    rng = random.Random(99)
    good = tx.protect(_rtp(5))
    assert good is not None
    tampered = bytearray(good)
    tampered[20] ^= 0x01
    garbage: list[bytes] = [
        b"",
        b"\x80",
        b"\x80" * 11,
        b"\x80" * 12,
        bytes(tampered),
        good[:-1],
        other_tx.protect(_rtp(6)) or b"",
        b"\x80" * 5000,
        _rtp(7),
    ]
    garbage += [rng.randbytes(rng.randrange(0, 1600)) for _ in range(300)]
    garbage += [
        bytes([0x80 | rng.randrange(64)]) + rng.randbytes(rng.randrange(11, 300))
        for _ in range(300)
    ]
    for data in garbage:
        assert rx.unprotect(data) is None
        assert rx.unprotect_rtcp(data) is None
    assert rx.unprotect(good) == _rtp(5)  # still works after all that
    assert rx.unprotect(good) is None  # a replay is dropped too


def test_protect_refuses_oversize_and_short_packets() -> None:
    tx, _, _ = _pair(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30)
    assert tx.protect(_rtp(1, payload=b"x" * 1600)) is None
    assert tx.protect_rewritten(_rtp(1, payload=b"x" * 1600), 96, 1, 1, 1) is None
    assert tx.protect_rtcp(b"\x80\xc9\x00\x01" + b"\x00" * 1600) is None
    assert tx.protect(_rtp(1, payload=b"x" * 1400)) is not None  # a normal full packet


async def test_check_contract_names_missing_ice_restart_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An in-place ICE restart resets aioice's check list; losing it must fail loudly."""
    original: Callable[..., None] = aioice.ice.Connection.__init__

    def init_without_nominating(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._nominating

    monkeypatch.setattr(aioice.ice.Connection, "__init__", init_without_nominating)
    with pytest.raises(ContractError, match=r"Connection\._nominating is missing"):
        await check_contract()
