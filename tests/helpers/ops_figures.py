"""Measure the operations figures (not a test: prints numbers).

    PYTHONPATH=.:tests .venv/bin/python tests/helpers/ops_figures.py turn [--runs 10]
    PYTHONPATH=.:tests .venv/bin/python tests/helpers/ops_figures.py scrape [--participants 100]
    PYTHONPATH=.:tests .venv/bin/python tests/helpers/ops_figures.py webhooks [--events 400]
    PYTHONPATH=.:tests .venv/bin/python tests/helpers/ops_figures.py outage [--down 60] [--redis]

Everything runs on 127.0.0.1: a real server process, real coturn, a real webhook receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers.calls import timed_call
from helpers.coturn import Coturn
from helpers.media import FrameCounterTrack
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess
from helpers.webhook_receiver import WebhookReceiver

from sfu import aiortc_bridge as bridge
from signaling.client import Participant, SignalClient

KEY = "ops-figures-webhook-key-0123456789abcdef"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def turn(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ops-turn-"))
    coturn = Coturn(tmp / "coturn").start()
    server = ServerProcess(
        tmp / "data", ["--turn-uri", coturn.uri, "--turn-secret", coturn.secret]
    ).start()
    results: dict[bool, list[float]] = {False: [], True: []}
    try:
        warm = await timed_call(
            server.url, server.token("warm", "a"), server.token("warm", "b"), relay=False
        )
        await warm.publisher.close()
        await warm.subscriber.close()
        for i in range(runs * 2):
            relay = bool(i % 2)
            room = f"turn-{i}"
            call = await timed_call(
                server.url, server.token(room, "a"), server.token(room, "b"), relay=relay
            )
            results[relay].append(call.setup_ms)
            print(f"  {'relay ' if relay else 'direct'} {call.setup_ms:.0f} ms", flush=True)
            await call.publisher.close()
            await call.subscriber.close()
    finally:
        server.stop()
        coturn.stop()
    for relay, values in results.items():
        print(
            f"{'relay-only (TURN)' if relay else 'direct':18} n={len(values)} "
            f"median {statistics.median(values):.0f} ms  min {min(values):.0f}  "
            f"max {max(values):.0f}  (join -> first decoded frame at the other participant)"
        )


def _scrape_once(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


async def scrape(participants: int, scrapes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ops-scrape-"))
    server = ServerProcess(tmp / "data").start()
    clients: list[SignalClient] = []
    media: list[Participant] = []
    try:
        media.append(
            await Participant.join(
                server.url, server.token("media", "pub"), publish_tracks=[FrameCounterTrack()]
            )
        )
        for i in range(3):
            viewer = await Participant.join(server.url, server.token("media", f"v{i}"), drain=True)
            await viewer.wait_remote_tracks(1, timeout=10)
            media.append(viewer)
        for i in range(participants):
            signal = await SignalClient.connect(server.url)
            await signal.request({"type": "join", "token": server.token(f"room-{i % 20}", f"u{i}")})
            clients.append(signal)
        await asyncio.sleep(2)
        timings = []
        size = 0
        for _ in range(scrapes):
            elapsed, size = await asyncio.to_thread(_scrape_once, server.http + "/metrics")
            timings.append(elapsed * 1000)
            await asyncio.sleep(0.05)
        total = participants + len(media)
        print(
            f"/metrics with {total} participants ({len(media)} with media, 3 forwarded copies): "
            f"p50 {_pct(timings, 0.5):.1f} ms, p99 {_pct(timings, 0.99):.1f} ms, "
            f"max {max(timings):.1f} ms over {scrapes} scrapes; {size} bytes"
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await asyncio.gather(*(p.close() for p in media), return_exceptions=True)
        server.stop()


async def _churn(server: ServerProcess, rooms: int, interval_s: float) -> int:
    """Join and leave ``rooms`` single-person rooms (4 events each); returns events made."""
    for i in range(rooms):
        signal = await SignalClient.connect(server.url)
        await signal.request({"type": "join", "token": server.token(f"churn-{i}", f"u{i}")})
        await signal.close()
        await asyncio.sleep(interval_s)
    return rooms * 4


def _latencies(receiver: WebhookReceiver) -> list[float]:
    first: dict[str, float] = {}
    for item in receiver.received:
        key = str(item.event["id"])
        if key not in first:
            first[key] = (item.at - float(item.event["created_at"])) * 1000
    return list(first.values())


async def webhooks(events: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ops-hooks-"))
    receiver = await WebhookReceiver(KEY).start()
    server = ServerProcess(tmp / "data", ["--webhook-url", receiver.url, "--webhook-key", KEY]
                           ).start()  # fmt: skip
    try:
        made = await _churn(server, events // 4, interval_s=0.02)
        await receiver.wait_for(made, timeout=60)
        values = _latencies(receiver)
        print(
            f"webhook delivery latency (event created -> verified at receiver), n={len(values)}: "
            f"p50 {_pct(values, 0.5):.1f} ms, p99 {_pct(values, 0.99):.1f} ms, "
            f"max {max(values):.1f} ms"
        )
    finally:
        server.stop()
        await receiver.stop()


async def outage(down_s: float, use_redis: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ops-outage-"))
    redis = RedisServer(tmp / "redis").start() if use_redis else None
    receiver = await WebhookReceiver(KEY).start()
    extra = ["--redis", redis.url] if redis is not None else []
    server = ServerProcess(
        tmp / "data", ["--webhook-url", receiver.url, "--webhook-key", KEY, *extra]
    ).start()
    try:
        made = await _churn(server, 5, interval_s=0.05)
        await receiver.wait_for(made, timeout=10)
        await receiver.stop()
        down_at = time.time()
        # Events keep coming while the receiver is down: one join+leave per second.
        made += await _churn(server, int(down_s), interval_s=max(0.0, 1.0 - 0.03))
        remaining = down_s - (time.time() - down_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        await receiver.start()
        up_at = time.time()
        await receiver.wait_for(made, timeout=down_s + 120)
        done_at = time.time()
        ids = receiver.ids
        during = [r for r in receiver.received if float(r.event["created_at"]) >= down_at]
        first_after = min(r.at for r in during) - up_at
        print(
            f"receiver down {time.time() - down_at - (done_at - up_at):.0f} s "
            f"({'Redis Streams' if redis else 'in-memory'} queue): {made} events emitted, "
            f"{len(set(ids))} delivered ({len(ids) - len(set(ids))} duplicates, "
            f"{made - len(set(ids))} lost); first delivery {first_after:.1f} s after the receiver "
            f"came back, backlog of {len(during)} drained {done_at - up_at:.1f} s after it; "
            f"receiver saw {receiver.requests} requests"
        )
    finally:
        server.stop()
        await receiver.stop()
        if redis is not None:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("turn").add_argument("--runs", type=int, default=10)
    p = sub.add_parser("scrape")
    p.add_argument("--participants", type=int, default=100)
    p.add_argument("--scrapes", type=int, default=100)
    sub.add_parser("webhooks").add_argument("--events", type=int, default=400)
    p = sub.add_parser("outage")
    p.add_argument("--down", type=float, default=60.0)
    p.add_argument("--redis", action="store_true")
    args = parser.parse_args()
    bridge.restrict_host_addresses(["127.0.0.1"])
    if args.what == "turn":
        asyncio.run(turn(args.runs))
    elif args.what == "scrape":
        asyncio.run(scrape(args.participants, args.scrapes))
    elif args.what == "webhooks":
        asyncio.run(webhooks(args.events))
    else:
        asyncio.run(outage(args.down, args.redis))


if __name__ == "__main__":
    main()
