"""The cluster's shared state in Redis: nodes, room claims with fencing epochs.

Keys (one hash tag, so a Redis Cluster keeps them in one slot for the scripts):

* ``{sfu-cluster}:node:<id>``  hash ``id``, ``url``, ``load`` (JSON), ``workers``, ``instance``;
  expires ``ttl`` after the node's last heartbeat.
* ``{sfu-cluster}:room:<id>``  hash ``room``, ``node``, ``url``, ``epoch``, ``participants``,
  ``workers`` (JSON); the claim, expiring ``ttl`` after its host's last heartbeat.
* ``{sfu-cluster}:span:<id>``  hash ``epoch``, ``home``, ``spill``, ``home_key``,
  ``spill_key`` (hex): the SRTP keys of a room spanning two nodes (home → spill and
  spill → home), written by the home only while it holds the claim at that epoch, with
  the claim's TTL (refreshed while the link lasts); a new epoch means new keys.
* ``{sfu-cluster}:link-secret``  random bytes (hex) every node signs its shard-link
  tokens with (:mod:`sfu.cluster.link_auth`); created by the first node that needs it.
* ``{sfu-cluster}:epoch``      counter: every claim takes a new epoch from ``INCR``.
* ``{sfu-cluster}:nodes`` / ``:rooms``  sets of ids, for listing (pruned lazily, re-added by
  each heartbeat).

Every change of a claim is one Lua script, so two nodes never both hold a room: a claim is
taken only when the key is absent (expired or released), and a holder refreshes it only while
the epoch it holds is still the one in Redis. Every call is bounded by ``timeout_s`` and raises
:class:`ClusterUnavailable` on any Redis or network error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sfu.cluster.placement import ClusterUnavailable

__all__ = ["ClusterState", "HeldRoom", "NodeRecord", "RoomClaim", "RoomRecord", "SpanKeys"]

PREFIX = "{sfu-cluster}:"
_T = TypeVar("_T")

# KEYS: room key, epoch counter, rooms set. ARGV: node, url, ttl_ms, held epoch, room id,
# participants, workers (JSON), node key prefix, offer ('1': claiming for another node, so
# any live holder, that node included, is left as it is). Returns {node, url, epoch} of the
# holder after the call. A claim whose node's record expired (the node died) is free at once.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'node')
if cur and (cur ~= ARGV[1] or ARGV[9] == '1') and redis.call('EXISTS', ARGV[8] .. cur) == 1 then
  return {cur, redis.call('HGET', KEYS[1], 'url'), tonumber(redis.call('HGET', KEYS[1], 'epoch')),
          tonumber(redis.call('HGET', KEYS[1], 'participants') or '0')}
end
if cur and tonumber(redis.call('HGET', KEYS[1], 'epoch')) == tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {cur, ARGV[2], tonumber(ARGV[4])}
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[2], ARGV[4])
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'room', ARGV[5], 'node', ARGV[1], 'url', ARGV[2], 'epoch', epoch,
           'participants', ARGV[6], 'workers', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[5])
return {ARGV[1], ARGV[2], epoch}
"""

# KEYS: epoch counter, rooms set, then one room key per held room. ARGV: node, url, ttl_ms,
# then per room: room id, held epoch, participants, workers. Returns per room the epoch now
# held (the same, or a new one when the claim had expired and was free), or 0: lost.
_REFRESH = """
local out = {}
for i = 3, #KEYS do
  local a = 4 + (i - 3) * 4
  local room, held = ARGV[a], tonumber(ARGV[a + 1])
  local cur = redis.call('HGET', KEYS[i], 'node')
  if not cur then
    if tonumber(redis.call('GET', KEYS[1]) or '0') < held then
      redis.call('SET', KEYS[1], held)
    end
    held = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[i], 'room', room, 'node', ARGV[1], 'url', ARGV[2], 'epoch', held)
  elseif cur ~= ARGV[1] or tonumber(redis.call('HGET', KEYS[i], 'epoch')) ~= held then
    held = 0
  end
  if held > 0 then
    redis.call('HSET', KEYS[i], 'participants', ARGV[a + 2], 'workers', ARGV[a + 3])
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
    redis.call('SADD', KEYS[2], room)
  end
  out[#out + 1] = held
end
return out
"""

# KEYS: room key. ARGV: node, epoch. Deletes the claim only if this node still holds it.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1]
   and tonumber(redis.call('HGET', KEYS[1], 'epoch')) == tonumber(ARGV[2]) then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: node key, nodes set. ARGV: instance, ttl_ms, id, url, load, workers.
# Returns 0 when another live process already uses this node id.
_HEARTBEAT = """
local other = redis.call('HGET', KEYS[1], 'instance')
if other and other ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'id', ARGV[3], 'url', ARGV[4], 'load', ARGV[5], 'workers', ARGV[6],
           'instance', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""


# KEYS: span key, room key. ARGV: home node, epoch, spill node, home key, spill key, ttl_ms.
# Writes the span's keys only while the home node holds the room's claim at that epoch.
_WRITE_SPAN = """
if redis.call('HGET', KEYS[2], 'node') ~= ARGV[1]
   or tonumber(redis.call('HGET', KEYS[2], 'epoch')) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'home', ARGV[1], 'epoch', ARGV[2], 'spill', ARGV[3],
           'home_key', ARGV[4], 'spill_key', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""


@dataclass(frozen=True, slots=True)
class RoomClaim:
    """Who holds a room after a claim attempt (``participants``: as its holder last wrote)."""

    node: str
    url: str
    epoch: int
    participants: int = 0


@dataclass(frozen=True, slots=True)
class SpanKeys:
    """The SRTP keys of a room spanning two nodes, bound to the claim's epoch."""

    home: str
    spill: str
    epoch: int
    home_key: bytes  # protects home → spill
    spill_key: bytes  # protects spill → home


@dataclass(frozen=True, slots=True)
class HeldRoom:
    """A room this node hosts, as its heartbeat reports it."""

    room: str
    epoch: int
    participants: int
    workers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    url: str
    load: dict[str, Any]
    workers: int

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "load": self.load, "workers": self.workers}


@dataclass(frozen=True, slots=True)
class RoomRecord:
    id: str
    node: str
    workers: list[str]
    participants: int
    epoch: int
    spill_node: str | None = None  # the room spans nodes: its spill shard's node

    def describe(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "node": self.node,
            "workers": self.workers,
            "participants": self.participants,
        }
        if self.spill_node:  # addition: a room spanning nodes lists both (home first)
            row["nodes"] = [self.node, self.spill_node]
        return row


class NodeIdInUse(ClusterUnavailable):
    """Another live process heartbeats under this node id."""


class ClusterState:
    """Typed, bounded access to the cluster keys of one Redis."""

    def __init__(self, client: aioredis.Redis, *, timeout_s: float = 1.0) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._claim = client.register_script(_CLAIM)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._write_span = client.register_script(_WRITE_SPAN)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0) -> ClusterState:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=2 * timeout_s
        )
        return cls(client, timeout_s=timeout_s)

    async def _call(self, action: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await action
        except (RedisError, OSError, TimeoutError) as exc:
            raise ClusterUnavailable(f"redis: {type(exc).__name__}") from None

    async def ping(self) -> None:
        """Raise :class:`ClusterUnavailable` unless Redis answers."""
        await self._call(self.client.ping())

    # --- nodes --------------------------------------------------------------------------

    async def heartbeat(
        self, *, node: str, instance: str, url: str, ttl_s: float, load: dict[str, Any],
        workers: int,
    ) -> None:  # fmt: skip
        """Write this node's record with a fresh TTL; raises NodeIdInUse on a clash."""
        ok = await self._call(
            self._heartbeat(
                keys=[f"{PREFIX}node:{node}", f"{PREFIX}nodes"],
                args=[instance, _ms(ttl_s), node, url, json.dumps(load), workers],
            )
        )
        if int(ok) != 1:
            raise NodeIdInUse(f"node id {node!r} is used by another live node")

    async def remove_node(self, node: str, instance: str) -> None:
        """Leave the cluster at shutdown (only this process's own record)."""
        key = f"{PREFIX}node:{node}"
        if _text(await self._call(self.client.hget(key, "instance"))) == instance:
            await self._call(self.client.delete(key))
            await self._call(self.client.srem(f"{PREFIX}nodes", node))

    async def nodes(self) -> list[NodeRecord]:
        """Every live node (records whose TTL ran out are dropped from the index)."""
        ids = sorted(_text(i) for i in await self._call(self.client.smembers(f"{PREFIX}nodes")))
        rows = await self._hashes([f"{PREFIX}node:{i}" for i in ids])
        result: list[NodeRecord] = []
        gone: list[str] = []
        for node_id, row in zip(ids, rows, strict=True):
            if not row:
                gone.append(node_id)
                continue
            result.append(
                NodeRecord(
                    id=node_id,
                    url=row.get("url", ""),
                    load=_json_object(row.get("load")),
                    workers=_int(row.get("workers"), 1),
                )
            )
        if gone:
            await self._call(self.client.srem(f"{PREFIX}nodes", *gone))
        return result

    # --- rooms --------------------------------------------------------------------------

    async def claim(
        self, room: str, *, node: str, url: str, ttl_s: float, held_epoch: int,
        participants: int = 0, workers: Sequence[str] = (), offer: bool = False,
    ) -> RoomClaim:  # fmt: skip
        """Claim ``room`` for ``node`` unless another node holds it; the holder afterwards.

        ``held_epoch`` is the epoch this node believes it holds (0: none): only that epoch
        is refreshed; otherwise a claim of this node is renewed with a new epoch. With
        ``offer`` the claim is made on behalf of another ``node`` (least-loaded placement):
        a live holder, whoever it is, is returned unchanged.
        """
        result = await self._call(
            self._claim(
                keys=[f"{PREFIX}room:{room}", f"{PREFIX}epoch", f"{PREFIX}rooms"],
                args=[node, url, _ms(ttl_s), held_epoch, room, participants,
                      json.dumps(list(workers)), f"{PREFIX}node:", "1" if offer else "0"],
            )
        )  # fmt: skip
        holder, holder_url, epoch = result[:3]
        participants = int(result[3]) if len(result) > 3 else 0
        return RoomClaim(
            node=_text(holder), url=_text(holder_url), epoch=int(epoch), participants=participants
        )

    async def refresh(
        self, held: Sequence[HeldRoom], *, node: str, url: str, ttl_s: float
    ) -> dict[str, int]:
        """Refresh this node's claims: room → epoch now held (new if re-claimed), 0 if lost."""
        if not held:
            return {}
        keys = [f"{PREFIX}epoch", f"{PREFIX}rooms"] + [f"{PREFIX}room:{h.room}" for h in held]
        args: list[Any] = [node, url, _ms(ttl_s)]
        for h in held:
            args += [h.room, h.epoch, h.participants, json.dumps(list(h.workers))]
        result = await self._call(self._refresh(keys=keys, args=args))
        return {h.room: int(epoch) for h, epoch in zip(held, result, strict=True)}

    async def release(self, room: str, *, node: str, epoch: int) -> bool:
        """Give up a claim this node holds at ``epoch``; False if it no longer did."""
        deleted = await self._call(self._release(keys=[f"{PREFIX}room:{room}"], args=[node, epoch]))
        return int(deleted) == 1

    async def holder(self, room: str) -> RoomClaim | None:
        row = (await self._hashes([f"{PREFIX}room:{room}"]))[0]
        if not row:
            return None
        return RoomClaim(node=row["node"], url=row.get("url", ""), epoch=_int(row.get("epoch")))

    async def rooms(self) -> list[RoomRecord]:
        """Every claimed room of the cluster."""
        ids = sorted(_text(i) for i in await self._call(self.client.smembers(f"{PREFIX}rooms")))
        rows = await self._hashes([f"{PREFIX}room:{i}" for i in ids])
        spans = await self._hashes([f"{PREFIX}span:{i}" for i in ids])
        result: list[RoomRecord] = []
        gone: list[str] = []
        for room_id, row, span in zip(ids, rows, spans, strict=True):
            if not row:
                gone.append(room_id)
                continue
            spanning = span.get("home") == row.get("node") and span.get("epoch") == row.get("epoch")
            workers = json.loads(row.get("workers") or "[]")
            result.append(
                RoomRecord(
                    id=room_id,
                    node=row.get("node", ""),
                    workers=[str(w) for w in workers] if isinstance(workers, list) else [],
                    participants=_int(row.get("participants")),
                    epoch=_int(row.get("epoch")),
                    spill_node=span.get("spill") if spanning else None,
                )
            )
        if gone:
            await self._call(self.client.srem(f"{PREFIX}rooms", *gone))
        return result

    # --- rooms spanning nodes -----------------------------------------------------------

    async def write_span(
        self, room: str, *, home: str, epoch: int, spill: str, home_key: bytes,
        spill_key: bytes, ttl_s: float,
    ) -> bool:  # fmt: skip
        """Store a span's keys; False unless ``home`` still holds ``room`` at ``epoch``."""
        written = await self._call(
            self._write_span(
                keys=[f"{PREFIX}span:{room}", f"{PREFIX}room:{room}"],
                args=[home, epoch, spill, home_key.hex(), spill_key.hex(), _ms(ttl_s)],
            )
        )
        return int(written) == 1

    async def touch_span(self, room: str, *, epoch: int, ttl_s: float) -> None:
        """Keep a live span's keys as long as its claim (the home, every heartbeat)."""
        row = (await self._hashes([f"{PREFIX}span:{room}"]))[0]
        if _int(row.get("epoch")) == epoch:
            await self._call(self.client.pexpire(f"{PREFIX}span:{room}", _ms(ttl_s)))

    async def read_span(self, room: str) -> SpanKeys | None:
        row = (await self._hashes([f"{PREFIX}span:{room}"]))[0]
        try:
            return SpanKeys(
                home=row["home"],
                spill=row["spill"],
                epoch=int(row["epoch"]),
                home_key=bytes.fromhex(row["home_key"]),
                spill_key=bytes.fromhex(row["spill_key"]),
            )
        except (KeyError, ValueError):
            return None

    async def link_secret(self) -> bytes:
        """The cluster's shard-link signing secret (created once, by whoever asks first)."""
        key = f"{PREFIX}link-secret"
        await self._call(self.client.set(key, secrets.token_hex(32), nx=True))
        return bytes.fromhex(_text(await self._call(self.client.get(key))))

    async def _hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        if not keys:
            return []

        async def fetch() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return list(await pipe.execute())

        rows = await self._call(fetch())
        return [{_text(k): _text(v) for k, v in row.items()} for row in rows]

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _json_object(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
