"""POST /v1/subjects/{subject}/withdraw on one node (embedded revocations, no Redis)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers.media import FrameCounterTrack
from helpers.server import ServerProcess

from signaling.client import Participant, SignalError

pytestmark = pytest.mark.integration

NOTICE = "This call is recorded. You may withdraw at any time."


def _post(server: ServerProcess, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(server.http + path, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.asyncio
async def test_withdrawal_through_the_api_stops_the_recording(tmp_path: Path, room: str) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        agent = await Participant.join(
            server.url,
            server.token(room, "agent-1", role="agent", grants=("publish", "subscribe", "record")),
        )
        customer = await Participant.join(
            server.url, server.token(room, "cust-9"), publish_tracks=[FrameCounterTrack()]
        )
        try:
            await agent.wait_remote_tracks(1, timeout=15)
            await agent.signal.request(
                {"type": "recording.start", "scope": ["video"], "notice": NOTICE}
            )
            asked = await customer.next_event("consent.request", timeout=5)
            granted = await customer.signal.request(
                {"type": "consent.grant", "request": asked["request"], "scope": ["video"]}
            )
            await agent.next_event("recording.state", lambda e: bool(e["participants"]), 5)

            path = "/v1/subjects/cust-9/withdraw"
            own = server.token("anywhere", "cust-9")
            assert _post(server, path, None)[0] == 401
            status, body = _post(server, path + "?jti=not-a-consent", own)
            assert status == 404 and body["error"]["code"] == "not_found"
            started = time.monotonic()
            status, body = _post(server, f"{path}?jti={granted['jti']}", own)
            assert (status, body) == (200, {"subject": "cust-9", "withdrawn": [granted["jti"]]})
            await agent.next_event("recording.state", lambda e: not e["participants"], 5)
            assert time.monotonic() - started < 0.5
            # The consent is revoked: presenting the same token again is refused.
            with pytest.raises(SignalError) as refused:
                await customer.signal.request(
                    {"type": "consent.present", "token": granted["token"]}
                )
            assert refused.value.code == "consent_invalid"
            assert "revoked" in refused.value.message
        finally:
            await customer.close()
            await agent.close()
    finally:
        assert server.stop() == 0
