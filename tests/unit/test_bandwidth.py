"""The subscriber-link estimator and the layer choice, on a fake clock."""

from __future__ import annotations

from sfu.bandwidth import MIN_BUDGET_BPS, BandwidthEstimator
from sfu.layer_choice import LayerInfo, Preference, choose_layer, preferred_layer

LAYERS = [
    LayerInfo(True, 150_000, 320, 180),
    LayerInfo(True, 500_000, 640, 360),
    LayerInfo(True, 1_500_000, 1280, 720),
]


def sending(estimator: BandwidthEstimator, bps: int, start: float, seconds: int) -> float:
    """Report ``bps`` sent with no loss once a second; returns the time after."""
    now = start
    octets = 0
    estimator.on_sent(octets, now)
    for _ in range(seconds):
        now += 1
        octets += bps // 8
        estimator.on_sent(octets, now)
        estimator.on_report(0, now)
    return now


def test_no_limit_until_something_says_so() -> None:
    estimator = BandwidthEstimator()
    sending(estimator, 1_000_000, 0.0, 5)
    assert estimator.budget_bps is None
    estimator.on_remb(2_000_000, 5.0)
    estimator.on_remb(900_000, 5.5)  # falling, but not far below what we send
    assert estimator.budget_bps is None


def test_loss_cuts_the_budget_to_what_got_through() -> None:
    estimator = BandwidthEstimator()
    now = sending(estimator, 1_000_000, 0.0, 3)
    estimator.on_report(64, now)  # 25% lost
    assert estimator.budget_bps == 875_000  # sent * (1 - loss/2)
    estimator.on_report(20, now + 0.5)  # 7.8%: neither congested nor clean
    assert estimator.budget_bps == 875_000


def test_a_falling_remb_well_below_the_send_rate_is_congestion() -> None:
    estimator = BandwidthEstimator()
    now = sending(estimator, 1_000_000, 0.0, 3)
    estimator.on_remb(300_000, now)  # a first, low REMB: an estimator still climbing
    assert estimator.budget_bps is None
    estimator.on_remb(1_200_000, now + 1)
    estimator.on_remb(500_000, now + 2)
    assert estimator.budget_bps == 500_000


def test_clean_reports_raise_the_budget_after_the_hold_until_unlimited() -> None:
    estimator = BandwidthEstimator(hold_s=4.0)
    now = sending(estimator, 400_000, 0.0, 2)
    estimator.on_report(128, now)  # 50%: budget 300 kbit/s
    assert estimator.budget_bps == 300_000
    now = sending(estimator, 250_000, now, 3)
    assert estimator.budget_bps == 300_000  # held
    now = sending(estimator, 250_000, now, 2)
    assert estimator.budget_bps == 450_000  # +50% after 4 clean seconds
    sending(estimator, 250_000, now, 40)
    assert estimator.budget_bps is None


def test_congestion_right_after_a_climb_doubles_the_hold() -> None:
    estimator = BandwidthEstimator(hold_s=4.0, max_hold_s=16.0)
    now = sending(estimator, 400_000, 0.0, 2)
    estimator.on_report(128, now)
    now = sending(estimator, 300_000, now, 5)
    assert estimator.budget_bps == 450_000
    estimator.on_report(100, now + 0.5)  # the climb did not fit
    budget = estimator.budget_bps
    now = sending(estimator, 300_000, now + 0.5, 7)
    assert estimator.budget_bps == budget  # 8 s hold now, not 4
    now = sending(estimator, 300_000, now, 2)
    assert estimator.budget_bps is not None and estimator.budget_bps > (budget or 0)
    assert estimator.budget_bps >= MIN_BUDGET_BPS


def test_preferred_layer_by_quality_and_by_size() -> None:
    assert [preferred_layer(LAYERS, Preference(quality=q)) for q in ("low", "medium", "high")] == [
        0,
        1,
        2,
    ]
    two = LAYERS[::2]
    assert [preferred_layer(two, Preference(quality=q)) for q in ("low", "medium", "high")] == [
        0,
        1,
        1,
    ]
    assert preferred_layer(LAYERS, Preference(width=321, height=100)) == 1
    assert preferred_layer(LAYERS, Preference(width=2000, height=2000)) == 2
    assert preferred_layer(LAYERS, Preference()) == 2


def test_choose_within_preference_budget_and_what_is_sent() -> None:
    assert choose_layer(LAYERS, 2, None) == 2
    assert choose_layer(LAYERS, 1, None) == 1
    assert choose_layer(LAYERS, 2, 1_000_000) == 1
    assert choose_layer(LAYERS, 2, 100_000) == -1  # nothing fits: video waits
    inactive_top = [*LAYERS[:2], LayerInfo(False, 0)]
    assert choose_layer(inactive_top, 2, None) == 1
    only_top = [LayerInfo(False, 0), LayerInfo(False, 0), LAYERS[2]]
    assert choose_layer(only_top, 0, None) == 2  # better than nothing
    assert choose_layer([LayerInfo(False, 0)] * 3, 2, None) == -1


def test_the_current_layer_keeps_the_full_budget_a_new_one_needs_headroom() -> None:
    assert choose_layer(LAYERS, 2, 1_600_000, current=1) == 1  # 1.5M > 0.9 * 1.6M
    assert choose_layer(LAYERS, 2, 1_600_000, current=2) == 2


def test_a_screen_share_pauses_rather_than_dropping_two_layers() -> None:
    assert choose_layer(LAYERS, 2, 1_000_000, favour_resolution=True) == 1
    assert choose_layer(LAYERS, 2, 400_000, favour_resolution=True) == -1
    assert choose_layer(LAYERS, 2, 400_000) == 0
