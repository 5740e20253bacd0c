"""RTCP parsing and building (RFC 3550, RFC 4585, REMB).

``parse_rtcp`` walks a compound packet and returns the messages the SFU
acts on; it skips unknown types and malformed sub-packets and never raises
(aiortc's parser raises on, e.g., a REMB claiming more SSRCs than present).
Builders return ``bytes``; a compound packet is their concatenation.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Bye",
    "Fir",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpMessage",
    "SenderReport",
    "build_bye",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_remb",
    "build_rr",
    "build_sdes",
    "build_sr",
    "ntp_middle32",
    "ntp_now",
    "ntp_to_seconds",
    "parse_rtcp",
    "seconds_to_ntp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205
RTCP_PSFB = 206

_FMT_NACK = 1
_FMT_PLI = 1
_FMT_FIR = 4
_FMT_AFB = 15

# Seconds between the NTP epoch (1900) and the Unix epoch (1970).
_NTP_EPOCH_OFFSET = 2208988800
# At most 31 report blocks / sources fit the 5-bit count field.
_MAX_COUNT = 31

_HDR = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp_ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # ssrc, lost word, highest, jitter, lsr, dlsr
_FCI_NACK = struct.Struct("!HH")
_FCI_FIR = struct.Struct("!IB3x")
_REMB = struct.Struct("!4sBBH")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int
    cumulative_lost: int  # signed 24-bit
    highest_seq: int  # extended highest sequence number received
    jitter: int  # RTP timestamp units
    lsr: int  # middle 32 bits of the last SR's NTP time
    dlsr: int  # delay since that SR, in 1/65536 s


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_ts: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@dataclass(frozen=True, slots=True)
class Fir:
    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (media ssrc, command sequence number)


@dataclass(frozen=True, slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int  # bits per second
    ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]


RtcpMessage = SenderReport | ReceiverReport | Nack | Pli | Fir | Remb | Bye


# ---------------------------------------------------------------- parsing


def _report_blocks(data: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:  # sign-extend the 24-bit cumulative loss
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return tuple(blocks)


def _parse_one(data: bytes, pt: int, count: int, pos: int, end: int) -> RtcpMessage | None:
    """One sub-packet body data[pos:end]; None if unknown or malformed."""
    size = end - pos
    if pt == RTCP_RTPFB:
        if count != _FMT_NACK or size < 8:
            return None
        sender, media = _U32X2.unpack_from(data, pos)
        seqs: list[int] = []
        for fci in range(pos + 8, end - 3, 4):
            pid, blp = _FCI_NACK.unpack_from(data, fci)
            seqs.append(pid)
            bit = 1
            while blp:
                if blp & 1:
                    # Mask: PID + bit crosses the 16-bit wrap.
                    seqs.append((pid + bit) & 0xFFFF)
                blp >>= 1
                bit += 1
        return Nack(sender, media, tuple(seqs))
    if pt == RTCP_RR:
        if size < 4 + 24 * count:
            return None
        return ReceiverReport(_U32.unpack_from(data, pos)[0], _report_blocks(data, pos + 4, count))
    if pt == RTCP_SR:
        if size < 24 + 24 * count:
            return None
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, pos)
        return SenderReport(
            ssrc, ntp, rtp_ts, packets, octets, _report_blocks(data, pos + 24, count)
        )
    if pt == RTCP_PSFB:
        if size < 8:
            return None
        sender, media = _U32X2.unpack_from(data, pos)
        if count == _FMT_PLI:
            return Pli(sender, media)
        if count == _FMT_AFB:
            # REMB: "REMB", count, exp(6) + mantissa(18), SSRCs.  The count
            # may claim more SSRCs than present: check before reading them.
            if size < 16:
                return None
            ident, num, b1, low = _REMB.unpack_from(data, pos + 8)
            if ident != b"REMB" or size < 16 + 4 * num:
                return None
            bitrate = (((b1 & 0x03) << 16) | low) << (b1 >> 2)
            ssrcs = struct.unpack_from(f"!{num}I", data, pos + 16)
            return Remb(sender, bitrate, ssrcs)
        if count == _FMT_FIR:
            entries = tuple(_FCI_FIR.unpack_from(data, fci) for fci in range(pos + 8, end - 7, 8))
            return Fir(sender, entries)
        return None
    if pt == RTCP_BYE:
        if size < 4 * count:
            return None
        return Bye(struct.unpack_from(f"!{count}I", data, pos))
    return None


def parse_rtcp(data: bytes) -> list[RtcpMessage]:
    """Messages of a compound RTCP packet; never raises.

    Unknown types (SDES, APP, XR, TWCC...) and malformed sub-packets are
    skipped; the walk stops at a bad version or a length past the end.
    """
    out: list[RtcpMessage] = []
    n = len(data)
    pos = 0
    while pos + 4 <= n:
        b0, pt, words = _HDR.unpack_from(data, pos)
        end = pos + 4 + (words << 2)
        if b0 & 0xC0 != 0x80 or end > n:
            break
        body_end = end
        if b0 & 0x20:
            # Padding count in the last byte; a bad one spoils only this part.
            pad = data[end - 1] if end > pos + 4 else 0
            if pad == 0 or pad > end - pos - 4:
                pos = end
                continue
            body_end = end - pad
        msg = _parse_one(data, pt, b0 & 0x1F, pos + 4, body_end)
        if msg is not None:
            out.append(msg)
        pos = end
    return out


# ---------------------------------------------------------------- building


def _header(packet_type: int, count: int, body_len: int) -> bytes:
    return _HDR.pack(0x80 | count, packet_type, body_len >> 2)


def _pack_blocks(reports: Sequence[ReportBlock]) -> bytes:
    parts = []
    for r in reports:
        lost = max(-0x800000, min(0x7FFFFF, r.cumulative_lost)) & 0xFFFFFF
        parts.append(
            _BLOCK.pack(
                r.ssrc & 0xFFFFFFFF,
                ((r.fraction_lost & 0xFF) << 24) | lost,
                r.highest_seq & 0xFFFFFFFF,
                r.jitter & 0xFFFFFFFF,
                r.lsr & 0xFFFFFFFF,
                r.dlsr & 0xFFFFFFFF,
            )
        )
    return b"".join(parts)


def build_rr(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    """Receiver report; more than 31 blocks spill into further RR packets."""
    parts = []
    first = True
    while first or reports:
        first = False
        chunk, reports = reports[:_MAX_COUNT], reports[_MAX_COUNT:]
        body = _U32.pack(ssrc & 0xFFFFFFFF) + _pack_blocks(chunk)
        parts.append(_header(RTCP_RR, len(chunk), len(body)) + body)
    return b"".join(parts)


def build_sr(
    ssrc: int,
    ntp: int,
    rtp_ts: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """Sender report; blocks beyond 31 follow in RR packets (RFC 3550 6.4.2)."""
    chunk = reports[:_MAX_COUNT]
    body = _SENDER_INFO.pack(
        ssrc & 0xFFFFFFFF,
        ntp & 0xFFFFFFFFFFFFFFFF,
        rtp_ts & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    ) + _pack_blocks(chunk)
    packet = _header(RTCP_SR, len(chunk), len(body)) + body
    if len(reports) > _MAX_COUNT:
        packet += build_rr(ssrc, reports[_MAX_COUNT:])
    return packet


def build_sdes(ssrc: int, cname: str) -> bytes:
    """SDES with one chunk holding the CNAME (truncated to 255 bytes)."""
    value = cname.encode("utf-8")[:255]
    chunk = _U32.pack(ssrc & 0xFFFFFFFF) + bytes((1, len(value))) + value
    # The item list ends with a null byte, then pad to 32 bits with nulls.
    chunk += b"\x00" * (4 - (len(chunk) & 3))
    return _header(RTCP_SDES, 1, len(chunk)) + chunk


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """Generic NACK (RTPFB fmt 1); b"" if ``seqs`` is empty.

    Sequence numbers are ordered by their signed distance from the first one
    so that a list crossing the 65535 -> 0 wrap packs into few PID+BLP words.
    """
    masked = [s & 0xFFFF for s in seqs]
    if not masked:
        return b""
    first = masked[0]
    ordered = sorted(set(masked), key=lambda s: (s - first + 0x8000) & 0xFFFF)
    fcis = []
    pid = ordered[0]
    blp = 0
    for s in ordered[1:]:
        d = (s - pid) & 0xFFFF
        if d <= 16:
            blp |= 1 << (d - 1)
        else:
            fcis.append(_FCI_NACK.pack(pid, blp))
            pid = s
            blp = 0
    fcis.append(_FCI_NACK.pack(pid, blp))
    body = _U32X2.pack(sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF) + b"".join(fcis)
    return _header(RTCP_RTPFB, _FMT_NACK, len(body)) + body


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture loss indication (PSFB fmt 1)."""
    return _header(RTCP_PSFB, _FMT_PLI, 8) + _U32X2.pack(
        sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF
    )


def build_fir(sender_ssrc: int, entries: Iterable[tuple[int, int]]) -> bytes:
    """Full intra request (RFC 5104, PSFB fmt 4): (media ssrc, seq nr) pairs."""
    body = _U32X2.pack(sender_ssrc & 0xFFFFFFFF, 0) + b"".join(
        _FCI_FIR.pack(ssrc & 0xFFFFFFFF, seq & 0xFF) for ssrc, seq in entries
    )
    return _header(RTCP_PSFB, _FMT_FIR, len(body)) + body


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """Receiver estimated maximum bitrate (PSFB fmt 15, at most 255 SSRCs)."""
    ssrcs = ssrcs[:255]
    bitrate = max(0, bitrate)
    # 18-bit mantissa, 6-bit exponent: precision is lost, never overstated.
    exp = max(0, bitrate.bit_length() - 18)
    if exp > 63:
        exp, mantissa = 63, 0x3FFFF
    else:
        mantissa = bitrate >> exp
    body = (
        _U32X2.pack(sender_ssrc & 0xFFFFFFFF, 0)
        + _REMB.pack(b"REMB", len(ssrcs), (exp << 2) | (mantissa >> 16), mantissa & 0xFFFF)
        + b"".join(_U32.pack(s & 0xFFFFFFFF) for s in ssrcs)
    )
    return _header(RTCP_PSFB, _FMT_AFB, len(body)) + body


def build_bye(ssrcs: Sequence[int]) -> bytes:
    """BYE for ``ssrcs`` (split into packets of at most 31 sources)."""
    parts = []
    for i in range(0, max(1, len(ssrcs)), _MAX_COUNT):
        chunk = ssrcs[i : i + _MAX_COUNT]
        body = b"".join(_U32.pack(s & 0xFFFFFFFF) for s in chunk)
        parts.append(_header(RTCP_BYE, len(chunk), len(body)) + body)
    return b"".join(parts)


# ---------------------------------------------------------------- NTP time


def seconds_to_ntp(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point, 1900 epoch) of Unix time ``seconds``."""
    whole = math.floor(seconds)
    # Split so the fraction keeps the float's full sub-second precision.
    frac = int((seconds - whole) * 4294967296.0)
    return (((whole + _NTP_EPOCH_OFFSET) << 32) + frac) & 0xFFFFFFFFFFFFFFFF


def ntp_now() -> int:
    """64-bit NTP timestamp of the wall clock, as sent in sender reports."""
    return seconds_to_ntp(time.time())


def ntp_to_seconds(ntp: int) -> float:
    """Unix time in seconds of a 64-bit NTP timestamp (inverse of ntp_now)."""
    return (ntp >> 32) - _NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / 4294967296.0


def ntp_middle32(ntp: int) -> int:
    """Middle 32 bits of an NTP timestamp: the LSR field of report blocks."""
    return (ntp >> 16) & 0xFFFFFFFF
