"""How much a subscriber's link can take, from the RTCP it sends back (no probing packets).

Loss in its receiver reports and a falling REMB below what we send mean congestion: the budget
drops to what got through (loss-based, like GCC's: ``sent * (1 - loss/2)``). Clean
reports for ``hold_s`` let it climb again, 1.5x per step, until nothing limits it; a climb
that meets congestion at once doubles the hold (back-off up to ``max_hold_s``). Times are
passed in, so tests use a fake clock.
"""

from __future__ import annotations

__all__ = ["BandwidthEstimator"]

CONGESTED_LOSS = 0.10  # fraction lost above which the link is overloaded
CLEAN_LOSS = 0.02  # ... and below which it has room
REMB_CONGESTED = 0.7  # a REMB under 70% of what we send says the same ...
REMB_FALL = 0.95  # ... when it has just fallen (an overuse detected)
INCREASE = 1.5
UNLIMITED_AFTER = 8_000_000  # a budget above this limits nothing
MIN_BUDGET_BPS = 30_000


class BandwidthEstimator:
    """Budget (bit/s, None: not limited) of one subscriber link for one video stream."""

    __slots__ = (
        "_clean_since",
        "_hold_s",
        "_last_change",
        "_octets",
        "_octets_at",
        "base_hold_s",
        "budget_bps",
        "max_hold_s",
        "remb_bps",
        "sent_bps",
    )

    def __init__(self, *, hold_s: float = 4.0, max_hold_s: float = 32.0) -> None:
        self.base_hold_s = hold_s
        self.max_hold_s = max_hold_s
        self._hold_s = hold_s
        self.budget_bps: int | None = None
        self.sent_bps = 0
        self.remb_bps: int | None = None
        self._octets = 0
        self._octets_at: float | None = None
        self._clean_since: float | None = None
        self._last_change = -1e9  # when the budget last went up (a probe) or down

    def on_sent(self, octets: int, now: float) -> None:
        """Total payload bytes sent so far: the send rate between two calls."""
        if self._octets_at is not None and now - self._octets_at >= 0.2:
            self.sent_bps = int((octets - self._octets) * 8 / (now - self._octets_at))
            self._octets, self._octets_at = octets, now
        elif self._octets_at is None:
            self._octets, self._octets_at = octets, now

    def on_remb(self, bitrate: int, now: float) -> None:
        """A receiver estimate. Only a fall well below what we send counts: estimators
        (aiortc's, libwebrtc's) climb slowly from a low start and follow the incoming rate, so
        a low but rising REMB, or one just under a keyframe burst, is no congestion.
        """
        previous, self.remb_bps = self.remb_bps, bitrate
        falling = previous is not None and bitrate < previous * REMB_FALL
        if falling and self.sent_bps and bitrate < self.sent_bps * REMB_CONGESTED:
            self._congested(bitrate, now)

    def on_report(self, fraction_lost: int, now: float) -> None:
        """One receiver report block (``fraction_lost`` in 1/256) for our stream."""
        loss = fraction_lost / 256
        if loss > CONGESTED_LOSS:
            if self.sent_bps:
                self._congested(int(self.sent_bps * (1 - loss / 2)), now)
            return
        if loss >= CLEAN_LOSS:
            self._clean_since = None
            return
        if self._clean_since is None:
            self._clean_since = now
        if self.budget_bps is None:
            return
        if now - self._clean_since >= self._hold_s and now - self._last_change >= self._hold_s:
            self._probe(now)

    def _probe(self, now: float) -> None:
        assert self.budget_bps is not None
        raised = int(self.budget_bps * INCREASE)
        self.budget_bps = None if raised > UNLIMITED_AFTER else raised
        self._last_change = now
        # A long clean run since the last back-off earns the short hold again.
        self._hold_s = max(self.base_hold_s, self._hold_s / 2)

    def _congested(self, budget: int, now: float) -> None:
        if now - self._last_change < self._hold_s and self._clean_since is not None:
            # Congestion right after a climb: that rate does not fit, wait longer next time.
            self._hold_s = min(self.max_hold_s, self._hold_s * 2)
        budget = max(MIN_BUDGET_BPS, budget)
        if self.budget_bps is None or budget < self.budget_bps:
            self.budget_bps = budget
            self._last_change = now
        self._clean_since = None
