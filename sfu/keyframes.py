"""Keyframe detection on RTP payloads, without decoding.

The SFU needs to know where a keyframe starts so that a new or recovered
subscriber is only fed from a decodable point.  These functions look at the
payload descriptor / NAL headers only, and never raise on short or garbage
input (they answer False).
"""

from __future__ import annotations

__all__ = [
    "AUDIO_CODECS",
    "is_keyframe_start",
    "vp8_picture_id",
]

# Every audio packet is decodable on its own: there are no keyframes.
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722", "g729", "ilbc", "isac", "l16"})

_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def _vp8_keyframe_start(payload: bytes | memoryview) -> bool:
    n = len(payload)
    # The first packet of a frame has S=1 and PID=0 ...
    if n < 2:
        return False
    b0 = payload[0]
    if b0 & 0x1F != 0x10:
        return False
    pos = 1
    if b0 & 0x80:  # X: extension byte follows (RFC 7741 descriptor)
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 15 bits when M is set
            if pos >= n:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: one shared byte
            pos += 1
    # ... then the VP8 payload header, whose P bit is 0 on keyframes.
    return pos < n and not payload[pos] & 0x01


def vp8_picture_id(payload: bytes | memoryview) -> int | None:
    """The 7- or 15-bit picture id of a VP8 payload descriptor, None if absent."""
    n = len(payload)
    if n < 3 or not payload[0] & 0x80 or not payload[1] & 0x80:
        return None
    b = payload[2]
    if b & 0x80:
        if n < 4:
            return None
        return ((b & 0x7F) << 8) | payload[3]
    return b


def _h264_keyframe_start(payload: bytes | memoryview) -> bool:
    # An SPS, or the first slice of an IDR picture, starts a keyframe.  A
    # picture may have several IDR slices (x264 with threads): only the one
    # with first_mb_in_slice == 0, whose ue(v) code is a single 1 bit, counts.
    n = len(payload)
    if n < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == _H264_SPS:
        return True
    if nal_type == _H264_IDR:
        return n > 1 and bool(payload[1] & 0x80)
    if nal_type == _H264_STAP_A:
        # Aggregated NALs, each behind a 16-bit size.
        pos = 1
        while pos + 2 < n:
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > n:
                return False
            inner = payload[pos] & 0x1F
            if inner == _H264_SPS or (inner == _H264_IDR and size > 1 and payload[pos + 1] & 0x80):
                return True
            pos += size
        return False
    if nal_type == _H264_FU_A:
        # FU header: S bit and the fragmented NAL's type; the slice header
        # follows directly (the NAL header byte is not repeated).
        if n < 2:
            return False
        fu = payload[1]
        if not fu & 0x80:
            return False
        fu_type = fu & 0x1F
        if fu_type == _H264_SPS:
            return True
        return fu_type == _H264_IDR and n > 2 and bool(payload[2] & 0x80)
    return False


def _vp9_keyframe_start(payload: bytes | memoryview) -> bool:
    # Descriptor (draft-ietf-payload-vp9): I|P|L|F|B|E|V|Z.
    n = len(payload)
    if n < 1:
        return False
    b0 = payload[0]
    # Must begin a frame (B) and not be inter-picture predicted (P).
    if b0 & 0x48 != 0x08:
        return False
    pos = 1
    if b0 & 0x80:  # I: picture id, 15 bits when M is set
        if pos >= n:
            return False
        pos += 2 if payload[pos] & 0x80 else 1
    if b0 & 0x20:  # L: layer indices
        if pos >= n:
            return False
        if payload[pos] & 0x0E:  # the superframe starts at spatial layer 0
            return False
        pos += 1 if b0 & 0x10 else 2  # TL0PICIDX only in non-flexible mode
    if b0 & 0x02:  # V: scalability structure
        if pos >= n:
            return False
        ss = payload[pos]
        pos += 1
        if ss & 0x10:  # Y: a width and height per spatial layer
            pos += 4 * ((ss >> 5) + 1)
        if ss & 0x08:  # G: picture group description
            if pos >= n:
                return False
            groups = payload[pos]
            pos += 1
            for _ in range(groups):
                if pos >= n:
                    return False
                pos += 1 + ((payload[pos] >> 2) & 0x03)
    if pos >= n:
        return False
    # Uncompressed header: frame marker, profile, show_existing_frame, frame_type.
    h = payload[pos]
    if h & 0xC0 != 0x80:
        return False
    if h & 0x30 == 0x30:  # profile 3 has one more reserved bit before them
        return not h & 0x06
    return not h & 0x0C


def is_keyframe_start(codec: str, payload: bytes | memoryview) -> bool:
    """True if ``payload`` is the first RTP packet of a keyframe.

    ``codec`` is the lowercase codec name.  Audio codecs are always True;
    unknown codecs are False.
    """
    if codec == "vp8":
        return _vp8_keyframe_start(payload)
    if codec == "h264":
        return _h264_keyframe_start(payload)
    if codec == "vp9":
        return _vp9_keyframe_start(payload)
    return codec in AUDIO_CODECS
