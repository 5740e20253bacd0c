"""Which codecs the SFU forwards, and how one negotiated codec is described."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FORWARDED_CODECS", "Codec", "choose_codec"]

# Names (lowercase) the forwarding core understands well enough to detect keyframes.
# aiortc negotiates G722 too, but browsers rarely offer it and it adds nothing here.
FORWARDED_CODECS: Mapping[str, tuple[str, ...]] = {
    "audio": ("opus", "pcmu", "pcma"),
    "video": ("vp8", "h264"),
}


@dataclass(frozen=True, slots=True)
class Codec:
    """One negotiated codec of a producer (ingress payload types)."""

    kind: str
    name: str
    clock_rate: int
    channels: int | None
    payload_type: int
    rtx_payload_type: int | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mime_type(self) -> str:
        return f"{self.kind}/{self.name}"

    def matches(self, mime_type: str, parameters: Mapping[str, Any]) -> bool:
        """Same codec and, for H.264, same packetization mode and profile."""
        if mime_type.lower() != self.mime_type.lower():
            return False
        if self.name != "h264":
            return True
        keys = ("packetization-mode", "profile-level-id")
        mine = {k: str(self.parameters.get(k, "")).lower() for k in keys}
        theirs = {k: str(parameters.get(k, "")).lower() for k in keys}
        return mine == theirs


def choose_codec(kind: str, negotiated: Sequence[Any]) -> Codec | None:
    """The first negotiated codec (the publisher's preference) that the SFU forwards.

    ``negotiated`` holds aiortc ``RTCRtpCodecParameters`` (mimeType, clockRate,
    channels, payloadType, parameters).
    """
    allowed = FORWARDED_CODECS.get(kind, ())
    rtx_by_apt = {
        c.parameters.get("apt"): c.payloadType
        for c in negotiated
        if c.mimeType.lower().endswith("/rtx")
    }
    for c in negotiated:
        name = c.mimeType.split("/", 1)[1].lower()
        if name not in allowed:
            continue
        if name == "h264" and str(c.parameters.get("packetization-mode", "0")) != "1":
            continue  # single-NAL mode cannot carry a browser's frames; others can
        return Codec(
            kind=kind,
            name=name,
            clock_rate=c.clockRate,
            channels=c.channels,
            payload_type=c.payloadType,
            rtx_payload_type=rtx_by_apt.get(c.payloadType),
            parameters=dict(c.parameters),
        )
    return None
