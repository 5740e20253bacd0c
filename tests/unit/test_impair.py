"""Tests for the seeded impairment policy (``signaling.client.impair``) on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from signaling.client.impair import REORDER_HOLD_MS, Impairment, LinkModel


def _run(model: LinkModel, count: int, gap_s: float = 0.01, size: int = 1200) -> list[float | None]:
    """Offer ``count`` datagrams every ``gap_s``; each decision is a delivery time or None."""
    out: list[float | None] = []
    for i in range(count):
        now = i * gap_s
        hold = model.decide(size, now)
        out.append(None if hold is None else now + hold)
    return out


def test_parse_reads_every_field_and_refuses_bad_input() -> None:
    imp = Impairment.parse("loss=5, delay=40,jitter=10,burst=3,rate=300,seed=7,reorder=1,queue=50")
    assert imp == Impairment(
        loss=5, delay=40, jitter=10, burst=3, rate=300, seed=7, reorder=1, queue=50
    )
    assert Impairment.parse("") == Impairment() and Impairment().is_null
    assert Impairment.parse(imp.describe()) == imp
    for bad, message in [
        ("loss=5,los=3", "key one of"),
        ("loss", "key=value"),
        ("loss=x", "not a number"),
        ("loss=101", "outside"),
        ("delay=-1", "outside"),
        ("burst=0.5", "outside"),
        ("loss=1,loss=2", "twice"),
        ("seed=1.5", "not a number"),
        ("loss=100,burst=2", "below 100"),
    ]:
        with pytest.raises(ValueError, match=message):
            Impairment.parse(bad)


def test_independent_loss_rate_is_within_tolerance_and_seeded() -> None:
    decisions = _run(Impairment(loss=5, seed=1).model(), 20_000)
    lost = decisions.count(None) / len(decisions)
    assert 0.045 < lost < 0.055
    assert _run(Impairment(loss=5, seed=1).model(), 500) == decisions[:500]  # same seed
    assert _run(Impairment(loss=5, seed=2).model(), 500) != decisions[:500]
    assert _run(Impairment(loss=5, seed=1).model(stream=1), 500) != decisions[:500]
    assert all(d == i * 0.01 for i, d in enumerate(decisions) if d is not None)  # no delay


def _bursts(decisions: list[float | None]) -> list[int]:
    runs, current = [], 0
    for d in decisions:
        if d is None:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_bursty_loss_keeps_the_rate_and_has_the_mean_burst_length() -> None:
    model = Impairment(loss=10, burst=4, seed=3).model()
    decisions = _run(model, 50_000)
    assert 0.09 < decisions.count(None) / len(decisions) < 0.11
    bursts = _bursts(decisions)
    assert 3.6 < sum(bursts) / len(bursts) < 4.4
    assert model.lost == decisions.count(None) and model.offered == 50_000
    independent = _bursts(_run(Impairment(loss=10, seed=3).model(), 50_000))
    assert sum(independent) / len(independent) < 1.2  # Bernoulli: bursts of ~1.1


def test_delay_without_jitter_keeps_order_and_jitter_reorders() -> None:
    steady = _run(Impairment(delay=40).model(), 100, gap_s=0.002)
    assert steady == [pytest.approx(i * 0.002 + 0.040) for i in range(100)]
    jittery = [
        d
        for d in _run(Impairment(delay=40, jitter=10, seed=5).model(), 2000, gap_s=0.002)
        if d is not None
    ]
    holds = [d - i * 0.002 for i, d in enumerate(jittery)]
    assert min(holds) >= 0.030 - 1e-9 and max(holds) <= 0.050 + 1e-9
    assert 0.039 < sum(holds) / len(holds) < 0.041
    overtaken = sum(1 for a, b in itertools.pairwise(jittery) if b < a)
    assert overtaken > 100  # ±10 ms jitter on 2 ms gaps reorders often
    wide = [
        d
        for d in _run(Impairment(delay=40, jitter=10, seed=5).model(), 500, gap_s=0.05)
        if d is not None
    ]
    assert wide == sorted(wide)  # gaps above the jitter span: never reordered


def test_explicit_reordering_holds_that_share_back() -> None:
    decisions = _run(Impairment(reorder=10, seed=9).model(), 10_000, gap_s=0.005)
    held = [d - i * 0.005 for i, d in enumerate(decisions) if d is not None]
    late = [h for h in held if h > 0]
    assert 0.08 < len(late) / len(held) < 0.12
    assert all(h == pytest.approx(REORDER_HOLD_MS / 1000) for h in late)


def test_rate_limit_queues_then_drops_what_would_wait_too_long() -> None:
    # 300 kbit/s: a 1200-byte datagram takes 32 ms on the wire
    model = Impairment(rate=300, queue=100).model()
    burst = [model.decide(1200, 0.0) for _ in range(6)]
    assert burst[:4] == [pytest.approx(0.032 * (i + 1)) for i in range(4)]
    assert burst[4] is None and burst[5] is None  # 128 ms > 100 ms of queue
    assert model.queue_drops == 2
    # offered at 600 kbit/s for 10 s: about half gets through, at the link rate
    model = Impairment(rate=300, queue=200).model()
    sent = _run(model, 6250, gap_s=0.016)
    delivered = [d for d in sent if d is not None]
    assert 0.48 < len(delivered) / len(sent) < 0.52
    assert max(d - i * 0.016 for i, d in enumerate(sent) if d is not None) <= 0.2 + 0.032
    # below the rate nothing waits
    calm = _run(Impairment(rate=300).model(), 100, gap_s=0.05)
    assert calm == [pytest.approx(i * 0.05 + 0.032) for i in range(100)]


def test_a_link_can_change_mid_call() -> None:
    model = Impairment(rate=300).model()
    assert model.decide(1200, 0.0) == pytest.approx(0.032)
    model.change(Impairment(rate=1200))  # the subscriber's link gets wider
    assert model.decide(1200, 1.0) == pytest.approx(0.008)
    model.change(Impairment(loss=100))
    assert model.decide(1200, 2.0) is None and model.lost == 1
    model.change(Impairment())
    assert model.decide(1200, 3.0) == 0.0
