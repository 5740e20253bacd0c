"""Consent-gated recording in real Chromium: the agent asks from the console, the customer
answers the consent dialog with the keyboard, everyone sees the recording indicator, the customer
withdraws; the recording is then read back through the HTTP API and probed. And a refusal:
nothing is recorded and the console says so in words."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.browser import CallPage, open_page, poll
from helpers.probe import probe
from helpers.server import ServerProcess
from playwright.async_api import BrowserContext, ViewportSize, expect

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

Contexts = Callable[..., Awaitable[BrowserContext]]
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
DIALOG = "May we record you?"


def admin_token(server: ServerProcess) -> str:
    return server.token("admin-room", "admin", role="agent", grants=("admin",))


async def api(server: ServerProcess, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.http + path, headers={"Authorization": f"Bearer {admin_token(server)}"}
        ) as response,
    ):
        return response.status, await response.read()


async def recordings(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    status, body = await api(server, f"/v1/recordings?room={room}")
    assert status == 200, body
    found: list[dict[str, Any]] = json.loads(body)["recordings"]
    return found


async def call_with_customer(
    server: ServerProcess, contexts: Contexts, tag: str
) -> tuple[CallPage, CallPage, str]:
    """The agent signs in to the console, opens a session and joins; Ada joins by the link."""
    agent = await open_page(
        await contexts(viewport=DESKTOP), f"consent-{tag}-agent", server.http + "/agent"
    )
    token = server.token(
        "console", "agent1", role="agent", grants=("publish", "subscribe", "record", "admin")
    )
    await agent.page.get_by_label("Agent access token").fill(token)
    await agent.page.get_by_role("button", name="Sign in").click()
    await agent.page.get_by_label("Customer name").fill("Ada")
    await agent.page.get_by_role("button", name="Open a support session").click()
    invite = agent.page.get_by_label("Customer invite link")
    await expect(invite).not_to_have_value("")
    join_url = await invite.input_value()
    room = (await agent.page.locator("#room-id").text_content() or "").strip()
    assert room
    await agent.page.get_by_role("button", name="Join the call").click()
    await expect(agent.page.get_by_role("button", name="Leave call")).to_be_visible()

    customer = await open_page(await contexts(viewport=PHONE), f"consent-{tag}-customer", join_url)
    await customer.page.get_by_role("button", name="Join call").click()
    await expect(customer.page.get_by_role("button", name="Leave call")).to_be_visible()
    await expect(agent.page.locator("#people")).to_contain_text("Ada")
    return agent, customer, room


async def test_consent_accept_indicator_withdraw_and_recording(
    server: ServerProcess, contexts: Contexts, tmp_path: Path
) -> None:
    agent, customer, room = await call_with_customer(server, contexts, "accept")
    await agent.wait_media()
    await customer.wait_media()

    # The agent asks to record audio and video with the (editable) default notice.
    panel = agent.page.locator("#recording-panel")
    await expect(panel.get_by_label("Audio (microphone)")).to_be_checked()
    await expect(panel.get_by_label("Video (camera)")).to_be_checked()
    notice = await panel.get_by_label("Notice shown to the customer").input_value()
    assert len(notice) > 40
    await panel.get_by_role("button", name="Request recording").click()
    await expect(panel.get_by_role("button", name="Stop recording")).to_be_enabled()
    await expect(agent.page.locator("#consents")).to_contain_text("Ada Pending")

    # The customer sees a modal dialog: the exact notice, purpose and scope; nothing selected.
    dialog = customer.page.get_by_role("dialog", name=DIALOG)
    await expect(dialog).to_be_visible()
    assert await dialog.get_attribute("aria-modal") == "true"
    await expect(dialog.locator("#consent-notice")).to_have_text(notice)
    await expect(dialog).to_contain_text("Purpose: support session recording")
    await expect(dialog).to_contain_text("your microphone (audio) and your camera (video)")
    await expect(customer.page.get_by_role("heading", name=DIALOG)).to_be_focused()
    fits = await customer.page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    assert fits, "the dialog must fit a phone screen"
    await customer.shot("consent-dialog")

    # Accept with the keyboard: Tab to "Accept" (Decline comes first), Enter.
    reached: list[str] = []
    for _ in range(6):
        await customer.page.keyboard.press("Tab")
        reached.append(await customer.page.evaluate("document.activeElement.textContent"))
        if reached[-1] == "Accept":
            break
    assert reached[-2:] == ["Decline", "Accept"], reached
    await customer.page.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()

    # Both sides show who is recorded, in words.
    mine = customer.page.locator(".recording-indicator")
    theirs = agent.page.locator(".recording-indicator")
    await expect(mine).to_have_text("● Recording You are being recorded (audio and video).")
    await expect(theirs).to_have_text("● Recording Being recorded: Ada (audio and video).")
    await expect(agent.page.locator("#consents")).to_contain_text(
        "Granted: recording audio and video"
    )
    withdraw = customer.page.get_by_role("button", name="Withdraw consent")
    await expect(withdraw).to_be_visible()
    await expect(customer.page.get_by_label("Also erase what was recorded")).not_to_be_checked()
    await customer.shot("consent-recording-indicator")
    await agent.shot("consent-recording-indicator")

    await asyncio.sleep(3.0)
    await withdraw.click()
    await expect(mine).to_have_text("", timeout=2_000)
    await expect(theirs).to_have_text("", timeout=2_000)
    await expect(withdraw).to_be_hidden()
    await expect(customer.page.get_by_role("heading", name="In the call")).to_be_focused()
    await expect(agent.page.locator("#consents")).to_contain_text("Withdrawn")
    await customer.shot("consent-withdrawn")
    await agent.shot("consent-withdrawn")

    # Exactly one recording of the room; its decrypted media has both streams, ≥ 2 s.
    [recording] = await recordings(server, room)

    async def sealed() -> bool:
        return bool((await recordings(server, room))[0]["state"] != "recording")

    await poll(sealed, "the recording to be sealed", timeout_s=5)
    status, media = await api(server, f"/v1/recordings/{recording['id']}/media")
    assert status == 200, media[:200]
    path = tmp_path / "recording.webm"
    path.write_bytes(media)
    result = await asyncio.to_thread(probe, path)
    assert set(result.codecs) == {"video", "audio"}, result
    assert result.duration_s >= 2.0, result

    # The agent ends the request; it can ask again afterwards.
    await agent.page.get_by_role("button", name="Stop recording").click()
    await expect(agent.page.get_by_role("button", name="Request recording")).to_be_enabled()
    await expect(agent.page.locator("#consents")).to_have_text("No recording requested.")


async def test_consent_declined_records_nothing(server: ServerProcess, contexts: Contexts) -> None:
    agent, customer, room = await call_with_customer(server, contexts, "decline")

    # The server announces a restart: the page says so, then moves the call (re-joins).
    await customer.page.evaluate(
        """() => window.__oktorus.connection.dispatchEvent(
            new CustomEvent('server.draining', {detail: {deadline: 30}}))"""
    )
    status = customer.page.get_by_role("status")
    await expect(status).to_contain_text("restarting")
    await expect(status).to_contain_text("Reconnected", timeout=10_000)
    await expect(agent.page.locator("#people")).to_contain_text("Ada")

    await agent.page.get_by_role("button", name="Request recording").click()
    dialog = customer.page.get_by_role("dialog", name=DIALOG)
    await expect(dialog).to_be_visible()
    await customer.page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(customer.page.get_by_role("status")).to_contain_text("You declined")
    await expect(agent.page.locator("#consents")).to_contain_text("Ada Refused: not recorded")
    await agent.shot("consent-refused")
    await asyncio.sleep(1.0)
    assert await recordings(server, room) == [], "nothing is recorded without consent"
    await expect(customer.page.locator(".recording-indicator")).to_have_text("")
    await expect(agent.page.locator(".recording-indicator")).to_have_text("")
