"""``--impair GROUP[.DIRECTION]:SPEC``: which bench clients get which impaired link.

GROUP is ``publishers`` (members that publish), ``subscribers`` (members that receive)
or ``all``; DIRECTION is ``send``, ``receive`` or, by default, both; SPEC is an
:class:`signaling.client.impair.Impairment` (``loss=5,delay=40,jitter=10,...``). A
meeting participant both publishes and receives: the first option naming a group it is
in decides each direction. Each member gets its own seed (the given seed, offset by the
member's index), so no two links drop the same packets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from signaling.client.impair import Impairment

__all__ = ["GROUPS", "LinkRule", "impairments_for", "parse_rule"]

GROUPS = ("publishers", "subscribers", "all")
DIRECTIONS = ("send", "receive")
_SEED_STRIDE = 7919


@dataclass(frozen=True, slots=True)
class LinkRule:
    group: str
    directions: tuple[str, ...]
    impairment: Impairment

    def describe(self) -> str:
        way = "" if len(self.directions) == 2 else f".{self.directions[0]}"
        return f"{self.group}{way}:{self.impairment.describe()}"

    def covers(self, publishes: bool, subscribes: bool) -> bool:
        return (
            self.group == "all"
            or (self.group == "publishers" and publishes)
            or (self.group == "subscribers" and subscribes)
        )


def parse_rule(text: str) -> LinkRule:
    """``subscribers:loss=5`` → a rule; ValueError saying what is wrong."""
    head, sep, spec = text.partition(":")
    group, _, direction = head.strip().partition(".")
    if not sep or group not in GROUPS:
        raise ValueError(f"expected GROUP[.send|.receive]:SPEC with GROUP one of {GROUPS}")
    if direction and direction not in DIRECTIONS:
        raise ValueError(f"direction must be send or receive, not {direction!r}")
    impairment = Impairment.parse(spec)
    if impairment.is_null:
        raise ValueError(f"{text!r} impairs nothing")
    return LinkRule(group, (direction,) if direction else DIRECTIONS, impairment)


def impairments_for(
    rules: Sequence[LinkRule], index: int, publishes: bool, subscribes: bool
) -> tuple[Impairment | None, Impairment | None]:
    """(send, receive) impairments of member ``index``: the first matching rule wins."""
    chosen: dict[str, Impairment] = {}
    for rule in rules:
        if not rule.covers(publishes, subscribes):
            continue
        for direction in rule.directions:
            if direction not in chosen:
                seed = rule.impairment.seed + _SEED_STRIDE * index
                chosen[direction] = dataclasses.replace(rule.impairment, seed=seed)
    return chosen.get("send"), chosen.get("receive")
