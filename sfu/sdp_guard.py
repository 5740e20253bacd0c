"""Validate a client's SDP offer before aiortc ever sees it.

aiortc raises ``AttributeError``, ``KeyError``, ``IndexError`` or ``AssertionError`` on
many malformed offers, accepts some out-of-range values silently, and can leave a
background task dying later (design.md §3). Everything it would choke on is rejected
here with a message a client developer can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sfu.codec import FORWARDED_CODECS

__all__ = ["MAX_MEDIA_SECTIONS", "OfferSummary", "SdpError", "validate_answer", "validate_offer"]

MAX_MEDIA_SECTIONS = 16
MAX_SDP_BYTES = 60_000
_LINE = re.compile(r"^[a-z]=")
_HEX_FINGERPRINT = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+$")
_FINGERPRINT_ALGORITHMS = {"sha-1", "sha-224", "sha-256", "sha-384", "sha-512"}
_SETUP_ROLES = {"actpass", "active", "passive"}
_DIRECTIONS = {"sendrecv", "sendonly", "recvonly", "inactive"}
_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
MAX_SIMULCAST_LAYERS = 3
_NEEDS_VALUE = {
    "rtpmap",
    "fmtp",
    "extmap",
    "setup",
    "fingerprint",
    "ice-ufrag",
    "ice-pwd",
    "mid",
    "msid",
    "candidate",
    "ssrc",
    "ssrc-group",
    "rtcp-fb",
    "group",
    "rid",
    "simulcast",
}


class SdpError(ValueError):
    """The offer cannot be negotiated; the message says why."""


@dataclass(slots=True)
class _Media:
    kind: str
    port: int
    formats: list[int]
    direction: str = "sendrecv"
    mid: str | None = None
    codecs: dict[int, str] = field(default_factory=dict)
    attrs: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What the guard learnt: per m-line (kind, mid, direction, codec names)."""

    media: tuple[tuple[str, str, str, frozenset[str]], ...]


def _int(text: str, what: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise SdpError(f"{what} must be a number, got {text[:20]!r}")
    value = int(text)
    if not low <= value <= high:
        raise SdpError(f"{what} {value} is out of range {low}..{high}")
    return value


def _split_sections(text: str) -> tuple[dict[str, list[str]], list[_Media]]:
    session: dict[str, list[str]] = {}
    media: list[_Media] = []
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise SdpError("an SDP must start with v=0")
    for line in lines:
        if not _LINE.match(line):
            raise SdpError(f"malformed SDP line {line[:40]!r}")
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(f"malformed m= line {line[:60]!r}")
            kind, port, proto, *formats = parts
            if kind == "application":
                raise SdpError("data channels are not supported")
            if kind not in ("audio", "video"):
                raise SdpError(f"unsupported media kind {kind[:20]!r}")
            if "SAVP" not in proto:
                raise SdpError(f"media must be SRTP (got {proto[:30]!r})")
            pts = [_int(f, "payload type", 0, 127) for f in formats]
            if len(set(pts)) != len(pts):
                raise SdpError("duplicate payload types in an m= line")
            media.append(_Media(kind, _int(port, "port", 0, 65535), pts))
            if len(media) > MAX_MEDIA_SECTIONS:
                raise SdpError(f"at most {MAX_MEDIA_SECTIONS} media sections")
        elif line.startswith("a="):
            name, _, value = line[2:].partition(":")
            if name in _NEEDS_VALUE and not value.strip():
                raise SdpError(f"a={name} needs a value")
            target = media[-1].attrs if media else session
            target.setdefault(name, []).append(value.strip())
    return session, media


def _check_media(m: _Media, session: dict[str, list[str]]) -> None:
    for value in m.attrs.get("rtpmap", []):
        pt_text, _, codec = value.partition(" ")
        pt = _int(pt_text, "rtpmap payload type", 0, 127)
        bits = codec.split("/")
        if len(bits) < 2 or not bits[0]:
            raise SdpError(f"a=rtpmap:{pt} needs name/clock-rate")
        _int(bits[1], "clock rate", 1, 1_000_000)
        if len(bits) > 2:
            _int(bits[2], "channel count", 1, 8)
        if pt not in m.formats:
            raise SdpError(f"a=rtpmap:{pt} is not listed in the m= line")
        if pt in m.codecs:
            raise SdpError(f"payload type {pt} mapped twice")
        m.codecs[pt] = bits[0].lower()
    for value in m.attrs.get("fmtp", []):
        pt = _int(value.partition(" ")[0], "fmtp payload type", 0, 127)
        if pt not in m.codecs:
            raise SdpError(f"a=fmtp:{pt} has no a=rtpmap")
    ids: set[int] = set()
    for value in m.attrs.get("extmap", []):
        ident, _, uri = value.partition(" ")
        ext_id = _int(ident.partition("/")[0], "extmap id", 1, 255)
        if ext_id == 15 or ext_id in ids or not uri.strip():
            raise SdpError(f"a=extmap:{ext_id} is reserved, duplicated or has no URI")
        ids.add(ext_id)
    for value in m.attrs.get("candidate", []):
        bits = value.split()
        if len(bits) < 8 or bits[6] != "typ":
            raise SdpError("a=candidate is too short")
        _int(bits[1], "candidate component", 1, 256)
        _int(bits[3], "candidate priority", 0, 2**32 - 1)
        _int(bits[5], "candidate port", 0, 65535)
    for value in m.attrs.get("ssrc", []):
        _int(value.partition(" ")[0], "ssrc", 0, 2**32 - 1)
    for value in m.attrs.get("msid", []):
        if not value.split():
            raise SdpError("a=msid is empty")
    _check_simulcast(m)
    directions = [d for d in _DIRECTIONS if d in m.attrs]
    if len(directions) > 1:
        raise SdpError("more than one direction attribute in an m= line")
    m.direction = directions[0] if directions else "sendrecv"
    mids = m.attrs.get("mid", [])
    if len(mids) != 1 or len(mids[0]) > 32:
        raise SdpError("every m= line needs exactly one a=mid (at most 32 characters)")
    m.mid = mids[0]

    def find(name: str) -> list[str]:
        return m.attrs.get(name) or session.get(name) or []

    setup = find("setup")
    if not setup or setup[0] not in _SETUP_ROLES:
        raise SdpError("a=setup must be actpass, active or passive")
    fingerprints = find("fingerprint")
    if not fingerprints:
        raise SdpError("a=fingerprint is required (DTLS-SRTP)")
    for value in fingerprints:
        algorithm, _, digest = value.partition(" ")
        if algorithm.lower() not in _FINGERPRINT_ALGORITHMS or not _HEX_FINGERPRINT.match(digest):
            raise SdpError("a=fingerprint must be '<sha-256|...> AA:BB:...'")
    if not find("ice-ufrag") or not find("ice-pwd"):
        raise SdpError("a=ice-ufrag and a=ice-pwd are required")


def _check_simulcast(m: _Media) -> None:
    """``a=rid``/``a=simulcast`` (RFC 8851/8853): send-only layers of a video m-line, at most 3."""
    rids: set[str] = set()
    for value in m.attrs.get("rid", []):
        bits = value.split()
        if len(bits) < 2 or not _RID.match(bits[0]) or bits[1] not in ("send", "recv"):
            raise SdpError("a=rid must be '<id of 1-16 letters, digits, - or _> send|recv'")
        if bits[1] != "send" or m.kind != "video":
            raise SdpError("only video layers sent by the client (a=rid:<id> send) are accepted")
        if bits[0] in rids:
            raise SdpError(f"a=rid:{bits[0]} is declared twice")
        rids.add(bits[0])
    lines = m.attrs.get("simulcast", [])
    if not lines:
        return
    direction, _, streams = lines[0].partition(" ")
    if len(lines) > 1 or direction != "send":
        raise SdpError("one a=simulcast:send line per m-line; the server sends no simulcast")
    chosen = [s.split(",")[0].lstrip("~") for s in streams.strip().split(";")]
    if len(chosen) > MAX_SIMULCAST_LAYERS:
        raise SdpError(f"at most {MAX_SIMULCAST_LAYERS} simulcast layers")
    if len(set(chosen)) != len(chosen) or not set(chosen) <= rids:
        raise SdpError("a=simulcast must list each declared a=rid at most once")


def validate_offer(text: object) -> OfferSummary:
    """Raise :class:`SdpError` unless ``text`` is an offer the SFU can negotiate."""
    return _validate(text, offer=True)


def validate_answer(text: object) -> OfferSummary:
    """Raise :class:`SdpError` unless ``text`` is a well-formed answer to our offer."""
    return _validate(text, offer=False)


def _validate(text: object, *, offer: bool) -> OfferSummary:
    if not isinstance(text, str):
        raise SdpError("sdp must be a string")
    if len(text) > MAX_SDP_BYTES:
        raise SdpError("sdp is too large")
    session, media = _split_sections(text)
    if not media:
        raise SdpError("the offer has no media sections")
    seen_mids: set[str] = set()
    summary = []
    for m in media:
        _check_media(m, session)
        assert m.mid is not None
        if m.mid in seen_mids:
            raise SdpError(f"a=mid:{m.mid} is used twice")
        seen_mids.add(m.mid)
        names = frozenset(m.codecs.values())
        sending = m.direction in ("sendonly", "sendrecv") and m.port != 0
        if offer and sending and not names & set(FORWARDED_CODECS[m.kind]):
            wanted = ", ".join(FORWARDED_CODECS[m.kind])
            raise SdpError(f"{m.kind} m-line {m.mid} offers no usable codec (need one of {wanted})")
        summary.append((m.kind, m.mid, m.direction if m.port else "inactive", names))
    return OfferSummary(tuple(summary))
