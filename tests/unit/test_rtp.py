"""Tests for sfu.rtp: header parsing, extension translation, RTX, sequence math."""

from __future__ import annotations

import random
import struct

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unpack_header_extensions, wrap_rtx

from sfu.rtp import (
    HEADER,
    SeqUnwrapper,
    TsUnwrapper,
    find_extension,
    is_rtcp,
    payload_end,
    payload_offset,
    rtx_unwrap,
    rtx_wrap,
    seq_diff,
    translate_extensions,
    ts_diff,
)

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

Elements = list[tuple[int, bytes]]


def one_byte(elements: Elements, padding_between: int = 0) -> tuple[int, bytes]:
    block = b"".join(
        bytes([(i << 4) | (len(v) - 1)]) + v + bytes(padding_between) for i, v in elements
    )
    return 0xBEDE, block + bytes(-len(block) % 4)


def two_byte(elements: Elements, appbits: int = 0) -> tuple[int, bytes]:
    block = b"".join(bytes([i, len(v)]) + v for i, v in elements)
    return 0x1000 | appbits, block + bytes(-len(block) % 4)


def make_rtp(
    *,
    seq: int = 1000,
    ts: int = 123456,
    ssrc: int = 0x11223344,
    pt: int = 96,
    marker: int = 0,
    csrcs: tuple[int, ...] = (),
    ext: tuple[int, bytes] | None = None,
    payload: bytes = b"\x10\x20\x30\x40\x50",
    padding: int = 0,
) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    out = HEADER.pack(b0, (marker << 7) | pt, seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        profile, block = ext
        out += struct.pack("!HH", profile, len(block) // 4) + block
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def ext_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()
            ]
        )
    )
    return m


def identity_map() -> list[int]:
    return list(range(256))


def elements_of(packet: bytes) -> tuple[int, Elements]:
    """(profile, elements) of a packet's extension block, via aiortc."""
    assert packet[0] & 0x10
    hdr_end = 12 + 4 * (packet[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", packet, hdr_end)
    block = packet[hdr_end + 4 : hdr_end + 4 + 4 * words]
    # aiortc only knows 0x1000 itself, not the appbits variants 0x1001..0x100F.
    aiortc_profile = 0x1000 if profile & 0xFFF0 == 0x1000 else profile
    return profile, unpack_header_extensions(aiortc_profile, block)


# ------------------------------------------------------------------ basics


def test_is_rtcp() -> None:
    assert is_rtcp(b"\x80\xc8")
    assert is_rtcp(b"\x80\xdf\x00\x00")
    assert not is_rtcp(b"\x80\xbf")
    assert not is_rtcp(b"\x80\xe0")
    assert not is_rtcp(make_rtp(pt=96, marker=1))
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")


def test_payload_offset_and_end_match_aiortc() -> None:
    cases = [
        make_rtp(),
        make_rtp(csrcs=(1, 2, 3)),
        make_rtp(ext=one_byte([(1, b"a"), (3, b"\x01\x02\x03")])),
        make_rtp(csrcs=(9,), ext=two_byte([(20, b""), (2, b"xyz")]), padding=4),
        make_rtp(payload=b"", padding=1),
        make_rtp(payload=b""),
    ]
    for packet in cases:
        parsed = RtpPacket.parse(packet)
        off = payload_offset(packet)
        end = payload_end(packet)
        assert off >= 12
        assert packet[off:end] == parsed.payload
        assert len(packet) - end == parsed.padding_size


def test_payload_offset_malformed() -> None:
    good = make_rtp(csrcs=(1, 2), ext=one_byte([(1, b"ab")]))
    assert payload_offset(good[:11]) == -1
    assert payload_offset(b"\x40" + good[1:]) == -1  # version 1
    assert payload_offset(good[: 12 + 4 * 2 + 2]) == -1  # ext header cut
    # extension length pointing past the end
    bad = bytearray(good)
    struct.pack_into("!H", bad, 12 + 8 + 2, 200)
    assert payload_offset(bytes(bad)) == -1
    # CSRC count beyond the end
    assert payload_offset(bytes([0x8F]) + good[1:14]) == -1
    # header only is fine: empty payload
    assert payload_offset(make_rtp(payload=b"")) == 12


def test_payload_end_padding() -> None:
    assert payload_end(make_rtp(payload=b"abc", padding=5)) == 12 + 3
    bad = bytearray(make_rtp(payload=b"abc", padding=2))
    bad[-1] = 0
    assert payload_end(bytes(bad)) == -1
    bad[-1] = 6  # more than payload + padding
    assert payload_end(bytes(bad)) == -1
    # P bit set with nothing after the header
    assert payload_end(bytes([0xA0]) + make_rtp(payload=b"")[1:]) == -1
    assert payload_end(b"\x00" * 12) == -1


# ------------------------------------------------------------------ find_extension


def test_find_extension_one_byte() -> None:
    packet = make_rtp(csrcs=(7,), ext=one_byte([(1, b"0"), (2, b"\x81"), (3, b"\x12\x34\x56")], 2))
    assert find_extension(packet, 1) == b"0"
    assert find_extension(packet, 2) == b"\x81"
    assert find_extension(packet, 3) == b"\x12\x34\x56"
    assert find_extension(packet, 4) is None
    assert find_extension(packet, 0) is None
    assert find_extension(packet, 15) is None
    assert find_extension(packet, 300) is None
    assert find_extension(make_rtp(), 1) is None


def test_find_extension_two_byte() -> None:
    packet = make_rtp(ext=two_byte([(1, b""), (200, b"x" * 40), (5, b"mid")], appbits=3))
    assert find_extension(packet, 1) == b""
    assert find_extension(packet, 200) == b"x" * 40
    assert find_extension(packet, 5) == b"mid"
    assert find_extension(packet, 6) is None


def test_find_extension_stops_at_id_15_and_bad_lengths() -> None:
    block = bytes([0x10, 0x41, 0xF0, 0x20, 0x42, 0, 0, 0])  # id 1, id 15 ends, id 2 ignored
    packet = make_rtp(ext=(0xBEDE, block))
    assert find_extension(packet, 1) == b"A"
    assert find_extension(packet, 2) is None
    # element length running past the block
    packet = make_rtp(ext=(0xBEDE, bytes([0x10, 0x41, 0x2F, 0x00])))
    assert find_extension(packet, 1) == b"A"
    assert find_extension(packet, 2) is None
    packet = make_rtp(ext=(0x1000, bytes([0x05, 0x09, 0x00, 0x00])))
    assert find_extension(packet, 5) is None
    # unknown profile
    assert find_extension(make_rtp(ext=(0x1234, bytes([0x10, 0x41, 0, 0]))), 1) is None


def test_find_extension_matches_aiortc_values() -> None:
    ids = {MID: 1, AUDIO_LEVEL: 2, ABS_SEND_TIME: 3, TWCC: 4}
    m = ext_map(ids)
    src = RtpPacket(payload_type=111, sequence_number=5, timestamp=7, ssrc=9, payload=b"op")
    src.extensions.mid = "a0"
    src.extensions.audio_level = (True, 42)
    src.extensions.abs_send_time = 0x123456
    src.extensions.transport_sequence_number = 0xBEEF
    packet = src.serialize(m)
    assert find_extension(packet, 1) == b"a0"
    assert find_extension(packet, 2) == bytes([0x80 | 42])
    assert find_extension(packet, 3) == b"\x12\x34\x56"
    assert find_extension(packet, 4) == b"\xbe\xef"


# ------------------------------------------------------------------ translate_extensions


def test_translate_identity_returns_same_object() -> None:
    for ext in (one_byte([(1, b"a"), (2, b"bb")], 1), two_byte([(1, b"a"), (2, b"")])):
        packet = make_rtp(ext=ext)
        assert translate_extensions(packet, identity_map()) is packet
    plain = make_rtp()
    assert translate_extensions(plain, identity_map()) is plain


def test_translate_one_byte_remap_drop_and_reorder() -> None:
    packet = make_rtp(
        csrcs=(0xAAAA, 0xBBBB),
        ext=one_byte([(1, b"m1"), (2, b"\x85"), (3, b"\x01\x02\x03")]),
        payload=b"payload-bytes",
        padding=3,
    )
    id_map = [0] * 256
    id_map[1] = 4  # mid 1 -> 4
    id_map[3] = 2  # abs-send-time 3 -> 2
    # audio level (2) dropped
    out = translate_extensions(packet, id_map)
    assert out is not None and out is not packet
    profile, elements = elements_of(out)
    assert profile == 0xBEDE
    assert elements == [(4, b"m1"), (2, b"\x01\x02\x03")]
    parsed, orig = RtpPacket.parse(out), RtpPacket.parse(packet)
    assert parsed.csrc == orig.csrc == [0xAAAA, 0xBBBB]
    assert parsed.payload == orig.payload == b"payload-bytes"
    assert parsed.padding_size == 3
    assert out[1:12] == packet[1:12]
    assert out[-3:] == packet[-3:]


def test_translate_roundtrip_with_aiortc_maps() -> None:
    ingress = {MID: 1, AUDIO_LEVEL: 2, ABS_SEND_TIME: 3, TWCC: 5}
    egress = {MID: 9, ABS_SEND_TIME: 4, TWCC: 14}
    src = RtpPacket(payload_type=96, sequence_number=65535, timestamp=1, ssrc=2, payload=b"v")
    src.extensions.mid = "video"
    src.extensions.audio_level = (False, 10)
    src.extensions.abs_send_time = 0xABCDEF
    src.extensions.transport_sequence_number = 1234
    packet = src.serialize(ext_map(ingress))
    id_map = [0] * 256
    for uri, i in ingress.items():
        id_map[i] = egress.get(uri, 0)
    out = translate_extensions(packet, id_map)
    assert out is not None
    parsed = RtpPacket.parse(out, ext_map(egress))
    assert parsed.extensions.mid == "video"
    assert parsed.extensions.abs_send_time == 0xABCDEF
    assert parsed.extensions.transport_sequence_number == 1234
    assert parsed.extensions.audio_level is None
    assert parsed.payload == b"v" and parsed.sequence_number == 65535


def test_translate_renumber_only_keeps_layout() -> None:
    # Fast path: ids renumbered within 1..14, nothing dropped: same length,
    # padding between elements kept, only the id nibbles differ.
    packet = make_rtp(ext=one_byte([(1, b"a"), (2, b"bcd"), (5, b"xy")], 1), padding=2)
    id_map = identity_map()
    id_map[1], id_map[5] = 14, 3
    out = translate_extensions(packet, id_map)
    assert out is not None and len(out) == len(packet)
    assert elements_of(out) == (0xBEDE, [(14, b"a"), (2, b"bcd"), (3, b"xy")])
    assert [i for i, (x, y) in enumerate(zip(out, packet, strict=True)) if x != y] == [16, 24]
    # a bad element after the first renumbered one still makes it None
    bad = make_rtp(ext=(0xBEDE, bytes([0x10, 0x41, 0x2F, 0x00])))
    assert translate_extensions(bad, id_map) is None


def test_translate_drop_all_clears_x_bit() -> None:
    packet = make_rtp(csrcs=(5,), ext=one_byte([(1, b"a"), (2, b"b")]), padding=2)
    out = translate_extensions(packet, [0] * 256)
    assert out == make_rtp(csrcs=(5,), padding=2)
    assert out is not None and not out[0] & 0x10


def test_translate_to_high_id_switches_to_two_byte() -> None:
    packet = make_rtp(ext=one_byte([(1, b"a"), (2, b"bcd")]))
    id_map = identity_map()
    id_map[2] = 200
    out = translate_extensions(packet, id_map)
    assert out is not None
    assert elements_of(out) == (0x1000, [(1, b"a"), (200, b"bcd")])
    assert payload_offset(out) == len(out) - 5


def test_translate_two_byte_input() -> None:
    # Changed and fitting the one-byte profile: output uses it.
    packet = make_rtp(ext=two_byte([(1, b"a"), (17, b"xy"), (3, b"q")], appbits=5))
    id_map = identity_map()
    id_map[17] = 2
    out = translate_extensions(packet, id_map)
    assert out is not None
    assert elements_of(out) == (0xBEDE, [(1, b"a"), (2, b"xy"), (3, b"q")])
    # A zero-length or long value keeps the two-byte profile (and its appbits).
    packet = make_rtp(ext=two_byte([(1, b""), (2, b"z" * 20), (3, b"q")], appbits=5))
    id_map = identity_map()
    id_map[3] = 0
    out = translate_extensions(packet, id_map)
    assert out is not None
    assert elements_of(out) == (0x1005, [(1, b""), (2, b"z" * 20)])


def test_translate_invalid_map_entries_drop() -> None:
    packet = make_rtp(ext=one_byte([(1, b"a"), (2, b"b")]))
    id_map = identity_map()
    id_map[1] = 256
    id_map[2] = -3
    out = translate_extensions(packet, id_map)
    assert out == make_rtp()
    assert translate_extensions(packet, [0, 1, 2]) is None  # short table


def test_translate_malformed_returns_none() -> None:
    # one-byte element running past the block
    assert translate_extensions(make_rtp(ext=(0xBEDE, bytes([0x1F, 0, 0, 0]))), [0] * 256) is None
    # two-byte element header cut by the block end
    assert translate_extensions(make_rtp(ext=(0x1000, bytes([0, 0, 0, 7]))), [0] * 256) is None
    # two-byte value running past the block
    assert translate_extensions(make_rtp(ext=(0x1000, bytes([7, 9, 0, 0]))), [0] * 256) is None
    # block length running past the packet
    bad = bytearray(make_rtp(ext=one_byte([(1, b"a")])))
    struct.pack_into("!H", bad, 14, 50)
    assert translate_extensions(bytes(bad), identity_map()) is None
    assert translate_extensions(b"\x90\x60\x00", identity_map()) is None
    assert translate_extensions(b"\x00" * 20, identity_map()) is None


def test_translate_unknown_profile_kept() -> None:
    packet = make_rtp(ext=(0x1234, b"\x10\x41\x00\x00"))
    assert translate_extensions(packet, [0] * 256) is packet


def test_translate_random_valid_packets() -> None:
    """Property check: kept elements survive with their new ids, the rest is intact."""
    rng = random.Random(1234)
    for _ in range(2000):
        two = rng.random() < 0.4
        count = rng.randint(1, 6)
        ids = rng.sample(range(1, 256 if two else 15), count)
        elements = [
            (i, rng.randbytes(rng.randint(0 if two else 1, 20 if two else 16))) for i in ids
        ]
        ext = two_byte(elements) if two else one_byte(elements, rng.randint(0, 2))
        payload = rng.randbytes(rng.randint(0, 50))
        packet = make_rtp(
            csrcs=tuple(range(rng.randint(0, 3))),
            ext=ext,
            payload=payload,
            padding=rng.choice((0, 0, 1, 4)),
        )
        id_map = [0] * 256
        for i in ids:
            id_map[i] = rng.choice((0, i, rng.randint(1, 255), rng.randint(1, 14)))
        out = translate_extensions(packet, id_map)
        assert out is not None
        off, end = payload_offset(out), payload_end(out)
        assert out[off:end] == payload
        assert out[1:12] == packet[1:12]
        expected = [(id_map[i], v) for i, v in elements if id_map[i]]
        if not expected:
            assert not out[0] & 0x10
            continue
        profile, got = elements_of(out)
        assert got == expected
        if out is not packet:
            # rebuilt blocks use the one-byte profile whenever everything fits
            fits = all(0 < i < 15 and 0 < len(v) <= 16 for i, v in expected)
            assert (profile == 0xBEDE) == fits
        if all(id_map[i] == i for i in ids):
            assert out is packet


# ------------------------------------------------------------------ RTX


def test_rtx_roundtrip_and_aiortc() -> None:
    ext = one_byte([(1, b"mid"), (3, b"\x00\x01\x02")])
    packet = make_rtp(seq=65535, ts=0xFFFFFFF0, marker=1, csrcs=(4,), ext=ext, payload=b"VP8!")
    rtx = rtx_wrap(packet, rtx_ssrc=0x55667788, rtx_payload_type=97, rtx_seq=12)
    assert rtx is not None
    parsed = RtpPacket.parse(rtx)
    assert (parsed.payload_type, parsed.sequence_number, parsed.ssrc) == (97, 12, 0x55667788)
    assert parsed.marker == 1 and parsed.timestamp == 0xFFFFFFF0
    assert parsed.payload == b"\xff\xff" + b"VP8!"
    assert parsed.csrc == [4]
    assert find_extension(rtx, 1) == b"mid"
    # aiortc builds the same RTX packet (it re-serialises extensions itself, so
    # compare with an extension-less packet).
    plain = make_rtp(seq=65535, ts=0xFFFFFFF0, marker=1, payload=b"VP8!")
    theirs = wrap_rtx(RtpPacket.parse(plain), payload_type=97, sequence_number=12, ssrc=7)
    assert rtx_wrap(plain, 7, 97, 12) == theirs.serialize()
    assert rtx_unwrap(rtx, 0x11223344, 96) == packet


def test_rtx_padding_dropped_and_values_masked() -> None:
    packet = make_rtp(seq=1, payload=b"abc", padding=4)
    rtx = rtx_wrap(packet, 0x1_0000_0001, 0x80 | 97, 70000)
    assert rtx is not None
    assert not rtx[0] & 0x20
    _, b1, seq, _, ssrc = HEADER.unpack_from(rtx)
    assert (b1, seq, ssrc) == (97, 70000 & 0xFFFF, 1)
    assert rtx_unwrap(rtx, 0x11223344, 96) == make_rtp(seq=1, payload=b"abc")


def test_rtx_short_or_malformed() -> None:
    assert rtx_unwrap(make_rtp(payload=b""), 1, 96) is None
    assert rtx_unwrap(make_rtp(payload=b"\x01"), 1, 96) is None
    assert rtx_unwrap(make_rtp(payload=b"\x01\x02", padding=0), 1, 96) == make_rtp(
        seq=0x0102, ssrc=1, payload=b""
    )
    assert rtx_unwrap(make_rtp(payload=b"\x01\x02\x03", padding=2)[:-1] + b"\x00", 1, 96) is None
    assert rtx_unwrap(b"\x80\x60", 1, 96) is None
    assert rtx_wrap(b"\x80\x60", 1, 96, 0) is None
    assert rtx_wrap(b"\x40" + make_rtp()[1:], 1, 96, 0) is None


# ------------------------------------------------------------------ sequence math


def test_seq_diff() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(5, 65534) == 7
    assert seq_diff(100, 100) == 0
    assert seq_diff(32767, 0) == 32767
    assert seq_diff(32768, 0) == -32768
    for a in range(0, 65536, 997):
        for b in range(0, 65536, 1009):
            d = seq_diff(a, b)
            assert -32768 <= d <= 32767
            assert (b + d) & 0xFFFF == a


def test_seq_unwrapper_wrap_and_reorder() -> None:
    u = SeqUnwrapper()
    seqs = [65533, 65534, 0, 65535, 1, 2, 65532, 3]
    assert [u.unwrap(s) for s in seqs] == [65533, 65534, 65536, 65535, 65537, 65538, 65532, 65539]
    u = SeqUnwrapper()
    out = [u.unwrap(s & 0xFFFF) for s in range(60000, 60000 + 3 * 65536, 100)]
    assert out == list(range(60000, 60000 + 3 * 65536, 100))
    u = SeqUnwrapper()
    assert u.unwrap(0) == 0
    assert u.unwrap(65535) == -1  # reordered before the first packet


def test_ts_diff_and_unwrapper() -> None:
    assert ts_diff(10, 0xFFFFFFF0) == 26
    assert ts_diff(0xFFFFFFF0, 10) == -26
    assert ts_diff(0x7FFFFFFF, 0) == 0x7FFFFFFF
    assert ts_diff(0x80000000, 0) == -0x80000000
    u = TsUnwrapper()
    vals = [0xFFFFF000, 0xFFFFFF00, 0x100, 0xFFFFFFF0, 0x2000]
    assert [u.unwrap(v) for v in vals] == [
        0xFFFFF000,
        0xFFFFFF00,
        0x1_0000_0100,
        0xFFFFFFF0,
        0x1_0000_2000,
    ]


# ------------------------------------------------------------------ fuzz


def _corpus() -> list[bytes]:
    return [
        make_rtp(),
        make_rtp(csrcs=(1, 2), ext=one_byte([(1, b"ab"), (2, b"\x80"), (14, b"x" * 16)])),
        make_rtp(ext=two_byte([(1, b""), (99, b"y" * 30)]), padding=3),
        make_rtp(ext=one_byte([(3, b"abc")], 3), payload=bytes(100), padding=1),
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    choice = rng.randrange(5)
    if choice == 0:
        return rng.randbytes(rng.randrange(40))
    if choice == 1:
        return bytes(buf[: rng.randrange(len(buf) + 1)])
    if choice == 2 and len(buf) > 16:
        # plausible header with an extension block of random profile/length
        buf[0] = 0x90
        profile = rng.choice((0xBEDE, 0x1000, rng.randrange(65536)))
        struct.pack_into("!HH", buf, 12, profile, rng.randrange(16))
        return bytes(buf)
    for _ in range(rng.randint(1, 4)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    if choice == 4:
        buf[0] = 0x80 | (buf[0] & 0x3F)
    return bytes(buf)


def test_fuzz_never_raises() -> None:
    rng = random.Random(1234)
    corpus = _corpus()
    id_maps = [identity_map(), [0] * 256, [rng.randrange(256) for _ in range(256)]]
    for _ in range(20000):
        data = _mutate(rng, rng.choice(corpus))
        off = payload_offset(data)
        end = payload_end(data)
        assert off == -1 or 12 <= off <= len(data)
        assert end == -1 or off <= end <= len(data)
        for ext_id in (1, 2, 14, 99):
            value = find_extension(data, ext_id)
            assert value is None or isinstance(value, bytes)
        out = translate_extensions(data, rng.choice(id_maps))
        if out is not None:
            assert payload_offset(out) >= 0
        rtx = rtx_wrap(data, 1, 97, 5)
        if rtx is not None:
            assert rtx_unwrap(rtx, 2, 96) is not None
        rtx_unwrap(data, 2, 96)
        is_rtcp(data)
