"""The embedded revocation store (consent.revocation.MemoryRevocationStore)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from consent.revocation import MemoryRevocationStore, RevocationUnavailable

EXP = time.time() + 3600


async def test_in_memory_only() -> None:
    store = MemoryRevocationStore()
    heard: list[str | None] = []
    unsubscribe = store.subscribe(heard.append)
    assert not await store.is_revoked("a")
    await store.revoke("a", EXP)
    await store.revoke("a", EXP)  # idempotent: one notification
    assert await store.is_revoked("a")
    assert heard == ["a"]
    unsubscribe()
    await store.revoke("b", EXP)
    assert heard == ["a"]


async def test_a_failing_subscriber_does_not_hide_the_revocation() -> None:
    store = MemoryRevocationStore()
    heard: list[str | None] = []

    def broken(jti: str | None) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    store.subscribe(heard.append)
    await store.revoke("a", EXP)
    assert heard == ["a"]


async def test_revocations_survive_a_restart(tmp_path: Path) -> None:
    store = MemoryRevocationStore.in_data_dir(tmp_path)
    await store.revoke("kept", EXP)
    await store.revoke("long-expired", time.time() - 2 * 3600)
    await store.close()
    reopened = MemoryRevocationStore.in_data_dir(tmp_path)
    try:
        assert await reopened.is_revoked("kept")
        assert not await reopened.is_revoked("never")
        # purged on open: the token itself expired long ago and is refused anyway
        assert not await reopened.is_revoked("long-expired")
    finally:
        await reopened.close()


async def test_other_worker_processes_see_revocations(tmp_path: Path) -> None:
    """Two stores on one file, as two worker processes of one machine have."""
    first = MemoryRevocationStore.in_data_dir(tmp_path)
    second = MemoryRevocationStore(tmp_path / "revocations.sqlite", poll_interval_s=0.05)
    heard: asyncio.Queue[str | None] = asyncio.Queue()
    second.subscribe(heard.put_nowait)
    await second.start()
    try:
        await first.revoke("x", EXP)
        assert await second.is_revoked("x")  # at once: a miss is looked up in the file
        started = time.monotonic()
        assert await asyncio.wait_for(heard.get(), timeout=2) == "x"
        assert time.monotonic() - started < 0.5
    finally:
        await first.close()
        await second.close()


async def test_unreadable_file_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(RevocationUnavailable):
        MemoryRevocationStore(tmp_path / "missing-dir" / "revocations.sqlite")
    store = MemoryRevocationStore(tmp_path / "revocations.sqlite")
    await store.revoke("known", EXP)
    assert store._file is not None
    store._file.close()  # the file becomes unusable under the store (disk gone, I/O error)
    assert await store.is_revoked("known")  # this process's own revocations still hold
    with pytest.raises(RevocationUnavailable):
        await store.is_revoked("anything-else")
    with pytest.raises(RevocationUnavailable):
        await store.revoke("new", EXP)
    assert await store.is_revoked("new")  # effective in this process even if not persisted
