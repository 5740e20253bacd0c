"""Screen share in real Chromium: the customer clicks "Share screen" (headless Chromium with
fake media devices captures a fake 1280x720 monitor), the agent's page shows it in a large
tile of its own beside the customer's camera, and "Stop sharing" removes it."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.browser import MEASURED, poll
from helpers.call_pages import Contexts, in_call, tile
from helpers.server import ServerProcess
from playwright.async_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

SCREEN_VIDEO = """() => {
    const tile = document.querySelector('li.tile.screen');
    const video = tile && tile.querySelector('video');
    if (!video || !video.videoWidth) return null;
    const camera = document.querySelector('li.tile:not(.screen):not(.self)');
    return {width: video.videoWidth, height: video.videoHeight,
            tileWidth: tile.getBoundingClientRect().width,
            cameraWidth: camera ? camera.getBoundingClientRect().width : 0};
}"""


async def test_share_screen_shows_a_large_tile(server: ServerProcess, contexts: Contexts) -> None:
    agent, customer = await in_call(server, contexts)
    await customer.page.get_by_role("button", name="Share screen").click()
    await expect(customer.page.get_by_role("button", name="Stop sharing")).to_be_visible()
    await expect(tile(agent, "Customer's screen")).to_be_visible()
    await expect(tile(agent, "Customer's screen").get_by_text("Screen share")).to_be_visible()

    async def shown() -> dict[str, Any] | None:
        value: dict[str, Any] | None = await agent.page.evaluate(SCREEN_VIDEO)
        return value

    screen = await poll(shown, "the shared screen decoding on the agent's page", agent)
    assert screen["tileWidth"] > screen["cameraWidth"] > 0, screen  # shown large
    await expect(tile(agent, "Customer")).to_be_visible()  # the camera stays
    sources = await agent.page.evaluate(
        "[...window.__oktorus.connection.tracks.values()].map((t) => t.source).sort()"
    )
    assert sources.count("screen") == 1, sources
    sender: dict[str, Any] = await customer.page.evaluate(
        """() => { const c = window.__oktorus.connection;
            const t = c.screenTrack;
            const s = c.publishPc.getSenders().find((x) => x.track === t);
            const p = s.getParameters();
            return {hint: t.contentHint, degradation: p.degradationPreference ?? null};
        }"""
    )
    assert sender["hint"] == "detail"
    MEASURED["screen_share"] = {**sender, "received": f"{screen['width']}x{screen['height']}"}
    await agent.shot("screen-share")

    await customer.page.get_by_role("button", name="Stop sharing").click()
    await expect(customer.page.get_by_role("button", name="Share screen")).to_be_visible()
    await expect(tile(agent, "Customer's screen")).to_have_count(0)
    await expect(tile(agent, "Customer")).to_be_visible()
