"""Every touch of aiortc's, aioice's and pylibsrtp's private API, in one place.

aiortc is a WebRTC *endpoint*: its receivers decode and its senders encode. The SFU
keeps aiortc for ICE, DTLS, SRTP keying and SDP, and takes the media path over:

* datagrams are intercepted where aioice receives them (one hook per ICE socket),
  SRTP-unprotected once and routed synchronously;
* receivers and senders on server peer connections are swapped (``__class__``) for
  forwarding variants that never start a decoder thread, an encoder or aiortc's own
  RTCP loops;
* outgoing packets are protected by calling libsrtp directly and sent on the selected
  ICE pair's socket, without aiortc's ``await`` chain.

aiortc changed these internals in 1.12, 1.15 and 1.16, so the versions are pinned and
:func:`check_contract` verifies every name at start-up (and in a unit test), failing
loudly instead of forwarding nothing.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import aioice.ice
import aiortc
import aiortc.codecs
import aiortc.rtcdtlstransport
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.sdp
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from pylibsrtp._binding import ffi, lib

__all__ = [
    "PINNED_VERSIONS",
    "ContractError",
    "DatagramDelay",
    "DatagramHandler",
    "FastSrtp",
    "ForwardingReceiver",
    "ForwardingSender",
    "IceRestartError",
    "IceRoute",
    "TranscodingForbidden",
    "add_host_candidates",
    "adopt_receiver",
    "adopt_sender",
    "begin_ice_restart",
    "bind_ice_ports",
    "check_contract",
    "codec_instances",
    "decode_from_keyframes",
    "dtls_transport",
    "egress_extension_ids",
    "finish_ice_restart",
    "forbid_transcoding",
    "ice_credentials",
    "impair_datagrams",
    "install_datagram_hook",
    "is_ice_restart",
    "missing_packets",
    "negotiated_codecs",
    "negotiated_extensions",
    "on_keyframe_request",
    "parse_sdp",
    "peer_cname",
    "restrict_answer_codecs",
    "restrict_host_addresses",
    "route_via",
    "selected_route",
    "send_nack",
    "send_raw_rtp",
    "send_rtcp",
    "sender_ssrcs",
    "set_sender_identity",
    "srtp_sessions",
    "stun_errors",
    "tap_received_rtp",
    "tap_sent_rtp",
]

PINNED_VERSIONS = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}

# (object, attribute) pairs the SFU relies on; instance attributes are checked on a
# throwaway peer connection by check_contract().
_MODULE_NAMES: tuple[tuple[object, str], ...] = (
    (aioice.ice, "get_host_addresses"),
    (aioice.ice, "asyncio"),  # bind_ice_ports swaps it for a proxy choosing the bind port
    (aioice.ice.Connection, "get_component_candidates"),
    (aioice.ice, "StunProtocol"),
    (aioice.ice.StunProtocol, "datagram_received"),
    (aioice.ice.StunProtocol, "send_data"),
    (aioice.ice.StunProtocol, "send_stun"),
    (aioice.ice.Connection, "data_received"),
    (aioice.ice.Connection, "connect"),
    (aioice.ice.Connection, "sendto"),
    (aioice.ice.Connection, "recvfrom"),
    (aiortc.rtcrtpreceiver, "get_decoder"),
    (aiortc.rtcrtpsender, "get_encoder"),
    (aiortc.codecs, "HEADER_EXTENSIONS"),
    (aiortc.sdp, "SessionDescription"),
    (RTCRtpReceiver, "receive"),
    (RTCRtpReceiver, "stop"),
    (RTCRtpReceiver, "_handle_disconnect"),
    (RTCRtpReceiver, "_send_rtcp_nack"),
    (RTCRtpSender, "send"),
    (RTCRtpSender, "stop"),
    (RTCRtpSender, "_send_keyframe"),
    (aiortc.rtcdtlstransport.RTCDtlsTransport, "_send_rtp"),
    (aiortc.rtcdtlstransport.RTCDtlsTransport, "_handle_rtp_data"),
    (pylibsrtp.Session, "protect"),
    (lib, "srtp_protect"),
    (lib, "srtp_protect_rtcp"),
    (lib, "srtp_unprotect"),
    (lib, "srtp_unprotect_rtcp"),
)

_SRTP_MAX_TRAILER = 16 + 144  # pylibsrtp's SRTP_MAX_TRAILER_LEN covers both tags
_SRTP_BUFFER = 1500 + _SRTP_MAX_TRAILER
_REWRITE = struct.Struct("!BHII")  # RTP header bytes 1..11: M/PT, sequence, timestamp, SSRC


# aioice.Connection state an in-place ICE restart resets (see begin_ice_restart).
_RESTART_STATE = (
    "_nominated",
    "_nominating",
    "_protocols",
    "_check_list",
    "_check_list_done",
    "_check_list_state",
    "_early_checks",
    "_early_checks_done",
    "_local_candidates",
    "_local_username",
    "_local_password",
    "_remote_candidates",
    "_remote_candidates_end",
    "_query_consent_task",
    "_queue",
    "remote_username",
    "remote_password",
)


class ContractError(RuntimeError):
    """aiortc/aioice/pylibsrtp no longer offer what the forwarding core needs."""


class TranscodingForbidden(RuntimeError):
    """Raised if anything asks aiortc for a decoder or an encoder on the server."""


async def check_contract(*, check_versions: bool = True) -> None:
    """Fail loudly when the private API the SFU depends on is missing or changed."""
    problems: list[str] = []
    if check_versions:
        for package, wanted in PINNED_VERSIONS.items():
            found = version(package)
            if found != wanted:
                problems.append(f"{package} {found} installed, {wanted} pinned")
    for owner, name in _MODULE_NAMES:
        # A class must define the name itself: an inherited no-op (asyncio's
        # DatagramProtocol.datagram_received) would pass hasattr and forward nothing.
        present = name in vars(owner) if isinstance(owner, type) else hasattr(owner, name)
        if not present:
            problems.append(f"{getattr(owner, '__name__', owner)!s}.{name} is missing")
    pc = RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        sender, receiver = transceiver.sender, transceiver.receiver
        dtls = receiver.transport
        for obj, names in (
            (sender, ("_ssrc", "_rtx_ssrc", "_stream_id", "_track_id")),
            (dtls, ("_rx_srtp", "_tx_srtp", "_transport")),
            (dtls.transport, ("_connection",)),
            (dtls.transport, ("iceGatherer",)),
            (dtls.transport.iceGatherer, ("_remote_candidates_end",)),
            (dtls.transport._connection, _RESTART_STATE),
            (transceiver, ("_codecs", "_headerExtensions")),
            (
                receiver,
                (
                    "_RTCRtpReceiver__nack_generator",
                    "_RTCRtpReceiver__jitter_buffer",
                    "_RTCRtpReceiver__codecs",
                ),
            ),
            (
                getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None),
                ("_origin", "_packets", "_is_video", "remove", "capacity", "add"),
            ),
            (pc, ("_RTCPeerConnection__cname",)),
        ):
            missing = [n for n in names if not hasattr(obj, n)]
            problems += [f"{type(obj).__name__}.{n} is missing" for n in missing]
    finally:
        try:
            await pc.close()
        except Exception as exc:  # noqa: BLE001 - report the contract, not the close
            problems.append(f"RTCPeerConnection.close failed: {exc!r}")
    if problems:
        raise ContractError("aiortc private API changed: " + "; ".join(problems))


# --- process-wide switches -------------------------------------------------------------


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates on exactly these addresses.

    aioice gathers on every interface but skips 127.0.0.1 and ::1, so out of the box
    it never works on loopback and always exposes every interface.
    """
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class _PortRangeLoop:
    """The running loop, except that a UDP bind to port 0 takes a free port of the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: _PortCursor) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, **kwargs: Any) -> Any:
        local = kwargs.get("local_addr")
        if local is None or local[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, **kwargs)
        last: OSError | None = None
        for port in self._ports.candidates():  # bounded: each port of the range once
            try:
                return await self._loop.create_datagram_endpoint(
                    factory, **{**kwargs, "local_addr": (local[0], port)}
                )
            except OSError as exc:  # in use (another peer, another program): try the next
                last = exc
        raise OSError(f"no free UDP port in {self._ports.low}-{self._ports.high}") from last


class _PortCursor:
    """Hands out the ports of [low, high] round-robin, so a freed port is not reused at once."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._next = low

    def candidates(self) -> list[int]:
        start = self._next
        span = self.high - self.low + 1
        ports = [self.low + (start - self.low + i) % span for i in range(span)]
        self._next = ports[1] if span > 1 else start
        return ports


class _AsyncioWithPortRange:
    """``asyncio`` as aioice.ice sees it: the same module, with a port-choosing loop."""

    def __init__(self, ports: _PortCursor) -> None:
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> Any:
        return _PortRangeLoop(asyncio.get_running_loop(), self._ports)


def bind_ice_ports(low: int, high: int) -> None:
    """Make aioice bind ICE host candidates on UDP ports in [low, high] only.

    aioice binds every host candidate to port 0 (any port); a firewall, or several workers
    on one machine, need a known range. aioice looks the loop up through its module's
    ``asyncio`` name, so that name gets a proxy whose loop picks the port.
    """
    if not 0 < low <= high <= 65535:
        raise ValueError(f"invalid UDP port range {low}-{high}")
    setattr(aioice.ice, "asyncio", _AsyncioWithPortRange(_PortCursor(low, high)))  # noqa: B010


_codec_requests = {"decoders": 0, "encoders": 0}


def codec_instances() -> dict[str, int]:
    """How many times anything asked aiortc for a decoder/encoder (must stay 0)."""
    return dict(_codec_requests)


def forbid_transcoding() -> None:
    """Make decoding or encoding impossible in this process (the server never transcodes)."""

    def no_decoder(codec: RTCRtpCodecParameters) -> Any:
        _codec_requests["decoders"] += 1
        raise TranscodingForbidden(f"the SFU never decodes ({codec.mimeType})")

    def no_encoder(codec: RTCRtpCodecParameters) -> Any:
        _codec_requests["encoders"] += 1
        raise TranscodingForbidden(f"the SFU never encodes ({codec.mimeType})")

    aiortc.rtcrtpreceiver.get_decoder = no_decoder  # type: ignore[attr-defined]
    aiortc.rtcrtpsender.get_encoder = no_encoder  # type: ignore[attr-defined]


# --- SDP --------------------------------------------------------------------------------


def parse_sdp(text: str) -> Any:
    """aiortc's SDP parser (``aiortc.sdp.SessionDescription``); raises on bad input."""
    return aiortc.sdp.SessionDescription.parse(text)


def egress_extension_ids(kind: str) -> dict[str, int]:
    """Header extension ids aiortc puts in its own offers (fixed by aiortc)."""
    return {e.uri: e.id for e in aiortc.codecs.HEADER_EXTENSIONS[kind]}


# --- receivers and senders that only forward ------------------------------------------


class ForwardingReceiver(RTCRtpReceiver):
    """A receiver that keeps its negotiated parameters and nothing else.

    Media reaches producers through the datagram hook, so no decoder thread, jitter
    buffer or RTCP task is ever started.
    """

    sfu_parameters: RTCRtpReceiveParameters | None

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        self.sfu_parameters = parameters

    async def stop(self) -> None:
        return None

    def _handle_disconnect(self) -> None:
        return None


SendParametersCallback = Callable[[RTCRtpSendParameters], None]


class ForwardingSender(RTCRtpSender):
    """A sender that never encodes: consumers write RTP on the wire themselves.

    aiortc calls :meth:`send` once DTLS is up and the m-line is negotiated; that is the
    moment a consumer learns its payload types and may start forwarding.
    """

    sfu_on_parameters: SendParametersCallback | None
    sfu_parameters: RTCRtpSendParameters | None

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        self.sfu_parameters = parameters
        if self.sfu_on_parameters is not None:
            self.sfu_on_parameters(parameters)

    async def stop(self) -> None:
        self.sfu_on_parameters = None


def adopt_receiver(receiver: Any) -> ForwardingReceiver:
    """Turn a stock receiver (not yet started) into a forwarding one."""
    receiver.__class__ = ForwardingReceiver
    receiver.sfu_parameters = None
    assert isinstance(receiver, ForwardingReceiver)
    return receiver


def adopt_sender(sender: Any, on_parameters: SendParametersCallback) -> ForwardingSender:
    """Turn a stock sender (not yet started) into a forwarding one."""
    sender.__class__ = ForwardingSender
    sender.sfu_parameters = None
    sender.sfu_on_parameters = on_parameters
    assert isinstance(sender, ForwardingSender)
    return sender


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) that aiortc announces for this sender in its offers."""
    return sender._ssrc, sender._rtx_ssrc


def set_sender_identity(sender: RTCRtpSender, stream_id: str, track_id: str) -> None:
    """Choose the ``a=msid`` aiortc writes for this sender (publisher id, track id)."""
    sender._stream_id = stream_id
    sender._track_id = track_id


def negotiated_codecs(transceiver: Any) -> list[RTCRtpCodecParameters]:
    """Codecs agreed for an m-line (remote payload types when we answered)."""
    return list(transceiver._codecs)


def restrict_answer_codecs(transceiver: Any, payload_types: set[int]) -> None:
    """Answer with only these payload types (set between setRemote and createAnswer).

    ``setCodecPreferences`` only applies to offers in aiortc, so the negotiated list is
    filtered directly: the publisher then sends exactly the codec we can forward.
    """
    transceiver._codecs = [c for c in transceiver._codecs if c.payloadType in payload_types]


def negotiated_extensions(transceiver: Any) -> list[RTCRtpHeaderExtensionParameters]:
    """Header extensions agreed for an m-line, with their negotiated ids."""
    return list(transceiver._headerExtensions)


def peer_cname(pc: Any) -> str:
    """The RTCP CNAME aiortc writes into this peer connection's SDP."""
    return str(pc._RTCPeerConnection__cname)


# --- the media path -------------------------------------------------------------------


def dtls_transport(pc: RTCPeerConnection) -> Any:
    """The one (bundled) DTLS transport of a peer connection, or None before any m-line."""
    transceivers = pc.getTransceivers()
    return transceivers[0].receiver.transport if transceivers else None


class FastSrtp:
    """libsrtp called directly on a pylibsrtp session: no per-call allocations.

    pylibsrtp's ``Session.protect`` costs ~2 us; this costs ~0.7-1.4 us. One buffer per
    session is enough because the hot path is synchronous. Errors return None (a
    forged or replayed packet is dropped, never raised).
    """

    __slots__ = ("_buf", "_cdata", "_len", "_session", "_srtp")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # keeps the srtp_t alive
        self._srtp = session._srtp[0]
        self._cdata = ffi.new("char[]", _SRTP_BUFFER)
        self._buf = ffi.buffer(self._cdata)
        self._len = ffi.new("int *")

    def _run(self, data: bytes | bytearray, func: Any, trailer: int) -> bytes | None:
        n = len(data)
        if n > _SRTP_BUFFER - trailer:
            return None
        self._buf[0:n] = data
        self._len[0] = n
        if func(self._srtp, self._cdata, self._len):
            return None
        out: bytes = self._buf[0 : self._len[0]]
        return out

    def protect(self, packet: bytes | bytearray) -> bytes | None:
        return self._run(packet, lib.srtp_protect, _SRTP_MAX_TRAILER)

    def protect_rewritten(
        self, packet: bytes, second_byte: int, seq: int, timestamp: int, ssrc: int
    ) -> bytes | None:
        """Copy ``packet`` in, rewrite PT/marker, sequence, timestamp and SSRC, protect.

        One copy in and one out: the rewrite happens inside libsrtp's buffer.
        """
        n = len(packet)
        if n > _SRTP_BUFFER - _SRTP_MAX_TRAILER:
            return None
        buf = self._buf
        buf[0:n] = packet
        _REWRITE.pack_into(buf, 1, second_byte, seq, timestamp, ssrc)
        self._len[0] = n
        if lib.srtp_protect(self._srtp, self._cdata, self._len):
            return None
        data: bytes = buf[0 : self._len[0]]
        return data

    def protect_rtcp(self, packet: bytes | bytearray) -> bytes | None:
        return self._run(packet, lib.srtp_protect_rtcp, _SRTP_MAX_TRAILER)

    def unprotect(self, packet: bytes) -> bytes | None:
        return self._run(packet, lib.srtp_unprotect, 0)

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        return self._run(packet, lib.srtp_unprotect_rtcp, 0)


def srtp_sessions(dtls: Any) -> tuple[FastSrtp, FastSrtp] | None:
    """(receive, transmit) SRTP sessions once DTLS is connected, else None."""
    rx, tx = dtls._rx_srtp, dtls._tx_srtp
    if rx is None or tx is None:
        return None
    return FastSrtp(rx), FastSrtp(tx)


@dataclass(slots=True)
class IceRoute:
    """Where to send: the selected pair's socket and the remote address."""

    transport: Any  # asyncio/uvloop datagram transport, or aioice's TURN relay transport
    remote: tuple[str, int]
    pending: Callable[[], int]  # bytes queued but not yet sent (0 where unknown: TURN)


def selected_route(dtls: Any) -> IceRoute | None:
    """The nominated ICE pair of component 1, if ICE has completed."""
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or pair.protocol.transport is None:
        return None
    return route_via(pair.protocol.transport, pair.remote_addr)


def route_via(transport: Any, remote: tuple[str, int]) -> IceRoute:
    """A route over one of the connection's sockets (TURN relays have no write buffer)."""
    pending = getattr(transport, "get_write_buffer_size", None) or _nothing_pending
    return IceRoute(transport, remote, pending)


def _nothing_pending() -> int:
    return 0


DatagramHandler = Callable[[bytes, tuple[Any, ...], Any], bool]


def install_datagram_hook(dtls: Any, handler: DatagramHandler) -> int:
    """Let ``handler(data, addr, socket_transport)`` see every datagram on this transport's
    ICE sockets first (``socket_transport`` is the one it arrived on, to answer the same way).

    The handler returns True when it consumed the datagram (SRTP/SRTCP), False to hand
    it to aioice (STUN, DTLS). Exceptions aioice raises on hostile STUN are contained
    here: they would otherwise escape ``datagram_received``. Returns the number of
    sockets hooked (call again after new candidates are gathered; it is idempotent).
    """
    hooked = 0
    for protocol in dtls.transport._connection._protocols:
        if "datagram_received" in vars(protocol):
            hooked += 1
            continue
        original = protocol.datagram_received

        def on_datagram(
            data: bytes,
            addr: tuple[Any, ...],
            _original: Callable[..., None] = original,
            _protocol: Any = protocol,
        ) -> None:
            if handler(data, addr, _protocol.transport):
                return
            try:
                _original(data, addr)
            except Exception:  # noqa: BLE001 - aioice raises struct.error etc. on bad STUN
                _stun_errors[0] += 1

        protocol.datagram_received = on_datagram
        hooked += 1
    return hooked


_stun_errors = [0]


def stun_errors() -> int:
    """How many malformed datagrams aioice raised on (contained by the hook)."""
    return _stun_errors[0]


# --- client-side taps (tests and the load generator) -----------------------------------

RtpTap = Callable[[bytes], None]


def tap_sent_rtp(pc: RTCPeerConnection, tap: RtpTap) -> None:
    """Call ``tap(plain_packet)`` for every RTP/RTCP packet this aiortc peer sends."""
    dtls = dtls_transport(pc)
    original = dtls._send_rtp

    async def send_rtp(data: bytes) -> None:
        tap(data)
        await original(data)

    dtls._send_rtp = send_rtp


def tap_received_rtp(pc: RTCPeerConnection, tap: RtpTap, *, swallow: bool = False) -> None:
    """Call ``tap(plain_packet)`` for every RTP packet this aiortc peer receives.

    With ``swallow`` the packet goes no further: no jitter buffer, no decoder (a load
    generator's subscriber that only counts).
    """
    dtls = dtls_transport(pc)
    original = dtls._handle_rtp_data

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        tap(data)
        if not swallow:
            await original(data, arrival_time_ms)

    dtls._handle_rtp_data = handle_rtp_data


DatagramFilter = Callable[[bytes], bool]
DatagramDelay = Callable[[bytes], float | None]
"""Seconds to hold a datagram before it goes on (0: now), or None to drop it."""


_rtcp_sends: set[asyncio.Task[None]] = set()


def send_rtcp(pc: RTCPeerConnection, data: bytes) -> None:
    """Send one plain RTCP packet on an aiortc peer (it protects it as SRTCP); returns at
    once. A send on a connection that has gone away is dropped quietly."""
    task = asyncio.get_running_loop().create_task(dtls_transport(pc)._send_rtp(data))
    _rtcp_sends.add(task)
    task.add_done_callback(_rtcp_sent)


def _rtcp_sent(task: asyncio.Task[None]) -> None:
    _rtcp_sends.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a closed connection is not an error here


def impair_datagrams(
    pc: RTCPeerConnection,
    *,
    drop_outgoing: DatagramFilter | None = None,
    drop_incoming: DatagramFilter | None = None,
    outgoing: DatagramDelay | None = None,
    incoming: DatagramDelay | None = None,
) -> int:
    """Impair datagrams below SRTP on an aiortc peer's ICE sockets (user-space netem).

    This kernel has no netem; tests and the bench impair links here instead. A
    ``drop_*`` filter sees the raw datagram and returns True to drop it; ``outgoing`` /
    ``incoming`` return a delay (held with ``loop.call_later``) or None to drop it (see
    ``signaling.client.impair``). Applies to the sockets gathered so far; returns how
    many were impaired.
    """
    if drop_outgoing is not None:
        outgoing = _as_delay(drop_outgoing)
    if drop_incoming is not None:
        incoming = _as_delay(drop_incoming)
    dtls = dtls_transport(pc)
    loop = asyncio.get_running_loop()
    impaired = 0
    for protocol in dtls.transport._connection._protocols:
        impaired += 1
        if incoming is not None:
            received = protocol.datagram_received

            def on_datagram(
                data: bytes,
                addr: Any,
                _received: Any = received,
                _decide: Any = incoming,
                _protocol: Any = protocol,
            ) -> None:
                hold = _decide(data)
                if hold is None:
                    return
                if hold > 0:
                    loop.call_later(hold, _receive_unless_closed, _protocol, _received, data, addr)
                else:
                    _received(data, addr)

            protocol.datagram_received = on_datagram
        if outgoing is not None:
            _impair_sends(protocol, outgoing, loop)
    return impaired


def _impair_sends(protocol: Any, decide: DatagramDelay, loop: asyncio.AbstractEventLoop) -> None:
    """Wrap aioice's two send paths of one socket (uvloop's ``transport.sendto`` cannot be
    replaced): ``send_data`` (DTLS, SRTP, SRTCP) and ``send_stun`` (ICE checks)."""
    send_data = protocol.send_data
    send_stun = protocol.send_stun

    def later(hold: float, data: bytes, addr: Any) -> None:
        loop.call_later(hold, _send_unless_closed, protocol, data, addr)

    async def impaired_data(data: bytes, addr: Any) -> None:
        hold = decide(data)
        if hold is None:
            return
        if hold > 0:
            later(hold, data, addr)
        else:
            await send_data(data, addr)

    def impaired_stun(message: Any, addr: Any) -> None:
        data = bytes(message)
        hold = decide(data)
        if hold is None:
            return
        if hold > 0:
            later(hold, data, addr)
        else:
            send_stun(message, addr)

    protocol.send_data = impaired_data
    protocol.send_stun = impaired_stun


def _as_delay(drop: DatagramFilter) -> DatagramDelay:
    return lambda data: None if drop(data) else 0.0


def _receive_unless_closed(protocol: Any, receive: Any, data: bytes, addr: Any) -> None:
    transport = protocol.transport
    if transport is not None and not transport.is_closing():
        receive(data, addr)


def _send_unless_closed(protocol: Any, data: bytes, addr: Any) -> None:
    transport = protocol.transport
    if transport is not None and not transport.is_closing():
        transport.sendto(data, addr)


async def send_raw_rtp(pc: RTCPeerConnection, packet: bytes) -> None:
    """Protect and send an RTP packet built by hand on an aiortc peer (test clients).

    aiortc cannot send simulcast; a test publisher writes each layer's packets itself.
    """
    await dtls_transport(pc)._send_rtp(packet)


def on_keyframe_request(sender: Any, callback: Callable[[], None]) -> None:
    """Call ``callback()`` when the remote asks this aiortc sender for a keyframe (PLI/FIR).

    aiortc's ``_handle_rtcp_packet`` calls ``self._send_keyframe()``, which only flags its
    own encoder; a sender fed pre-encoded media (the load generator) must hear it instead.
    """
    sender._send_keyframe = callback


# --- ICE restart in place (aiortc 1.16 has none) ------------------------------------------
#
# An ICE restart keeps the peer connection, its DTLS association and SRTP keys, and
# replaces only what ICE negotiates: fresh local ufrag/pwd, the remote's new ones, new
# candidate pairs and a new nomination, on the same aioice Connection (so the datagram
# hooks and the DTLS receive loop stay where they are). Until the new pair is nominated
# the old one keeps carrying traffic, as RFC 8445 section 9 asks.

_ICE_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)
_ICE_PWD = re.compile(r"^a=ice-pwd:(\S+)", re.MULTILINE)


class IceRestartError(RuntimeError):
    """The peer connection cannot restart ICE (not negotiated or not yet connected)."""


def _ice_connection(pc: RTCPeerConnection) -> Any:
    dtls = dtls_transport(pc)
    if dtls is None:
        raise IceRestartError("the peer connection has no transport yet")
    return dtls.transport._connection


def ice_credentials(sdp: str) -> tuple[str, str] | None:
    """(ufrag, pwd) of a description (bundled: the first ones apply to every m-line)."""
    ufrag, pwd = _ICE_UFRAG.search(sdp), _ICE_PWD.search(sdp)
    if ufrag is None or pwd is None:
        return None
    return ufrag.group(1).strip(), pwd.group(1).strip()


def is_ice_restart(pc: RTCPeerConnection, remote_sdp: str) -> bool:
    """Does this remote description carry other ICE credentials than the ones in use?"""
    dtls = dtls_transport(pc)
    credentials = ice_credentials(remote_sdp)
    if dtls is None or credentials is None:
        return False
    current = dtls.transport._connection.remote_username
    return current is not None and credentials[0] != current


def begin_ice_restart(pc: RTCPeerConnection) -> None:
    """New local ICE credentials and an empty check list; call before creating the
    offer or answer that carries them. The old pair keeps carrying media until
    :func:`finish_ice_restart` nominates a new one."""
    connection = _ice_connection(pc)
    if not connection._nominated and not getattr(connection, "sfu_previous", None):
        raise IceRestartError("ICE never connected: negotiate afresh instead")
    _keep_previous_pair(connection)
    if connection._nominated:
        connection.sfu_previous = dict(connection._nominated)
    task = getattr(connection, "sfu_restart", None)
    if task is not None:
        task.cancel()  # a restart of a restart: the newest wins
    if connection._query_consent_task is not None:
        connection._query_consent_task.cancel()  # it would use the old password
        connection._query_consent_task = None
    for pair in connection._check_list:
        if pair.task is not None:
            pair.task.cancel()
    connection._nominated.clear()
    connection._nominating.clear()
    connection._check_list = []
    connection._check_list_done = False
    connection._check_list_state = asyncio.Queue()
    connection._early_checks.clear()
    connection._early_checks_done = False  # checks arriving now wait for connect()
    connection._remote_candidates = []
    connection._remote_candidates_end = False
    connection.remote_username = None
    connection.remote_password = None
    # RFC 8839: ufrag at least 4, pwd at least 22 characters (aioice uses the same).
    connection._local_username = secrets.token_hex(4)
    connection._local_password = secrets.token_hex(16)
    dtls = dtls_transport(pc)
    dtls.transport.iceGatherer._remote_candidates_end = False


def finish_ice_restart(pc: RTCPeerConnection, remote_sdp: str) -> asyncio.Task[bool]:
    """With the remote description applied (its candidates added by aiortc), run the
    connectivity checks; the task returns True once a new pair is nominated."""
    connection = _ice_connection(pc)
    credentials = ice_credentials(remote_sdp)
    if credentials is None:
        raise IceRestartError("the remote description has no ICE credentials")
    connection.remote_username, connection.remote_password = credentials

    async def run() -> bool:
        try:
            await connection.connect()
        except ConnectionError:
            return False
        connection.sfu_previous = {}
        return True

    task = asyncio.get_running_loop().create_task(run())
    connection.sfu_restart = task
    return task


def _keep_previous_pair(connection: Any) -> None:
    """Per-instance ``sendto``/``recvfrom`` that fall back to the pair in use before a
    restart while no new one is nominated (aioice would raise "not connected", which
    ends aiortc's RTP sender and DTLS receive loops for good)."""
    if "sendto" in vars(connection):
        return
    connection.sfu_previous = {}

    async def sendto(data: bytes, component: int) -> None:
        pair = connection._nominated.get(component) or connection.sfu_previous.get(component)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        await pair.protocol.send_data(data, pair.remote_addr)

    async def recvfrom() -> tuple[bytes, int]:
        if not connection._nominated and not connection.sfu_previous:
            raise ConnectionError("Cannot receive data, not connected")
        result: tuple[bytes, int] | None = await connection._queue.get()
        if result is None:
            raise ConnectionError("Connection lost while receiving data")
        return result

    connection.sendto = sendto
    connection.recvfrom = recvfrom


async def add_host_candidates(pc: RTCPeerConnection, addresses: Sequence[str]) -> int:
    """Gather host candidates on new local addresses (a client whose network changed)
    and offer only those from now on; returns how many sockets were opened."""
    connection = _ice_connection(pc)
    candidates = await connection.get_component_candidates(component=1, addresses=list(addresses))
    connection._local_candidates = list(candidates)
    return len(candidates)


def missing_packets(receiver: RTCRtpReceiver) -> set[int]:
    """Sequence numbers an aiortc video receiver still misses (its NACK generator's set).

    aiortc NACKs a hole once, when it first sees it, and asks again only when a newer
    hole appears; a lost retransmission then stalls its 512-packet jitter buffer for
    seconds. Our client re-asks for these (as libwebrtc does) with :func:`send_nack`.
    """
    generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
    return set(generator.missing) if generator is not None else set()


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: Sequence[int]) -> None:
    """Send a generic NACK for ``lost`` on the receiver's transport."""
    await receiver._send_rtcp_nack(media_ssrc, list(lost))


KeyframeStart = Callable[[str, bytes], bool]  # (lowercase codec name, RTP payload)


def decode_from_keyframes(receiver: RTCRtpReceiver, keyframe_start: KeyframeStart) -> None:
    """Let an aiortc video receiver give up older holes when a keyframe starts.

    aiortc assembles frames strictly in sequence order, so a hole whose retransmission
    never arrives blocks every later frame until 512 packets have passed (25 s at a low
    simulcast layer). libwebrtc decodes from the next keyframe instead; so does this.
    """
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    codecs: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__codecs", {})
    if buffer is None or not buffer._is_video or getattr(buffer, "_decodes_from_keyframes", False):
        return
    generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
    add = buffer.add

    def add_skipping_stale_holes(packet: Any) -> Any:
        origin = buffer._origin
        if origin is not None:
            delta = (packet.sequence_number - origin) & 0xFFFF
            codec = codecs.get(packet.payload_type)
            if (
                0 < delta < buffer.capacity
                and codec is not None
                and keyframe_start(codec.mimeType.split("/")[1].lower(), packet.payload)
                and any(
                    buffer._packets[(origin + i) % buffer.capacity] is None for i in range(delta)
                )
            ):
                buffer.remove(delta)
                if generator is not None:  # nothing before the keyframe is worth asking for
                    generator.missing -= {(origin + i) & 0xFFFF for i in range(delta)}
        return add(packet)

    buffer.add = add_skipping_stale_holes
    buffer._decodes_from_keyframes = True
