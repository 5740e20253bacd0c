"""Tests for sfu.sdp_guard: real offers pass, every known aiortc-crashing mutation is refused.

design.md §3 lists SDP inputs that make aiortc raise from setRemoteDescription, kill a
background task later, or be accepted silently out of range; each must be rejected up
front with an SdpError whose message tells a client developer what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import aioice.ice
import aiortc
import pytest

from sfu.aiortc_bridge import restrict_host_addresses
from sfu.sdp_guard import MAX_MEDIA_SECTIONS, SdpError, validate_answer, validate_offer

FINGERPRINT = (
    "sha-256 44:20:82:3C:FD:E6:F1:C2:6B:30:F9:0E:C7:DD:01:E4:"
    "88:75:34:A2:0F:0B:0D:04:C3:6E:D8:0E:71:E0:FD:77"
)
STREAM = "6f1c9f39-5d3f-4c4e-9b1e-2f6a7d8c9e0f"
AUDIO_TRACK = "0c5a7b9e-1d2f-4e3a-8b7c-6d5e4f3a2b1c"
VIDEO_TRACK = "7e8d9c0b-a1b2-4c3d-9e4f-5a6b7c8d9e0f"

_TRANSPORT = [
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
]
_ICE = [
    "a=ice-ufrag:Wq7m",
    "a=ice-pwd:9hG8XcYw3a5s1Lk0pQ2rT7vB",
    "a=ice-options:trickle",
    f"a=fingerprint:{FINGERPRINT}",
    "a=setup:actpass",
]

# A Chromium-style publish offer (unified plan, bundled, gathered candidates, RTX with
# ssrc-group FID, RED/ULPFEC, VP8/VP9/H.264/AV1).
CHROME_OFFER_LINES = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    f"a=msid-semantic: WMS {STREAM}",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    *_TRANSPORT,
    "a=candidate:1467250027 1 udp 2122260223 192.168.1.23 54400 typ host generation 0"
    " network-id 1 network-cost 10",
    "a=candidate:2716329212 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 192.168.1.23"
    " rport 54400 generation 0 network-id 1 network-cost 10",
    "a=candidate:435653019 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active"
    " generation 0 network-id 1 network-cost 10",
    *_ICE,
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendonly",
    f"a=msid:{STREAM} {AUDIO_TRACK}",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:3735928559 cname:Ujt3Wq0n8cR1pY2v",
    f"a=ssrc:3735928559 msid:{STREAM} {AUDIO_TRACK}",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 102 103 104 105 106 107 35 36 127 125 124",
    *_TRANSPORT,
    *_ICE,
    "a=mid:1",
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:13 urn:3gpp:video-orientation",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    "a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
    "a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=sendonly",
    f"a=msid:{STREAM} {VIDEO_TRACK}",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:98 VP9/90000",
    "a=rtcp-fb:98 goog-remb",
    "a=rtcp-fb:98 nack",
    "a=rtcp-fb:98 nack pli",
    "a=fmtp:98 profile-id=0",
    "a=rtpmap:99 rtx/90000",
    "a=fmtp:99 apt=98",
    "a=rtpmap:100 VP9/90000",
    "a=rtcp-fb:100 nack pli",
    "a=fmtp:100 profile-id=2",
    "a=rtpmap:101 rtx/90000",
    "a=fmtp:101 apt=100",
    "a=rtpmap:102 H264/90000",
    "a=rtcp-fb:102 goog-remb",
    "a=rtcp-fb:102 nack",
    "a=rtcp-fb:102 nack pli",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000",
    "a=fmtp:103 apt=102",
    "a=rtpmap:104 H264/90000",
    "a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
    "a=rtpmap:105 rtx/90000",
    "a=fmtp:105 apt=104",
    "a=rtpmap:106 H264/90000",
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:107 rtx/90000",
    "a=fmtp:107 apt=106",
    "a=rtpmap:35 AV1/90000",
    "a=fmtp:35 level-idx=5;profile=0;tier=0",
    "a=rtpmap:36 rtx/90000",
    "a=fmtp:36 apt=35",
    "a=rtpmap:127 red/90000",
    "a=rtpmap:125 rtx/90000",
    "a=fmtp:125 apt=127",
    "a=rtpmap:124 ulpfec/90000",
    "a=ssrc-group:FID 1111111111 2222222222",
    "a=ssrc:1111111111 cname:Ujt3Wq0n8cR1pY2v",
    f"a=ssrc:1111111111 msid:{STREAM} {VIDEO_TRACK}",
    "a=ssrc:2222222222 cname:Ujt3Wq0n8cR1pY2v",
    f"a=ssrc:2222222222 msid:{STREAM} {VIDEO_TRACK}",
]
CHROME_OFFER = "\r\n".join(CHROME_OFFER_LINES) + "\r\n"

DATA_CHANNEL_SECTION = [
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 0.0.0.0",
    *_ICE,
    "a=mid:2",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
]

GARBAGE = [
    "",
    "hello",
    "v=0",
    "v=1\r\no=- 1 1 IN IP4 0.0.0.0\r\n",
    "v=0\r\nthis is not an SDP\r\n",
    "v=0\r\nm=\r\n",
    "v=0\r\nm=video\r\n",
    "\x00\x01\x02\x03" * 10,
    '{"type": "offer"}',
]


# --- helpers --------------------------------------------------------------------------


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def replace_line(old: str, *new: str, sdp: str = CHROME_OFFER, nth: int = 0) -> str:
    """Replace the nth line equal to (or starting with, if old ends with ':') ``old``."""
    lines = sdp.split("\r\n")[:-1]
    hits = [
        i
        for i, line in enumerate(lines)
        if line == old or (old.endswith(":") and line.startswith(old))
    ]
    assert len(hits) > nth, f"{old!r} not in the SDP"
    i = hits[nth]
    return _join(lines[:i] + list(new) + lines[i + 1 :])


def drop_lines(prefix: str, sdp: str = CHROME_OFFER) -> str:
    lines = sdp.split("\r\n")[:-1]
    kept = [line for line in lines if not line.startswith(prefix)]
    assert len(kept) < len(lines), f"no {prefix!r} line"
    return _join(kept)


def keep_video_payload_types(payload_types: list[int], sdp: str = CHROME_OFFER) -> str:
    """The offer with its video m-line cut down to ``payload_types``."""
    out = []
    in_video = False
    for line in sdp.split("\r\n")[:-1]:
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            if in_video:
                line = "m=video 9 UDP/TLS/RTP/SAVPF " + " ".join(map(str, payload_types))
        match = re.match(r"a=(rtpmap|fmtp|rtcp-fb):(\d+) ", line)
        if in_video and match and int(match.group(2)) not in payload_types:
            continue
        out.append(line)
    return _join(out)


def minimal_offer(
    kind: str, codecs: list[str], *, direction: str = "sendonly", port: int = 9
) -> str:
    pts = list(range(96, 96 + len(codecs)))
    return _join(
        [
            "v=0",
            "o=- 1 1 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            f"m={kind} {port} UDP/TLS/RTP/SAVPF {' '.join(map(str, pts))}",
            "c=IN IP4 0.0.0.0",
            *_ICE,
            "a=mid:0",
            f"a={direction}",
            "a=rtcp-mux",
            *(f"a=rtpmap:{pt} {codec}" for pt, codec in zip(pts, codecs, strict=True)),
        ]
    )


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Gather host candidates on 127.0.0.1 only; aioice's global is restored afterwards."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])
    yield


def _pc() -> aiortc.RTCPeerConnection:
    return aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))


# --- real offers pass -------------------------------------------------------------------


def test_chromium_offer_validates() -> None:
    summary = validate_offer(CHROME_OFFER)
    (a_kind, a_mid, a_dir, a_codecs), (v_kind, v_mid, v_dir, v_codecs) = summary.media
    assert (a_kind, a_mid, a_dir) == ("audio", "0", "sendonly")
    assert (v_kind, v_mid, v_dir) == ("video", "1", "sendonly")
    assert {"opus", "red", "g722", "pcmu", "pcma", "cn", "telephone-event"} == a_codecs
    assert {"vp8", "vp9", "h264", "av1", "rtx", "red", "ulpfec"} == v_codecs
    # LF-only line endings are tolerated too.
    assert validate_offer(CHROME_OFFER.replace("\r\n", "\n")) == summary


async def test_chromium_offer_is_really_negotiable_by_aiortc(loopback_only: None) -> None:
    """The constant is a real offer: aiortc answers it (no ICE is started)."""
    pc = _pc()
    try:
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(CHROME_OFFER, "offer"))
        answer = await pc.createAnswer()
        summary = validate_answer(answer.sdp)
        assert [(kind, mid) for kind, mid, _, _ in summary.media] == [
            ("audio", "0"),
            ("video", "1"),
        ]
        assert [d for _, _, d, _ in summary.media] == ["recvonly", "recvonly"]
    finally:
        await pc.close()


async def test_aiortc_offer_and_answer_validate(loopback_only: None) -> None:
    offerer, answerer = _pc(), _pc()
    try:
        offerer.addTransceiver("audio", direction="sendonly")
        offerer.addTransceiver("video", direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        offer = offerer.localDescription.sdp
        assert "a=candidate:" in offer and " 127.0.0.1 " in offer
        summary = validate_offer(offer)
        assert [(k, d) for k, _, d, _ in summary.media] == [
            ("audio", "sendonly"),
            ("video", "sendonly"),
        ]
        assert "opus" in summary.media[0][3] and "vp8" in summary.media[1][3]

        await answerer.setRemoteDescription(offerer.localDescription)
        answerer.getTransceivers()[1].direction = "inactive"
        answer = (await answerer.createAnswer()).sdp
        assert "a=inactive" in answer
        result = validate_answer(answer)
        assert [d for _, _, d, _ in result.media] == ["recvonly", "inactive"]
        # A rejected m-line (port 0) reads as inactive whatever its direction says.
        rejected = re.sub(r"^m=video \d+ ", "m=video 0 ", answer, flags=re.MULTILINE)
        assert validate_answer(rejected).media[1][2] == "inactive"
    finally:
        await offerer.close()
        await answerer.close()


def test_minimal_offers_with_a_forwarded_codec_validate() -> None:
    validate_offer(minimal_offer("video", ["VP8/90000"]))
    validate_offer(minimal_offer("video", ["H264/90000", "rtx/90000"]))
    validate_offer(minimal_offer("audio", ["opus/48000/2"]))
    validate_offer(minimal_offer("audio", ["PCMU/8000"]))
    # Not sending: the codec does not matter.
    validate_offer(minimal_offer("video", ["VP9/90000"], direction="recvonly"))
    validate_offer(minimal_offer("video", ["AV1/90000"], direction="inactive"))
    validate_offer(minimal_offer("video", ["VP9/90000"], port=0))


# --- every defect from design.md §3 is refused --------------------------------------------

_EMPTY_VALUE_ATTRIBUTES = [
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
]


@pytest.mark.parametrize("name", _EMPTY_VALUE_ATTRIBUTES)
@pytest.mark.parametrize("form", ["a={}:", "a={}", "a={}:   "])
def test_attribute_without_value(name: str, form: str) -> None:
    with pytest.raises(SdpError, match=rf"^a={name} needs a value$"):
        validate_offer(replace_line(f"a={name}:", form.format(name)))


_DATA_CHANNEL = CHROME_OFFER + _join(DATA_CHANNEL_SECTION)
_TOO_MANY = CHROME_OFFER + "".join(
    _join(["m=audio 9 UDP/TLS/RTP/SAVPF 111", f"a=mid:x{i}", "a=rtpmap:111 opus/48000/2"])
    for i in range(MAX_MEDIA_SECTIONS - 1)
)

MUTATIONS = [
    pytest.param(
        replace_line("a=setup:", "a=setup:foo"),
        r"a=setup must be actpass, active or passive",
        id="setup-foo",
    ),
    pytest.param(drop_lines("a=rtpmap:63 "), r"a=fmtp:63 has no a=rtpmap", id="fmtp-no-rtpmap"),
    pytest.param(
        replace_line("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus"),
        r"a=rtpmap:111 needs name/clock-rate",
        id="rtpmap-no-clock-rate",
    ),
    pytest.param(
        replace_line("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/"),
        r"clock rate must be a number",
        id="rtpmap-empty-clock-rate",
    ),
    pytest.param(
        replace_line("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 /48000"),
        r"a=rtpmap:111 needs name/clock-rate",
        id="rtpmap-no-name",
    ),
    pytest.param(
        replace_line("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/0"),
        r"clock rate 0 is out of range",
        id="rtpmap-zero-clock-rate",
    ),
    pytest.param(
        replace_line("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/48000/0"),
        r"channel count 0 is out of range",
        id="rtpmap-zero-channels",
    ),
    pytest.param(
        replace_line("a=candidate:", "a=candidate:1467250027 1 udp 2122260223 192.168.1.23 54400"),
        r"a=candidate is too short",
        id="short-candidate",
    ),
    pytest.param(
        replace_line("a=candidate:", "a=candidate:1 1 udp 1 192.168.1.23 54400 host typ"),
        r"a=candidate is too short",
        id="candidate-no-typ",
    ),
    pytest.param(
        replace_line("a=candidate:", "a=candidate:1 1 udp 1 192.168.1.23 99999 typ host"),
        r"candidate port 99999 is out of range",
        id="candidate-port",
    ),
    pytest.param(
        replace_line("a=candidate:", "a=candidate:1 x udp 1 192.168.1.23 9 typ host"),
        r"candidate component must be a number",
        id="candidate-component",
    ),
    pytest.param(
        replace_line(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=audio 9 UDP/TLS/RTP/SAVPF 300 111 63 9 0 8 13 110 126",
        ),
        r"payload type 300 is out of range 0\.\.127",
        id="payload-type-300",
    ),
    pytest.param(
        replace_line("a=rtpmap:111 opus/48000/2", "a=rtpmap:300 opus/48000/2"),
        r"rtpmap payload type 300 is out of range",
        id="rtpmap-payload-type-300",
    ),
    pytest.param(
        replace_line("a=fmtp:111 minptime=10;useinbandfec=1", "a=fmtp:300 minptime=10"),
        r"fmtp payload type 300 is out of range",
        id="fmtp-payload-type-300",
    ),
    pytest.param(
        drop_lines("a=setup:"), r"a=setup must be actpass, active or passive", id="no-setup"
    ),
    pytest.param(drop_lines("a=fingerprint:"), r"a=fingerprint is required", id="no-fingerprint"),
    pytest.param(
        replace_line("a=fingerprint:", "a=fingerprint:md5 44:20:82"),
        r"a=fingerprint must be",
        id="fingerprint-algorithm",
    ),
    pytest.param(
        replace_line("a=fingerprint:", "a=fingerprint:sha-256 not-hex"),
        r"a=fingerprint must be",
        id="fingerprint-digest",
    ),
    pytest.param(
        drop_lines("a=ice-pwd:"), r"a=ice-ufrag and a=ice-pwd are required", id="no-ice-pwd"
    ),
    pytest.param(
        replace_line(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=text 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        ),
        r"unsupported media kind 'text'",
        id="unknown-kind",
    ),
    pytest.param(_DATA_CHANNEL, r"data channels are not supported", id="data-channel"),
    pytest.param(
        replace_line(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=audio 99999 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        ),
        r"port 99999 is out of range 0\.\.65535",
        id="port-99999",
    ),
    pytest.param(
        replace_line(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=audio 9 RTP/AVP 111 63 9 0 8 13 110 126",
        ),
        r"media must be SRTP",
        id="plain-rtp",
    ),
    pytest.param(
        replace_line(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "m=audio 9 UDP/TLS/RTP/SAVPF"
        ),
        r"malformed m= line",
        id="m-line-without-formats",
    ),
    pytest.param(
        replace_line(
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:0 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ),
        r"extmap id 0 is out of range",
        id="extmap-0",
    ),
    pytest.param(
        replace_line(
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:15 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ),
        r"a=extmap:15 is reserved",
        id="extmap-15",
    ),
    pytest.param(
        replace_line(
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:256 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ),
        r"extmap id 256 is out of range",
        id="extmap-256",
    ),
    pytest.param(
        replace_line(
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:2/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ),
        r"a=extmap:2 is reserved, duplicated",
        id="extmap-duplicate-id",
    ),
    pytest.param(
        replace_line("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=extmap:1"),
        r"a=extmap:1 .*has no URI",
        id="extmap-no-uri",
    ),
    pytest.param(
        replace_line(
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:one urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ),
        r"extmap id must be a number",
        id="extmap-not-a-number",
    ),
    pytest.param(
        replace_line(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126 111",
        ),
        r"duplicate payload types",
        id="duplicate-payload-type-in-m-line",
    ),
    pytest.param(
        replace_line("a=rtpmap:9 G722/8000", "a=rtpmap:111 G722/8000"),
        r"payload type 111 mapped twice",
        id="payload-type-mapped-twice",
    ),
    pytest.param(
        replace_line(
            "a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/48000/2", "a=rtpmap:120 opus/48000/2"
        ),
        r"a=rtpmap:120 is not listed in the m= line",
        id="rtpmap-not-in-m-line",
    ),
    pytest.param(replace_line("a=mid:1", "a=mid:0"), r"a=mid:0 is used twice", id="duplicate-mid"),
    pytest.param(
        replace_line("a=mid:0", "a=mid:0", "a=mid:2"), r"exactly one a=mid", id="two-mids"
    ),
    pytest.param(drop_lines("a=mid:"), r"exactly one a=mid", id="no-mid"),
    pytest.param(
        replace_line("a=mid:0", "a=mid:" + "m" * 33), r"at most 32 characters", id="mid-too-long"
    ),
    pytest.param(
        replace_line("a=sendonly", "a=sendonly", "a=recvonly"),
        r"more than one direction",
        id="two-directions",
    ),
    pytest.param(
        replace_line(
            "a=ssrc:3735928559 cname:Ujt3Wq0n8cR1pY2v", "a=ssrc:99999999999 cname:Ujt3Wq0n8cR1pY2v"
        ),
        r"ssrc 99999999999 is out of range",
        id="ssrc-out-of-range",
    ),
    pytest.param(
        replace_line(
            "a=ssrc:3735928559 cname:Ujt3Wq0n8cR1pY2v", "a=ssrc:-1 cname:Ujt3Wq0n8cR1pY2v"
        ),
        r"ssrc must be a number",
        id="ssrc-negative",
    ),
    pytest.param(
        keep_video_payload_types([98, 99, 100, 101]),
        r"video m-line 1 offers no usable codec \(need one of vp8, h264\)",
        id="video-only-vp9",
    ),
    pytest.param(
        keep_video_payload_types([35, 36]),
        r"video m-line 1 offers no usable codec",
        id="video-only-av1",
    ),
    pytest.param(
        minimal_offer("video", ["VP9/90000", "AV1/90000", "rtx/90000"]),
        r"video m-line 0 offers no usable codec",
        id="minimal-vp9-av1",
    ),
    pytest.param(
        minimal_offer("audio", ["G722/8000"]),
        r"audio m-line 0 offers no usable codec \(need one of opus, pcmu, pcma\)",
        id="audio-only-g722",
    ),
    pytest.param(_join(CHROME_OFFER_LINES[:7]), r"no media sections", id="no-m-lines"),
    pytest.param(_TOO_MANY, rf"at most {MAX_MEDIA_SECTIONS} media sections", id="too-many-m-lines"),
    pytest.param(
        replace_line("s=-", "s=-", "this line is not SDP"), r"malformed SDP line", id="garbage-line"
    ),
]


@pytest.mark.parametrize(("sdp", "message"), MUTATIONS)
def test_mutation_is_refused(sdp: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        validate_offer(sdp)


def test_mutations_are_mutations() -> None:
    """Each parametrised case really differs from the valid offer it was made from."""
    for param in MUTATIONS:
        sdp = param.values[0]
        assert isinstance(sdp, str) and sdp != CHROME_OFFER


@pytest.mark.parametrize("value", [None, b"v=0\r\n", 42, ["v=0"], {"sdp": CHROME_OFFER}])
def test_non_string_sdp(value: object) -> None:
    with pytest.raises(SdpError, match="sdp must be a string"):
        validate_offer(value)
    with pytest.raises(SdpError, match="sdp must be a string"):
        validate_answer(value)


def test_oversize_sdp() -> None:
    huge = CHROME_OFFER + "a=x-padding:" + "p" * 60_000 + "\r\n"
    with pytest.raises(SdpError, match="too large"):
        validate_offer(huge)


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(SdpError, match=r"v=0|malformed|no media"):
        validate_offer(text)
    with pytest.raises(SdpError, match=r"v=0|malformed|no media"):
        validate_answer(text)


@pytest.mark.parametrize(
    "port",
    [
        pytest.param("\u00b2", id="superscript-two"),  # str.isdigit() is True, int() fails
        pytest.param("9" * 5000, id="5000-digits"),  # int() refuses > 4300 digits
    ],
)
def test_numbers_int_cannot_parse_raise_sdp_error(port: str) -> None:
    """The signalling handler only turns SdpError into bad_request; a bare ValueError
    becomes an 'internal' error with a logged traceback."""
    sdp = replace_line(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        f"m=audio {port} UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    )
    with pytest.raises(SdpError):
        validate_offer(sdp)
