"""`POST /v1/sessions` on the real server process: who may open a support session, what it
returns, and that the tokens it returns work (and expire)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.server import ServerProcess

from sfu.keys import KeyStore
from signaling.access import issue_access_token, verify_access_token
from signaling.client import SignalClient

pytestmark = pytest.mark.integration

T = 5.0
ISSUER = "oktorus-sfu"


async def post(
    server: ServerProcess,
    token: str | None,
    body: Any = None,
    *,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with http.post(
            server.http + "/v1/sessions",
            headers=headers,
            timeout=aiohttp.ClientTimeout(T),
            **kwargs,
        ) as response:
            return response.status, await response.json(), dict(response.headers)


def agent(server: ServerProcess, **kwargs: Any) -> str:
    return server.token("console", "agent1", role="agent", **kwargs)


async def test_agent_opens_a_session(server: ServerProcess) -> None:
    before = time.time()
    status, body, headers = await post(server, agent(server), {"customer": "Ada"})
    assert status == 201, body
    assert headers["Cache-Control"] == "no-store"
    assert set(body) == {"room", "agent_token", "customer_token", "join_url", "expires_in"}
    assert body["expires_in"] == 7200
    keys = KeyStore.open(server.data_dir)
    agent_claims = verify_access_token(keys, body["agent_token"], issuer=ISSUER)
    customer_claims = verify_access_token(keys, body["customer_token"], issuer=ISSUER)
    # A fresh room: never the room of the caller's token.
    assert agent_claims.room == customer_claims.room == body["room"] != "console"
    assert (agent_claims.identity, agent_claims.role) == ("agent1", "agent")
    assert agent_claims.grants == {"publish", "subscribe", "record"}
    assert (customer_claims.identity, customer_claims.role) == ("Ada", "customer")
    assert customer_claims.grants == {"publish", "subscribe"}
    for claims in (agent_claims, customer_claims):
        assert before - 1 <= claims.expires_at - 7200 <= time.time() + 1
    assert body["join_url"] == f"{server.http}/join?token={body['customer_token']}"

    # Both tokens join the new room.
    for token in (body["agent_token"], body["customer_token"]):
        client = await SignalClient.connect(server.url, timeout=T)
        try:
            joined = await client.request({"type": "join", "token": token}, timeout=T)
            assert joined["type"] == "joined"
            assert joined["room"] == {"id": body["room"]}
        finally:
            await client.close()


async def test_each_session_is_a_new_room(server: ServerProcess) -> None:
    rooms = set()
    for _ in range(3):
        status, body, _ = await post(server, agent(server), None)
        assert status == 201, body
        rooms.add(body["room"])
        assert body["join_url"].count("token=") == 1
    assert len(rooms) == 3


async def test_admin_grant_is_enough(server: ServerProcess) -> None:
    admin = server.token("ops", "root", role="operator", grants=("admin",))
    status, body, _ = await post(server, admin, {"ttl": 600})
    assert status == 201, body
    assert body["expires_in"] == 600
    keys = KeyStore.open(server.data_dir)
    claims = verify_access_token(keys, body["customer_token"], issuer=ISSUER)
    assert claims.expires_at - claims.issued_at == 600
    assert claims.identity == "Customer"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no Authorization header"),
        ("", "empty bearer"),
        ("not-a-jwt", "garbage"),
    ],
)
async def test_no_or_bad_token_is_401(
    server: ServerProcess, header: str | None, reason: str
) -> None:
    status, body, headers = await post(server, header, {})
    assert status == 401, reason
    assert body["error"]["code"] == "unauthenticated"
    assert isinstance(body["error"]["message"], str)
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_expired_and_foreign_tokens_are_401(server: ServerProcess, tmp_path: Path) -> None:
    keys = KeyStore.open(server.data_dir)
    expired = issue_access_token(
        keys, room="console", identity="a", role="agent", ttl_s=60, now=time.time() - 3600
    )
    foreign = issue_access_token(
        KeyStore.open(tmp_path / "other"), room="console", identity="a", role="agent"
    )
    for token in (expired, foreign):
        status, body, _ = await post(server, token, {})
        assert status == 401
        assert body["error"]["code"] == "unauthenticated"
    status, body, _ = await post(server, expired, {})
    assert "expired" in body["error"]["message"]


async def test_customer_is_403(server: ServerProcess) -> None:
    customer = server.token("room", "c", role="customer", grants=("publish", "subscribe", "record"))
    status, body, _ = await post(server, customer, {})
    assert status == 403
    assert body["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "body",
    [
        {"ttl": 0},
        {"ttl": 59},
        {"ttl": 12 * 3600 + 1},
        {"ttl": "600"},
        {"ttl": True},
        {"ttl": 600.5},
        {"customer": ""},
        {"customer": "x" * 129},
        {"customer": "bad\nname"},
        {"customer": 7},
        [1, 2],
        "text",
    ],
)
async def test_bad_body_is_400(server: ServerProcess, body: Any) -> None:
    status, reply, _ = await post(server, agent(server), body)
    assert status == 400, reply
    assert reply["error"]["code"] == "bad_request"


async def test_malformed_and_oversize_bodies(server: ServerProcess) -> None:
    status, reply, _ = await post(server, agent(server), raw=b"{not json")
    assert (status, reply["error"]["code"]) == (400, "bad_request")
    status, reply, _ = await post(server, agent(server), raw=b"{" + b" " * 8192 + b"}")
    assert (status, reply["error"]["code"]) == (413, "too_large")


async def test_tokens_expire(server: ServerProcess) -> None:
    """A session's customer token is refused once its ttl is over (checked with `now`)."""
    status, body, _ = await post(server, agent(server), {"ttl": 60})
    assert status == 201
    keys = KeyStore.open(server.data_dir)
    with pytest.raises(Exception, match="expired"):
        verify_access_token(
            keys, body["customer_token"], issuer=ISSUER, leeway_s=0, now=time.time() + 61
        )
