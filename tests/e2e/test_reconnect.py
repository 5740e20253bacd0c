"""Reconnection in real Chromium: a dropped signalling socket resumes the same participant,
and an ICE restart from the page renegotiates ICE in place on both peer connections.

What this covers: the browser client's resume and ``restartIce()`` paths against the real
server (new ICE credentials on both PCs, same participant, same PCs, media flowing after).
Chromium's path cannot be blackholed from here, so the restart runs over a working network;
tests/integration/test_ice_restart.py covers a client that really moves to another address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import MEASURED, CallPage, poll
from helpers.call_pages import Contexts, in_call, tile
from helpers.server import ServerProcess
from playwright.async_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

UFRAGS = """() => {
    const o = window.__oktorus;
    const ufrag = (pc) => {
        const m = pc && pc.remoteDescription && /a=ice-ufrag:(\\S+)/.exec(pc.remoteDescription.sdp);
        return m ? m[1] : null;
    };
    return {publish: ufrag(o.publishPc), subscribe: ufrag(o.subscribePc),
            states: [o.publishPc && o.publishPc.connectionState,
                     o.subscribePc && o.subscribePc.connectionState]};
}"""


async def _identity(call: CallPage) -> dict[str, Any]:
    state: dict[str, Any] = await call.page.evaluate(
        """() => { const c = window.__oktorus.connection;
            window.__markedPcs ??= [c.publishPc, c.subscribePc];
            return {id: c.participant.id,
                    samePcs: window.__markedPcs[0] === c.publishPc
                             && window.__markedPcs[1] === c.subscribePc,
                    resumed: c.joined.resumed === true, restarts: c.iceRestarts}; }"""
    )
    return state


async def test_dropped_socket_resumes_in_chromium(
    server: ServerProcess, contexts: Contexts
) -> None:
    agent, customer = await in_call(server, contexts)
    before = await _identity(customer)
    frames = (await agent.stats())["framesDecoded"]
    await customer.page.evaluate("window.__oktorus.signal.ws.close(4000)")
    await expect(customer.page.get_by_role("status")).to_contain_text("Reconnected")
    after = await _identity(customer)
    assert after["id"] == before["id"] and after["resumed"]
    assert after["samePcs"], "a resumed participant keeps its peer connections"
    await agent.wait_media(frames_above=frames + 10)
    await expect(tile(agent, "Customer")).to_have_count(1)


async def test_ice_restart_in_chromium(server: ServerProcess, contexts: Contexts) -> None:
    agent, customer = await in_call(server, contexts)
    before = await _identity(customer)
    old = await customer.page.evaluate(UFRAGS)
    assert old["publish"] and old["subscribe"]
    frames = (await agent.stats())["framesDecoded"]
    seen = (await customer.stats())["framesDecoded"]
    started = time.monotonic()
    await customer.page.evaluate("window.__oktorus.connection.restartIce('test')")

    async def restarted() -> dict[str, Any] | None:
        now: dict[str, Any] = await customer.page.evaluate(UFRAGS)
        fresh = now["publish"] != old["publish"] and now["subscribe"] != old["subscribe"]
        return now if fresh and now["states"] == ["connected", "connected"] else None

    await poll(restarted, "new ICE credentials on both peer connections", customer)
    await agent.wait_media(frames_above=frames + 5)
    await customer.wait_media(frames_above=seen + 5)
    elapsed_ms = round((time.monotonic() - started) * 1000)
    MEASURED["chromium_ice_restart_to_media_ms"] = elapsed_ms
    print(f"Chromium ICE restart (both PCs) -> new frames both ways: {elapsed_ms} ms")
    after = await _identity(customer)
    assert after["id"] == before["id"] and after["samePcs"]
    assert after["restarts"] == 1
    await expect(tile(agent, "Customer")).to_have_count(1)


@pytest.fixture(scope="module")
def no_resume_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("sfu-data")), ["--resume-window", "0"]
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, "".join(process.log_lines[-40:])


async def test_refused_resume_falls_back_to_a_full_rejoin(
    no_resume_server: ServerProcess, contexts: Contexts
) -> None:
    """Resumption off (or the window over): the page re-joins as a new participant on fresh
    peer connections and publishes again; the other side sees it come back."""
    agent, customer = await in_call(no_resume_server, contexts)
    before = await _identity(customer)
    frames = (await agent.stats())["framesDecoded"]
    await customer.page.evaluate("window.__oktorus.signal.ws.close(4000)")
    await expect(customer.page.get_by_role("status")).to_contain_text("Reconnected")
    after = await _identity(customer)
    assert after["id"] != before["id"] and not after["resumed"]
    assert not after["samePcs"]
    await agent.wait_media(frames_above=frames + 10)
    await customer.wait_media()
    await expect(tile(agent, "Customer")).to_have_count(1)


async def test_back_online_restarts_ice(server: ServerProcess, contexts: Contexts) -> None:
    """The browser's `online` event (it regained a network) restarts ICE by itself."""
    agent, customer = await in_call(server, contexts)
    old = await customer.page.evaluate(UFRAGS)
    frames = (await agent.stats())["framesDecoded"]
    await customer.page.evaluate("window.dispatchEvent(new Event('online'))")

    async def restarted() -> bool:
        now: dict[str, Any] = await customer.page.evaluate(UFRAGS)
        return bool(
            now["publish"] != old["publish"] and now["states"] == ["connected", "connected"]
        )

    await poll(restarted, "an ICE restart after the online event", customer)
    assert (await _identity(customer))["restarts"] == 1
    await agent.wait_media(frames_above=frames + 5)
