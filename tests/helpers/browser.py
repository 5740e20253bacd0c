"""Driving Debian's Chromium with Playwright for the e2e tests (tests/e2e).

Chromium runs headless with fake camera/microphone (640x480, 20 fps, a beeping tone), no DNS
(every name but 127.0.0.1/localhost resolves to nothing) and loopback ICE candidates allowed.
Browsers are never downloaded: ``executable_path`` is Debian's chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, Playwright

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "MEASURED",
    "CallPage",
    "chromium_args",
    "launch",
    "open_page",
    "poll",
]

CHROMIUM = Path("/usr/lib/chromium/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"
STEP_TIMEOUT_MS = 15_000
"""Upper bound of any single wait in a browser (navigation, a locator, media arriving)."""
MEDIA_TIMEOUT_S = 15.0

CHROMIUM_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
FAKE_UI = "--use-fake-ui-for-media-stream"

# Figures measured by the tests; tests/e2e/conftest.py prints them at the end of the run.
MEASURED: dict[str, Any] = {}


def chromium_args(*, fake_ui: bool = True, fake_devices: bool = True) -> list[str]:
    args = [a for a in CHROMIUM_ARGS if fake_devices or a != "--use-fake-device-for-media-stream"]
    if fake_ui:
        args.append(FAKE_UI)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return args


async def launch(playwright: Playwright, args: list[str]) -> Browser:
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=args, headless=True, timeout=STEP_TIMEOUT_MS
    )


@dataclass
class CallPage:
    """One browser tab on the call page or the console, with its console log kept."""

    name: str
    page: Page
    logs: list[str] = field(default_factory=list)

    async def shot(self, state: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^a-z0-9-]+", "-", f"{self.name}-{state}".lower())
        await self.page.screenshot(path=str(ARTIFACTS / f"{safe}.png"), full_page=True)

    async def stats(self) -> dict[str, float]:
        """Inbound RTP of the subscribe PC: video frames decoded, audio/video packets."""
        result: dict[str, float] = await self.page.evaluate(
            """async () => {
                const pc = window.__oktorus && window.__oktorus.subscribePc;
                const out = {framesDecoded: 0, videoPackets: 0, audioPackets: 0, pc: 0};
                if (!pc) return out;
                out.pc = 1;
                (await pc.getStats()).forEach((s) => {
                    if (s.type !== 'inbound-rtp') return;
                    if (s.kind === 'video') {
                        out.framesDecoded += s.framesDecoded || 0;
                        out.videoPackets += s.packetsReceived || 0;
                    } else if (s.kind === 'audio') {
                        out.audioPackets += s.packetsReceived || 0;
                    }
                });
                return out;
            }"""
        )
        return result

    async def diagnose(self) -> str:
        """The page's view of the call, for failure messages."""
        state: Any = await self.page.evaluate(
            """async () => {
                const o = window.__oktorus;
                if (!o || !o.connection) return {connection: null};
                const c = o.connection;
                const pcs = {};
                for (const name of ['publishPc', 'subscribePc']) {
                    const pc = o[name];
                    if (!pc) { pcs[name] = null; continue; }
                    const inbound = [];
                    (await pc.getStats()).forEach((s) => {
                        if (s.type === 'inbound-rtp' || s.type === 'outbound-rtp') {
                            inbound.push([s.type, s.kind, s.packetsReceived ?? s.packetsSent]);
                        }
                    });
                    pcs[name] = {state: pc.connectionState, signaling: pc.signalingState,
                        transceivers: pc.getTransceivers().map(
                            (t) => [t.mid, t.direction, t.currentDirection]),
                        rtp: inbound};
                }
                return {state: c.state, me: c.participant && c.participant.id,
                    participants: [...c.participants.keys()], tracks: [...c.tracks.values()],
                    remote: [...c.remoteTracks.keys()], pcs};
            }"""
        )
        return json.dumps(state)

    async def wait_media(
        self, *, frames_above: float = 0, audio_above: float = 0
    ) -> dict[str, float]:
        """Until this page decodes video frames and receives audio packets beyond the given."""

        async def ready() -> dict[str, float] | None:
            stats = await self.stats()
            ok = stats["framesDecoded"] > frames_above and stats["audioPackets"] > audio_above
            return stats if ok else None

        stats: dict[str, float] = await poll(
            ready, f"{self.name}: media beyond {frames_above} frames", self
        )
        return stats


async def poll(
    check: Callable[[], Awaitable[Any]],
    what: str,
    page: CallPage | None = None,
    timeout_s: float = MEDIA_TIMEOUT_S,
) -> Any:
    """Call ``check`` every 100 ms until it returns something truthy; fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(page.logs[-30:]) if page else ""
            state = await page.diagnose() if page else ""
            raise AssertionError(f"timed out waiting for {what}\n{state}\n{logs}")
        await asyncio.sleep(0.1)


async def open_page(context: BrowserContext, name: str, url: str) -> CallPage:
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    call = CallPage(name, page)
    page.on("console", lambda m: call.logs.append(f"[{name}] {m.type}: {m.text}"))
    page.on("pageerror", lambda e: call.logs.append(f"[{name}] pageerror: {e}"))
    await page.goto(url, wait_until="domcontentloaded")
    return call
