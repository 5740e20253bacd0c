"""Consent-gated recording end to end: real peers, the real server, ffprobe on the files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers.media import FrameCounterTrack, ToneTrack
from helpers.probe import probe
from helpers.server import ServerProcess

from consent.tokens import issue_consent_token
from sfu.keys import KeyStore
from signaling.client import Participant, SignalError

pytestmark = pytest.mark.integration

NOTICE = "This support call will be recorded to improve our service. You may withdraw at any time."
AGENT_GRANTS = ("publish", "subscribe", "record")


@pytest.fixture(scope="module")
def recording_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("recording"))).start()
    try:
        yield process
    finally:
        assert process.stop() == 0


def _http(server: ServerProcess, method: str, path: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        server.http + path, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _admin(server: ServerProcess) -> str:
    return server.token("admin-room", "admin", role="agent", grants=("admin",))


def _recordings(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    status, body = _http(server, "GET", f"/v1/recordings?room={room}", _admin(server))
    assert status == 200, body
    recordings: list[dict[str, Any]] = json.loads(body)["recordings"]
    return recordings


async def _call(server: ServerProcess, room: str) -> tuple[Participant, Participant]:
    agent = await Participant.join(
        server.url, server.token(room, "agent-1", role="agent", grants=AGENT_GRANTS)
    )
    customer = await Participant.join(
        server.url,
        server.token(room, "customer-1"),
        publish_tracks=[FrameCounterTrack(), ToneTrack()],
    )
    await agent.wait_remote_tracks(2, timeout=10)
    return agent, customer


async def _request(agent: Participant, customer: Participant, scope: list[str]) -> str:
    await agent.signal.request({"type": "recording.start", "scope": scope, "notice": NOTICE})
    asked = await customer.next_event("consent.request", timeout=5)
    assert asked["notice"] == NOTICE and asked["scope"] == sorted(scope)
    assert asked["by"] == agent.id
    return str(asked["request"])


def _recorded(event: dict[str, Any], participant: Participant) -> bool:
    return any(p["id"] == participant.id for p in event["participants"])


async def test_nothing_is_recorded_without_consent_and_withdraw_stops_at_once(
    recording_server: ServerProcess, room: str, tmp_path: Path
) -> None:
    server = recording_server
    agent, customer = await _call(server, room)
    try:
        request = await _request(agent, customer, ["audio", "video"])
        await asyncio.sleep(1.5)  # media flows; the customer has not answered
        assert _recordings(server, room) == [], "zero bytes before consent"

        granted = await customer.signal.request(
            {"type": "consent.grant", "request": request, "scope": ["audio", "video"]}
        )
        assert granted["type"] == "consent.granted" and granted["jti"]
        state = await agent.next_event(
            "recording.state", lambda e: _recorded(e, customer), timeout=5
        )
        assert state["active"] is True
        await asyncio.sleep(4.0)

        agent.signal.discard("recording.state")  # only a state sent after the withdrawal counts
        started = time.monotonic()
        await customer.signal.request({"type": "consent.withdraw", "jti": granted["jti"]})
        await agent.next_event("recording.state", lambda e: not _recorded(e, customer), timeout=5)
        withdraw_ms = (time.monotonic() - started) * 1000
        print(f"withdraw → recording stopped: {withdraw_ms:.0f} ms")
        assert withdraw_ms < 500

        [recording] = _recordings(server, room)
        for _ in range(50):  # the worker seals the file in the background
            if _recordings(server, room)[0]["state"] != "recording":
                break
            await asyncio.sleep(0.1)
        status, media = _http(
            server, "GET", f"/v1/recordings/{recording['id']}/media", _admin(server)
        )
        assert status == 200
        path = tmp_path / "customer.webm"
        path.write_bytes(media)
        result = probe(path)
        assert result.codecs == {"video": "vp8", "audio": "opus"}
        assert 3.0 <= result.duration_s <= 6.0, result
        assert abs(result.start_s["video"] - result.start_s["audio"]) <= 0.1, result

        audit = subprocess.run(
            [sys.executable, "-m", "sfu", "audit", "verify", "--data-dir", str(server.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr

        status, _ = _http(server, "DELETE", f"/v1/recordings/{recording['id']}", _admin(server))
        assert status == 200
        status, _ = _http(server, "GET", f"/v1/recordings/{recording['id']}/media", _admin(server))
        assert status == 404
        status, body = _http(server, "GET", "/v1/subjects/customer-1/export", _admin(server))
        kinds = [r["kind"] for r in json.loads(body)["consent_records"]]
        for kind in (
            "consent.requested",
            "consent.granted",
            "recording.started",
            "consent.withdrawn",
            "recording.erased",
        ):
            assert kind in kinds, kinds
    finally:
        await customer.close()
        await agent.close()


async def test_audio_only_consent_records_no_video(
    recording_server: ServerProcess, room: str, tmp_path: Path
) -> None:
    server = recording_server
    agent, customer = await _call(server, room)
    try:
        request = await _request(agent, customer, ["audio", "video"])
        await customer.signal.request(
            {"type": "consent.grant", "request": request, "scope": ["audio"]}
        )
        await asyncio.sleep(2.5)
        await agent.signal.request({"type": "recording.stop"})
        await asyncio.sleep(1.0)
        [recording] = _recordings(server, room)
        status, media = _http(
            server, "GET", f"/v1/recordings/{recording['id']}/media", _admin(server)
        )
        assert status == 200
        path = tmp_path / "audio.webm"
        path.write_bytes(media)
        assert probe(path).codecs == {"audio": "opus"}
    finally:
        await customer.close()
        await agent.close()


def _forged_tokens(server: ServerProcess, room: str, subject: str) -> dict[str, str]:
    keys = KeyStore.open(server.data_dir)
    good, _ = issue_consent_token(
        keys, room=room, subject=subject, scope=["audio"], purpose="p", notice_text=NOTICE
    )
    payload = good.split(".")[1]
    other = Ed25519PrivateKey.generate()
    body = jwt.decode(good, options={"verify_signature": False})
    public_raw = keys.public_key(keys.signing_kid).public_bytes_raw()  # type: ignore[union-attr]
    return {
        "another key": jwt.encode(
            body,
            other,
            algorithm="EdDSA",
            headers={"kid": keys.signing_kid, "typ": "sfu-consent+jwt"},
        ),
        "unknown kid": jwt.encode(
            body, other, algorithm="EdDSA", headers={"kid": "nobody", "typ": "sfu-consent+jwt"}
        ),
        "alg none": f"{jwt.utils.base64url_encode(json.dumps({'alg': 'none', 'typ': 'sfu-consent+jwt', 'kid': keys.signing_kid}).encode()).decode()}.{payload}.",  # noqa: E501
        "HS256 with the public key": jwt.encode(
            body,
            public_raw,
            algorithm="HS256",
            headers={"kid": keys.signing_kid, "typ": "sfu-consent+jwt"},
        ),
        "access token": server.token(room, subject),
        "expired": issue_consent_token(
            keys,
            room=room,
            subject=subject,
            scope=["audio"],
            purpose="p",
            notice_text=NOTICE,
            ttl_s=60,
            now=time.time() - 7200,
        )[0],
        "wrong room": issue_consent_token(
            keys,
            room=room + "-x",
            subject=subject,
            scope=["audio"],
            purpose="p",
            notice_text=NOTICE,
        )[0],
        "wrong subject": issue_consent_token(
            keys,
            room=room,
            subject="someone-else",
            scope=["audio"],
            purpose="p",
            notice_text=NOTICE,
        )[0],
        "garbage": "not-a-token",
    }


async def test_forged_and_mismatched_consent_is_refused(
    recording_server: ServerProcess, room: str
) -> None:
    server = recording_server
    agent, customer = await _call(server, room)
    try:
        await _request(agent, customer, ["audio", "video"])
        for name, token in _forged_tokens(server, room, "customer-1").items():
            with pytest.raises(SignalError) as refused:
                await customer.signal.request({"type": "consent.present", "token": token})
            assert refused.value.code == "consent_invalid", name
        with pytest.raises(SignalError) as refused:
            await customer.signal.request({"type": "consent.present"})
        assert refused.value.code == "consent_invalid", "no token at all"
        await asyncio.sleep(0.5)
        assert _recordings(server, room) == [], "nothing recorded"
    finally:
        await customer.close()
        await agent.close()


async def test_customer_cannot_start_recording_or_read_others(
    recording_server: ServerProcess, room: str
) -> None:
    server = recording_server
    agent, customer = await _call(server, room)
    try:
        with pytest.raises(SignalError) as refused:
            await customer.signal.request(
                {"type": "recording.start", "scope": ["audio"], "notice": NOTICE}
            )
        assert refused.value.code == "forbidden"
        token = server.token(room, "customer-1")
        status, _ = _http(server, "GET", "/v1/subjects/agent-1/export", token)
        assert status == 403
        status, _ = _http(server, "GET", "/v1/recordings?subject=agent-1", token)
        assert status == 403
    finally:
        await customer.close()
        await agent.close()


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfu", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _record(
    server: ServerProcess, room: str, seconds: float
) -> tuple[Participant, Participant]:
    agent, customer = await _call(server, room)
    request = await _request(agent, customer, ["audio", "video"])
    await customer.signal.request(
        {"type": "consent.grant", "request": request, "scope": ["audio", "video"]}
    )
    await asyncio.sleep(seconds)
    return agent, customer


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_stopped_or_killed_server_leaves_a_playable_recording(
    tmp_path: Path, room: str, how: str
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    agent, customer = await _record(server, room, 4.0)
    try:
        assert server.proc is not None
        if how == "SIGKILL":
            server.proc.kill()
            server.proc.wait(timeout=10)
        else:
            server.proc.terminate()  # drain: the file is finished as participants leave
            await customer.close()
            await agent.close()
            assert server.proc.wait(timeout=30) == 0
    finally:
        await customer.close()
        await agent.close()
        server.stop()
    if how == "SIGKILL":  # nothing sealed the file: recovery keeps its authenticated prefix
        recovered = _cli(server, "recordings", "recover")
        assert recovered.returncode == 0, recovered.stderr
    [recording] = json.loads(_cli(server, "recordings", "list").stdout)
    out = tmp_path / "recording.webm"
    exported = _cli(server, "recordings", "export", recording["id"], "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    result = probe(out)
    assert result.codecs == {"video": "vp8", "audio": "opus"}
    lost = 4.0 - result.duration_s
    print(f"{how}: {result.duration_s:.2f} s of 4 s recorded, {max(lost, 0):.2f} s lost")
    assert result.duration_s >= (3.0 if how == "SIGTERM" else 2.0), result


async def test_answers_survive_a_reconnect(recording_server: ServerProcess, room: str) -> None:
    """A refusal stands and a consent resumes when the same person rejoins."""
    server = recording_server
    agent, customer = await _call(server, room)
    try:
        request = await _request(agent, customer, ["audio", "video"])
        await customer.signal.request(
            {"type": "consent.grant", "request": request, "scope": ["audio", "video"]}
        )
        await agent.next_event("recording.state", lambda e: _recorded(e, customer), timeout=5)
        await customer.close()  # a network blip: the page rejoins with the same token
        customer = await Participant.join(
            server.url,
            server.token(room, "customer-1"),
            publish_tracks=[FrameCounterTrack(), ToneTrack()],
        )
        await agent.next_event("recording.state", lambda e: _recorded(e, customer), timeout=10)
        assert customer.signal.buffered("consent.request") == [], "not asked again"
        await customer.signal.request({"type": "consent.withdraw"})
        await customer.close()
        customer = await Participant.join(server.url, server.token(room, "customer-1"))
        await asyncio.sleep(1.0)
        assert customer.signal.buffered("consent.request") == [], "a withdrawal stands too"
    finally:
        await customer.close()
        await agent.close()
