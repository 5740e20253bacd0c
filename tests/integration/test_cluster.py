"""A cluster of real server processes sharing a real redis-server: placement, redirects,
node death, Redis outages and split brain."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.cluster import admin_get, node_args, start_node, wait_for
from helpers.media import FrameCounterTrack, collect
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess
from helpers.webhook_receiver import WebhookReceiver

from signaling.client import Participant, SignalClient, SignalError

pytestmark = pytest.mark.integration

assert shutil.which("redis-server"), "redis-server is missing: scripts/test installs it"

TTL_S = 1.5


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for node_id in ("node-a", "node-b"):
            started.append(start_node(tmp_path, redis_server.url, node_id, ttl_s=TTL_S))
        yield started
    finally:
        for node in started:
            node.stop()


def _ready(node: ServerProcess) -> int:
    try:
        with urllib.request.urlopen(node.http + "/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _node_ids(node: ServerProcess) -> set[str]:
    status, body = admin_get(node, "/v1/nodes")
    assert status == 200, body
    return {n["id"] for n in body["nodes"]}


async def _call(node: ServerProcess, room: str) -> tuple[Participant, Participant, object]:
    alice = await Participant.join(
        node.url, node.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
    )
    bob = await Participant.join(node.url, node.token(room, "bob"))
    tracks = await bob.wait_remote_tracks(1, timeout=15)
    video = next(iter(tracks.values()))
    await collect(video, 3, timeout=15)
    return alice, bob, video


@pytest.mark.asyncio
async def test_a_join_on_another_node_is_redirected_and_media_flows(
    nodes: list[ServerProcess], room: str
) -> None:
    node_a, node_b = nodes
    alice = await Participant.join(
        node_a.url, node_a.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
    )
    try:
        # The bare protocol: `redirect` to the room's node, with the join's id, then close.
        raw = await SignalClient.connect(node_b.url)
        reply = await raw.request({"type": "join", "token": node_b.token(room, "probe")})
        assert reply == {"type": "redirect", "url": node_a.url, "id": reply["id"]}
        assert await raw.wait_closed(timeout=5) == 1000
        await raw.close()
        # The Python client follows it, and media flows between the two peers on node A.
        bob = await Participant.join(node_b.url, node_b.token(room, "bob"))
        try:
            assert bob.signal.url == node_a.url
            tracks = await bob.wait_remote_tracks(1, timeout=15)
            frames = await collect(next(iter(tracks.values())), 5, timeout=15)
            assert len(frames) == 5

            # Both nodes list both nodes, and the room on node A with its two participants.
            for node in nodes:
                status, body = admin_get(node, "/v1/nodes")
                assert status == 200
                listed = {n["id"]: n for n in body["nodes"]}
                assert set(listed) == {"node-a", "node-b"}
                assert listed["node-a"]["url"] == node_a.url
                assert listed["node-b"]["url"] == node_b.url
                assert listed["node-a"]["workers"] == 1
                assert set(listed["node-a"]["load"]) == {"rooms", "participants", "tracks", "cpu"}
            await wait_for(
                lambda: (
                    admin_get(node_b, "/v1/rooms")[1]["rooms"]
                    == [{"id": room, "node": "node-a", "workers": ["0"], "participants": 2}]
                ),
                timeout=5,
            )
            status, body = admin_get(node_a, "/v1/rooms")
            assert status == 200
            assert body["rooms"] == [
                {"id": room, "node": "node-a", "workers": ["0"], "participants": 2}
            ]
            samples = node_b.metrics()
            assert samples['sfu_cluster_redirects_total{node="node-b"}'] == 2  # probe and bob
            assert samples['sfu_cluster_available{node="node-b"}'] == 1
            assert samples['sfu_cluster_nodes{node="node-b"}'] == 2
            assert node_a.metrics()['sfu_cluster_rooms_claimed{node="node-a"}'] == 1
            # The listing needs the admin grant.
            status, body = admin_get(node_a, "/v1/rooms", grants=("publish",))
            assert status == 403 and body["error"]["code"] == "forbidden"
        finally:
            await bob.close()
    finally:
        await alice.close()
    # The last participant left: the claim is released and the room is gone cluster-wide.
    await wait_for(lambda: admin_get(node_b, "/v1/rooms")[1]["rooms"] == [], timeout=5)


@pytest.mark.asyncio
async def test_least_loaded_placement_sends_a_new_room_to_the_idle_node(
    tmp_path: Path, redis_server: RedisServer, room: str
) -> None:
    policy = ["--placement", "least-loaded"]
    started: list[ServerProcess] = []
    try:
        for node_id in ("node-a", "node-b"):
            started.append(
                start_node(tmp_path, redis_server.url, node_id, ttl_s=TTL_S, extra=policy)
            )
        node_a, node_b = started
        # Loads are compared as of the last heartbeat: wait until node A has seen node B.
        await wait_for(lambda: node_a.metrics()['sfu_cluster_nodes{node="node-a"}'] == 2, timeout=5)
        alice = await Participant.join(node_a.url, node_a.token(room, "alice"))
        bob = await Participant.join(node_a.url, node_a.token(room, "bob"))
        try:
            assert alice.signal.url == bob.signal.url == node_a.url  # a tie stays local
            # Node A now has two participants, node B none: a new room goes to node B.
            carol = await Participant.join(node_a.url, node_a.token(room + "-2", "carol"))
            try:
                assert carol.signal.url == node_b.url
                status, body = admin_get(node_a, "/v1/rooms")
                assert status == 200
                assert {(r["id"], r["node"]) for r in body["rooms"]} == {
                    (room, "node-a"),
                    (room + "-2", "node-b"),
                }
            finally:
                await carol.close()
        finally:
            await alice.close()
            await bob.close()
    finally:
        for node in started:
            node.stop()


@pytest.mark.asyncio
async def test_a_killed_node_disappears_and_its_room_is_joinable_through_another(
    nodes: list[ServerProcess], room: str
) -> None:
    node_a, node_b = nodes
    alice, bob, _ = await _call(node_a, room)
    try:
        node_a.proc.kill()  # type: ignore[union-attr]  # SIGKILL: no goodbye to Redis
        node_a.proc.wait(timeout=5)  # type: ignore[union-attr]
        killed = time.monotonic()
        gone = await wait_for(lambda: _node_ids(node_b) == {"node-b"}, timeout=TTL_S + 5)
        assert gone <= TTL_S + 2.5  # the TTL, plus scheduling slack on a busy machine
        # The same join, through node B: node B now hosts the room (no redirect to a dead node).
        carol = await Participant.join(
            node_b.url, node_b.token(room, "carol"), publish_tracks=[FrameCounterTrack()]
        )
        joinable = time.monotonic() - killed
        try:
            assert carol.signal.url == node_b.url
            assert joinable < TTL_S + 6.0
            dave = await Participant.join(node_b.url, node_b.token(room, "dave"))
            try:
                tracks = await dave.wait_remote_tracks(1, timeout=15)
                assert len(await collect(next(iter(tracks.values())), 3, timeout=15)) == 3
            finally:
                await dave.close()
            status, body = admin_get(node_b, "/v1/rooms")
            assert status == 200
            assert [(r["id"], r["node"]) for r in body["rooms"]] == [(room, "node-b")]
        finally:
            await carol.close()
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_a_draining_node_gives_its_rooms_up_so_they_re_form_elsewhere(
    nodes: list[ServerProcess], room: str
) -> None:
    node_a, node_b = nodes
    alice = await Participant.join(node_a.url, node_a.token(room, "alice"))
    try:
        node_a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await alice.next_event("server.draining", timeout=5)
        # Alice moves, as told: through node B, which now hosts the room (no redirect back).
        moved = await Participant.join(node_b.url, node_b.token(room, "alice"))
        try:
            assert moved.signal.url == node_b.url
            status, body = admin_get(node_b, "/v1/rooms")
            assert status == 200
            assert [(r["id"], r["node"]) for r in body["rooms"]] == [(room, "node-b")]
        finally:
            await moved.close()
    finally:
        await alice.close()
    assert node_a.proc.wait(timeout=10) == 0  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_redis_down_keeps_calls_refuses_joins_and_resyncs(
    tmp_path: Path, redis_server: RedisServer, room: str
) -> None:
    node = start_node(tmp_path, redis_server.url, "solo", ttl_s=TTL_S)
    revived: RedisServer | None = None
    try:
        alice, bob, video = await _call(node, room)
        try:
            redis_server.stop()
            with pytest.raises(SignalError) as refused:
                late = await Participant.join(node.url, node.token(room, "late"))
                await late.close()
            assert refused.value.code == "internal"
            assert refused.value.message == "cluster state unavailable"
            status, body = admin_get(node, "/v1/rooms")
            assert status == 500 and body["error"]["message"] == "cluster state unavailable"
            await wait_for(lambda: _ready(node) == 503, timeout=TTL_S * 2)  # out of the LB
            assert node.metrics()['sfu_cluster_available{node="solo"}'] == 0
            # The call in progress keeps its media, well past the claim's TTL.
            await asyncio.sleep(TTL_S * 2)
            assert len(await collect(video, 10, timeout=5)) == 10  # type: ignore[arg-type]

            # Redis comes back empty (no persistence): the node re-registers, re-claims its
            # room with a new epoch, and joins work again.
            revived = RedisServer(redis_server.workdir, port=redis_server.port).start()
            client = redis.Redis.from_url(redis_server.url)
            try:
                await wait_for(
                    lambda: client.hget("{sfu-cluster}:room:" + room, "node") == b"solo",
                    timeout=TTL_S * 3,
                )
                assert int(client.hget("{sfu-cluster}:room:" + room, "epoch") or 0) >= 1
                assert client.exists("{sfu-cluster}:node:solo")
            finally:
                client.close()
            await wait_for(lambda: _ready(node) == 200, timeout=TTL_S * 2)
            assert node.metrics()['sfu_cluster_rooms_reclaimed_total{node="solo"}'] == 1
            carol = await Participant.join(node.url, node.token(room, "carol"))
            try:
                tracks = await carol.wait_remote_tracks(1, timeout=15)
                assert len(await collect(next(iter(tracks.values())), 3, timeout=15)) == 3
            finally:
                await carol.close()
        finally:
            await alice.close()
            await bob.close()
    finally:
        node.stop()
        if revived is not None:
            revived.stop()


@pytest.mark.asyncio
async def test_a_node_whose_claim_was_overtaken_evicts_its_participants(
    tmp_path: Path, redis_server: RedisServer, room: str
) -> None:
    node = start_node(tmp_path, redis_server.url, "stale", ttl_s=TTL_S)
    try:
        alice = await Participant.join(node.url, node.token(room, "alice"))
        try:
            client = redis.Redis.from_url(redis_server.url)
            try:
                # Another node took the room (as after a stall longer than the TTL).
                client.delete("{sfu-cluster}:room:" + room)
                client.hset(
                    "{sfu-cluster}:room:" + room,
                    mapping={"node": "elsewhere", "url": "ws://127.0.0.1:9/v1/signal",
                             "epoch": 1000},
                )  # fmt: skip
                error = await alice.signal.next_event("error", timeout=TTL_S * 3)
                assert error["code"] == "conflict"
                assert error["url"] == "ws://127.0.0.1:9/v1/signal"
                assert await alice.signal.wait_closed(timeout=5) == 1012
                assert node.metrics()['sfu_cluster_rooms_lost_total{node="stale"}'] == 1
                # The stale node holds nothing any more; the new holder's claim is intact.
                assert client.hget("{sfu-cluster}:room:" + room, "node") == b"elsewhere"
                status, body = admin_get(node, "/v1/rooms")
                assert status == 200
                assert body["rooms"] == [
                    {"id": room, "node": "elsewhere", "workers": [], "participants": 0}
                ]
            finally:
                client.close()
        finally:
            await alice.close()
    finally:
        node.stop()


NOTICE = "This support call will be recorded. You may withdraw at any time."


def _recorded(event: dict[str, Any], participant: Participant) -> bool:
    return any(p["id"] == participant.id for p in event["participants"])


def _post(node: ServerProcess, path: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        node.http + path, method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.asyncio
async def test_a_withdrawal_on_one_node_stops_a_recording_on_another_within_500_ms(
    nodes: list[ServerProcess], room: str
) -> None:
    node_a, node_b = nodes
    agent = await Participant.join(
        node_a.url,
        node_a.token(room, "agent-1", role="agent", grants=("publish", "subscribe", "record")),
    )
    customer = await Participant.join(
        node_a.url, node_a.token(room, "customer-1"), publish_tracks=[FrameCounterTrack()]
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
        await agent.next_event("recording.state", lambda e: _recorded(e, customer), timeout=5)

        # The person withdraws on a privacy page served by node B (not the recording node).
        token = node_b.token("privacy-page", "customer-1")
        started = time.monotonic()
        status, body = _post(node_b, "/v1/subjects/customer-1/withdraw", token)
        assert status == 200, body
        assert body == {"subject": "customer-1", "withdrawn": [granted["jti"]]}
        state = await agent.next_event(
            "recording.state", lambda e: not _recorded(e, customer), timeout=5
        )
        stop_ms = (time.monotonic() - started) * 1000
        print(f"withdrawal on node B → recording stopped on node A: {stop_ms:.0f} ms")
        assert stop_ms < 500
        assert state["participants"] == []
        # Withdrawing again withdraws nothing new; someone else may not withdraw it at all.
        assert _post(node_b, "/v1/subjects/customer-1/withdraw", token)[1]["withdrawn"] == []
        other = node_b.token("privacy-page", "someone-else")
        assert _post(node_b, "/v1/subjects/customer-1/withdraw", other)[0] == 403
        # The shared ledger holds the withdrawal, whichever node is asked.
        status, export = admin_get(node_a, "/v1/subjects/customer-1/export")
        assert status == 200
        kinds = [r["kind"] for r in export["consent_records"]]
        assert "consent.withdrawn" in kinds and "recording.stopped" in kinds
    finally:
        await customer.close()
        await agent.close()


def _serve_fails(data_dir: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "serve", "--port", "0", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr


def test_a_node_does_not_start_without_redis_or_with_a_live_node_s_id(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    code, stderr = _serve_fails(tmp_path / "down", "--redis", "redis://127.0.0.1:1/0")
    assert code == 1
    assert "--redis: cannot join the cluster" in stderr
    node = start_node(tmp_path, redis_server.url, "taken", ttl_s=TTL_S)
    try:
        code, stderr = _serve_fails(tmp_path / "twin", *node_args(redis_server.url, "taken", TTL_S))
        assert code == 1
        assert "node id 'taken' is used by another live node" in stderr
        assert _node_ids(node) == {"taken"}  # the live node is unaffected
    finally:
        node.stop()


WEBHOOK_KEY = "cluster-test-webhook-key-0123456789abcdef"


@pytest.mark.asyncio
async def test_webhooks_of_every_node_go_through_the_shared_queue_once(
    tmp_path: Path, redis_server: RedisServer, room: str
) -> None:
    receiver = await WebhookReceiver(WEBHOOK_KEY).start()
    hooks = ["--webhook-url", receiver.url, "--webhook-key", WEBHOOK_KEY]
    started: list[ServerProcess] = []
    try:
        for node_id in ("node-a", "node-b"):
            started.append(
                start_node(tmp_path, redis_server.url, node_id, ttl_s=TTL_S, extra=hooks)
            )
        node_a, node_b = started
        other = room + "-b"
        alice = await Participant.join(node_a.url, node_a.token(room, "alice"))
        bob = await Participant.join(node_b.url, node_b.token(room, "bob"))  # redirected to A
        carol = await Participant.join(node_b.url, node_b.token(other, "carol"))
        for participant in (alice, bob, carol):
            await participant.close()
        await receiver.wait_for(10, timeout=15)
        await asyncio.sleep(0.5)  # nothing more (no duplicate) arrives
        assert len(receiver.ids) == len(set(receiver.ids)) == 10
        seen = {(e["room"]["id"], e["event"], e["node"]) for e in receiver.events()}
        assert seen == {
            (room, "room_started", "node-a"),
            (room, "participant_joined", "node-a"),
            (room, "participant_left", "node-a"),
            (room, "room_finished", "node-a"),
            (other, "room_started", "node-b"),
            (other, "participant_joined", "node-b"),
            (other, "participant_left", "node-b"),
            (other, "room_finished", "node-b"),
        }
        assert receiver.rejected == []
    finally:
        for node in started:
            node.stop()
        await receiver.stop()
