"""Revoked consent: which consent-token ``jti``s must be refused, and who must hear about it.

Two stores behind one :class:`RevocationStore` protocol, chosen once at start-up:

* :class:`MemoryRevocationStore`: embedded (no Redis). Revocations live in memory and, with a
  path, in a SQLite file of the data dir, so a restart keeps them and the worker processes of
  one machine see each other's (a poll of the file every ``poll_interval_s`` pushes them).
* :class:`RedisRevocationStore`: a cluster. ``SET`` with an expiry (the token's own expiry: after
  it the token is refused anyway) plus ``PUBLISH`` on a channel, so every node learns at once.

Failing closed is the caller's job and made easy: every lookup either answers or raises
:class:`RevocationUnavailable` (never a silent ``False``), and
:func:`consent.tokens.verify_consent_token` refuses a token when it raises.

Subscribers are plain callables run on the event loop with the revoked ``jti``, or with
``None`` meaning "revocations may have been missed (the store reconnected): re-check every
active consent". They must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "REVOCATIONS_DB",
    "MemoryRevocationStore",
    "RedisRevocationStore",
    "RevocationCallback",
    "RevocationStore",
    "RevocationUnavailable",
]

REVOCATIONS_DB = "revocations.sqlite"
RevocationCallback = Callable[[str | None], None]
_KEEP_AFTER_S = 3600.0  # keep a revocation this long past the token's expiry (clock skew)
_log = logging.getLogger(__name__)


class RevocationUnavailable(Exception):
    """The revocation state could not be read or written: callers must fail closed."""


class RevocationStore(Protocol):
    """Where revoked consent ``jti``s are kept and announced."""

    async def is_revoked(self, jti: str) -> bool:
        """Whether ``jti`` is revoked; raises :class:`RevocationUnavailable` if unknown."""
        ...

    async def revoke(self, jti: str, until_ts: float) -> None:
        """Revoke ``jti`` until ``until_ts`` (the token's ``exp``) and notify subscribers."""
        ...

    def subscribe(self, callback: RevocationCallback) -> Callable[[], None]:
        """Call ``callback`` on each revocation (see module doc); returns an unsubscribe."""
        ...


class _Subscribers:
    """Callbacks, each isolated: one that raises does not stop the others."""

    def __init__(self) -> None:
        self._callbacks: list[RevocationCallback] = []

    def add(self, callback: RevocationCallback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def notify(self, jti: str | None) -> None:
        for callback in list(self._callbacks):
            try:
                callback(jti)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not hide the revocation
                _log.exception("revocation subscriber failed")


# --------------------------------------------------------------------------- embedded


def _file_version(path: Path) -> tuple[int, int]:
    """(mtime, size) of the database's write-ahead log, or of the file itself."""
    for candidate in (path.with_name(path.name + "-wal"), path):
        try:
            stat = os.stat(candidate)
        except OSError:
            continue
        return stat.st_mtime_ns, stat.st_size
    return 0, 0


class _RevocationFile:
    """The SQLite table behind :class:`MemoryRevocationStore` (blocking; used from threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS revoked ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL UNIQUE,"
            " until_ts REAL NOT NULL)"
        )

    def add(self, jti: str, until_ts: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO revoked (jti, until_ts) VALUES (?, ?) ON CONFLICT(jti)"
                " DO UPDATE SET until_ts = max(until_ts, excluded.until_ts)",
                (jti, until_ts),
            )

    def contains(self, jti: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM revoked WHERE jti = ?", (jti,)).fetchone()
        return row is not None

    def since(self, last_id: int) -> list[tuple[int, str, float]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, jti, until_ts FROM revoked WHERE id > ? ORDER BY id", (last_id,)
            ).fetchall()
        return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    def purge(self, before_ts: float) -> None:
        with self._lock:
            self._db.execute("DELETE FROM revoked WHERE until_ts < ?", (before_ts,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryRevocationStore:
    """Embedded store: in memory, persisted to ``path`` (SQLite) when given.

    Lookups of this process's revocations never touch the disk; with a ``path`` a miss is also
    looked up in the file (in a thread), so a revocation made by another worker process of this
    machine is honoured at once, and subscribers hear of it within ``poll_interval_s`` once
    :meth:`start` has run.
    """

    def __init__(self, path: Path | None = None, *, poll_interval_s: float = 0.25) -> None:
        self._revoked: dict[str, float] = {}
        self._subscribers = _Subscribers()
        self._poll_interval_s = poll_interval_s
        self._poll_task: asyncio.Task[None] | None = None
        self._last_id = 0
        self._file: _RevocationFile | None = None
        if path is not None:
            try:
                self._file = _RevocationFile(path)
                self._file.purge(time.time() - _KEEP_AFTER_S)
                for row_id, jti, until_ts in self._file.since(0):
                    self._revoked[jti] = until_ts
                    self._last_id = row_id
            except sqlite3.Error as exc:
                raise RevocationUnavailable(f"cannot open {path}: {exc}") from None

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> MemoryRevocationStore:
        """The store persisted in ``data_dir/revocations.sqlite``."""
        return cls(data_dir / REVOCATIONS_DB)

    async def is_revoked(self, jti: str) -> bool:
        until_ts = self._revoked.get(jti)
        if until_ts is not None:
            return True
        if self._file is None:
            return False
        try:
            return await asyncio.to_thread(self._file.contains, jti)
        except sqlite3.Error as exc:
            raise RevocationUnavailable(f"revocation file unreadable: {exc}") from None

    async def revoke(self, jti: str, until_ts: float) -> None:
        """Revoke at once in this process and notify; then persist (raises if that fails)."""
        known = jti in self._revoked
        self._revoked[jti] = max(until_ts, self._revoked.get(jti, until_ts))
        if not known:
            self._subscribers.notify(jti)
        if self._file is not None:
            try:
                await asyncio.to_thread(self._file.add, jti, until_ts)
            except sqlite3.Error as exc:
                raise RevocationUnavailable(f"revocation not persisted: {exc}") from None

    def subscribe(self, callback: RevocationCallback) -> Callable[[], None]:
        return self._subscribers.add(callback)

    async def start(self) -> None:
        """Start watching the file for other processes' revocations (no-op without a file)."""
        if self._file is not None and self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        assert self._file is not None
        failing = False
        seen: tuple[int, int] | None = None
        while True:
            await asyncio.sleep(self._poll_interval_s)
            # Commits land in the WAL file: read the table (in a thread) only when it
            # changed. A stat is a few microseconds; a thread hand-off is not, every 250 ms.
            changed = _file_version(self._file.path)
            if changed == seen and not failing:
                continue
            seen = changed
            try:
                rows = await asyncio.to_thread(self._file.since, self._last_id)
            except sqlite3.Error:
                if not failing:
                    _log.warning("revocation file unreadable; retrying")
                failing = True
                continue
            if failing:
                failing = False
                self._subscribers.notify(None)
            for row_id, jti, until_ts in rows:
                self._last_id = row_id
                if jti not in self._revoked:
                    self._revoked[jti] = until_ts
                    self._subscribers.notify(jti)

    async def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- Redis


class RedisRevocationStore:
    """Cluster store: ``SET <prefix><jti> EXAT <exp>`` + ``PUBLISH <channel> <jti>``.

    Every operation is bounded by ``timeout_s``; any Redis or connection error (or a timeout)
    raises :class:`RevocationUnavailable`. Call :meth:`start` before relying on notifications:
    it returns once the channel subscription is confirmed. If the subscription drops, it is
    re-established with backoff and subscribers get ``None`` (re-check everything).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "sfu:consent:revoked:",
        channel: str = "sfu:consent:revocations",
        timeout_s: float = 1.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._channel = channel
        self._timeout_s = timeout_s
        self._subscribers = _Subscribers()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0) -> RedisRevocationStore:
        """A store on a new client for ``url`` (short timeouts: fail fast, fail closed)."""
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=2 * timeout_s
        )
        return cls(client, timeout_s=timeout_s)

    async def is_revoked(self, jti: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                count = await self._client.exists(self._prefix + jti)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RevocationUnavailable(f"redis: {type(exc).__name__}") from None
        return int(count) > 0

    async def revoke(self, jti: str, until_ts: float) -> None:
        expire_at = int(max(until_ts, time.time()) + _KEEP_AFTER_S)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.set(self._prefix + jti, "1", exat=expire_at)
                    pipe.publish(self._channel, jti)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RevocationUnavailable(f"redis: {type(exc).__name__}") from None

    def subscribe(self, callback: RevocationCallback) -> Callable[[], None]:
        unsubscribe = self._subscribers.add(callback)
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return unsubscribe

    async def start(self) -> None:
        """Subscribe to the channel now; returns when the subscription is confirmed."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        async with asyncio.timeout(self._timeout_s * 5):
            await self._subscribed.wait()

    async def _listen(self) -> None:
        backoff = 0.1
        first = True
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "subscribe":
                        self._subscribed.set()
                        backoff = 0.1
                        if not first:
                            self._subscribers.notify(None)
                        first = False
                    elif kind == "message":
                        data = message.get("data")
                        if isinstance(data, bytes):
                            self._subscribers.notify(data.decode("utf-8", "replace"))
                        elif isinstance(data, str):
                            self._subscribers.notify(data)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                _log.warning("revocation subscription lost (%s); retrying", type(exc).__name__)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            first = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def close(self, *, close_client: bool = True) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if close_client:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
