"""Session resumption: a dropped signalling socket, resumed within the window, loses nothing.

Real server process, real aiortc peers on loopback. The socket is dropped without a close
frame (as a network loss would), and the participant comes back with ``join`` + ``resume``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import MediaStreamTrack
from helpers.media import FrameCounterTrack, ToneTrack, collect, read_frame_counter
from helpers.server import ServerProcess

from signaling.client import Participant, SignalClient

pytestmark = pytest.mark.integration

SHORT_WINDOW_S = 2.0


@pytest.fixture(scope="module")
def short_window_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("sfu-data")),
        ["--resume-window", str(SHORT_WINDOW_S)],
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, "".join(process.log_lines[-40:])


async def _counters(track: MediaStreamTrack, count: int) -> list[int]:
    frames = await collect(track, count, timeout=15.0)
    values = [read_frame_counter(f) for f in frames if isinstance(f, av.VideoFrame)]
    return [v for v in values if v is not None]


def _membership_events(participant: Participant, about: str) -> list[str]:
    return [
        str(m["type"])
        for m in participant.signal.buffered(("participant.joined", "participant.left"))
        if m.get("participant", {}).get("id") == about
    ]


async def test_dropped_socket_resumes_same_participant(server: ServerProcess, room: str) -> None:
    alice = await Participant.join(
        server.url, server.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
    )
    bob = await Participant.join(
        server.url, server.token(room, "bob"), publish_tracks=[FrameCounterTrack()]
    )
    try:
        alice_video = next(iter(alice.published))
        bob_video = next(iter(bob.published))
        received = await bob.wait_remote_tracks([alice_video], timeout=15.0)
        await alice.wait_remote_tracks([bob_video], timeout=15.0)
        # A subscription choice made before the drop must survive it.
        await alice.unsubscribe([bob_video])
        first = await _counters(received[alice_video], 5)
        alice_id, secret = alice.id, alice.resume_secret
        assert secret

        alice.signal.abort()  # no close frame: the server must keep alice
        await asyncio.wait_for(alice.signal.wait_closed(), 10.0)
        # While alice is away bob publishes audio: alice must get it after resuming.
        [bob_audio] = await bob.publish([ToneTrack()])
        # Media from alice keeps flowing to bob while her signalling is down.
        during = await _counters(received[alice_video], 5)

        assert await alice.resume()
        assert alice.id == alice_id
        assert alice.joined["resumed"] is True
        assert alice_video in {t["id"] for t in alice.joined["tracks"]}
        assert [p["id"] for p in alice.joined["participants"]] == [bob.id]  # others
        after = await _counters(received[alice_video], 5)
        assert first[-1] < during[0] <= during[-1] < after[0]  # one continuous stream
        await alice.wait_remote_tracks([bob_audio], timeout=15.0)  # the missed offer
        assert bob_video not in alice.remote_tracks  # still unsubscribed
        assert await alice.mute(alice_video, True)  # requests work on the new socket
        await asyncio.sleep(0.5)
        assert _membership_events(bob, alice_id) == []  # bob never saw alice leave
    finally:
        await alice.leave()
        await bob.leave()


async def test_second_connection_takes_over(server: ServerProcess, room: str) -> None:
    token = server.token(room, "alice")
    alice = await Participant.join(server.url, token, publish_tracks=[FrameCounterTrack()])
    try:
        old = alice.signal
        assert await alice.resume()  # the old socket is still open: the new one wins
        assert old.closed
        assert old.closed_code == 4409
        reply = await alice.signal.request({"type": "ping"})
        assert reply["type"] == "pong"
    finally:
        await alice.leave()


async def test_wrong_secret_is_a_fresh_join(server: ServerProcess, room: str) -> None:
    token = server.token(room, "alice")
    alice = await Participant.join(server.url, token)
    other = await SignalClient.connect(server.url)
    try:
        reply = await other.request({"type": "join", "token": token, "resume": "not-it"})
        assert reply["type"] == "joined" and reply["resumed"] is False
        assert reply["participant"]["id"] != alice.id
        # Another identity's token cannot take alice over with her secret either.
        mallory = await SignalClient.connect(server.url)
        try:
            stolen = await mallory.request(
                {
                    "type": "join",
                    "token": server.token(room, "mallory"),
                    "resume": alice.resume_secret,
                }
            )
            assert stolen["resumed"] is False and stolen["participant"]["id"] != alice.id
            assert not alice.signal.closed
        finally:
            await mallory.close()
    finally:
        await other.close()
        await alice.leave()


async def test_leave_after_the_window(short_window_server: ServerProcess, room: str) -> None:
    server = short_window_server
    alice = await Participant.join(server.url, server.token(room, "alice"))
    bob = await Participant.join(server.url, server.token(room, "bob"))
    try:
        alice_id = alice.id
        alice.signal.abort()
        await asyncio.sleep(SHORT_WINDOW_S / 4)
        assert _membership_events(bob, alice_id) == []  # kept during the window
        left = await bob.next_event(
            "participant.left", lambda m: m["participant"]["id"] == alice_id, timeout=10.0
        )
        assert left["participant"]["identity"] == "alice"
        assert not await alice.resume()  # expired: a fresh participant
        assert alice.id != alice_id
    finally:
        await alice.leave()
        await bob.leave()


async def test_clean_close_leaves_at_once(short_window_server: ServerProcess, room: str) -> None:
    server = short_window_server
    alice = await Participant.join(server.url, server.token(room, "alice"))
    bob = await Participant.join(server.url, server.token(room, "bob"))
    try:
        alice_id = alice.id
        await alice.signal.close(code=1000)  # a client that closes on purpose is gone
        await bob.next_event(
            "participant.left",
            lambda m: m["participant"]["id"] == alice_id,
            timeout=SHORT_WINDOW_S / 2,
        )
    finally:
        await alice.close()
        await bob.leave()


# --- consent and recording across a resume ------------------------------------------------

NOTICE = "This call is recorded for quality. You may withdraw at any time."


def _recordings(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    admin = server.token("admin-room", "admin", role="agent", grants=("admin",))
    request = urllib.request.Request(
        f"{server.http}/v1/recordings?room={room}", headers={"Authorization": f"Bearer {admin}"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        recordings: list[dict[str, Any]] = json.loads(response.read())["recordings"]
    return recordings


def _recorded_ids(event: dict[str, Any]) -> set[str]:
    return {str(p["id"]) for p in event["participants"]}


async def test_consent_and_recording_survive_a_resume(server: ServerProcess, room: str) -> None:
    """Granted: recording goes on under the same consent. Refused: not asked again.
    Unanswered: asked again (the question may have been lost with the socket)."""
    agent = await Participant.join(
        server.url,
        server.token(room, "agent-1", role="agent", grants=("publish", "subscribe", "record")),
    )
    granter = await Participant.join(
        server.url,
        server.token(room, "granter"),
        publish_tracks=[FrameCounterTrack(), ToneTrack()],
    )
    refuser = await Participant.join(server.url, server.token(room, "refuser"))
    undecided = await Participant.join(server.url, server.token(room, "undecided"))
    people = (granter, refuser, undecided)
    try:
        await agent.wait_remote_tracks(2, timeout=15.0)
        await agent.signal.request(
            {"type": "recording.start", "scope": ["audio", "video"], "notice": NOTICE}
        )
        asks = [await p.next_event("consent.request", timeout=5.0) for p in people]
        granted = await granter.signal.request(
            {"type": "consent.grant", "request": asks[0]["request"], "scope": ["audio", "video"]}
        )
        await refuser.signal.request({"type": "consent.refuse", "request": asks[1]["request"]})
        await agent.next_event(
            "recording.state", lambda e: granter.id in _recorded_ids(e), timeout=10.0
        )
        [recording] = _recordings(server, room)

        ids = [p.id for p in people]
        seen = len(agent.signal.buffered("recording.state"))
        for person in people:
            person.signal.abort()
        await asyncio.sleep(1.0)
        for person in people:
            assert await person.resume()
        assert [p.id for p in people] == ids

        again = await undecided.next_event("consent.request", timeout=5.0)
        assert again["request"] == asks[2]["request"]  # the same question, asked again
        await asyncio.sleep(2.0)
        assert granter.signal.buffered("consent.request") == []
        assert refuser.signal.buffered("consent.request") == []
        assert granter.joined["recording"]["active"] is True
        assert granter.id in _recorded_ids(granter.joined["recording"])
        # The agent never saw the granter's recording stop, and it is still one recording.
        states = agent.signal.buffered("recording.state")[seen:]
        assert all(granter.id in _recorded_ids(e) for e in states)
        [still] = _recordings(server, room)
        assert still["id"] == recording["id"] and still["state"] == "recording"
        withdrawn = await granter.signal.request(
            {"type": "consent.withdraw", "jti": granted["jti"]}
        )
        assert withdrawn["type"] == "ok"  # the consent given before the drop is the one held
        await agent.next_event(
            "recording.state", lambda e: granter.id not in _recorded_ids(e), timeout=5.0
        )
    finally:
        for person in (*people, agent):
            await person.leave()


async def test_draining_server_does_not_wait_for_detached_participants(
    tmp_path: Path, room: str
) -> None:
    """A drain waits for participants to leave; one whose socket dropped cannot resume on a
    draining server (new sockets are refused), so it leaves at once, not after the window."""
    server = ServerProcess(tmp_path, ["--resume-window", "120"]).start()
    try:
        alice = await Participant.join(server.url, server.token(room, "alice"))
        bob = await Participant.join(server.url, server.token(room, "bob"))
        alice_id = alice.id
        alice.signal.abort()
        await asyncio.sleep(0.5)
        assert _membership_events(bob, alice_id) == []  # detached, kept
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # drain (our own child, by its handle)
        await bob.next_event("server.draining", timeout=5.0)
        await bob.next_event(
            "participant.left", lambda m: m["participant"]["id"] == alice_id, timeout=5.0
        )
        await bob.leave()
        await alice.close()
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
    finally:
        server.stop()
