"""Active speaker detection from RFC 6464 audio levels, without decoding any audio.

Producers add up the audio-level header extension of every packet they receive; a room
asks this detector, a few times a second, who is speaking. Levels are smoothed, and the
dominant speaker only changes when someone else is clearly louder for a while, so the
highlight in a call does not flicker on every cough.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["SILENCE_DBOV", "ActiveSpeakers"]

SILENCE_DBOV = -60.0  # quieter than this is not speaking
FLOOR_DBOV = -127.0  # RFC 6464's quietest level (and "no packets at all")


@dataclass(slots=True)
class ActiveSpeakers:
    """Smoothed levels per participant and the current speaker order."""

    smoothing: float = 0.5  # weight of the newest tick
    switch_margin_db: float = 6.0  # how much louder a challenger must be ...
    switch_ticks: int = 2  # ... for this many consecutive ticks
    levels: dict[str, float] = field(default_factory=dict)
    speakers: list[str] = field(default_factory=list)
    _challenger: str | None = None
    _challenges: int = 0

    def update(self, heard: Mapping[str, float | None]) -> list[str] | None:
        """Feed one tick: mean dBov per participant (None = no audio packets).

        Returns the new speaker list (loudest first) when it changed, else None.
        """
        for participant, level in heard.items():
            current = FLOOR_DBOV if level is None else max(FLOOR_DBOV, min(0.0, level))
            previous = self.levels.get(participant, FLOOR_DBOV)
            self.levels[participant] = previous + self.smoothing * (current - previous)
        for gone in set(self.levels) - set(heard):
            del self.levels[gone]
        speaking = sorted(
            (p for p, level in self.levels.items() if level > SILENCE_DBOV),
            key=lambda p: self.levels[p],
            reverse=True,
        )
        dominant = self._dominant(speaking)
        ordered = ([dominant] if dominant else []) + [p for p in speaking if p != dominant]
        if ordered[:1] == self.speakers[:1] and set(ordered) == set(self.speakers):
            return None  # same speaker, same set: do not chatter about order below it
        self.speakers = ordered
        return ordered

    def _dominant(self, speaking: list[str]) -> str | None:
        current = self.speakers[0] if self.speakers else None
        if not speaking:
            return None
        if current not in speaking:
            self._challenger, self._challenges = None, 0
            return speaking[0]
        loudest = speaking[0]
        if (
            loudest == current
            or self.levels[loudest] - self.levels[current] < self.switch_margin_db
        ):
            self._challenger, self._challenges = None, 0
            return current
        if loudest == self._challenger:
            self._challenges += 1
        else:
            self._challenger, self._challenges = loudest, 1
        if self._challenges >= self.switch_ticks:
            self._challenger, self._challenges = None, 0
            return loudest
        return current
