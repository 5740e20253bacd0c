"""Supervisor.span_target: when a room's joins spill to a second worker.

No worker processes: each slot's session talks real HTTP over a unix socket to a small
stand-in app that records ``POST /internal/span/open`` and answers as told."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from sfu.keys import KeyStore
from sfu.settings import Settings
from sfu.workers.pool import WorkerPool, WorkerSlot
from sfu.workers.supervisor import Homes, Joining, Supervisor
from sfu.workers.worker import SPAN_OPEN_PATH


class StandIn:
    """A worker's private socket answering span opens with ``status``."""

    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []
        self.status = 200

    async def open_span(self, request: web.Request) -> web.Response:
        self.opened.append(await request.json())
        return web.json_response({}, status=self.status)


Setup = tuple[Supervisor, list[StandIn]]


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    settings = Settings(data_dir=tmp_path / "data", workers=2, room_span_subscribers=2)
    sup = Supervisor(settings, KeyStore.open(settings.data_dir), WorkerPool(settings, tmp_path, 2))
    runners, stand_ins = [], []
    for slot in sup.pool.slots:
        stand_in = StandIn()
        app = web.Application()
        app.router.add_post(SPAN_OPEN_PATH, stand_in.open_span)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, slot.spec.socket_path).start()
        slot.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=slot.spec.socket_path)
        )
        slot.ready, slot.generation, slot.reported_at = True, 1, time.monotonic()
        runners.append(runner)
        stand_ins.append(stand_in)
    try:
        yield sup, stand_ins
    finally:
        for slot in sup.pool.slots:
            assert slot.session is not None
            await slot.session.close()
        for runner in runners:
            await runner.cleanup()


def _join(sup: Supervisor, room: str, slot: WorkerSlot) -> None:
    sup.homes.acquire(room)
    sup.homes.attach(room, slot.id)


async def test_joins_spill_once_the_home_holds_more_than_n(setup: Setup) -> None:
    sup, stand_ins = setup
    home = sup.home_of("r")
    assert home is not None
    other = next(slot for slot in sup.pool.slots if slot is not home)
    for _ in range(3):  # a publisher and two subscribers stay home (N = 2)
        assert await sup.span_target("r", home) is home
        _join(sup, "r", home)
    assert stand_ins[int(other.id)].opened == []
    assert await sup.span_target("r", home) is other  # the fourth goes to the other worker
    assert stand_ins[int(other.id)].opened == [{"room": "r", "home_socket": home.spec.socket_path}]
    assert sup.homes.spill["r"] == (other.id, other.generation)
    _join(sup, "r", other)
    assert await sup.span_target("r", home) is other  # and so do later joins
    assert sup.home_of("r") is home  # the room keeps its home


async def test_a_refused_or_missing_spill_worker_keeps_joins_home(setup: Setup) -> None:
    sup, stand_ins = setup
    home = sup.home_of("r")
    assert home is not None
    other = next(slot for slot in sup.pool.slots if slot is not home)
    for _ in range(3):
        _join(sup, "r", home)
    stand_ins[int(other.id)].status = 409  # e.g. the room is being recorded
    assert await sup.span_target("r", home) is home
    assert "r" not in sup.homes.spill
    other.ready = False  # down: nowhere to spill
    assert await sup.span_target("r", home) is home


async def test_a_room_never_spans_when_the_setting_is_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=2)
    sup = Supervisor(settings, KeyStore.open(settings.data_dir), WorkerPool(settings, tmp_path, 2))
    home = sup.pool.slots[0]
    for _ in range(50):
        _join(sup, "r", home)
    assert await sup.span_target("r", home) is home


async def test_the_room_forgets_its_spill_worker_when_it_ends(setup: Setup) -> None:
    sup, _ = setup
    home = sup.home_of("r")
    assert home is not None
    for _ in range(3):
        _join(sup, "r", home)
    spill = await sup.span_target("r", home)
    assert spill is not home
    for _ in range(3):
        sup.homes.detach("r", home.id)
        sup.homes.release("r")
    assert "r" not in sup.homes.spill and "r" not in sup.homes.worker
    assert sup.homes.count("r", home.id) == 0


async def test_a_dead_home_hands_the_room_to_its_spill_worker(setup: Setup) -> None:
    sup, _ = setup
    home = sup.home_of("r")
    assert home is not None
    for _ in range(3):
        _join(sup, "r", home)
    spill = await sup.span_target("r", home)
    assert spill is not home
    sup.homes.forget_worker(home.id)
    assert sup.home_of("r") is spill  # rejoins go where the room still lives
    assert "r" not in sup.homes.spill


async def test_a_resume_goes_to_the_worker_that_keeps_the_participant(setup: Setup) -> None:
    sup, _ = setup
    home = sup.home_of("r")
    assert home is not None
    for _ in range(3):
        _join(sup, "r", home)
    spill = await sup.span_target("r", home)
    assert spill is not home
    sup.homes.remember("r", "far-1", spill.id, spill.generation, keep_s=35)
    for _ in range(3):  # the home empties: a fresh join would go home now
        sup.homes.detach("r", home.id)
    resumed = sup.resume_slot(Joining("r", "far-1", resuming=True))
    assert resumed is spill  # where far-1 is kept, not where the spill rule points
    assert sup.resume_slot(Joining("r", "far-1", resuming=False)) is None
    assert sup.resume_slot(Joining("r", "someone-else", resuming=True)) is None
    spill.generation += 1  # that worker restarted: nothing is kept there
    assert sup.resume_slot(Joining("r", "far-1", resuming=True)) is None


def test_remembered_identities_are_forgotten_after_the_resume_window() -> None:
    homes = Homes()
    homes.remember("r", "old", "0", 1, keep_s=0.0)
    time.sleep(0.01)
    homes.remember("r", "new", "1", 1, keep_s=0.005)
    assert list(homes.seen) == [("r", "new")]


async def test_a_busy_home_spills_by_cpu(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=2, room_span_cpu=50.0)
    sup = Supervisor(settings, KeyStore.open(settings.data_dir), WorkerPool(settings, tmp_path, 2))
    home, other = sup.pool.slots
    stand_in = StandIn()
    app = web.Application()
    app.router.add_post(SPAN_OPEN_PATH, stand_in.open_span)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, other.spec.socket_path).start()
    other.session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=other.spec.socket_path)
    )
    for slot in (home, other):
        slot.ready, slot.generation, slot.reported_at = True, 1, time.monotonic()
    try:
        assert await sup.span_target("r", home) is home  # a new room: nothing to spill yet
        _join(sup, "r", home)
        home.cpu_percent = 40.0
        assert await sup.span_target("r", home) is home
        home.cpu_percent = 80.0  # over --room-span-cpu: new joins go elsewhere
        assert await sup.span_target("r", home) is other
        assert stand_in.opened == [{"room": "r", "home_socket": home.spec.socket_path}]
    finally:
        await other.session.close()
        await runner.cleanup()
