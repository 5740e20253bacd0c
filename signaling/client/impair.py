"""Network impairment without a kernel: a seeded per-datagram policy (pure, no I/O).

This machine's kernel has no netem, so test and bench clients impair their own links:
:func:`sfu.aiortc_bridge.impair_datagrams` runs every datagram an aiortc peer sends or
receives (below SRTP: RTP, RTCP, STUN, DTLS alike, as a network would) through a
:class:`LinkModel`, which says drop it or deliver it after some delay.

``Impairment.parse("loss=5,delay=40,jitter=10,burst=3,rate=300,seed=7")``:

* ``loss`` — percent of datagrams lost. Independent (Bernoulli) unless ``burst`` is given.
* ``burst`` — mean length of a loss burst in datagrams (Gilbert-Elliott: a good state that
  loses nothing, a bad state that loses everything, leaving it with probability
  1/burst; the long-run loss stays ``loss``).
* ``delay`` / ``jitter`` — ms; each datagram is held ``delay`` ± a uniform draw within
  ``jitter`` (never below 0), so jitter larger than the gap between datagrams reorders
  them, as netem does.
* ``reorder`` — percent of datagrams held :data:`REORDER_HOLD_MS` longer than the others,
  so the ones after them overtake them.
* ``rate`` — kbit/s link: a drop-tail queue that serializes datagrams at this rate and
  drops any that would wait more than ``queue`` ms (default 200).
* ``seed`` — the random generator's seed: the same seed gives the same decisions.

Order per datagram: loss, then the rate queue, then delay, jitter and reordering.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import ClassVar

__all__ = ["REORDER_HOLD_MS", "Impairment", "LinkModel"]

REORDER_HOLD_MS = 20.0
_MAX_MS = 10_000.0


@dataclass(frozen=True, slots=True)
class Impairment:
    """What a link does to datagrams; see the module doc for each field."""

    loss: float = 0.0
    burst: float | None = None
    delay: float = 0.0
    jitter: float = 0.0
    reorder: float = 0.0
    rate: float | None = None
    queue: float = 200.0
    seed: int = 0

    _RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "loss": (0.0, 100.0),
        "burst": (1.0, 1000.0),
        "delay": (0.0, _MAX_MS),
        "jitter": (0.0, _MAX_MS),
        "reorder": (0.0, 100.0),
        "rate": (1.0, 10_000_000.0),
        "queue": (1.0, _MAX_MS),
    }

    def __post_init__(self) -> None:
        for name, (low, high) in self._RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"impairment {name}={value:g} is outside {low:g}..{high:g}")
        if self.burst is not None and self.loss >= 100.0:
            raise ValueError("bursty loss needs loss below 100")

    @classmethod
    def parse(cls, text: str) -> Impairment:
        """``key=value`` pairs separated by commas; ValueError naming what is wrong."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float | int] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(
                    f"impairment {part!r}: expected key=value with key one of "
                    f"{', '.join(sorted(known))}"
                )
            if key in values:
                raise ValueError(f"impairment {key} given twice")
            try:
                values[key] = int(raw) if key == "seed" else float(raw)
            except ValueError:
                raise ValueError(f"impairment {key}={raw!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def is_null(self) -> bool:
        return not (self.loss or self.delay or self.jitter or self.reorder or self.rate)

    def describe(self) -> str:
        parts = [f"loss={self.loss:g}"] if self.loss else []
        if self.burst is not None:
            parts.append(f"burst={self.burst:g}")
        parts += [
            f"{n}={getattr(self, n):g}" for n in ("delay", "jitter", "reorder") if getattr(self, n)
        ]
        if self.rate is not None:
            parts += [f"rate={self.rate:g}", f"queue={self.queue:g}"]
        return ",".join([*parts, f"seed={self.seed}"])

    def model(self, stream: int = 0) -> LinkModel:
        """A fresh policy; ``stream`` varies the seed (one per link direction)."""
        return LinkModel(self, stream)


class LinkModel:
    """Decides, for each datagram in order, drop (None) or deliver after so many seconds."""

    def __init__(self, impairment: Impairment, stream: int = 0) -> None:
        self._rng = random.Random(impairment.seed * 1_000_003 + stream)
        self._bad = False
        self.change(impairment)
        self._link_free_at = 0.0
        self.offered = 0
        self.lost = 0
        self.queue_drops = 0

    def change(self, impairment: Impairment) -> None:
        """Impair differently from the next datagram on (e.g. a subscriber's rate limit
        changing mid-call); the random stream and the queue carry on."""
        self.impairment = impairment
        loss = impairment.loss / 100.0
        self._loss = loss
        self._leave_bad = self._enter_bad = 0.0
        if impairment.burst is not None:
            self._leave_bad = 1.0 / impairment.burst
            self._enter_bad = loss * self._leave_bad / (1.0 - loss)

    def decide(self, size: int, now: float) -> float | None:
        """``size`` bytes offered at ``now`` (seconds, any monotonic clock)."""
        imp = self.impairment
        rng = self._rng
        self.offered += 1
        if self._lose():
            self.lost += 1
            return None
        hold = 0.0
        if imp.rate is not None:
            start = max(now, self._link_free_at)
            if start - now > imp.queue / 1000.0:
                self.queue_drops += 1
                return None
            self._link_free_at = start + size * 8 / (imp.rate * 1000.0)
            hold = self._link_free_at - now
        delay = imp.delay
        if imp.jitter:
            delay += rng.uniform(-imp.jitter, imp.jitter)
        if imp.reorder and rng.random() * 100.0 < imp.reorder:
            delay += REORDER_HOLD_MS
        return hold + max(0.0, delay) / 1000.0

    def _lose(self) -> bool:
        if not self._loss:
            return False
        if self.impairment.burst is None:
            return self._rng.random() < self._loss
        flip = self._rng.random()
        self._bad = flip >= self._leave_bad if self._bad else flip < self._enter_bad
        return self._bad
