"""Rooms that span nodes: the shard link between two nodes of a cluster, and its SRTP pipe.

The worker-level machinery (:mod:`sfu.workers.span`, :mod:`sfu.shard`, :mod:`sfu.pipe`) is
reused as it is; what differs between nodes:

* **The link** is a WebSocket on the home node's *public* port, path
  :data:`NODE_LINK_PATH`, refused with 401 before the upgrade unless it carries a link token
  (:mod:`sfu.cluster.link_auth`, HMAC with the cluster's secret in Redis) naming the room.
  ``hello``/``welcome`` add ``pipe_host``, ``node`` and the claim's ``epoch``.
* **The pipe** is SRTP (AEAD_AES_256_GCM, :mod:`sfu.pipe_crypto`). The home draws one key
  per direction when it accepts the link and writes them to Redis bound to the epoch it
  holds the room at (refused if it no longer does); the spill node reads them after
  ``welcome`` and checks the epoch. While the link lasts the home keeps the keys' TTL in step
  with the claim's.
* **Placement**: a ``join`` for a room held elsewhere is served here as a spill shard when
  ``--room-span-subscribers N`` is set and the holder's last heartbeat counted more than N
  participants (or this node already has the room's spill shard); otherwise ``redirect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from sfu.cluster.link_auth import LinkAuthError, LinkClaims, sign_link, verify_link
from sfu.cluster.placement import ClusterUnavailable, Placement
from sfu.pipe import PipeEndpoint
from sfu.pipe_crypto import PipeCrypto, new_key
from sfu.shard import ShardLink, ShardProtocolError
from sfu.workers.span import CLOSE_REFUSED, HELLO_TIMEOUT_S, Spans, _Channel, _port

if TYPE_CHECKING:
    from sfu.cluster.node import ClusterNode
    from sfu.server import Server

__all__ = ["NODE_LINK_PATH", "NodeSpans", "link_url", "node_span_routes"]

log = structlog.get_logger(__name__)

NODE_LINK_PATH = "/internal/node-span/link"
MAX_HOST_CHARS = 255


def link_url(signal_url: str) -> str:
    """The home node's link endpoint, from the signalling URL its claim carries."""
    parts = urlsplit(signal_url)
    return urlunsplit((parts.scheme, parts.netloc, NODE_LINK_PATH, "", ""))


def _host(message: dict[str, Any]) -> str:
    host = message.get("pipe_host")
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS:
        raise ShardProtocolError("'pipe_host' must be an address")
    return host


class NodeSpans(Spans):
    """This node's shard links to other nodes, by room id (one per room: two shards)."""

    def __init__(self, server: Server, cluster: ClusterNode) -> None:
        super().__init__(server)
        self.cluster = cluster
        self.limit = server.settings.room_span_subscribers
        self.pipe_host = server.settings.pipe_host
        self.refused = 0  # link attempts refused (bad token, no claim, ...)

    def _closed(self, link: ShardLink, channel: _Channel) -> None:
        super()._closed(link, channel)
        self.server.release_room(link.room)  # the home gives its claim up once both are empty
        if not link.home and not link.room.empty and not self.server.closing:
            self._spawn(self._take_over(link.room.id))

    async def _take_over(self, room_id: str) -> None:
        """The link to the home ended with participants still here (the home node died):
        claim the room as soon as the old claim is free, so later joins land here instead of
        re-forming the room elsewhere. Bounded: gives up when another node holds it."""
        deadline = time.monotonic() + 2 * self.cluster.ttl_s + 1.0
        first: str | None = None
        while time.monotonic() < deadline:
            room = self.server.rooms.get(room_id)
            if room is None or room.empty or room.shard is not None:
                return
            try:
                placement = await self.cluster.place(room_id, here=True)
            except ClusterUnavailable:
                placement = None
            if placement is not None:
                if placement.local:
                    log.info("node_span_took_over", room=room_id, epoch=placement.epoch)
                    return
                first = first or placement.node
                if placement.node != first:
                    return  # another node re-formed the room meanwhile
            await asyncio.sleep(self.cluster.interval_s)

    # --- placement ----------------------------------------------------------------------

    def should_spill(self, placement: Placement) -> bool:
        """Serve a join for a room held by another node here, as its spill shard?"""
        link = self.links.get(placement.room)
        if link is not None and not link.closed and not link.home:
            return True
        return self.limit > 0 and placement.participants > self.limit

    # --- the spill node's end -----------------------------------------------------------

    async def open_node_spill(self, placement: Placement) -> None:
        await self.open_spill(placement.room, placement.url)

    async def _open_spill(self, room_id: str, home_url: str) -> None:
        state = self.cluster.state
        try:
            secret = await state.link_secret()
        except ClusterUnavailable as exc:
            raise ShardProtocolError(f"no link secret ({exc})") from None
        token = sign_link(secret, room=room_id, node=self.cluster.node_id, now=time.time())
        session = aiohttp.ClientSession()
        endpoint = PipeEndpoint(self.pipe_host)
        link: ShardLink | None = None
        try:
            ws = await session.ws_connect(
                link_url(home_url),
                heartbeat=10.0,
                max_msg_size=0,
                headers={"Authorization": f"Bearer {token}"},
                ssl=False,  # a cluster's own nodes; the link token authenticates both ways
            )
            opened = await self._open_spill_shard(room_id, endpoint, ws, session)
            if opened is None:
                return
            link, channel, port = opened
            await ws.send_str(
                json.dumps(
                    {
                        "op": "hello",
                        "room": room_id,
                        "node": self.cluster.node_id,
                        "pipe_host": self.pipe_host,
                        "pipe_port": port,
                        "state": link.snapshot(),
                    }
                )
            )
            welcome = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if link is not None:
                link.close("no welcome")
            endpoint.close()
            await session.close()
            raise ShardProtocolError(f"the home node did not answer ({exc!r})") from None
        try:
            message = json.loads(welcome.data) if welcome.type == WSMsgType.TEXT else None
            if not isinstance(message, dict) or message.get("op") != "welcome":
                raise ShardProtocolError("the home node refused the link")
            epoch = message.get("epoch")
            keys = await state.read_span(room_id)
            if keys is None or keys.epoch != epoch or keys.spill != self.cluster.node_id:
                raise ShardProtocolError("no pipe keys for this epoch in the cluster state")
            endpoint.crypto = PipeCrypto(send_key=keys.spill_key, receive_key=keys.home_key)
            endpoint.connect(_port(message), _host(message))
            link.apply_snapshot(message.get("state"))
        except (ShardProtocolError, ValueError, ClusterUnavailable) as exc:
            link.close(f"refused: {exc}")
            await session.close()
            raise ShardProtocolError(str(exc)) from None
        log.info("node_shard_opened", room=room_id, home=False, epoch=epoch, pipe_port=port)
        self._established(link)
        self._spawn(self._run(channel, link, session))

    # --- the home node's end ------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> LinkClaims:
        """The room and spill node a valid link token names; raises LinkAuthError."""
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        try:
            secret = await self.cluster.state.link_secret()
        except ClusterUnavailable as exc:
            raise LinkAuthError(f"cluster state unavailable ({exc})") from None
        return verify_link(secret, token, now=time.time())

    async def accept(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = await self._authorize(request)
        except LinkAuthError as exc:
            self.refused += 1
            log.warning("node_link_refused", peer=request.remote, reason=str(exc))
            return web.json_response({"error": "unauthenticated"}, status=401)
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=0)
        await ws.prepare(request)
        try:
            hello = json.loads((await ws.receive(timeout=HELLO_TIMEOUT_S)).data)
            room_id = str(hello["room"])
            port, host = _port(hello), _host(hello)
        except (TimeoutError, ValueError, KeyError, TypeError, ShardProtocolError):
            await ws.close(code=CLOSE_REFUSED, message=b"expected hello")
            return ws
        spill_node = claims.node
        epoch = self.cluster.held().get(room_id)
        refusal = self._refusal(room_id, epoch)
        if claims.room != room_id:
            refusal = b"the link token is for another room"
        home_key, spill_key = new_key(), new_key()
        if refusal is None and epoch is not None:
            try:
                written = await self.cluster.state.write_span(
                    room_id,
                    home=self.cluster.node_id,
                    epoch=epoch,
                    spill=spill_node,
                    home_key=home_key,
                    spill_key=spill_key,
                    ttl_s=self.cluster.ttl_s,
                )
            except ClusterUnavailable:
                written = False
            if not written:
                refusal = b"this node no longer holds the room"
        if refusal is not None or epoch is None:
            self.refused += 1
            await ws.close(code=CLOSE_REFUSED, message=refusal or b"refused")
            return ws
        room = self.server.rooms.get_or_create(room_id)
        endpoint = PipeEndpoint(self.pipe_host, PipeCrypto(home_key, spill_key))
        pipe_port = await endpoint.open()
        endpoint.connect(port, host)
        channel = _Channel(ws)
        link = self._new_link(room, endpoint, channel, home=True)
        channel.send(
            {
                "op": "welcome",
                "room": room_id,
                "node": self.cluster.node_id,
                "epoch": epoch,
                "pipe_host": self.pipe_host,
                "pipe_port": pipe_port,
                "state": link.snapshot(),
            }
        )
        try:
            link.apply_snapshot(hello.get("state"))
        except ShardProtocolError:
            link.close("bad hello")
            return ws
        log.info("node_shard_opened", room=room_id, home=True, epoch=epoch, spill=spill_node)
        self._established(link)
        keeper = asyncio.get_running_loop().create_task(self._keep_keys(room_id, epoch, link))
        try:
            await self._run(channel, link, None)
        finally:
            keeper.cancel()
        return ws

    def _refusal(self, room_id: str, epoch: int | None) -> bytes | None:
        room = self.server.rooms.get(room_id)
        if epoch is None:
            return b"this node does not hold the room"
        if room is not None and room.shard is not None:
            return b"the room already spans another node"
        if self.server.draining or self.server.closing:
            return b"draining"
        return None

    async def _keep_keys(self, room_id: str, epoch: int, link: ShardLink) -> None:
        """The keys live as long as the claim; a claim lost (new epoch) ends the link."""
        while not link.closed:
            await asyncio.sleep(self.cluster.interval_s)
            if self.cluster.held().get(room_id) != epoch:
                link.close("the room's claim moved to a new epoch")
                return
            with contextlib.suppress(ClusterUnavailable):
                await self.cluster.state.touch_span(room_id, epoch=epoch, ttl_s=self.cluster.ttl_s)


NODE_SPANS: web.AppKey[NodeSpans] = web.AppKey("node_spans", NodeSpans)


def node_span_routes(app: web.Application, server: Server, cluster: ClusterNode) -> NodeSpans:
    """``/internal/node-span/link`` on the public port (link token required)."""
    spans = NodeSpans(server, cluster)
    app[NODE_SPANS] = spans
    server.node_spans = spans
    app.router.add_get(NODE_LINK_PATH, spans.accept)

    async def close_links(app: web.Application) -> None:
        await spans.close()

    app.on_shutdown.append(close_links)
    return spans
