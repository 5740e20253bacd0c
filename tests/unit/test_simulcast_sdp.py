"""Simulcast SDP: what a Chromium offer declares, and the answer aiortc's gets completed with."""

from __future__ import annotations

import pytest

from sfu.sdp_guard import SdpError, validate_offer
from sfu.simulcast_sdp import (
    REPAIRED_RID_URI,
    RID_URI,
    SimulcastOffer,
    add_simulcast_to_answer,
    offered_simulcast,
)

FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)


def offer(video_extra: str, *, rids: tuple[str, ...] = ("h", "m", "l")) -> str:
    rid_lines = "".join(f"a=rid:{r} send\r\n" for r in rids)
    return (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
        f"a=ice-ufrag:abcd\r\na=ice-pwd:{'p' * 24}\r\na=fingerprint:{FINGERPRINT}\r\n"
        "a=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
        f"a=ice-ufrag:abcd\r\na=ice-pwd:{'p' * 24}\r\na=fingerprint:{FINGERPRINT}\r\n"
        "a=setup:actpass\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n"
        "a=fmtp:97 apt=96\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        f"a=extmap:10 {RID_URI}\r\na=extmap:11 {REPAIRED_RID_URI}\r\n" + rid_lines + video_extra
    )


def test_a_chromium_style_offer_names_its_layers_highest_first() -> None:
    sdp = offer("a=simulcast:send h;m;l\r\n")
    validate_offer(sdp)
    assert offered_simulcast(sdp) == {"1": SimulcastOffer("1", ("h", "m", "l"), 10, 11)}


def test_paused_and_alternative_layers_count_by_their_first_rid() -> None:
    sdp = offer("a=simulcast:send h,m;~l\r\n", rids=("h", "m", "l"))
    validate_offer(sdp)
    assert offered_simulcast(sdp)["1"].rids == ("h", "l")


def test_one_layer_or_no_rid_extension_is_plain_forwarding() -> None:
    assert offered_simulcast(offer("a=simulcast:send h\r\n", rids=("h",))) == {}
    no_ext = offer("a=simulcast:send h;m\r\n", rids=("h", "m")).replace(
        f"a=extmap:10 {RID_URI}\r\n", ""
    )
    assert offered_simulcast(no_ext) == {}


@pytest.mark.parametrize(
    ("extra", "rids", "message"),
    [
        ("a=simulcast:send a;b;c;d\r\n", ("a", "b", "c", "d"), "at most 3"),
        ("a=simulcast:send h;x\r\n", ("h", "m"), "each declared"),
        ("a=simulcast:send h;h\r\n", ("h", "m"), "each declared"),
        ("a=simulcast:recv h;m\r\n", ("h", "m"), "server sends no simulcast"),
        ("", ("h", "h"), "declared twice"),
        ("", ("bad rid!",), "a=rid must be"),
    ],
)
def test_the_guard_rejects_simulcast_it_cannot_honour(
    extra: str, rids: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SdpError, match=message):
        validate_offer(offer(extra, rids=rids))


def test_receive_layers_are_only_for_video() -> None:
    sdp = offer("").replace(
        "a=rtpmap:111 opus/48000/2\r\n", "a=rtpmap:111 opus/48000/2\r\na=rid:x send\r\n"
    )
    with pytest.raises(SdpError, match="only video layers"):
        validate_offer(sdp)


ANSWER = (
    "v=0\r\no=- 3 4 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=recvonly\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
)


def test_the_answer_gets_the_receive_side_of_each_layer() -> None:
    layers = {"1": SimulcastOffer("1", ("h", "m", "l"), 10, 11)}
    answer = add_simulcast_to_answer(ANSWER, layers)
    video = answer.split("m=video")[1]
    for line in (
        f"a=extmap:10 {RID_URI}",
        f"a=extmap:11 {REPAIRED_RID_URI}",
        "a=rid:h recv",
        "a=rid:m recv",
        "a=rid:l recv",
        "a=simulcast:recv h;m;l",
    ):
        assert line + "\r\n" in video
    assert "a=rid" not in answer.split("m=video")[0]  # audio untouched
    assert add_simulcast_to_answer(ANSWER, {}) == ANSWER


def test_a_rejected_m_line_gets_nothing() -> None:
    rejected = ANSWER.replace("m=video 9", "m=video 0")
    layers = {"1": SimulcastOffer("1", ("h", "l"), 10, 0)}
    assert "a=simulcast" not in add_simulcast_to_answer(rejected, layers)
