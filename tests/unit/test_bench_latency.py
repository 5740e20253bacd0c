"""Tests for payload matching (SFU-added latency, loss, first keyframe) on fake packets."""

from __future__ import annotations

import struct

import pytest

from bench.latency import (
    KIND_AUDIO,
    KIND_KEYFRAME,
    KIND_VIDEO,
    Arrivals,
    SendLedger,
    media_payload_types,
    payload_key,
)


def _rtp(pt: int, seq: int, payload: bytes, *, ssrc: int = 1, ext: bytes = b"") -> bytes:
    first = 0x90 if ext else 0x80
    header = struct.pack("!BBHII", first, pt, seq, seq * 3000, ssrc)
    if ext:
        padded = ext + b"\x00" * (-len(ext) % 4)
        header += struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded
    return header + payload


VP8_KEY = bytes([0x10, 0x00]) + b"key" * 10  # S=1, PID 0; P bit clear: keyframe
VP8_DELTA = bytes([0x10, 0x01]) + b"delta" * 10  # P bit set: interframe


def test_the_key_ignores_what_an_sfu_rewrites() -> None:
    sent = _rtp(96, 10, b"payload", ssrc=1, ext=bytes([0x10, 0xAA]))
    forwarded = _rtp(100, 5000, b"payload", ssrc=99)  # other PT, seq, SSRC, no extensions
    assert payload_key(sent) == payload_key(forwarded) is not None
    assert payload_key(_rtp(96, 10, b"other")) != payload_key(sent)
    assert payload_key(b"\x80\x60") is None
    assert payload_key(_rtp(96, 1, b"")) is None


def test_media_payload_types_leave_rtx_out() -> None:
    sdp = (
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\na=rtpmap:96 VP8/90000\r\n"
        "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:98 H264/90000\r\n"
    )
    assert media_payload_types(sdp) == ({96}, {111})


def test_latency_is_arrival_minus_send_time_on_one_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([1.0, 1.0005, 1.02, 1.0212])
    monkeypatch.setattr("bench.latency.time.perf_counter", lambda: next(clock))
    ledger = SendLedger()
    tap = ledger.add_publisher({96}, {111})
    arrivals = Arrivals(ledger)
    ledger.open_window(0.0)
    tap(_rtp(96, 2, VP8_KEY))  # sent at 1.0
    arrivals(_rtp(100, 7, VP8_KEY, ssrc=5))  # received at 1.0005
    tap(_rtp(111, 3, b"opus"))  # sent at 1.02
    arrivals(_rtp(101, 8, b"opus", ssrc=6))  # received at 1.0212
    assert list(arrivals.latencies_s) == pytest.approx([0.0005, 0.0012])
    assert arrivals.first_keyframe_at == arrivals.first_video_at == 1.0005
    assert ledger.sent[payload_key(_rtp(0, 0, VP8_KEY)) or 0][2] == KIND_KEYFRAME
    tap(bytes([0x80, 200]) + bytes(10))  # RTCP: skipped without reading the clock
    tap(_rtp(97, 4, b"rtx"))  # RTX payload type: skipped too
    assert ledger.window_sent == [2]


def test_a_delta_frame_is_video_but_not_a_keyframe() -> None:
    ledger = SendLedger()
    tap = ledger.add_publisher({96}, set())
    tap(_rtp(96, 1, VP8_DELTA))
    assert ledger.sent[payload_key(_rtp(0, 0, VP8_DELTA)) or 0][2] == KIND_VIDEO


def test_window_counts_latency_only_for_packets_sent_inside_it() -> None:
    ledger = SendLedger()
    tap = ledger.add_publisher({96}, {111})
    other = ledger.add_publisher({96}, {111})
    arrivals = Arrivals(ledger)
    early = _rtp(96, 1, VP8_DELTA)
    tap(early)
    ledger.open_window()
    key = _rtp(96, 2, VP8_KEY)
    audio = _rtp(111, 3, b"opus-frame")
    tap(key)
    tap(audio)
    other(_rtp(96, 9, b"\x10\x01other-publisher"))
    assert ledger.window_sent == [2, 1]

    arrivals(_rtp(100, 500, VP8_DELTA, ssrc=7))  # sent before the window: no latency
    keyframe_seen = arrivals.first_keyframe_at is not None
    assert arrivals.first_media_at is not None and not keyframe_seen
    arrivals(_rtp(100, 501, VP8_KEY, ssrc=7))
    arrivals(_rtp(101, 502, b"opus-frame", ssrc=8))
    arrivals(_rtp(100, 503, b"never sent"))
    ledger.close_window()
    tap(_rtp(96, 4, b"\x10\x01after"))  # after the window: not counted as sent
    assert ledger.window_sent == [2, 1]

    assert arrivals.packets == 4 and arrivals.unmatched == 1
    assert arrivals.first_keyframe_at is not None and arrivals.first_video_at is not None
    assert arrivals.publishers_seen == {0}
    assert arrivals.window_received == {0: 2}
    assert arrivals.received_from({0}) == 2 and arrivals.received_from({1}) == 0
    assert len(arrivals.latencies_s) == 2 and all(s >= 0 for s in arrivals.latencies_s)
    arrivals.reset_window()
    assert arrivals.window_received == {} and len(arrivals.latencies_s) == 0
    assert ledger.sent[payload_key(audio) or 0][2] == KIND_AUDIO


def test_a_retransmitted_copy_is_not_counted_twice() -> None:
    ledger = SendLedger()
    tap = ledger.add_publisher({96}, {111})
    arrivals = Arrivals(ledger)
    ledger.open_window(0.0)
    sent = _rtp(96, 7, VP8_DELTA)
    tap(sent)
    arrivals(sent)
    arrivals(_rtp(97, 900, VP8_DELTA))  # the same payload again (an RTX, unwrapped)
    assert arrivals.received_from({tap.index}) == 1 and arrivals.duplicates == 1
    assert len(arrivals.latencies_s) == 1 and arrivals.packets == 2


def test_a_looped_payload_sent_again_later_is_a_new_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([1.0, 1.001, 5.0, 5.001])
    monkeypatch.setattr("bench.latency.time.perf_counter", lambda: next(clock))
    ledger = SendLedger()
    tap = ledger.add_publisher({96}, {111})
    arrivals = Arrivals(ledger)
    ledger.open_window(0.0)
    audio = _rtp(111, 1, b"opus frame")
    tap(audio)  # at 1.0
    arrivals(audio)
    tap(_rtp(111, 201, b"opus frame"))  # the 4 s clip looped: same payload, at 5.0
    arrivals(_rtp(111, 201, b"opus frame"))
    assert arrivals.received_from({tap.index}) == 2 and arrivals.duplicates == 0
