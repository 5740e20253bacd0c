"""Simulcast in SDP (RFC 8853 ``a=simulcast``, RFC 8851 ``a=rid``): read an offer, fix our answer.

aiortc knows neither attribute: it answers a simulcast offer as if it had one stream, and a
browser then sends only its first layer. These pure functions find the layers a publisher
offers and add the receive side of them (rid lines, the simulcast line and the rid header
extensions) to the answer aiortc wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_LAYERS",
    "REPAIRED_RID_URI",
    "RID_URI",
    "SimulcastOffer",
    "add_simulcast_to_answer",
    "offered_simulcast",
]

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
MAX_LAYERS = 3


@dataclass(frozen=True, slots=True)
class SimulcastOffer:
    """One m-line's simulcast: rids as listed (highest quality first), extension ids (0: none)."""

    mid: str
    rids: tuple[str, ...]
    rid_ext_id: int
    repaired_rid_ext_id: int


def _sections(sdp: str) -> list[list[str]]:
    """Session block followed by one block per m-line (lines without line endings)."""
    blocks: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            blocks.append([])
        if line:
            blocks[-1].append(line)
    return blocks


def _first_choice(entry: str) -> str:
    """``~m`` (paused) and ``h,h2`` (alternatives) name the layer ``m`` / ``h``."""
    return entry.split(",")[0].lstrip("~")


def _parse_section(lines: list[str]) -> SimulcastOffer | None:
    mid = ""
    rids: tuple[str, ...] = ()
    rid_id = repaired_id = 0
    for line in lines:
        name, _, value = line[2:].partition(":")
        if name == "mid":
            mid = value.strip()
        elif name == "simulcast":
            direction, _, streams = value.strip().partition(" ")
            if direction == "send":
                rids = tuple(_first_choice(e) for e in streams.split(";") if e)
        elif name == "extmap":
            ident, _, uri = value.partition(" ")
            uri = uri.split()[0] if uri.split() else ""
            if uri == RID_URI:
                rid_id = int(ident.partition("/")[0])
            elif uri == REPAIRED_RID_URI:
                repaired_id = int(ident.partition("/")[0])
    if len(rids) < 2 or not rid_id:
        return None  # one layer (or no way to tell layers apart): plain forwarding
    return SimulcastOffer(mid, rids, rid_id, repaired_id)


def offered_simulcast(offer: str) -> dict[str, SimulcastOffer]:
    """Video m-lines of an offer (validated by :mod:`sfu.sdp_guard`) that send simulcast."""
    found: dict[str, SimulcastOffer] = {}
    for block in _sections(offer)[1:]:
        if block[0].startswith("m=video"):
            layers = _parse_section(block)
            if layers is not None:
                found[layers.mid] = layers
    return found


def add_simulcast_to_answer(answer: str, offers: dict[str, SimulcastOffer]) -> str:
    """``answer`` with rid/simulcast lines and rid extensions for every accepted m-line.

    An m-line aiortc rejected (port 0) or that has no counterpart is left alone.
    """
    if not offers:
        return answer
    blocks = _sections(answer)
    for block in blocks[1:]:
        mids = [line[6:].strip() for line in block if line.startswith("a=mid:")]
        layers = offers.get(mids[0]) if mids else None
        if layers is None or block[0].split()[1] == "0":
            continue
        present = {
            line.partition(" ")[2].split()[0] for line in block if line.startswith("a=extmap:")
        }
        extra = []
        for ext_id, uri in (
            (layers.rid_ext_id, RID_URI),
            (layers.repaired_rid_ext_id, REPAIRED_RID_URI),
        ):
            if ext_id and uri not in present:
                extra.append(f"a=extmap:{ext_id} {uri}")
        extra += [f"a=rid:{rid} recv" for rid in layers.rids]
        extra.append("a=simulcast:recv " + ";".join(layers.rids))
        block.extend(extra)
    return "\r\n".join(line for block in blocks for line in block) + "\r\n"
