"""Pipe: one room's producers between two workers, as raw RTP over loopback UDP.

Like mediasoup's ``pipeToRouter``: worker A attaches a :class:`PipeSink` to a producer whose
track has subscribers on worker B; the sink sends every forwarded packet, unchanged and
unencrypted (loopback only), on A's :class:`PipeEndpoint` socket. B's endpoint routes it by
SSRC to a :class:`PipedProducer` — a :class:`~sfu.producer.Producer` fed from the socket
instead of a publisher transport, with the same layers (simulcast: one SSRC each) — so B's
subscribers consume it as any producer (keyframe replay, NACK cache, sender reports, layer
choice). RTCP flows back over the same socket pair: B's PLI
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
from sfu.layers import Layer
from sfu.producer import KEYFRAME_REQUEST_INTERVAL_S, Producer
from sfu.rtcp import Nack, Pli, SenderReport, build_nack, build_pli, build_sr, parse_rtcp

if TYPE_CHECKING:
    from sfu.consumer import Consumer
    from sfu.pipe_crypto import PipeCrypto

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
    """A local producer's packets to the other shard: ``forward`` is a consumer's.

    The first packet of each layer announces the layer's SSRC (a simulcast layer's SSRC is
    learnt from its first packet, possibly after the track was announced).
    """

    __slots__ = ("_announce", "_send", "announced", "dropped", "packets", "producer")

    def __init__(
        self,
        producer: Producer,
        send: Callable[[bytes], Any],
        announce: Callable[[Producer, int], None],
    ) -> None:
        self.producer = producer
        self._send = send
        self._announce = announce
        self.announced = [False] * len(producer.layers)
        self.packets = 0
        self.dropped = 0

    def forward(self, packet: bytes, seq: int, ts: int, keyframe: bool, index: int = 0) -> None:
        if not self.announced[index]:
            self.announced[index] = True
            self._announce(self.producer, index)
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

    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        if layer.ssrc is not None:
            self._endpoint.send_rtcp(build_pli(PIPE_SSRC, layer.ssrc))

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
        for producer in list(self._endpoint.producers):
            for layer in producer.layers:
                seqs = layer.nacks.due(now)
                if seqs and layer.ssrc is not None:
                    self._endpoint.send_rtcp(build_nack(PIPE_SSRC, layer.ssrc, seqs))
                pending = pending or layer.nacks.pending()
        if pending:
            self._arm()

    def cancel(self) -> None:
        if self._nack_timer is not None:
            self._nack_timer.cancel()
            self._nack_timer = None


class PipeEndpoint(asyncio.DatagramProtocol):
    """One UDP socket of a shard link: our producers out, the other shard's in.

    The socket is ``connect()``ed to the other shard's socket once its port is known, so
    the kernel drops datagrams from anyone else and ``send`` needs no address. With
    ``crypto`` (a pipe between nodes) every datagram is SRTP: protected on the way out,
    authenticated and decrypted before anything reads it on the way in.
    """

    def __init__(self, host: str = "127.0.0.1", crypto: PipeCrypto | None = None) -> None:
        self.host = host
        self.crypto = crypto
        self.port = 0
        self.peer: tuple[str, int] | None = None
        self.routes: dict[int, tuple[PipedProducer, Layer]] = {}  # by SSRC: what comes in
        self.producers: set[PipedProducer] = set()  # the other side's tracks here
        self.sinks: dict[str, PipeSink] = {}  # by track id: what we send
        self._local_by_ssrc: dict[int, tuple[Producer, int]] = {}  # our layers (RTCP in)
        self.on_layer: Callable[[Producer, int], None] | None = None  # SSRC to announce
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
        self._keyframe_retries: set[tuple[str, int]] = set()

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> int:
        """Bind the socket (an ephemeral loopback port); returns the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET  # --pipe-host may be v6
        sock = socket.socket(family, socket.SOCK_DGRAM)
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

    def connect(self, port: int, host: str | None = None) -> None:
        """The other shard's port (and host, between nodes): from now on we talk to it only."""
        assert self._sock is not None
        self.peer = (host or self.host, port)
        self._sock.connect(self.peer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sink in list(self.sinks.values()):
            self.stop_sending(sink.producer)
        for producer in list(self.producers):
            producer.close()
        self.producers.clear()
        self.routes.clear()
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
        sink = PipeSink(producer, self._sender(), self._announce)
        self.sinks[producer.id] = sink
        for layer in producer.layers:
            if layer.ssrc is not None:
                self._local_by_ssrc[layer.ssrc] = (producer, layer.index)
        producer.pipes.append(sink)
        return sink

    def _sender(self) -> Callable[[bytes], Any]:
        """Plain ``send`` on loopback; protect-then-send between nodes."""
        assert self._sock is not None
        send, crypto = self._sock.send, self.crypto
        if crypto is None:
            return send
        protect = crypto.protect

        def send_protected(packet: bytes) -> None:
            protected = protect(packet)
            if protected is not None:
                send(protected)

        return send_protected

    def _announce(self, producer: Producer, index: int) -> None:
        """A layer's first piped packet: its SSRC routes RTCP here, and the other side
        learns it (a simulcast layer's SSRC may be new since the track was announced)."""
        ssrc = producer.layers[index].ssrc
        if ssrc is None:
            return
        self._local_by_ssrc[ssrc] = (producer, index)
        if self.on_layer is not None:
            self.on_layer(producer, index)

    def stop_sending(self, producer: Producer) -> None:
        sink = self.sinks.pop(producer.id, None)
        if sink is None:
            return
        for layer in producer.layers:
            if layer.ssrc is not None:
                self._local_by_ssrc.pop(layer.ssrc, None)
        if sink in producer.pipes:
            producer.pipes.remove(sink)

    def send_rtcp(self, packet: bytes) -> None:
        if self._sock is None or self.peer is None or self.closed:
            return
        if self.crypto is not None:
            protected = self.crypto.protect_rtcp(packet)
            if protected is None:
                return
            packet = protected
        with contextlib.suppress(OSError):  # buffer full: the next request/report follows
            self._sock.send(packet)

    # --- what comes in ----------------------------------------------------------------

    def learn_layer(self, producer: PipedProducer, index: int, ssrc: int) -> bool:
        """Route ``ssrc`` to layer ``index`` of ``producer``; False if taken or invalid."""
        if producer not in self.producers or not 0 <= index < len(producer.layers):
            return False
        layer = producer.layers[index]
        if self.routes.get(ssrc) == (producer, layer):
            return True
        if ssrc in self.routes:
            return False
        if layer.ssrc is not None and self.routes.get(layer.ssrc) == (producer, layer):
            del self.routes[layer.ssrc]
        layer.ssrc = ssrc
        self.routes[ssrc] = (producer, layer)
        return True

    def remove_piped(self, producer: PipedProducer) -> None:
        self.producers.discard(producer)
        for layer in producer.layers:
            if layer.ssrc is not None and self.routes.get(layer.ssrc) == (producer, layer):
                del self.routes[layer.ssrc]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12 or data[0] & 0xC0 != 0x80:
            self.dropped_unknown += 1
            return
        crypto = self.crypto
        if 192 <= data[1] <= 223:
            if crypto is not None:
                plain = crypto.unprotect_rtcp(data)
                if plain is None:
                    return
                data = plain
            self.rtcp_in += 1
            self._on_rtcp(data)
            return
        route = self.routes.get(_SSRC.unpack_from(data, 8)[0])
        if route is None:
            self.dropped_unknown += 1
            return
        if crypto is not None:
            plain = crypto.unprotect(data)
            if plain is None:
                return
            data = plain
        self.rtp_in += 1
        route[0].on_rtp(data, time.monotonic(), route[1])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the other shard restarts: nothing to do

    def _on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for message in parse_rtcp(data):
            if isinstance(message, Pli):
                local = self._local_by_ssrc.get(message.media_ssrc)
                if local is not None:
                    self.keyframe_requests_in += 1
                    if not local[0].request_keyframe(now, local[1]):
                        self._retry_keyframe(local[0], local[1], now)
            elif isinstance(message, Nack):
                self._resend(message)
            elif isinstance(message, SenderReport):
                route = self.routes.get(message.ssrc)
                if route is not None:
                    route[0].on_sender_report(message.ntp, message.rtp_ts, now, route[1])

    def _retry_keyframe(self, producer: Producer, index: int, asked_at: float) -> None:
        """A PLI inside the layer's 500 ms window: ask again when it ends, unless a
        keyframe went through the pipe meanwhile (throttled as the producer's own)."""
        key = (producer.id, index)
        if key in self._keyframe_retries:
            return
        layer = producer.layers[index]
        since = asked_at - layer.last_keyframe_request_at
        wait = max(0.0, KEYFRAME_REQUEST_INTERVAL_S - since)

        def due() -> None:
            self._keyframe_retries.discard(key)
            live = not self.closed and producer.id in self.sinks and not producer.closed
            if live and layer.last_keyframe_at < asked_at:
                producer.request_keyframe(time.monotonic(), index)

        self._keyframe_retries.add(key)
        asyncio.get_running_loop().call_later(wait + 0.001, due)

    def _resend(self, nack: Nack) -> None:
        local = self._local_by_ssrc.get(nack.media_ssrc)
        sink = self.sinks.get(local[0].id) if local is not None else None
        if local is None or sink is None:
            return
        self.nacked_in += len(nack.seqs)
        cache = local[0].layers[local[1]].cache
        for seq in nack.seqs:
            packet = cache.get(seq & 0xFFFF)
            if packet is not None:
                sink.forward(packet, seq, 0, False, local[1])
                self.resent += 1

    # --- timers -----------------------------------------------------------------------

    async def _periodic(self) -> None:
        while not self.closed:
            await asyncio.sleep(PERIODIC_S)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        """Send the publisher's clock of what we pipe; re-ask overdue keyframes."""
        for sink in list(self.sinks.values()):
            rate = sink.producer.codec.clock_rate
            for layer in sink.producer.layers:
                clock = layer.sender_clock
                if clock is None or layer.ssrc is None:
                    continue
                elapsed = now - clock.received_at
                ntp = (clock.ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
                rtp_ts = (clock.rtp_ts + int(elapsed * rate)) & 0xFFFFFFFF
                self.send_rtcp(build_sr(layer.ssrc, ntp, rtp_ts, sink.packets & 0xFFFFFFFF, 0))
        for piped in list(self.producers):
            for layer in piped.layers:
                layer.measure(now)  # the bitrate figures B's layer choice reads
            piped.keyframe_overdue(now)

    def make_piped(
        self,
        *,
        track_id: str,
        participant_id: str,
        kind: str,
        mid: str,
        codec: Codec,
        ssrcs: list[int | None],
        audio_level_id: int,
        muted: bool,
        on_demand: Callable[[PipedProducer, bool], None],
        rids: list[str] | None = None,
        source: str | None = None,
        favour_resolution: bool = False,
    ) -> PipedProducer | None:
        """A producer for the other shard's track, its layers routed here by their SSRCs
        (``ssrcs`` lowest layer first; None: announced later); None if an SSRC is taken."""
        producer = PipedProducer(
            on_demand=on_demand,
            track_id=track_id,
            participant_id=participant_id,
            kind=kind,
            mid=mid,
            codec=codec,
            ssrc=None,
            rtx_ssrc=None,
            extension_map=IDENTITY_EXTENSIONS,
            feedback=self.feedback,
            now=time.monotonic(),
            audio_level_id=audio_level_id,
            rids=rids or (),
            source=source,
            favour_resolution=favour_resolution,
        )
        producer.muted = muted
        if len(ssrcs) != len(producer.layers) or any(
            s is not None and s in self.routes for s in ssrcs
        ):
            return None
        self.producers.add(producer)
        for index, ssrc in enumerate(ssrcs):
            if ssrc is not None:
                self.learn_layer(producer, index, ssrc)
        return producer
