"""Shared steps of the e2e tests that put an agent and a customer in a call in Chromium."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from helpers.browser import CallPage, open_page
from helpers.server import ServerProcess
from playwright.async_api import BrowserContext, expect

__all__ = ["Contexts", "in_call", "join", "open_session", "tile"]

Contexts = Callable[..., Awaitable[BrowserContext]]


async def open_session(server: ServerProcess, customer: str = "Customer") -> dict[str, Any]:
    """An agent opens a support session (POST /v1/sessions): tokens and the invite link."""
    agent = server.token(
        "console", "agent1", role="agent", grants=("publish", "subscribe", "record", "admin")
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.http + "/v1/sessions",
            json={"customer": customer},
            headers={"Authorization": f"Bearer {agent}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        session: dict[str, Any] = await response.json()
        return session


async def join(call: CallPage) -> None:
    await call.page.get_by_role("button", name="Join call").click()
    await expect(call.page.get_by_role("button", name="Leave call")).to_be_visible()


def tile(call: CallPage, name: str) -> Any:
    return call.page.get_by_role("article", name=name, exact=True)


async def in_call(server: ServerProcess, contexts: Contexts) -> tuple[CallPage, CallPage]:
    """The agent and the customer ("Customer") in one call, media flowing both ways."""
    session = await open_session(server)
    agent = await open_page(
        await contexts(), "agent", server.http + "/join?token=" + session["agent_token"]
    )
    await join(agent)
    customer = await open_page(await contexts(), "customer", session["join_url"])
    await join(customer)
    await agent.wait_media()
    await customer.wait_media()
    return agent, customer
