"""Pure parts of ``serve --workers``: placement, port split, metrics merge, room homes, flags."""

from __future__ import annotations

import time

import pytest

from sfu.cli import build_parser
from sfu.settings import Settings, SettingsError, usable_cores
from sfu.workers import pool as pool_module
from sfu.workers.metrics_merge import merge_metrics
from sfu.workers.placement import WorkerLoad, choose_worker, load_score
from sfu.workers.pool import WorkerSlot
from sfu.workers.supervisor import Homes
from sfu.workers.worker import WorkerSpec, split_port_range

# --- placement ----------------------------------------------------------------------------


def test_new_room_goes_to_the_least_loaded_worker_not_the_next_one() -> None:
    loads = [
        WorkerLoad("0", participants=2, tracks_in=1, tracks_out=1, cpu_percent=30.0),
        WorkerLoad("1", participants=1),
        WorkerLoad("2", participants=4, tracks_in=4, tracks_out=12, cpu_percent=80.0),
    ]
    assert choose_worker(loads) == "1"


def test_cpu_outweighs_a_few_idle_participants() -> None:
    loads = [WorkerLoad("0", participants=3), WorkerLoad("1", cpu_percent=90.0)]
    assert choose_worker(loads) == "0"


def test_rooms_placed_since_the_last_report_count_as_load() -> None:
    fresh = [WorkerLoad("0", placed_since_report=1), WorkerLoad("1")]
    assert choose_worker(fresh) == "1"
    assert load_score(fresh[0]) > load_score(fresh[1])


def test_ties_go_to_the_lowest_id_and_unready_workers_are_skipped() -> None:
    assert choose_worker([WorkerLoad("1"), WorkerLoad("0")]) == "0"
    assert choose_worker([WorkerLoad("0", ready=False), WorkerLoad("1", cpu_percent=99)]) == "1"
    assert choose_worker([WorkerLoad("0", ready=False)]) is None
    assert choose_worker([]) is None


# --- homes --------------------------------------------------------------------------------


def test_a_room_keeps_its_home_until_its_last_connection_ends() -> None:
    homes = Homes()
    homes.acquire("r")
    homes.worker["r"] = ("1", 1)
    homes.acquire("r")
    homes.release("r")
    assert homes.worker["r"] == ("1", 1)
    homes.release("r")
    assert "r" not in homes.worker and "r" not in homes.connections


def test_a_dead_worker_loses_only_its_rooms() -> None:
    homes = Homes()
    homes.worker.update({"a": ("0", 1), "b": ("1", 1), "c": ("0", 1)})
    assert sorted(homes.forget_worker("0")) == ["a", "c"]
    assert homes.worker == {"b": ("1", 1)}


# --- UDP port ranges ----------------------------------------------------------------------


def test_port_range_is_split_evenly_and_contiguously() -> None:
    parts = [split_port_range((40000, 40999), i, 3) for i in range(3)]
    assert parts == [(40000, 40332), (40333, 40665), (40666, 40999)]
    assert split_port_range(None, 0, 2) is None
    with pytest.raises(ValueError, match="cannot split"):
        split_port_range((40000, 40000), 0, 2)


# --- flags --------------------------------------------------------------------------------


def _settings(*argv: str, env: dict[str, str] | None = None) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return Settings.from_env_and_args(args, env or {})


def test_workers_flag_number_auto_and_variable() -> None:
    assert _settings().workers == 1
    assert _settings("--workers", "3").workers == 3
    assert _settings("--workers", "auto").workers == usable_cores()
    assert _settings(env={"SFU_WORKERS": "2"}).workers == 2
    for bad in ("0", "many", "-1", "257"):
        with pytest.raises(SettingsError, match="--workers"):
            _settings("--workers", bad)


def test_ice_port_range_flag() -> None:
    assert _settings("--ice-port-range", "40000-40099").ice_port_range == (40000, 40099)
    assert _settings().ice_port_range is None
    for bad in ("40000", "5-6", "41000-40000", "a-b"):
        with pytest.raises(SettingsError, match="--ice-port-range"):
            _settings("--ice-port-range", bad)
    with pytest.raises(SettingsError, match="one port per worker"):
        _settings("--ice-port-range", "40000-40001", "--workers", "3")


# --- /metrics merge -----------------------------------------------------------------------

WORKER_0 = """# HELP sfu_participants Joined participants.
# TYPE sfu_participants gauge
sfu_participants{worker="0"} 2.0
# HELP sfu_packets_total Packets.
# TYPE sfu_packets_total counter
sfu_packets_total{kind="audio",worker="0"} 10.0
# HELP sfu_transport_packets Deprecated.
# TYPE sfu_transport_packets gauge
sfu_transport_packets{counter="rtp_in"} 5.0
"""
WORKER_1 = WORKER_0.replace('worker="0"', 'worker="1"').replace("2.0", "3.0")


def test_metrics_of_workers_merge_by_family() -> None:
    merged = merge_metrics([WORKER_0, WORKER_1])
    lines = merged.splitlines()
    assert lines.count("# TYPE sfu_participants gauge") == 1
    first = lines.index('sfu_participants{worker="0"} 2.0')
    assert lines[first + 1] == 'sfu_participants{worker="1"} 3.0'  # one contiguous family
    assert 'sfu_packets_total{kind="audio",worker="1"} 10.0' in lines
    assert 'sfu_transport_packets{counter="rtp_in"} 10.0' in lines  # unlabelled: summed


def test_metrics_merge_tolerates_an_empty_or_garbled_worker() -> None:
    merged = merge_metrics([WORKER_0, "", "garbage line here\n"])
    assert 'sfu_participants{worker="0"} 2.0' in merged.splitlines()


# --- worker slots -------------------------------------------------------------------------


def _slot() -> WorkerSlot:
    return WorkerSlot(WorkerSpec(settings=Settings(), worker_id="3", socket_path="/nowhere"))


def test_slot_turns_reports_into_load_and_cpu_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    slot = _slot()
    slot.ready = True
    slot.placed_since_report = 2
    slot.take_report({"cpu_s": 10.0, "participants": 3, "tracks_in": 1, "tracks_out": 2})
    clock[0] = 102.0
    slot.take_report(
        {"cpu_s": 11.0, "participants": 3, "tracks_in": 1, "tracks_out": 2, "rooms": {"r": 3}}
    )
    load = slot.load()
    assert load == WorkerLoad("3", participants=3, tracks_in=1, tracks_out=2, cpu_percent=50.0)
    assert slot.rooms() == {"r": 3}


def test_a_silent_or_draining_worker_gets_no_new_room(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    slot = _slot()
    slot.ready = True
    slot.take_report({"cpu_s": 1.0})
    assert slot.load().ready
    clock[0] += pool_module.STALE_AFTER_S + 1
    assert not slot.load().ready  # hung: no report for too long
    slot.take_report({"cpu_s": 1.0, "draining": True})
    assert not slot.load().ready
