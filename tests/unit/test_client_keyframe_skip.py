"""aiortc's video jitter buffer, wrapped by the bridge, decodes from a keyframe past a hole."""

from types import SimpleNamespace
from typing import Any

from aiortc import RTCRtpCodecParameters
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from sfu.aiortc_bridge import decode_from_keyframes
from sfu.keyframes import is_keyframe_start

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEY = bytes([0x10, 0x00])  # descriptor S=1 PID=0, then a VP8 header with P=0 (keyframe)
DELTA = bytes([0x10, 0x01])  # first packet of an inter frame
MIDDLE = bytes([0x00, 0x00])  # a later packet of a frame


def _receiver() -> Any:
    # The receiver's private state, as aiortc's RTCRtpReceiver holds it (name-mangled).
    return SimpleNamespace(
        _RTCRtpReceiver__jitter_buffer=JitterBuffer(capacity=512, is_video=True),
        _RTCRtpReceiver__codecs={96: VP8},
        _RTCRtpReceiver__nack_generator=NackGenerator(),
    )


def _feed(receiver: Any, packets: list[tuple[int, int, bytes]]) -> list[int]:
    """Feed (seq, timestamp, payload); return the timestamps of frames the buffer emits."""
    buffer = receiver._RTCRtpReceiver__jitter_buffer
    emitted = []
    for seq, timestamp, payload in packets:
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=timestamp)
        packet.payload = payload
        packet._data = payload  # type: ignore[attr-defined]  # what aiortc's depayloader sets
        receiver._RTCRtpReceiver__nack_generator.add(packet)
        frame = buffer.add(packet)[1]
        if frame is not None:
            emitted.append(frame.timestamp)
    return emitted


# Frame 100 complete, frame 200 lost its second packet (seq 3) for good, then a keyframe.
STREAM = [
    (1, 100, KEY),
    (2, 200, DELTA),
    (4, 300, DELTA),
    (5, 400, KEY),
    (6, 400, MIDDLE),
    (7, 500, DELTA),
]


def test_stock_buffer_waits_for_the_hole() -> None:
    assert _feed(_receiver(), STREAM) == [100]  # nothing after the hole


def test_a_keyframe_after_a_hole_is_decoded_and_the_hole_forgotten() -> None:
    receiver = _receiver()
    decode_from_keyframes(receiver, is_keyframe_start)
    assert _feed(receiver, STREAM) == [100, 400]
    assert receiver._RTCRtpReceiver__nack_generator.missing == set()


def test_without_a_hole_nothing_is_dropped() -> None:
    receiver = _receiver()
    decode_from_keyframes(receiver, is_keyframe_start)
    frames = [(1, 100, KEY), (2, 100, MIDDLE), (3, 200, DELTA), (4, 300, KEY), (5, 400, DELTA)]
    assert _feed(receiver, frames) == [100, 200, 300]
