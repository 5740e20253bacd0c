"""Tests for ``--impair`` rules: which member gets which impaired direction."""

from __future__ import annotations

import pytest

from bench.impairments import impairments_for, parse_rule
from signaling.client.impair import Impairment


def test_rules_parse_group_direction_and_spec() -> None:
    rule = parse_rule("subscribers:loss=5,delay=40")
    assert rule.group == "subscribers" and rule.directions == ("send", "receive")
    assert rule.impairment == Impairment(loss=5, delay=40)
    assert parse_rule("publishers.send:jitter=3").directions == ("send",)
    for bad, message in [
        ("loss=5", "GROUP"),
        ("viewers:loss=5", "GROUP"),
        ("all.up:loss=5", "direction"),
        ("all:", "impairs nothing"),
        ("all:loss=x", "not a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rule(bad)


def test_the_first_matching_rule_decides_each_direction_with_a_seed_per_member() -> None:
    rules = [parse_rule("subscribers.receive:loss=5,seed=1"), parse_rule("all:delay=40")]
    send, receive = impairments_for(rules, 0, publishes=True, subscribes=False)
    assert send == receive == Impairment(delay=40, seed=0)  # a publisher: only "all"
    send, receive = impairments_for(rules, 3, publishes=False, subscribes=True)
    assert receive is not None and receive.loss == 5 and receive.delay == 0
    assert send is not None and send.delay == 40
    other = impairments_for(rules, 4, publishes=False, subscribes=True)[1]
    assert other is not None and other.seed != receive.seed  # no two links lose alike
    assert impairments_for([], 0, publishes=True, subscribes=True) == (None, None)
