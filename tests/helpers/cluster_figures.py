"""Measure the cluster figures (not a test: prints numbers).

    PYTHONPATH=.:tests .venv/bin/python tests/helpers/cluster_figures.py redirect [--runs 20]
        [--b-workers 2] [--room-on b]
    PYTHONPATH=.:tests .venv/bin/python tests/helpers/cluster_figures.py failover [--runs 3]
        [--ttl 3]
    PYTHONPATH=.:tests .venv/bin/python tests/helpers/cluster_figures.py withdraw [--runs 10]

Everything runs on 127.0.0.1: a real redis-server and two real server processes (nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from helpers.cluster import start_node
from helpers.media import FrameCounterTrack
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from signaling.client import Participant

NOTICE = "This support call will be recorded. You may withdraw at any time."
AGENT_GRANTS = ("publish", "subscribe", "record")


def _summary(name: str, values: list[float], what: str) -> None:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    print(
        f"{name:24} n={len(values)} median {statistics.median(values):.0f} ms  "
        f"p90 {p90:.0f}  min {ordered[0]:.0f}  max {ordered[-1]:.0f}  ({what})",
        flush=True,
    )


async def _with_cluster(
    ttl_s: float,
    body: Callable[[Path, RedisServer, ServerProcess, ServerProcess], Awaitable[None]],
    b_workers: int = 1,
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cluster-figures-"))
    redis_server = RedisServer(tmp / "redis").start()
    nodes: list[ServerProcess] = []
    try:
        nodes = [start_node(tmp, redis_server.url, "node-a", ttl_s=ttl_s)]
        extra = ["--workers", str(b_workers)] if b_workers > 1 else []
        nodes.append(start_node(tmp, redis_server.url, "node-b", ttl_s=ttl_s, extra=extra))
        await body(tmp, redis_server, nodes[0], nodes[1])
    finally:
        for node in nodes:
            node.stop()
        redis_server.stop()


async def _timed_join(url: str, token: str) -> float:
    started = time.perf_counter()
    participant = await Participant.join(url, token)
    took = (time.perf_counter() - started) * 1000
    await participant.close()
    return took


async def redirect(runs: int, b_workers: int = 1, room_on: str = "a") -> None:
    async def body(_: Path, __: RedisServer, node_a: ServerProcess, node_b: ServerProcess) -> None:
        if room_on == "b":  # the room on B, joined directly on B or through A's redirect
            node_a, node_b = node_b, node_a
        host = await Participant.join(
            node_a.url, node_a.token("hosted", "host"), publish_tracks=[FrameCounterTrack()]
        )
        direct: list[float] = []
        redirected: list[float] = []
        try:
            await _timed_join(node_a.url, node_a.token("hosted", "warm"))
            for i in range(runs * 2):
                if i % 2:
                    redirected.append(await _timed_join(node_b.url, node_b.token("hosted", "b")))
                else:
                    direct.append(await _timed_join(node_a.url, node_a.token("hosted", "a")))
        finally:
            await host.close()
        host_name, other = ("B", "A") if room_on == "b" else ("A", "B")
        _summary(f"direct (node {host_name})", direct, f"connect + join -> joined on {host_name}")
        _summary(
            f"through {other}'s redirect",
            redirected,
            f"connect {other} + join -> redirect -> {host_name} -> joined (B: {b_workers} workers)",
        )

    await _with_cluster(3.0, body, b_workers)


async def failover(runs: int, ttl_s: float) -> None:
    async def body(
        tmp: Path, redis_server: RedisServer, _: ServerProcess, node_b: ServerProcess
    ) -> None:
        took: list[float] = []
        for i in range(runs):
            room = f"failover-{i}"
            node_a = start_node(tmp, redis_server.url, f"doomed-{i}", ttl_s=ttl_s)
            alice = await Participant.join(node_a.url, node_a.token(room, "alice"))
            assert node_a.proc is not None
            node_a.proc.kill()
            node_a.proc.wait(timeout=5)
            killed = time.perf_counter()
            await alice.close()
            while True:  # a client retrying every 50 ms through node B
                try:
                    bob = await Participant.join(node_b.url, node_b.token(room, "bob"), timeout=2)
                except OSError:
                    await asyncio.sleep(0.05)  # redirected to the dead node: refused
                    continue
                break
            took.append((time.perf_counter() - killed) * 1000)
            assert bob.signal.url == node_b.url
            print(f"  run {i}: joinable through node B after {took[-1]:.0f} ms", flush=True)
            await bob.close()
        _summary(f"dead node (ttl {ttl_s:g} s)", took, "kill -9 -> a join through B succeeds")

    await _with_cluster(ttl_s, body)


def _withdraw_over_http(node: ServerProcess, subject: str) -> dict[str, Any]:
    token = node.token("privacy-page", subject)
    request = urllib.request.Request(
        f"{node.http}/v1/subjects/{subject}/withdraw",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


async def withdraw(runs: int) -> None:
    async def body(_: Path, __: RedisServer, node_a: ServerProcess, node_b: ServerProcess) -> None:
        took: list[float] = []
        for i in range(runs):
            room = f"withdraw-{i}"
            agent = await Participant.join(
                node_a.url, node_a.token(room, "agent", role="agent", grants=AGENT_GRANTS)
            )
            customer = await Participant.join(
                node_a.url,
                node_a.token(room, f"customer-{i}"),
                publish_tracks=[FrameCounterTrack()],
            )
            try:
                await agent.wait_remote_tracks(1, timeout=15)
                await agent.signal.request(
                    {"type": "recording.start", "scope": ["video"], "notice": NOTICE}
                )
                asked = await customer.next_event("consent.request", timeout=5)
                await customer.signal.request(
                    {"type": "consent.grant", "request": asked["request"], "scope": ["video"]}
                )
                await agent.next_event("recording.state", lambda e: bool(e["participants"]), 5)
                started = time.perf_counter()
                await asyncio.to_thread(_withdraw_over_http, node_b, f"customer-{i}")
                await agent.next_event("recording.state", lambda e: not e["participants"], 5)
                took.append((time.perf_counter() - started) * 1000)
            finally:
                await customer.close()
                await agent.close()
        _summary("withdrawal B -> stop on A", took, "POST withdraw on B -> recording.state on A")

    await _with_cluster(3.0, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="figure", required=True)
    redirect_args = sub.add_parser("redirect")
    redirect_args.add_argument("--runs", type=int, default=20)
    redirect_args.add_argument("--b-workers", type=int, default=1, help="node B's --workers")
    redirect_args.add_argument("--room-on", choices=("a", "b"), default="a")
    fail = sub.add_parser("failover")
    fail.add_argument("--runs", type=int, default=3)
    fail.add_argument("--ttl", type=float, default=3.0)
    sub.add_parser("withdraw").add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    bridge.restrict_host_addresses(["127.0.0.1"])
    if args.figure == "redirect":
        asyncio.run(redirect(args.runs, args.b_workers, args.room_on))
    elif args.figure == "failover":
        asyncio.run(failover(args.runs, args.ttl))
    else:
        asyncio.run(withdraw(args.runs))


if __name__ == "__main__":
    main()
