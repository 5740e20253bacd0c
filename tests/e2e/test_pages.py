"""What a person sees when something is wrong (bad or expired link, blocked camera, no devices,
a refused sign-in, the server going away), keyboard use, and the pages' security headers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from helpers.browser import CallPage, chromium_args, launch, open_page
from helpers.server import ServerProcess
from playwright.async_api import BrowserContext, Playwright, expect

from sfu.keys import KeyStore
from signaling.access import issue_access_token

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

Contexts = Callable[..., Awaitable[BrowserContext]]


def join_url(server: ServerProcess, token: str) -> str:
    return f"{server.http}/join?token={token}"


async def test_link_problems(server: ServerProcess, contexts: Contexts) -> None:
    context = await contexts()
    keys = KeyStore.open(server.data_dir)
    expired = issue_access_token(
        keys, room="r-expired", identity="Bea", ttl_s=600, now=time.time() - 3600
    )
    call = await open_page(context, "expired", join_url(server, expired))
    await expect(call.page.get_by_role("alert")).to_contain_text("This link has expired")
    await expect(call.page.get_by_role("button", name="Join call")).to_be_hidden()
    await call.shot("link")

    good = server.token("r-tampered", "Bea")
    head, body, signature = good.split(".")
    tampered = ".".join([head, body, ("A" if signature[0] != "A" else "B") + signature[1:]])
    call = await open_page(context, "invalid", join_url(server, tampered))
    await call.page.get_by_role("button", name="Join call").click()
    await expect(call.page.get_by_role("alert")).to_contain_text("This link is not valid")
    await call.shot("link")

    call = await open_page(context, "missing", server.http + "/join")
    await expect(call.page.get_by_role("alert")).to_contain_text("needs the invite link")


async def test_console_refuses_bad_sign_in(server: ServerProcess, contexts: Contexts) -> None:
    agent = await open_page(await contexts(), "console", server.http + "/agent")
    await agent.page.get_by_label("Agent access token").fill(server.token("x", "cust"))
    await agent.page.get_by_role("button", name="Sign in").click()
    await expect(agent.page.get_by_role("alert")).to_contain_text("not an agent token")
    await expect(agent.page.get_by_label("Agent access token")).to_be_focused()

    # Looks like an agent token, but the server does not know its key: 401 → signed out.
    stranger = issue_access_token(
        KeyStore.open(Path(server.data_dir).parent / "other-keys"),
        room="console",
        identity="mallory",
        role="agent",
    )
    await agent.page.get_by_label("Agent access token").fill(stranger)
    await agent.page.get_by_role("button", name="Sign in").click()
    await agent.page.get_by_role("button", name="Open a support session").click()
    await expect(agent.page.get_by_role("alert")).to_contain_text("sign-in was refused")
    await expect(agent.page.get_by_role("button", name="Sign in")).to_be_visible()
    await agent.shot("refused")


async def test_camera_blocked_then_join_without(
    server: ServerProcess, playwright: Playwright, contexts: Contexts
) -> None:
    """A blocked camera is explained; joining without one still shows the others."""
    agent = await open_page(
        await contexts(), "blocked-agent", join_url(server, server.token("r-blocked", "Al"))
    )
    await agent.page.get_by_role("button", name="Join call").click()
    browser = await launch(playwright, [*chromium_args(fake_ui=False), "--deny-permission-prompts"])
    try:
        page = await (await browser.new_context()).new_page()
        call = CallPage("blocked", page)
        page.on("console", lambda m: call.logs.append(f"[blocked] {m.type}: {m.text}"))
        await page.goto(join_url(server, server.token("r-blocked", "Cy")), wait_until="load")
        await expect(page.get_by_role("alert")).to_contain_text("is blocked")
        await call.shot("camera")
        await page.get_by_role("button", name="Join without camera and microphone").click()
        await expect(page.get_by_role("button", name="Leave call")).to_be_visible()
        await expect(page.get_by_role("button", name="No camera")).to_be_disabled()
        await expect(page.get_by_role("article", name="Cy (you)")).to_contain_text("No camera")
        await call.wait_media()
        await expect(agent.page.get_by_role("article", name="Cy")).to_contain_text("No camera")
    finally:
        await browser.close()


async def test_no_devices(server: ServerProcess, playwright: Playwright) -> None:
    browser = await launch(playwright, chromium_args(fake_devices=False))
    try:
        page = await (await browser.new_context()).new_page()
        await page.goto(join_url(server, server.token("r-none", "Di")), wait_until="load")
        await expect(page.get_by_role("alert")).to_contain_text("No camera and microphone found")
        await expect(page.get_by_label("Camera", exact=True)).to_be_disabled()
        await CallPage("no-devices", page).shot("prejoin")
    finally:
        await browser.close()


async def test_keyboard_only(server: ServerProcess, contexts: Contexts) -> None:
    """Tab reaches every pre-join control in reading order; Enter joins; Tab reaches the
    call controls."""
    call = await open_page(
        await contexts(), "keyboard", join_url(server, server.token("r-kb", "Eve"))
    )
    page = call.page
    await expect(page.get_by_role("button", name="Turn camera off")).to_be_enabled()
    names = []
    for _ in range(5):
        await page.keyboard.press("Tab")
        names.append(
            await page.evaluate(
                "(() => { const e = document.activeElement;"
                " return e.labels && e.labels.length ? e.labels[0].textContent"
                " : e.textContent; })()"
            )
        )
    assert names == [
        "Camera",
        "Microphone",
        "Turn camera off",
        "Mute microphone",
        "Join call",
    ], names
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Leave call")).to_be_visible()
    focused = []
    for _ in range(4):
        await page.keyboard.press("Tab")
        focused.append(await page.evaluate("document.activeElement.textContent"))
    assert focused == ["Mute microphone", "Turn camera off", "Share screen", "Leave call"], focused
    for _ in range(3):
        await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Enter")  # "Mute microphone"
    await expect(page.get_by_role("button", name="Unmute microphone")).to_be_visible()


async def test_server_restart_reconnects(tmp_path: Path, contexts: Contexts) -> None:
    """The server dies (SIGKILL: no goodbye, like a lost network) and comes back on the same
    port: the page says it is reconnecting, re-joins by itself, re-publishes, and media flows
    both ways with someone who joins the restarted server."""
    first = ServerProcess(tmp_path).start()
    port = first.port
    restarted: ServerProcess | None = None
    try:
        flo = await open_page(
            await contexts(), "restart-flo", join_url(first, first.token("r-restart", "Flo"))
        )
        await flo.page.get_by_role("button", name="Join call").click()
        await expect(flo.page.get_by_role("button", name="Leave call")).to_be_visible()
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait(timeout=10)
        await expect(flo.page.get_by_role("status")).to_contain_text("Reconnecting")
        await flo.shot("reconnecting")
        restarted = ServerProcess(tmp_path, extra_args=["--port", str(port)]).start()
        await flo.page.wait_for_function(
            "() => window.__oktorus.connection.state === 'joined'", timeout=20_000
        )
        gus = await open_page(
            await contexts(),
            "restart-gus",
            join_url(restarted, restarted.token("r-restart", "Gus")),
        )
        await gus.page.get_by_role("button", name="Join call").click()
        await flo.wait_media()
        await gus.wait_media()
        await expect(gus.page.get_by_role("article", name="Flo")).to_be_visible()
        for call in (flo, gus):  # leave, so the server has no call to drain on SIGTERM
            await call.page.get_by_role("button", name="Leave call").click()
            await expect(call.page.get_by_role("heading", name="You left the call")).to_be_visible()
    finally:
        first.stop()
        if restarted is not None:
            restarted.stop()
            print("".join(restarted.log_lines[-80:]))  # shown by pytest on failure only


async def test_security_headers(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/join?token=abc", "/agent", "/static/protocol.js", "/static/app.css"):
            async with http.get(server.http + path) as response:
                assert response.status == 200, path
                headers = response.headers
                csp = headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "unsafe-inline" not in csp
                assert "frame-ancestors 'none'" in csp
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert headers["Referrer-Policy"] == "no-referrer"
                assert "camera=(self)" in headers["Permissions-Policy"]
        async with http.get(server.http + "/join?token=abc") as response:
            assert response.headers["Cache-Control"] == "no-store"
        async with http.get(server.http + "/static/protocol.js") as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
            etag = response.headers["ETag"]
        async with http.get(
            server.http + "/static/protocol.js", headers={"If-None-Match": etag}
        ) as response:
            assert response.status == 304
        for missing in ("/static/nope.js", "/static/..%2Fhttp_api.py", "/static/.hidden"):
            async with http.get(server.http + missing) as response:
                assert response.status == 404, missing


async def test_protocol_library(server: ServerProcess, contexts: Contexts) -> None:
    """protocol.js on its own, as another page would use it: SDP helpers, `redirect`, errors."""
    call = await open_page(await contexts(), "library", server.http + "/join")
    result = await call.page.evaluate(
        """async ([realUrl, token]) => {
            const m = await import('/static/protocol.js');
            const sdp = ['v=0', 'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:0',
                         'a=msid:PA_1 TR_a', 'a=sendonly',
                         'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:1', 'a=msid:PA_1 TR_b',
                         'a=inactive', ''].join('\\r\\n');
            const fromSdp = m.tracksFromSdp(sdp);

            // A node that does not host the room answers `join` with `redirect`.
            class Redirector extends EventTarget {
                constructor() {
                    super();
                    this.readyState = 0;
                    setTimeout(() => {
                        this.readyState = 1;
                        this.dispatchEvent(new Event('open'));
                    });
                }
                send(text) {
                    const join = JSON.parse(text);
                    const data = JSON.stringify({type: 'redirect', url: realUrl, id: join.id});
                    setTimeout(() => this.dispatchEvent(new MessageEvent('message', {data})));
                }
                close() { this.readyState = 3;
                    this.dispatchEvent(new CloseEvent('close', {code: 1000})); }
            }
            const make = (url) => url === 'ws://elsewhere/' ? new Redirector() : new WebSocket(url);
            const sfu = new m.SfuConnection('ws://elsewhere/', token, {createSocket: make});
            const joined = await sfu.connect();
            const room = joined.room.id;
            const pong = await sfu.request({type: 'ping'});
            await sfu.leave();

            let refused = null;
            try {
                await new m.SfuConnection(realUrl, token + 'x').connect();
            } catch (e) { refused = [e.name, e.code]; }
            return {fromSdp, room, pong: pong.type, state: sfu.state, refused,
                    claims: m.peekTokenClaims(token).room, bad: m.peekTokenClaims('nope')};
        }""",
        [server.url, server.token("r-lib", "Lib")],
    )
    assert result == {
        "fromSdp": {"0": "TR_a"},
        "room": "r-lib",
        "pong": "pong",
        "state": "closed",
        "refused": ["ProtocolError", "unauthenticated"],
        "claims": "r-lib",
        "bad": None,
    }
