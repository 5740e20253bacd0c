"""Consent figures for the closing note (not a test): withdraw → stopped, over N tries.

PYTHONPATH=.:tests .venv/bin/python tests/helpers/consent_figures.py --tries 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from helpers.media import FrameCounterTrack, ToneTrack
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from signaling.client import Participant

NOTICE = "This call is recorded for quality and training."


async def withdraw_latency(tries: int) -> list[float]:
    bridge.restrict_host_addresses(["127.0.0.1"])
    server = ServerProcess(Path(tempfile.mkdtemp()) / "data").start()
    room = "figures"
    agent = await Participant.join(
        server.url,
        server.token(room, "agent", role="agent", grants=("publish", "subscribe", "record")),
    )
    customer = await Participant.join(
        server.url,
        server.token(room, "customer"),
        publish_tracks=[FrameCounterTrack(), ToneTrack()],
    )
    samples = []
    try:
        for _ in range(tries):
            await agent.signal.request(
                {"type": "recording.start", "scope": ["audio", "video"], "notice": NOTICE}
            )
            asked = await customer.next_event("consent.request", timeout=5)
            await customer.signal.request(
                {"type": "consent.grant", "request": asked["request"], "scope": ["audio", "video"]}
            )
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await customer.signal.request({"type": "consent.withdraw"})
            await agent.next_event(
                "recording.state",
                lambda e: not any(p["id"] == customer.id for p in e["participants"]),
                timeout=5,
            )
            samples.append((time.monotonic() - started) * 1000)
            await agent.signal.request({"type": "recording.stop"})
    finally:
        await customer.close()
        await agent.close()
        server.stop()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args()
    samples = asyncio.run(withdraw_latency(args.tries))
    print(
        f"withdraw → recording stopped over {len(samples)} tries: "
        f"p50 {statistics.median(samples):.0f} ms, max {max(samples):.0f} ms"
    )


if __name__ == "__main__":
    main()
