"""The supervisor's own answers, without worker processes: the cluster seam (``redirect``),
no worker available, /readyz, /v1/rooms auth and draining. Real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sfu.keys import KeyStore
from sfu.settings import Settings
from sfu.workers.pool import WorkerPool
from sfu.workers.supervisor import Supervisor, create_supervisor_app
from signaling.access import issue_access_token

Setup = tuple[TestClient[web.Request, web.Application], Supervisor, KeyStore]


class ElsewhereNode:
    """A cluster placement that says room ``far`` lives on another node."""

    async def node_for(self, room: str) -> str | None:
        return "wss://other.example/v1/signal" if room == "far" else None


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    settings = Settings(data_dir=tmp_path / "data")
    keys = KeyStore.open(settings.data_dir)
    sup = Supervisor(settings, keys, WorkerPool(settings, tmp_path, 1), ElsewhereNode())
    client = TestClient(TestServer(create_supervisor_app(sup)))
    await client.start_server()
    try:
        yield client, sup, keys
    finally:
        await client.close()


def _token(keys: KeyStore, room: str, grants: tuple[str, ...] = ("publish",)) -> str:
    return issue_access_token(keys, room=room, identity="a", grants=grants)


async def test_a_room_on_another_node_is_answered_with_redirect(
    setup: Setup,
) -> None:
    client, _, keys = setup
    ws = await client.ws_connect("/v1/signal")
    await ws.send_json({"type": "join", "token": _token(keys, "far"), "id": "j"})
    assert await ws.receive_json() == {
        "type": "redirect",
        "url": "wss://other.example/v1/signal",
        "id": "j",
    }
    await ws.receive()
    assert ws.close_code == 1000


async def test_no_ready_worker_is_internal_with_the_request_id(
    setup: Setup,
) -> None:
    client, sup, keys = setup
    ws = await client.ws_connect("/v1/signal")
    await ws.send_json({"type": "join", "token": _token(keys, "near"), "id": "j"})
    reply = await ws.receive_json()
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "internal", "j")
    await ws.receive()
    assert ws.close_code == 1011
    for _ in range(100):  # the handler's cleanup runs just after the close frame
        if not sup.homes.connections:
            break
        await asyncio.sleep(0.01)
    assert sup.homes.worker == {} and sup.homes.connections == {}  # nothing left behind
    ready = await client.get("/readyz")
    assert ready.status == 503


async def test_rooms_needs_admin_and_draining_refuses_upgrades(
    setup: Setup,
) -> None:
    client, sup, keys = setup
    denied = await client.get("/v1/rooms", headers={"Authorization": f"Bearer {_token(keys, 'x')}"})
    assert denied.status == 403
    admin = _token(keys, "x", ("admin",))
    listed = await client.get("/v1/rooms", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status == 200 and await listed.json() == {"rooms": []}
    sup.start_draining(30.0)
    refused = await client.get("/v1/signal")
    assert refused.status == 503 and 25 <= int(refused.headers["Retry-After"]) <= 30
    readyz = await client.get("/readyz")
    assert readyz.status == 503 and (await readyz.json())["status"] == "draining"
