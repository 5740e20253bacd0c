"""Chromium in a cluster: a call page served by one node follows `redirect` to the node that
hosts the room (the page's Content-Security-Policy allows the cluster's nodes), and media flows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers.browser import CallPage, open_page, poll
from helpers.cluster import start_node
from helpers.media import FrameCounterTrack
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess
from playwright.async_api import BrowserContext, expect

from signaling.client import Participant

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

Contexts = Callable[..., Awaitable[BrowserContext]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    redis_server = RedisServer(tmp_path / "redis").start()
    nodes: list[ServerProcess] = []
    try:
        nodes = [start_node(tmp_path, redis_server.url, n) for n in ("node-a", "node-b")]
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()
        redis_server.stop()


async def _join(call: CallPage) -> None:
    await call.page.get_by_role("button", name="Join call").click()
    await expect(call.page.get_by_role("button", name="Leave call")).to_be_visible()


async def test_a_page_served_by_another_node_follows_the_redirect(
    cluster: tuple[ServerProcess, ServerProcess], contexts: Contexts
) -> None:
    node_a, node_b = cluster
    room = "support-cluster"
    agent = await open_page(
        await contexts(), "agent", node_a.http + "/join?token=" + node_a.token(room, "Agent")
    )
    await _join(agent)  # the room now lives on node A
    customer = await open_page(
        await contexts(), "customer", node_b.http + "/join?token=" + node_b.token(room, "Ada")
    )
    await _join(customer)
    await customer.wait_media()
    await agent.wait_media()
    connected_to = await customer.page.evaluate("window.__oktorus.connection.socket.url")
    assert connected_to == node_a.url
    async with aiohttp.ClientSession() as http, http.get(node_b.http + "/join") as response:
        csp = response.headers["Content-Security-Policy"]
    assert f"ws://127.0.0.1:{node_a.port}" in csp, csp
    for call in (customer, agent):
        await call.page.get_by_role("button", name="Leave call").click()
        await expect(call.page.get_by_role("heading", name="You left the call")).to_be_visible()


def _on(call: CallPage, url: str) -> Callable[[], Awaitable[bool]]:
    """Whether ``call`` is joined through the signalling socket at ``url``."""

    async def check() -> bool:
        now: str | None = await call.page.evaluate(
            "(() => { const c = window.__oktorus.connection;"
            " return c.state === 'joined' && c.socket ? c.socket.url : null; })()"
        )
        return now == url

    return check


async def test_pages_rejoin_through_their_entry_node_when_the_room_s_node_dies(
    cluster: tuple[ServerProcess, ServerProcess], contexts: Contexts
) -> None:
    node_a, node_b = cluster
    room = "support-failover"
    # The room lives on node A; both pages come in through node B and are redirected there.
    host = await Participant.join(
        node_a.url, node_a.token(room, "Host"), publish_tracks=[FrameCounterTrack()]
    )
    pages: list[CallPage] = []
    try:
        for name in ("Agent", "Ada"):
            call = await open_page(
                await contexts(), name, node_b.http + "/join?token=" + node_b.token(room, name)
            )
            await _join(call)
            pages.append(call)
        decoded: list[float] = []
        for call in pages:
            decoded.append((await call.wait_media())["framesDecoded"])
            url = await call.page.evaluate("window.__oktorus.connection.socket.url")
            assert url == node_a.url

        assert node_a.proc is not None
        node_a.proc.kill()  # kill -9 mid-call
        node_a.proc.wait(timeout=5)

        for call in pages:
            await poll(_on(call, node_b.url), f"{call.name} re-joined on node B", call, 60)
        # The two pages see each other again, now on node B: more frames than before the kill.
        for call, before in zip(pages, decoded, strict=True):
            await call.wait_media(frames_above=before)
    finally:
        await host.close()
