"""What a pipe between two workers (or two nodes) adds: CPU per piped packet and latency.

``python -m bench.micro.pipe [--rate PPS] [--seconds S] [--srtp | --compare]``

``--srtp`` measures the pipe between nodes: every piped packet protected with SRTP
AEAD_AES_256_GCM on the home side and authenticated/decrypted on the spill side
(:class:`~sfu.pipe_crypto.PipeCrypto`); ``--compare`` runs the plain pipe, then the SRTP one.

Two processes, as two workers are, each on its own uvloop:

* the **home** side runs a real :class:`~sfu.producer.Producer` fed 1200-byte VP8 packets
  at ``--rate`` packets/s (bursts every 10 ms) with a :class:`~sfu.pipe.PipeSink` on its
  :class:`~sfu.pipe.PipeEndpoint`;
* the **spill** side runs the other :class:`~sfu.pipe.PipeEndpoint`, a
  :class:`~sfu.pipe.PipedProducer` and one real :class:`~sfu.consumer.Consumer` whose
  transport records, per packet, the time since the home side's ``on_rtp`` (embedded in the
  payload; ``CLOCK_MONOTONIC`` is one clock for every process).

Each side's CPU (``time.process_time``) is read over a window with the pipe off (the home
side still makes and routes every packet; the spill side idles) and the same window with the
pipe on: the difference divided by the packets piped is the CPU a piped packet costs on each
side. Latency is from the home producer's ``on_rtp`` to the spill consumer's send call: what
a subscriber on the spill worker waits more than one on the home worker.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import struct
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from sfu.codec import Codec
from sfu.consumer import Consumer, ConsumerState
from sfu.layers import Layer
from sfu.pipe import PipeEndpoint
from sfu.pipe_crypto import PipeCrypto, new_key
from sfu.producer import Producer

__all__ = ["main", "run"]

VP8 = Codec(kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96)
SSRC = 0x0BE4C400
PACKET_BYTES = 1200
BURST_INTERVAL_S = 0.01
_STAMP = struct.Struct("!q")


class _NoFeedback:
    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        pass

    def nack_pending(self, producer: Producer) -> None:
        pass

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        pass


class _LatencyTransport:
    """The spill side's subscriber transport: records home on_rtp → here, in µs."""

    def __init__(self) -> None:
        self.latencies_us: list[float] = []

    def send_rtp(self, packet: bytes, second: int, seq: int, ts: int, ssrc: int) -> bool:
        sent_ns = _STAMP.unpack_from(packet, len(packet) - 8)[0]
        self.latencies_us.append((time.monotonic_ns() - sent_ns) / 1000)
        return True


def _packet(seq: int, keyframe: bool) -> bytes:
    header = struct.pack("!BBHII", 0x80, 0x80 | 96, seq & 0xFFFF, (seq // 5) * 3000, SSRC)
    descriptor = b"\x10" + (b"\x00\x00\x00\x9d\x01\x2a" if keyframe else b"\x01\x00\x00")
    filler = b"\x00" * (PACKET_BYTES - len(header) - len(descriptor) - 8)
    return header + descriptor + filler + _STAMP.pack(time.monotonic_ns())


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- the spill side --------------------------------------------------------------------


def _spill(conn: Connection) -> None:
    _use_uvloop()
    asyncio.run(_spill_main(conn))


async def _spill_main(conn: Connection) -> None:
    keys = conn.recv()  # (home key, spill key) for an SRTP pipe, or None
    endpoint = PipeEndpoint(crypto=None if keys is None else PipeCrypto(keys[1], keys[0]))
    conn.send(await endpoint.open())
    endpoint.connect(conn.recv())
    producer = endpoint.make_piped(
        track_id="t", participant_id="p", kind="video", mid="0", codec=VP8, ssrcs=[SSRC],
        audio_level_id=0, muted=False, on_demand=lambda _p, _on: None,
    )  # fmt: skip
    assert producer is not None
    transport = _LatencyTransport()
    consumer = Consumer(producer, subscriber_id="s", transport=transport,  # type: ignore[arg-type]
                        ssrc=0x5000, rtx_ssrc=0x6000, cname="bench")  # fmt: skip
    consumer.payload_type = 96
    consumer.state = ConsumerState.WAITING_KEYFRAME
    producer.add_consumer(consumer)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    conn.send("ready")
    marks: dict[str, float] = {}
    while (command := await commands.get()) != "quit":
        marks[command] = time.process_time()
        if command == "on":
            transport.latencies_us.clear()
        conn.send("ok")
    loop.remove_reader(conn.fileno())
    conn.send({"marks": marks, "latencies_us": transport.latencies_us,
               "received": endpoint.rtp_in})  # fmt: skip
    endpoint.close()


# --- the home side ---------------------------------------------------------------------


async def _paced(producer: Producer, rate: int, seconds: float, first_seq: int) -> int:
    """Feed ``producer`` ``rate`` packets/s for ``seconds``; returns the next seq."""
    loop = asyncio.get_running_loop()
    per_burst = max(1, round(rate * BURST_INTERVAL_S))
    seq = first_seq
    start = loop.time()
    bursts = int(seconds / BURST_INTERVAL_S)
    for n in range(bursts):
        for _ in range(per_burst):
            producer.on_rtp(_packet(seq, keyframe=seq == 0), time.monotonic())
            seq += 1
        await asyncio.sleep(max(0.0, start + (n + 1) * BURST_INTERVAL_S - loop.time()))
    return seq


async def _ask(conn: Connection, command: str) -> None:
    conn.send(command)
    assert await asyncio.to_thread(conn.recv) == "ok"


async def _home_main(rate: int, seconds: float, srtp: bool) -> dict[str, Any]:
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_spill, args=(child,))
    process.start()
    try:
        keys = (new_key(), new_key()) if srtp else None
        parent.send(keys)
        endpoint = PipeEndpoint(crypto=None if keys is None else PipeCrypto(keys[0], keys[1]))
        port = await endpoint.open()
        endpoint.connect(await asyncio.to_thread(parent.recv))
        parent.send(port)
        assert await asyncio.to_thread(parent.recv) == "ready"
        producer = Producer(
            track_id="t", participant_id="p", kind="video", mid="0", codec=VP8, ssrc=SSRC,
            rtx_ssrc=None, extension_map=list(range(256)), feedback=_NoFeedback(),
            now=time.monotonic(),
        )  # fmt: skip
        # Window 1, pipe off: the home side's own cost of making and routing packets.
        await _paced(producer, rate, 0.5, 1)  # warm up
        await _ask(parent, "off")
        cpu0 = time.process_time()
        seq = await _paced(producer, rate, seconds, 1000)
        cpu1 = time.process_time()
        await _ask(parent, "off_end")
        # Window 2, pipe on: the same packets, also piped.
        sink = endpoint.start_sending(producer)
        assert sink is not None
        producer.on_rtp(_packet(0, keyframe=True), time.monotonic())  # the consumer starts
        await asyncio.sleep(0.2)
        await _ask(parent, "on")
        piped0 = sink.packets
        cpu2 = time.process_time()
        await _paced(producer, rate, seconds, seq)
        cpu3 = time.process_time()
        await asyncio.sleep(0.2)  # the last packets arrive
        await _ask(parent, "on_end")
        piped = sink.packets - piped0
        parent.send("quit")
        spill = await asyncio.to_thread(parent.recv)
        endpoint.close()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    marks = spill["marks"]
    home_us = ((cpu3 - cpu2) - (cpu1 - cpu0)) / piped * 1e6
    spill_us = ((marks["on_end"] - marks["on"]) - (marks["off_end"] - marks["off"])) / piped * 1e6
    latencies = sorted(spill["latencies_us"])
    return {
        "pipe": "srtp" if srtp else "plain",
        "rate_pps": rate,
        "seconds": seconds,
        "piped_packets": piped,
        "received": len(latencies),
        "home_cpu_us_per_piped_packet": round(home_us, 2),
        "spill_cpu_us_per_piped_packet": round(spill_us, 2),
        "total_cpu_us_per_piped_packet": round(home_us + spill_us, 2),
        "latency_us": {
            "p50": round(_quantile(latencies, 0.5), 1),
            "p90": round(_quantile(latencies, 0.9), 1),
            "p99": round(_quantile(latencies, 0.99), 1),
            "max": round(latencies[-1], 1) if latencies else 0.0,
        },
        "load_average": os.getloadavg(),
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def srtp_alone(packets: int = 20_000) -> tuple[float, float]:
    """µs of CPU per 1200-byte packet for PipeCrypto's protect and unprotect alone."""
    home_key, spill_key = new_key(), new_key()
    home, spill = PipeCrypto(home_key, spill_key), PipeCrypto(spill_key, home_key)
    plain = [_packet(seq, keyframe=False) for seq in range(packets)]
    start = time.process_time()
    wire = [home.protect(p) for p in plain]
    middle = time.process_time()
    opened = [spill.unprotect(w) for w in wire if w is not None]
    end = time.process_time()
    assert opened == plain
    return (middle - start) / packets * 1e6, (end - middle) / packets * 1e6


def run(rate: int = 2000, seconds: float = 5.0, srtp: bool = False) -> dict[str, Any]:
    _use_uvloop()
    return asyncio.run(_home_main(rate, seconds, srtp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro.pipe", description=__doc__)
    parser.add_argument("--rate", type=int, default=2000, help="packets/s (default 2000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="each window (default 5)")
    parser.add_argument("--srtp", action="store_true", help="SRTP (AES-256-GCM): between nodes")
    parser.add_argument("--compare", action="store_true", help="plain, then SRTP")
    args = parser.parse_args(argv)
    for srtp in (False, True) if args.compare else (args.srtp,):
        _print(run(args.rate, args.seconds, srtp))
    if args.srtp or args.compare:
        protect_us, unprotect_us = srtp_alone()
        print(f"libsrtp alone (AEAD_AES_256_GCM, {PACKET_BYTES} B): protect "
              f"{protect_us:.2f} µs, unprotect {unprotect_us:.2f} µs")  # fmt: skip
    return 0


def _print(result: dict[str, Any]) -> None:
    r, lat = result, result["latency_us"]
    load = r["load_average"][0]
    print(f"{r['pipe']} pipe, {r['rate_pps']} packets/s, {r['piped_packets']} piped, "
          f"{r['received']} received (load average {load:.2f})")  # fmt: skip
    print(f"CPU per piped packet: home {r['home_cpu_us_per_piped_packet']} µs + spill "
          f"{r['spill_cpu_us_per_piped_packet']} µs = "
          f"{r['total_cpu_us_per_piped_packet']} µs")  # fmt: skip
    print(f"latency home on_rtp → spill consumer: p50 {lat['p50']} µs, p90 {lat['p90']} µs, "
          f"p99 {lat['p99']} µs, max {lat['max']} µs")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
