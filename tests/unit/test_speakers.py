"""Active speaker detection: smoothing, silence, hysteresis."""

from __future__ import annotations

from sfu.speakers import SILENCE_DBOV, ActiveSpeakers


def _run(detector: ActiveSpeakers, ticks: int, heard: dict[str, float | None]) -> list[list[str]]:
    changes = []
    for _ in range(ticks):
        result = detector.update(heard)
        if result is not None:
            changes.append(result)
    return changes


def test_loudest_first_and_silence_is_not_speaking() -> None:
    detector = ActiveSpeakers()
    changes = _run(detector, 5, {"a": -20.0, "b": -40.0, "c": -90.0, "d": None})
    assert changes[-1] == ["a", "b"]
    assert "c" not in detector.speakers and "d" not in detector.speakers


def test_no_event_while_nothing_changes() -> None:
    detector = ActiveSpeakers()
    _run(detector, 5, {"a": -20.0, "b": -40.0})
    assert _run(detector, 10, {"a": -21.0, "b": -39.0}) == []


def test_dominant_speaker_needs_a_clear_and_lasting_lead() -> None:
    detector = ActiveSpeakers()
    _run(detector, 10, {"a": -20.0, "b": -30.0})
    assert detector.speakers[0] == "a"
    # b slightly louder (under the 6 dB margin): a stays dominant.
    assert _run(detector, 10, {"a": -20.0, "b": -17.0}) == []
    # b clearly louder: takes over only after the lead persisted.
    first = detector.update({"a": -40.0, "b": -10.0})
    assert first is None or first[0] == "a"
    changes = _run(detector, 5, {"a": -40.0, "b": -10.0})
    assert changes and changes[0][0] == "b"


def test_dominant_that_goes_silent_is_replaced_at_once() -> None:
    detector = ActiveSpeakers()
    _run(detector, 10, {"a": -20.0, "b": -35.0})
    changes = _run(detector, 10, {"a": None, "b": -35.0})
    assert changes[-1] == ["b"]


def test_everyone_silent_gives_an_empty_list_and_participants_can_leave() -> None:
    detector = ActiveSpeakers()
    _run(detector, 5, {"a": -20.0})
    changes = _run(detector, 20, {"a": SILENCE_DBOV - 30})
    assert changes[-1] == []
    assert _run(detector, 1, {}) == [] and detector.levels == {}
