"""Webhooks: signed JSON events for the operator's back office, delivered at least once.

Events (``event`` field): ``room_started``, ``room_finished``, ``participant_joined``,
``participant_left``, ``track_published``, ``track_unpublished``, ``recording_started``,
``recording_stopped``, ``consent_granted``, ``consent_withdrawn``. Body::

    {"id": "EV_…", "event": "participant_joined", "created_at": 1764139200.123,
     "worker": "0", "room": {"id": "demo"}, "participant": {"id": "PA_…", …}}

In a cluster (``--redis``) the body also names the ``node`` that saw the event.

Each POST carries ``Authorization: <JWT>`` (HS256 with ``--webhook-key``, header ``typ``
``sfu-webhook+jwt``) whose ``sha256`` claim is the base64 SHA-256 of the exact body, as
LiveKit does; :func:`verify_webhook` (and ``python -m sfu webhook verify``) checks it.
Delivery is at least once: receivers deduplicate on ``id``.

Shape: :meth:`Webhooks.emit` is synchronous and O(URLs) — it serialises the event once and
appends it to each URL's bounded outbox, so the room and media code never wait. Per URL a
*lane* moves outboxed events into its :class:`WebhookQueue` and runs a few delivery workers
that POST, retry with exponential backoff (0.5 s doubling up to ``--webhook-retry-max``) and
acknowledge on 2xx. A receiver that hangs (``--webhook-timeout``), fails or is unreachable
only holds up its own lane. The queue is in memory and bounded (``--webhook-queue-size``,
oldest dropped and counted) or, with ``--redis``, a Redis Stream per URL whose consumer-group
pending list keeps undelivered events across restarts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import jwt
import structlog

from sfu.ids import new_id

__all__ = [
    "EVENTS",
    "MAX_EVENT_AGE_S",
    "EventSink",
    "MemoryQueue",
    "NullEvents",
    "Queued",
    "RedisStreamQueue",
    "WebhookError",
    "WebhookQueue",
    "WebhookStats",
    "Webhooks",
    "sign_webhook",
    "verify_webhook",
]

log = structlog.get_logger(__name__)

EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "recording_started",
    "recording_stopped",
    "consent_granted",
    "consent_withdrawn",
)
JWT_TYPE = "sfu-webhook+jwt"
CONTENT_TYPE = "application/webhook+json"
TOKEN_TTL_S = 300
MAX_EVENT_AGE_S = 86400.0  # an event still undelivered after a day is dropped (and counted)
WORKERS_PER_URL = 4
FIRST_BACKOFF_S = 0.5
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


# --------------------------------------------------------------------------- signing


class WebhookError(ValueError):
    """A webhook request does not verify (the message says why)."""


def _body_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def sign_webhook(body: bytes, key: str, *, issuer: str, now: float | None = None) -> str:
    """The JWT for ``Authorization``: HS256, ``sha256`` = base64(SHA-256(body))."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": issuer, "iat": issued, "exp": issued + TOKEN_TTL_S, "sha256": _body_hash(body)}
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": JWT_TYPE})


def verify_webhook(
    body: bytes,
    authorization: str,
    key: str,
    *,
    issuer: str | None = None,
    leeway_s: float = 60.0,
) -> dict[str, Any]:
    """Check a received webhook; returns the decoded event or raises :class:`WebhookError`.

    ``authorization`` is the header value (a bare JWT, or ``Bearer <JWT>``). The algorithm is
    pinned to HS256, the ``typ`` header, expiry and (if given) issuer are checked, and the
    body must hash to the token's ``sha256`` claim.
    """
    token = authorization.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise WebhookError("no token in Authorization")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise WebhookError(f"malformed token: {exc}") from None
    if header.get("typ") != JWT_TYPE:
        raise WebhookError(f"token typ must be {JWT_TYPE!r}")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            issuer=issuer,
            leeway=leeway_s,
            options={"require": ["iat", "exp", "sha256"]},
        )
    except jwt.PyJWTError as exc:
        raise WebhookError(f"invalid token: {exc}") from None
    if claims.get("sha256") != _body_hash(body):
        raise WebhookError("the body does not match the token's sha256 claim")
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WebhookError("the body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise WebhookError("the body is not a webhook event")
    return event


# --------------------------------------------------------------------------- queues


@dataclass(slots=True)
class Queued:
    """One undelivered event of one URL's queue."""

    entry_id: str
    body: bytes
    created_at: float
    attempts: int = 0


class WebhookQueue(Protocol):
    """Where one URL's undelivered events wait. At least once: an entry stays until acked."""

    async def start(self) -> None: ...

    async def put(self, body: bytes, created_at: float) -> None:
        """Store an event (raises OSError/ConnectionError when the store is unreachable)."""
        ...

    async def get(self) -> Queued:
        """The next entry no worker holds (waits for one)."""
        ...

    async def ack(self, entry: Queued) -> None:
        """Delivered (or given up): forget it."""
        ...

    async def touch(self, entry: Queued) -> None:
        """Still being retried by this process (keeps others from claiming it)."""
        ...

    def depth(self) -> int:
        """Entries waiting or in flight (best effort, no I/O)."""
        ...

    @property
    def dropped(self) -> int:
        """Entries dropped because the queue was full."""
        ...

    async def close(self) -> None: ...


class MemoryQueue:
    """Bounded, in-process: the oldest waiting event is dropped (and counted) when full."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._waiting: deque[Queued] = deque()
        self._in_flight = 0
        self._ready = asyncio.Event()
        self._dropped = 0
        self._ids = 0

    async def start(self) -> None:
        return None

    async def put(self, body: bytes, created_at: float) -> None:
        if self._waiting and len(self._waiting) + self._in_flight >= self._limit:
            self._waiting.popleft()
            self._dropped += 1
        self._ids += 1
        self._waiting.append(Queued(str(self._ids), body, created_at))
        self._ready.set()

    async def get(self) -> Queued:
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        self._in_flight += 1
        return self._waiting.popleft()

    async def ack(self, entry: Queued) -> None:
        self._in_flight -= 1

    async def touch(self, entry: Queued) -> None:
        return None

    def depth(self) -> int:
        return len(self._waiting) + self._in_flight

    @property
    def dropped(self) -> int:
        return self._dropped

    async def close(self) -> None:
        return None


class RedisStreamQueue:
    """A Redis Stream per URL, read through a consumer group, so events survive restarts.

    ``put`` is ``XADD … MAXLEN ~ limit``; workers ``XREADGROUP``; ``ack`` is ``XACK`` +
    ``XDEL``. On start the entries this consumer had read but not acknowledged (its pending
    list, e.g. from before a restart) are delivered first, then entries another consumer has
    held for ``claim_idle_s`` without touching them (a dead node) are claimed.
    """

    GROUP = "sfu-webhooks"

    def __init__(
        self,
        client: Any,
        stream: str,
        *,
        consumer: str,
        limit: int,
        claim_idle_s: float = 600.0,
    ) -> None:
        self._redis = client
        self.stream = stream
        self._consumer = consumer
        self._limit = limit
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._backlog: deque[Queued] = deque()
        self._lock = asyncio.Lock()
        self._depth = 0
        self._dropped = 0

    async def start(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        mine = await self._redis.xreadgroup(
            self.GROUP, self._consumer, {self.stream: "0"}, count=self._limit
        )
        for _, entries in mine or []:
            await self._adopt(entries)
        claimed = await self._redis.xautoclaim(
            self.stream, self.GROUP, self._consumer, self._claim_idle_ms, "0-0", count=1000
        )
        await self._adopt(claimed[1] or [])
        self._depth = int(await self._redis.xlen(self.stream))
        if self._backlog:
            log.info("webhooks_recovered", stream=self.stream, pending=len(self._backlog))

    async def _adopt(self, entries: Sequence[tuple[Any, Mapping[Any, Any] | None]]) -> None:
        for entry_id, data in entries:
            if data:
                self._backlog.append(self._decode(entry_id, data))
            else:  # trimmed by MAXLEN while pending: nothing left to deliver
                await self._redis.xack(self.stream, self.GROUP, entry_id)

    @staticmethod
    def _decode(entry_id: Any, data: Mapping[Any, Any]) -> Queued:
        key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        body = data.get(b"body", b"")
        created = data.get(b"created_at", b"0")
        try:
            created_at = float(created)
        except ValueError:
            created_at = 0.0
        return Queued(key, bytes(body), created_at)

    async def put(self, body: bytes, created_at: float) -> None:
        before = self._depth
        await self._redis.xadd(
            self.stream,
            {"body": body, "created_at": repr(created_at)},
            maxlen=self._limit,
            approximate=True,
        )
        self._depth = int(await self._redis.xlen(self.stream))
        if self._depth <= before:
            self._dropped += before + 1 - self._depth

    async def get(self) -> Queued:
        while True:
            if self._backlog:
                return self._backlog.popleft()
            async with self._lock:  # one blocking read at a time per queue
                if self._backlog:
                    continue
                result = await self._redis.xreadgroup(
                    self.GROUP, self._consumer, {self.stream: ">"}, count=16, block=1000
                )
                for _, entries in result or []:
                    await self._adopt(entries)

    async def ack(self, entry: Queued) -> None:
        await self._redis.xack(self.stream, self.GROUP, entry.entry_id)
        await self._redis.xdel(self.stream, entry.entry_id)
        self._depth = max(0, self._depth - 1)

    async def touch(self, entry: Queued) -> None:
        await self._redis.xclaim(
            self.stream, self.GROUP, self._consumer, 0, [entry.entry_id], justid=True
        )

    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        return self._dropped

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- delivery


class EventSink(Protocol):
    """What rooms, the recorder and the consent code report events to."""

    def emit(self, event: str, **fields: Any) -> None: ...


class NullEvents:
    """No webhooks configured and nothing counting: events go nowhere."""

    def emit(self, event: str, **fields: Any) -> None:
        return None


@dataclass(slots=True)
class WebhookStats:
    """Counters for /metrics (process totals)."""

    emitted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENTS, 0))
    delivered: int = 0
    failed_attempts: int = 0
    dropped: int = 0  # outbox overflow, queue overflow or too old
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break
        else:
            self.latency_buckets[-1] += 1
        self.latency_sum += seconds


class _Lane:
    """One URL: a bounded outbox, its queue, and the workers that deliver from it."""

    def __init__(
        self,
        url: str,
        queue: WebhookQueue,
        *,
        outbox_limit: int,
        post: Callable[[str, Queued], Awaitable[str | None]],
        stats: WebhookStats,
        retry_max_s: float,
    ) -> None:
        self.url = url
        self.queue = queue
        self._outbox: deque[tuple[bytes, float]] = deque()
        self._outbox_limit = outbox_limit
        self._wake = asyncio.Event()
        self._post = post
        self._stats = stats
        self._retry_max_s = retry_max_s
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox_dropped = 0
        self._delivered = asyncio.Event()  # set (and replaced) on every success: ends backoffs
        self._failing = False
        self.store_ok = True

    def submit(self, body: bytes, created_at: float) -> None:
        if len(self._outbox) >= self._outbox_limit:
            self._outbox.popleft()
            self._outbox_dropped += 1
            self._stats.dropped += 1
        self._outbox.append((body, created_at))
        self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._outbox) + self.queue.depth()

    @property
    def dropped(self) -> int:
        return self._outbox_dropped + self.queue.dropped

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._pump(), name="webhook-pump"))
        self._tasks.append(loop.create_task(self._run(), name="webhook-lane"))

    async def _run(self) -> None:
        """Open the queue (retrying while its store is down), then start the workers."""
        failures = 0
        while True:
            try:
                await self.queue.start()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down at start: the outbox holds events
                failures += 1
                if failures == 1:
                    log.warning("webhook_queue_start_failed", error=repr(exc))
                await asyncio.sleep(self._backoff(failures))
        loop = asyncio.get_running_loop()
        for i in range(WORKERS_PER_URL):
            self._tasks.append(loop.create_task(self._work(), name=f"webhook-worker {i}"))

    def _backoff(self, attempt: int) -> float:
        base: float = min(self._retry_max_s, FIRST_BACKOFF_S * 2.0 ** min(attempt - 1, 30))
        return base * (0.8 + 0.4 * random.random())

    async def _pump(self) -> None:
        """Move outboxed events into the queue; keep them (bounded) while the store is down."""
        failures = 0
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            body, created_at = self._outbox[0]
            before = self.queue.dropped
            try:
                await self.queue.put(body, created_at)
            except Exception as exc:  # noqa: BLE001 - store down (redis errors are not OSErrors)
                failures += 1
                if self.store_ok:
                    log.warning("webhook_store_failed", error=repr(exc))
                self.store_ok = False
                await asyncio.sleep(self._backoff(failures))
                continue
            self._stats.dropped += self.queue.dropped - before
            failures = 0
            self.store_ok = True
            if self._outbox and self._outbox[0][0] is body:
                self._outbox.popleft()

    async def _work(self) -> None:
        while True:
            try:
                entry = await self.queue.get()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - store unreachable: wait and retry
                if self.store_ok:
                    log.warning("webhook_queue_read_failed", error=repr(exc))
                self.store_ok = False
                await asyncio.sleep(1.0)
                continue
            await self._deliver(entry)

    async def _deliver(self, entry: Queued) -> None:
        while True:
            entry.attempts += 1
            problem = await self._post(self.url, entry)
            if problem is not None and not self._failing:
                self._failing = True  # one log line per outage, not one per event
                log.warning("webhook_receiver_failing", error=problem)
            if problem is None:
                if self._failing:
                    self._failing = False
                    log.info("webhook_receiver_recovered")
                self._stats.delivered += 1
                self._stats.observe_latency(max(0.0, time.time() - entry.created_at))
                delivered, self._delivered = self._delivered, asyncio.Event()
                delivered.set()  # the receiver is back: other workers retry now
                break
            self._stats.failed_attempts += 1
            if time.time() - entry.created_at > MAX_EVENT_AGE_S:
                self._stats.dropped += 1
                log.warning("webhook_dropped_too_old", attempts=entry.attempts)
                break
            recovered = self._delivered
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recovered.wait(), self._backoff(entry.attempts))
            with contextlib.suppress(Exception):
                await self.queue.touch(entry)
        while True:
            try:
                await self.queue.ack(entry)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - redelivered later at worst (at least once)
                log.warning("webhook_ack_failed", error=repr(exc))
                await asyncio.sleep(1.0)

    async def flush(self, deadline: float) -> None:
        """Wait (until the monotonic ``deadline``) for the outbox to reach the queue and, for
        an in-memory queue, for every event to be delivered."""
        while time.monotonic() < deadline and (
            self._outbox or (isinstance(self.queue, MemoryQueue) and self.queue.depth())
        ):
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.queue.close()


class Webhooks:
    """Fans every event out to the configured URLs; also counts events for /metrics."""

    def __init__(
        self,
        urls: Sequence[str],
        key: str | None,
        *,
        issuer: str,
        worker: str = "0",
        node: str | None = None,
        timeout_s: float = 5.0,
        retry_max_s: float = 30.0,
        queue_size: int = 10000,
        queue_factory: Callable[[str], WebhookQueue] | None = None,
    ) -> None:
        if urls and not key:
            raise ValueError("webhooks need a signing key")
        self.urls = tuple(urls)
        self._key = key or ""
        self._issuer = issuer
        self.worker = worker
        self._origin = {"worker": worker} if node is None else {"worker": worker, "node": node}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.stats = WebhookStats()
        factory = queue_factory or (lambda url: MemoryQueue(queue_size))
        self._lanes = [
            _Lane(
                url,
                factory(url),
                outbox_limit=queue_size,
                post=self._post,
                stats=self.stats,
                retry_max_s=retry_max_s,
            )
            for url in self.urls
        ]
        self._http: aiohttp.ClientSession | None = None
        self._redis: Any = None
        self._closed = False

    def __repr__(self) -> str:  # neither the key nor URLs (they may carry tokens)
        return f"Webhooks(urls={len(self.urls)})"

    @classmethod
    def redis_queues(
        cls, redis_url: str, *, queue_size: int, consumer: str | None = None
    ) -> tuple[Any, Callable[[str], WebhookQueue]]:
        """A Redis client and a factory of one :class:`RedisStreamQueue` per URL."""
        import redis.asyncio as redis_asyncio

        client = redis_asyncio.Redis.from_url(
            redis_url, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        name = consumer or socket.gethostname()

        def factory(url: str) -> WebhookQueue:
            digest = hashlib.sha256(url.encode()).hexdigest()[:16]
            return RedisStreamQueue(
                client, f"sfu:webhooks:{digest}", consumer=name, limit=queue_size
            )

        return client, factory

    def attach_redis(self, client: Any) -> None:
        """Close this Redis client with the webhooks."""
        self._redis = client

    @property
    def depth(self) -> int:
        return sum(lane.depth for lane in self._lanes)

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    async def start(self) -> None:
        if not self._lanes:
            return
        self._http = aiohttp.ClientSession(timeout=self._timeout)
        for lane in self._lanes:
            lane.start()
        log.info("webhooks_started", urls=len(self._lanes), durable=self._redis is not None)

    def emit(self, event: str, **fields: Any) -> None:
        """Queue an event for every URL; never blocks, never raises."""
        self.stats.emitted[event] = self.stats.emitted.get(event, 0) + 1
        if not self._lanes or self._closed:
            return
        created_at = time.time()
        body = json.dumps(
            {
                "id": new_id("EV"),
                "event": event,
                "created_at": round(created_at, 6),
                **self._origin,  # which worker (and, in a cluster, which node) saw it
                **fields,
            },
            separators=(",", ":"),
        ).encode()
        for lane in self._lanes:
            lane.submit(body, created_at)

    async def _post(self, url: str, entry: Queued) -> str | None:
        """One attempt; None when acknowledged (2xx), else why not (for the lane's log)."""
        assert self._http is not None
        token = sign_webhook(entry.body, self._key, issuer=self._issuer)
        headers = {"Authorization": token, "Content-Type": CONTENT_TYPE}
        try:
            async with self._http.post(
                url, data=entry.body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return type(exc).__name__

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Stop: give in-memory events up to ``flush_timeout_s`` to be delivered and outboxes
        to reach Redis; whatever remains is logged (memory) or stays in Redis."""
        self._closed = True
        deadline = time.monotonic() + flush_timeout_s
        for lane in self._lanes:
            await lane.flush(deadline)
        left = self.depth if self._redis is None else sum(len(lane._outbox) for lane in self._lanes)
        for lane in self._lanes:
            await lane.stop()
        if self._http is not None:
            await self._http.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        if self._lanes:
            log.info("webhooks_stopped", undelivered=left, durable=self._redis is not None)
