"""Per-stream receive statistics and NACK scheduling.

``ReceiveStats`` follows RFC 3550 appendix A (sequence tracking, loss,
interarrival jitter) to fill the report blocks the SFU sends publishers,
since bypassing aiortc's receiver silences its own reports.
``NackTracker`` decides which missing packets to NACK and when: a packet is
asked for once it is >= 2 packets or 20 ms late, then again after one RTT,
a few times at most.
"""

from __future__ import annotations

from sfu.rtcp import ReportBlock

__all__ = ["NackTracker", "ReceiveStats"]

# RFC 3550 A.1: jumps up to MAX_DROPOUT ahead are losses; up to MAX_MISORDER
# behind are late packets; anything else is a restart candidate.
MAX_DROPOUT = 3000
MAX_MISORDER = 100

_LOST_MIN = -0x800000
_LOST_MAX = 0x7FFFFF


class ReceiveStats:
    """RFC 3550 reception statistics of one incoming RTP stream."""

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_expected_prior",
        "_jitter",
        "_last_arrival",
        "_last_ts",
        "_received_prior",
        "clock_rate",
        "highest_seq_ext",
        "packets_received",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.packets_received = 0
        # Extended highest sequence number (cycles * 65536 + max seq); -1 until
        # the first packet.
        self.highest_seq_ext = -1
        self._base_seq = 0
        self._bad_seq = -1
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0  # timestamp units, RFC 3550 A.8
        self._last_arrival = 0.0
        self._last_ts = 0

    def _restart(self, seq: int, rtp_ts: int, arrival: float) -> None:
        self.highest_seq_ext = seq
        self.packets_received = 1
        self._base_seq = seq
        self._bad_seq = -1
        self._expected_prior = 0
        self._received_prior = 0
        self._last_arrival = arrival
        self._last_ts = rtp_ts

    def update(self, seq: int, rtp_ts: int, arrival: float) -> None:
        """Account one received packet (``arrival`` in seconds, monotonic)."""
        seq &= 0xFFFF
        highest = self.highest_seq_ext
        if highest < 0:
            self._restart(seq, rtp_ts, arrival)
            return
        udelta = (seq - highest) & 0xFFFF
        if udelta == 0:
            self.packets_received += 1  # duplicate: RFC 3550 counts it
            return
        if udelta < MAX_DROPOUT:
            # In order, possibly with a gap (and possibly wrapping).
            self.highest_seq_ext = highest + udelta
            self.packets_received += 1
            # Jitter only from in-order packets (late ones, retransmissions,
            # would count their recovery delay as network jitter) and, like
            # libwebrtc, only across frames (packets of one frame share a
            # timestamp and their pacing is not network jitter).
            last_ts = self._last_ts
            if rtp_ts != last_ts:
                d = (arrival - self._last_arrival) * self.clock_rate - (
                    ((rtp_ts - last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                )
                if d < 0:
                    d = -d
                self._jitter += (d - self._jitter) * 0.0625
            self._last_arrival = arrival
            self._last_ts = rtp_ts
        elif udelta <= 0x10000 - MAX_MISORDER:
            # A big jump: the sender restarted if the next packet follows it.
            if seq == self._bad_seq:
                self._restart(seq, rtp_ts, arrival)
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
        else:
            self.packets_received += 1  # late or reordered

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate, in RTP timestamp units."""
        return self._jitter

    @property
    def cumulative_lost(self) -> int:
        if self.highest_seq_ext < 0:
            return 0
        expected = self.highest_seq_ext - self._base_seq + 1
        return max(_LOST_MIN, min(_LOST_MAX, expected - self.packets_received))

    def report_block(self, ssrc: int, lsr: int, dlsr: int) -> ReportBlock:
        """Report block for this stream; also starts the next loss interval."""
        if self.highest_seq_ext < 0:
            return ReportBlock(ssrc, 0, 0, 0, 0, lsr, dlsr)
        expected = self.highest_seq_ext - self._base_seq + 1
        expected_interval = expected - self._expected_prior
        received_interval = self.packets_received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.packets_received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        return ReportBlock(
            ssrc,
            fraction,
            self.cumulative_lost,
            self.highest_seq_ext & 0xFFFFFFFF,
            int(self._jitter),
            lsr,
            dlsr,
        )


# A packet is NACKed once it is this late, or this many packets behind.
NACK_DELAY = 0.020
NACK_REORDER = 2
# A jump this large resets the tracker instead of NACKing every packet.
MAX_NACK_JUMP = 512
# Never track more than this many missing packets.
MAX_MISSING = 2 * MAX_NACK_JUMP


class NackTracker:
    """Which missing packets of one stream to NACK, and when.

    Feed every received sequence number to ``on_packet``; call ``due`` from
    a timer and put what it returns in one NACK.  Times are seconds on a
    monotonic clock, passed in so tests can fake them.
    """

    __slots__ = ("_bad_seq", "_highest", "_missing", "max_age_s", "max_retries", "rtt")

    def __init__(self, max_age_s: float = 1.0, max_retries: int = 3) -> None:
        self.max_age_s = max_age_s
        self.max_retries = max_retries
        # Round-trip time in seconds, when known: the interval between retries.
        self.rtt: float | None = None
        self._highest = -1  # unwrapped highest sequence number, -1 before any
        self._bad_seq = -1
        # unwrapped seq -> [first missed at, last NACKed at, NACKs sent];
        # insertion order is sequence order, oldest first.
        self._missing: dict[int, list[float]] = {}

    def reset(self) -> None:
        self._highest = -1
        self._bad_seq = -1
        self._missing.clear()

    def on_packet(self, seq: int, now: float) -> bool:
        """Record a received packet; True if it revealed a new gap."""
        seq &= 0xFFFF
        highest = self._highest
        if highest < 0:
            self._highest = seq
            return False
        d = ((seq - highest + 0x8000) & 0xFFFF) - 0x8000
        if d > 0:
            if d > MAX_NACK_JUMP:
                # A huge gap: NACKing it all would only add load; restart.
                self._missing.clear()
                self._highest = highest + d
                return False
            self._highest = highest + d
            if d == 1:
                return False
            missing = self._missing
            for ext in range(highest + 1, highest + d):
                missing[ext] = [now, 0.0, 0]
            while len(missing) > MAX_MISSING:
                del missing[next(iter(missing))]
            return True
        if d < -MAX_NACK_JUMP:
            # Far behind: a stray old packet, or the sender restarted lower
            # (then the next packet follows this one).
            if seq == self._bad_seq:
                self._missing.clear()
                self._highest = seq
                self._bad_seq = -1
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
            return False
        if d < 0 and self._missing:
            self._missing.pop(highest + d, None)  # recovered or reordered
        return False

    def due(self, now: float) -> list[int]:
        """Sequence numbers to NACK now (in order); marks them as NACKed."""
        missing = self._missing
        if not missing:
            return []
        out: list[int] = []
        stale: list[int] = []
        highest = self._highest
        rtt = self.rtt
        interval = rtt if rtt is not None and rtt > 0 else NACK_DELAY
        max_age = self.max_age_s
        max_retries = self.max_retries
        for ext, entry in missing.items():
            first, last, sent = entry
            if now - first >= max_age or sent >= max_retries:
                stale.append(ext)
                continue
            if sent:
                if now - last < interval:
                    continue
            elif now - first < NACK_DELAY and highest - ext < NACK_REORDER:
                continue  # maybe just reordered: wait a little
            entry[1] = now
            entry[2] = sent + 1
            out.append(ext & 0xFFFF)
        for ext in stale:
            del missing[ext]
        return out

    def pending(self) -> bool:
        """True while some missing packet is still tracked."""
        return bool(self._missing)
