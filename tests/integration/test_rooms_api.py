"""``GET /v1/rooms`` of a single process (admin only): where rooms live and who is in them."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from helpers.server import ServerProcess

from signaling.client import SignalClient

pytestmark = pytest.mark.integration


def _get(server: ServerProcess, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(server.http + "/v1/rooms")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_rooms_lists_live_rooms_for_admins_only(server: ServerProcess, room: str) -> None:
    clients = []
    try:
        for identity in ("a", "b"):
            client = await SignalClient.connect(server.url)
            clients.append(client)
            await client.request({"type": "join", "token": server.token(room, identity)})
        admin = server.token("ops", "admin", grants=("admin",))
        status, body = await asyncio.to_thread(_get, server, admin)
        assert status == 200
        entry = next(r for r in body["rooms"] if r["id"] == room)
        assert entry == {
            "id": room,
            "node": socket.gethostname(),
            "workers": ["0"],
            "participants": 2,
        }
        status, body = await asyncio.to_thread(_get, server, server.token(room, "a"))
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await asyncio.to_thread(_get, server, None)
        assert status == 401 and body["error"]["code"] == "unauthenticated"
    finally:
        for client in clients:
            await client.close()
