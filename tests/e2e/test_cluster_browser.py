"""Chromium in a cluster: a call page served by one node follows `redirect` to the node that
hosts the room (the page's Content-Security-Policy allows the cluster's nodes), and media flows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers.browser import CallPage, open_page
from helpers.cluster import start_node
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess
from playwright.async_api import BrowserContext, expect

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
