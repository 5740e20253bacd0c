"""Consent figures for the closing note (not a test): withdraw → stopped, over N tries.

PYTHONPATH=.:tests .venv/bin/python tests/helpers/consent_figures.py --tries 20
PYTHONPATH=.:tests .venv/bin/python tests/helpers/consent_figures.py --tries 20 --span

``--span``: ``--workers 2 --room-span-subscribers 2``; the agent and two others on the home
worker, the customer (recorded) spilled to the other: the time is until the agent, on the
home worker, sees the customer's recorder (on the spill worker) stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers.media import FrameCounterTrack, ToneTrack
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from signaling.client import Participant

NOTICE = "This call is recorded for quality and training."


async def withdraw_latency(tries: int, span: bool = False) -> list[float]:
    bridge.restrict_host_addresses(["127.0.0.1"])
    args = ["--workers", "2", "--room-span-subscribers", "2"] if span else []
    server = ServerProcess(Path(tempfile.mkdtemp()) / "data", args).start()
    room = "figures"
    agent = await Participant.join(
        server.url,
        server.token(room, "agent", role="agent", grants=("publish", "subscribe", "record")),
    )
    # With --span: two more on the home worker, so the customer is spilled.
    others = [
        await Participant.join(server.url, server.token(room, f"other-{n}"))
        for n in range(2 if span else 0)
    ]
    customer = await Participant.join(
        server.url,
        server.token(room, "customer"),
        publish_tracks=[FrameCounterTrack(), ToneTrack()],
    )
    samples = []
    try:
        if span:
            workers: list[str] = []
            for _ in range(50):  # /v1/rooms reports the workers' load, ~1 s old
                workers = await asyncio.to_thread(_workers, server, room)
                if len(workers) == 2:
                    break
                await asyncio.sleep(0.2)
            assert len(workers) == 2, f"the room does not span: {workers}"
        for _ in range(tries):
            await agent.signal.request(
                {"type": "recording.start", "scope": ["audio", "video"], "notice": NOTICE}
            )
            asked = await customer.next_event("consent.request", timeout=5)
            await customer.signal.request(
                {"type": "consent.grant", "request": asked["request"], "scope": ["audio", "video"]}
            )
            await asyncio.sleep(1.0)
            agent.signal.discard("recording.state")  # only what the withdrawal causes counts
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
        for participant in (customer, agent, *others):
            await participant.close()
        server.stop()
    return samples


def _workers(server: ServerProcess, room: str) -> list[str]:
    request = urllib.request.Request(server.http + "/v1/rooms")
    request.add_header("Authorization", "Bearer " + server.token("ops", "ops", grants=("admin",)))
    with urllib.request.urlopen(request, timeout=10) as response:
        rooms = {r["id"]: r for r in json.loads(response.read())["rooms"]}
    return [str(w) for w in rooms[room]["workers"]] if room in rooms else []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--span", action="store_true", help="customer on the other worker")
    args = parser.parse_args()
    samples = asyncio.run(withdraw_latency(args.tries, args.span))
    print(
        f"withdraw → recording stopped over {len(samples)} tries: "
        f"p50 {statistics.median(samples):.0f} ms, max {max(samples):.0f} ms"
    )


if __name__ == "__main__":
    main()
