"""``python -m bench micro``: micro-benchmarks of the forwarding hot path (µs per operation).

What each row times, with the real code of ``sfu/`` (so a change's cost shows here before a
full run):

* header rewrite + SRTP protect: ``FastSrtp.protect_rewritten`` on a real libsrtp session
  (AES-CM-SHA1-80 and AES-GCM), a 1200-byte packet;
* SRTP protect alone and a protect → unprotect round trip (``FastSrtp``, fresh sequence
  numbers so the receiver's replay check passes), and pylibsrtp's ``Session.protect``
  for reference;
* the fan-out loop: ``Producer.on_rtp`` with N forwarding consumers over a fake transport
  (Python only), and over a real one (rewrite + protect + ``sendto`` on loopback per
  consumer), per incoming packet and per consumer;
* packet cache put / get (``sfu.packet_cache``), ``translate_extensions`` (``sfu.rtp``);
* one ``sendto`` of 1200 bytes on loopback, unconnected and connected.

Timings are the best of three repeats of a loop sized to ``seconds``; loopback traffic
only (a socket of this process sends to another of its own, drained as it goes).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pylibsrtp

from sfu import aiortc_bridge as bridge
from sfu.codec import Codec
from sfu.consumer import Consumer, ConsumerState
from sfu.layers import Layer
from sfu.packet_cache import PacketCache
from sfu.producer import Producer
from sfu.rtp import translate_extensions

__all__ = ["MicroRow", "micro_markdown", "run_micro"]

PACKET_BYTES = 1200
_REPEATS = 3


@dataclass(frozen=True, slots=True)
class MicroRow:
    name: str
    us_per_op: float
    per: str = "op"
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "us_per_op": self.us_per_op, "per": self.per,
                "note": self.note}


def time_per_call(func: Callable[[], object], seconds: float) -> float:
    """Best-of-three µs per call of ``func``, each repeat about ``seconds / 3`` long."""
    calls = 1
    while True:  # size the loop: at most ~25 doublings
        started = time.perf_counter()
        for _ in range(calls):
            func()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds / (_REPEATS * 4) or calls >= 1 << 24:
            break
        calls *= 2
    budget = max(1, int(calls * (seconds / _REPEATS) / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(_REPEATS):
        started = time.perf_counter()
        for _ in range(budget):
            func()
        best = min(best, (time.perf_counter() - started) / budget)
    return best * 1e6


def rtp_packet(payload_type: int = 96, seq: int = 1, ts: int = 1000, ssrc: int = 0x1234,
               size: int = PACKET_BYTES, extensions: bytes = b"") -> bytes:
    """A plain RTP packet with a VP8 keyframe-start payload (optionally one-byte extensions)."""
    first = 0x90 if extensions else 0x80
    header = struct.pack("!BBHII", first, payload_type, seq, ts, ssrc)
    if extensions:
        padded = extensions + b"\x00" * (-len(extensions) % 4)
        header += struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded
    # VP8 descriptor (S=1, partition 0) + a keyframe's first payload byte (P bit clear).
    payload = bytes([0x10, 0x00]) + os.urandom(max(0, size - len(header) - 2))
    return header + payload


def srtp_pair(profile: int) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key_len = 16 + (12 if profile == pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM else 14)
    key = os.urandom(key_len)

    def session(ssrc_type: int) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return pylibsrtp.Session(policy=policy)

    return (session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
            session(pylibsrtp.Policy.SSRC_ANY_INBOUND))


class _FeedbackStub:
    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        pass

    def nack_pending(self, producer: Producer) -> None:
        pass

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        pass


class _FakeTransport:
    """Counts; what the Python part of forwarding costs without SRTP and the kernel."""

    def __init__(self) -> None:
        self.sent = 0

    def send_rtp(self, packet: bytes, second_byte: int, seq: int, ts: int, ssrc: int) -> bool:
        self.sent += 1
        return True


class _LoopbackTransport:
    """Rewrite + SRTP protect + sendto on loopback, as ``MediaTransport.send_rtp`` does."""

    def __init__(self, srtp: bridge.FastSrtp, sock: socket.socket, remote: tuple[str, int]):
        self._srtp = srtp
        self._sock = sock
        self._remote = remote

    def send_rtp(self, packet: bytes, second_byte: int, seq: int, ts: int, ssrc: int) -> bool:
        data = self._srtp.protect_rewritten(packet, second_byte, seq, ts, ssrc)
        if data is None:
            return False
        self._sock.sendto(data, self._remote)
        return True


def _producer(consumers: int, transport_for: Callable[[int], Any]) -> Producer:
    codec = Codec(kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96)
    producer = Producer(
        track_id="t", participant_id="p", kind="video", mid="0", codec=codec, ssrc=0x1234,
        rtx_ssrc=None, extension_map=list(range(256)), feedback=_FeedbackStub(), now=0.0,
    )
    for i in range(consumers):
        consumer = Consumer(producer, subscriber_id=f"s{i}", transport=transport_for(i),
                            ssrc=0x5000 + i, rtx_ssrc=0x6000 + i, cname="bench")
        consumer.payload_type = 96
        consumer.state = ConsumerState.WAITING_KEYFRAME  # the first packet is a keyframe
        producer.add_consumer(consumer)
    return producer


def _fanout_row(n: int, seconds: float, transport_for: Callable[[int], Any], label: str,
                drain: Callable[[], None] | None = None) -> list[MicroRow]:
    producer = _producer(n, transport_for)
    packets = [rtp_packet(seq=s) for s in range(256)]
    state = {"i": 0}

    def one() -> None:
        i = state["i"] = (state["i"] + 1) & 0xFFFF
        packet = packets[i & 0xFF]
        producer.on_rtp(packet[:2] + struct.pack("!H", i) + packet[4:], 0.0)
        if drain is not None and i & 0x3F == 0:
            drain()

    us = time_per_call(one, seconds)
    return [
        MicroRow(f"fan-out loop, {label}, N={n}", us, "incoming packet"),
        MicroRow(f"fan-out loop, {label}, N={n}", us / n, "forwarded packet"),
    ]


def _srtp_rows(name: str, fast_tx: bridge.FastSrtp, fast_rx: bridge.FastSrtp,
               tx: pylibsrtp.Session, packet: bytes, protected: bytes,
               seconds: float) -> list[MicroRow]:
    def rewrite() -> None:
        fast_tx.protect_rewritten(packet, 0x80 | 96, 7, 9, 11)

    def protect() -> None:
        fast_tx.protect(packet)

    state = {"seq": 0}
    probe = fast_tx.protect_rewritten(packet, 0x80 | 96, 50_000, 9, 11)
    if probe is None or fast_rx.unprotect(probe) is None:
        raise RuntimeError("SRTP round trip failed")

    def round_trip() -> None:
        seq = state["seq"] = (state["seq"] + 1) & 0xFFFF  # fresh: passes the replay check
        data = fast_tx.protect_rewritten(packet, 0x80 | 96, seq, 9, 11)
        assert data is not None
        fast_rx.unprotect(data)

    def session_protect() -> None:
        tx.protect(packet)

    return [
        MicroRow(f"header rewrite + SRTP protect ({name})", time_per_call(rewrite, seconds),
                 note="FastSrtp.protect_rewritten, 1200 B"),
        MicroRow(f"SRTP protect ({name})", time_per_call(protect, seconds),
                 note="FastSrtp.protect"),
        MicroRow(f"rewrite + protect, then unprotect ({name})",
                 time_per_call(round_trip, seconds),
                 note="round trip; unprotect = this - the first row"),
        MicroRow(f"pylibsrtp Session.protect ({name})", time_per_call(session_protect, seconds),
                 note="for reference"),
    ]


def run_micro(seconds: float = 0.3, consumers: Sequence[int] = (1, 20, 40)) -> list[MicroRow]:
    rows: list[MicroRow] = []
    packet = rtp_packet()
    for name, profile in (("AES-CM-SHA1-80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
                          ("AES-GCM-128", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)):
        tx, rx = srtp_pair(profile)
        fast_tx, fast_rx = bridge.FastSrtp(tx), bridge.FastSrtp(rx)
        protected = fast_tx.protect(packet)
        assert protected is not None and fast_rx.unprotect(protected) == packet
        rows += _srtp_rows(name, fast_tx, fast_rx, tx, packet, protected, seconds)

    cache = PacketCache(1024)
    seqs = {"put": 0, "get": 0}

    def put() -> None:
        seqs["put"] = (seqs["put"] + 1) & 0xFFFF
        cache.put(seqs["put"], packet)

    def get() -> None:
        seqs["get"] = (seqs["get"] + 1) & 0xFFFF
        cache.get(seqs["get"])

    rows.append(MicroRow("packet cache put", time_per_call(put, seconds)))
    rows.append(MicroRow("packet cache get", time_per_call(get, seconds)))

    ext_packet = rtp_packet(extensions=bytes([0x10, 0x31, 0x22, 0x01, 0x02, 0x03]))
    identity = list(range(256))
    renumber = list(range(256))
    renumber[1], renumber[2] = 3, 4
    rows.append(MicroRow("translate_extensions (ids unchanged)",
                         time_per_call(lambda: translate_extensions(ext_packet, identity),
                                       seconds)))
    rows.append(MicroRow("translate_extensions (two ids renumbered)",
                         time_per_call(lambda: translate_extensions(ext_packet, renumber),
                                       seconds)))

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        receiver.setblocking(False)
        remote = receiver.getsockname()
        connected.connect(remote)
        data = b"\x80" * PACKET_BYTES

        def drain() -> None:
            try:
                for _ in range(100_000):
                    receiver.recv(2048)
            except BlockingIOError:
                pass

        counter = {"n": 0}

        def sendto() -> None:
            sender.sendto(data, remote)
            counter["n"] += 1
            if counter["n"] & 0x3F == 0:
                drain()

        def send() -> None:
            connected.send(data)
            counter["n"] += 1
            if counter["n"] & 0x3F == 0:
                drain()

        rows.append(MicroRow("sendto 1200 B on loopback", time_per_call(sendto, seconds),
                             note="unconnected socket (+ draining the receiver)"))
        rows.append(MicroRow("send 1200 B on loopback", time_per_call(send, seconds),
                             note="connected socket (+ draining the receiver)"))
        drain()

        tx, _rx = srtp_pair(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        fast = bridge.FastSrtp(tx)
        for n in consumers:
            rows += _fanout_row(n, seconds, lambda i: _FakeTransport(), "fake transport")
        for n in consumers:
            rows += _fanout_row(
                n, seconds, lambda i: _LoopbackTransport(fast, sender, remote),
                "rewrite + protect + sendto", drain,
            )
        drain()
    finally:
        for sock in (receiver, sender, connected):
            sock.close()
    return rows


def micro_markdown(rows: Sequence[MicroRow], command: str) -> str:
    lines = [
        "## micro: hot-path operations",
        "",
        f"- command: `{command}`",
        "",
        "| operation | µs | per | note |",
        "|---|---:|---|---|",
        *(f"| {r.name} | {r.us_per_op:.2f} | {r.per} | {r.note} |" for r in rows),
        "",
    ]
    return "\n".join(lines)
