"""Pipe: one room's producers between two workers, as raw RTP over loopback UDP.

Like mediasoup's ``pipeToRouter``: worker A attaches a :class:`PipeSink` to a producer whose
track has subscribers on worker B; the sink sends every forwarded packet, unchanged and
unencrypted (loopback only), on A's :class:`PipeEndpoint` socket. B's endpoint routes it by
SSRC to a :class:`PipedProducer` — a :class:`~sfu.producer.Producer` fed from the socket
instead of a publisher transport — so B's subscribers consume it as any producer (keyframe
replay, NACK cache, sender reports). RTCP flows back over the same socket pair: B's PLI
reaches A's producer's throttled keyframe request, B's NACKs are served from A's packet
cache, and A sends B the publisher's clock (SR) for lip sync.

Hot path (``PipeSink.forward`` and ``PipeEndpoint.datagram_received``): synchronous, no
await, no log, no allocation beyond what the producer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sfu.codec import Codec
from sfu.producer import KEYFRAME_REQUEST_INTERVAL_S, Producer
from sfu.rtcp import Nack, Pli, SenderReport, build_nack, build_pli, build_sr, parse_rtcp

if TYPE_CHECKING:
    from sfu.consumer import Consumer

__all__ = [
    "PIPE_SSRC",
    "PipeEndpoint",
    "PipeSink",
    "PipedProducer",
    "codec_from_wire",
    "codec_to_wire",
]

PIPE_SSRC = 0x50495045  # "PIPE": the sender SSRC of our own RTCP on a pipe
PERIODIC_S = 1.0  # sender clocks across, overdue keyframes re-asked
NACK_INTERVAL_S = 0.02
SOCKET_BUFFER = 4 * 1024 * 1024  # a 1 → N burst arrives faster than one loop turn
_SSRC = struct.Struct("!I")
IDENTITY_EXTENSIONS = tuple(range(256))  # the sender already translated to egress ids


def codec_to_wire(codec: Codec) -> dict[str, Any]:
    return {
        "kind": codec.kind,
        "name": codec.name,
        "clock_rate": codec.clock_rate,
        "channels": codec.channels,
        "payload_type": codec.payload_type,
        "rtx_payload_type": codec.rtx_payload_type,
        "parameters": dict(codec.parameters),
    }


def codec_from_wire(data: dict[str, Any]) -> Codec:
    return Codec(
        kind=str(data["kind"]),
        name=str(data["name"]),
        clock_rate=int(data["clock_rate"]),
        channels=None if data.get("channels") is None else int(data["channels"]),
        payload_type=int(data["payload_type"]),
        rtx_payload_type=None
        if data.get("rtx_payload_type") is None
        else int(data["rtx_payload_type"]),
        parameters=dict(data.get("parameters") or {}),
    )


class PipeSink:
    """A local producer's packets to the other shard: ``forward`` is a consumer's."""

    __slots__ = ("_send", "dropped", "packets", "producer")

    def __init__(self, producer: Producer, send: Callable[[bytes], Any]) -> None:
        self.producer = producer
        self._send = send
        self.packets = 0
        self.dropped = 0

    def forward(self, packet: bytes, seq: int, ts: int, keyframe: bool) -> None:
        try:
            self._send(packet)
        except OSError:  # socket buffer full: loopback loss, B may NACK it
            self.dropped += 1
            return
        self.packets += 1


class PipedProducer(Producer):
    """The other shard's producer, fed by the pipe; says when it gains/loses consumers."""

    def __init__(self, *, on_demand: Callable[[PipedProducer, bool], None], **kw: Any) -> None:
        super().__init__(**kw)
        self._on_demand = on_demand

    def add_consumer(self, consumer: Consumer) -> None:
        first = not self.consumers
        super().add_consumer(consumer)
        if first:
            self._on_demand(self, True)

    def remove_consumer(self, consumer: Consumer) -> None:
        had = bool(self.consumers)
        super().remove_consumer(consumer)
        if had and not self.consumers and not self.closed:
            self._on_demand(self, False)


class _PipeFeedback:
    """ProducerFeedback of a piped producer: PLI and NACK go back through the pipe."""

    def __init__(self, endpoint: PipeEndpoint) -> None:
        self._endpoint = endpoint
        self._nack_timer: asyncio.TimerHandle | None = None

    def request_keyframe(self, producer: Producer) -> None:
        if producer.ssrc is not None:
            self._endpoint.send_rtcp(build_pli(PIPE_SSRC, producer.ssrc))

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        def due() -> None:
            producer.keyframe_retry_due(time.monotonic())

        asyncio.get_running_loop().call_later(delay_s, due)

    def nack_pending(self, producer: Producer) -> None:
        self._arm()

    def _arm(self) -> None:
        """One timer for every piped producer, running only while packets are missing."""
        if self._nack_timer is None and not self._endpoint.closed:
            self._nack_timer = asyncio.get_running_loop().call_later(
                NACK_INTERVAL_S, self._send_nacks
            )

    def _send_nacks(self) -> None:
        self._nack_timer = None
        now = time.monotonic()
        pending = False
        for producer in list(self._endpoint.piped.values()):
            seqs = producer.nacks.due(now)
            if seqs and producer.ssrc is not None:
                self._endpoint.send_rtcp(build_nack(PIPE_SSRC, producer.ssrc, seqs))
            pending = pending or producer.nacks.pending()
        if pending:
            self._arm()

    def cancel(self) -> None:
        if self._nack_timer is not None:
            self._nack_timer.cancel()
            self._nack_timer = None


class PipeEndpoint(asyncio.DatagramProtocol):
    """One UDP socket of a shard link: our producers out, the other shard's in.

    The socket is ``connect()``ed to the other shard's socket once its port is known, so
    the kernel drops datagrams from anyone else and ``send`` needs no address.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.peer: tuple[str, int] | None = None
        self.piped: dict[int, PipedProducer] = {}  # by SSRC: what the other side sends us
        self.sinks: dict[str, PipeSink] = {}  # by track id: what we send
        self._local_by_ssrc: dict[int, Producer] = {}  # our piped-out producers (RTCP in)
        self.feedback = _PipeFeedback(self)
        self.closed = False
        self.rtp_in = 0
        self.rtcp_in = 0
        self.dropped_unknown = 0
        self.keyframe_requests_in = 0
        self.nacked_in = 0
        self.resent = 0
        self._sock: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._keyframe_retries: set[str] = set()

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> int:
        """Bind the socket (an ephemeral loopback port); returns the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((self.host, 0))
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        self._task = loop.create_task(self._periodic())
        return self.port

    def connect(self, port: int) -> None:
        """The other shard's port: from now on we talk to it only."""
        assert self._sock is not None
        self.peer = (self.host, port)
        self._sock.connect(self.peer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sink in list(self.sinks.values()):
            self.stop_sending(sink.producer)
        for producer in list(self.piped.values()):
            producer.close()
        self.piped.clear()
        self.feedback.cancel()
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()

    # --- what goes out ----------------------------------------------------------------

    def start_sending(self, producer: Producer) -> PipeSink | None:
        """Pipe ``producer`` to the other shard (it has subscribers for it there)."""
        if self.closed or self._sock is None or self.peer is None:
            return None
        sink = self.sinks.get(producer.id)
        if sink is not None:
            return sink
        sink = PipeSink(producer, self._sock.send)
        self.sinks[producer.id] = sink
        if producer.ssrc is not None:
            self._local_by_ssrc[producer.ssrc] = producer
        producer.pipes.append(sink)
        return sink

    def stop_sending(self, producer: Producer) -> None:
        sink = self.sinks.pop(producer.id, None)
        if sink is None:
            return
        if producer.ssrc is not None:
            self._local_by_ssrc.pop(producer.ssrc, None)
        if sink in producer.pipes:
            producer.pipes.remove(sink)

    def send_rtcp(self, packet: bytes) -> None:
        if self._sock is None or self.peer is None or self.closed:
            return
        with contextlib.suppress(OSError):  # buffer full: the next request/report follows
            self._sock.send(packet)

    # --- what comes in ----------------------------------------------------------------

    def add_piped(self, producer: PipedProducer) -> bool:
        """Route the other shard's SSRC to ``producer``; False if the SSRC is taken."""
        if producer.ssrc is None or producer.ssrc in self.piped:
            return False
        self.piped[producer.ssrc] = producer
        return True

    def remove_piped(self, producer: PipedProducer) -> None:
        if producer.ssrc is not None and self.piped.get(producer.ssrc) is producer:
            del self.piped[producer.ssrc]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12 or data[0] & 0xC0 != 0x80:
            self.dropped_unknown += 1
            return
        if 192 <= data[1] <= 223:
            self.rtcp_in += 1
            self._on_rtcp(data)
            return
        producer = self.piped.get(_SSRC.unpack_from(data, 8)[0])
        if producer is None:
            self.dropped_unknown += 1
            return
        self.rtp_in += 1
        producer.on_rtp(data, time.monotonic())

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the other shard restarts: nothing to do

    def _on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for message in parse_rtcp(data):
            if isinstance(message, Pli):
                local = self._local_by_ssrc.get(message.media_ssrc)
                if local is not None:
                    self.keyframe_requests_in += 1
                    if not local.request_keyframe(now):
                        self._retry_keyframe(local, now)
            elif isinstance(message, Nack):
                self._resend(message)
            elif isinstance(message, SenderReport):
                piped = self.piped.get(message.ssrc)
                if piped is not None:
                    piped.on_sender_report(message.ntp, message.rtp_ts, now)

    def _retry_keyframe(self, producer: Producer, asked_at: float) -> None:
        """A PLI inside the producer's 500 ms window: ask again when it ends, unless a
        keyframe went through the pipe meanwhile (throttled as the producer's own)."""
        if producer.id in self._keyframe_retries:
            return
        wait = max(
            0.0, KEYFRAME_REQUEST_INTERVAL_S - (asked_at - producer.last_keyframe_request_at)
        )

        def due() -> None:
            self._keyframe_retries.discard(producer.id)
            live = not self.closed and producer.id in self.sinks and not producer.closed
            if live and producer.last_keyframe_at < asked_at:
                producer.request_keyframe(time.monotonic())

        self._keyframe_retries.add(producer.id)
        asyncio.get_running_loop().call_later(wait + 0.001, due)

    def _resend(self, nack: Nack) -> None:
        local = self._local_by_ssrc.get(nack.media_ssrc)
        sink = self.sinks.get(local.id) if local is not None else None
        if local is None or sink is None:
            return
        self.nacked_in += len(nack.seqs)
        for seq in nack.seqs:
            packet = local.cache.get(seq & 0xFFFF)
            if packet is not None:
                sink.forward(packet, seq, 0, False)
                self.resent += 1

    # --- timers -----------------------------------------------------------------------

    async def _periodic(self) -> None:
        while not self.closed:
            await asyncio.sleep(PERIODIC_S)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        """Send the publisher's clock of what we pipe; re-ask overdue keyframes."""
        for sink in list(self.sinks.values()):
            producer = sink.producer
            clock = producer.sender_clock
            if clock is None or producer.ssrc is None:
                continue
            elapsed = now - clock.received_at
            ntp = (clock.ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
            rtp_ts = (clock.rtp_ts + int(elapsed * producer.codec.clock_rate)) & 0xFFFFFFFF
            self.send_rtcp(build_sr(producer.ssrc, ntp, rtp_ts, sink.packets & 0xFFFFFFFF, 0))
        for piped in list(self.piped.values()):
            piped.keyframe_overdue(now)

    def make_piped(
        self,
        *,
        track_id: str,
        participant_id: str,
        kind: str,
        mid: str,
        codec: Codec,
        ssrc: int,
        audio_level_id: int,
        muted: bool,
        on_demand: Callable[[PipedProducer, bool], None],
    ) -> PipedProducer | None:
        """A producer for the other shard's track, routed here by its SSRC."""
        now = time.monotonic()
        producer = PipedProducer(
            on_demand=on_demand,
            track_id=track_id,
            participant_id=participant_id,
            kind=kind,
            mid=mid,
            codec=codec,
            ssrc=ssrc,
            rtx_ssrc=None,
            extension_map=IDENTITY_EXTENSIONS,
            feedback=self.feedback,
            now=now,
            audio_level_id=audio_level_id,
        )
        producer.muted = muted
        if not self.add_piped(producer):
            return None
        return producer
