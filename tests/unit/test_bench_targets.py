"""Tests for the pure parts of the targets and layouts: Janus's generated configuration,
namespace bookkeeping, scenario layouts (no server, no namespace is created)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fanout import audio_rooms_layout, fanout_layout, meeting_layout
from bench.janus import janus_configs, unavailable_reason
from bench.netns import GENERATOR_ADDRESS, PREFIX, TARGET_ADDRESS, stale_namespaces


def test_janus_config_is_loopback_only_and_minimal(tmp_path: Path) -> None:
    files = janus_configs(tmp_path, TARGET_ADDRESS, 8188)
    assert set(files) == {
        "janus.jcfg", "janus.transport.websockets.jcfg", "janus.plugin.videoroom.jcfg",
    }
    core = files["janus.jcfg"]
    assert f'ice_enforce_list = "{TARGET_ADDRESS}"' in core
    assert "stun_server" not in core and "turn_server" not in core
    assert f'plugins_folder = "{tmp_path / "plugins"}"' in core
    assert "ignore_mdns = true" in core
    ws = files["janus.transport.websockets.jcfg"]
    assert f'ws_ip = "{TARGET_ADDRESS}"' in ws and "ws_port = 8188" in ws
    assert "admin_ws = false" in ws and "wss = false" in ws


def test_private_addresses_are_in_one_small_private_subnet() -> None:
    for address in (TARGET_ADDRESS, GENERATOR_ADDRESS):
        assert address.startswith("10.213.7.")


def test_only_our_dead_namespaces_are_stale() -> None:
    names = [f"{PREFIX}100", f"{PREFIX}200", "someone-else", f"{PREFIX}x", f"{PREFIX}300"]
    assert stale_namespaces(names, alive={200}) == [f"{PREFIX}100", f"{PREFIX}300"]


def test_unavailable_reason_is_a_message_or_none() -> None:
    reason = unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason)


def test_layouts_count_participants_and_streams() -> None:
    fanout = fanout_layout(20)
    assert (fanout.participants, fanout.publishers, fanout.streams, fanout.size) == (21, 1, 20, 20)
    meeting = meeting_layout(4)
    assert (meeting.participants, meeting.publishers, meeting.streams) == (4, 4, 12)
    rooms = audio_rooms_layout(10, 4)
    assert (rooms.participants, rooms.publishers, rooms.streams, len(rooms.rooms)) == (
        40, 40, 120, 10
    )
    assert not any(m.video for room in rooms.rooms for m in room)
    assert len({m.identity for room in rooms.rooms for m in room}) == 40


def test_a_missing_janus_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.janus
    from bench.__main__ import _factories

    monkeypatch.setattr("bench.janus.shutil.which", lambda name: None)
    assert "apt-get install janus" in (bench.janus.unavailable_reason() or "")
    factories, unavailable = _factories(["oktorus", "janus"], None)
    assert [name for name, _ in factories] == ["oktorus", "janus"]
    assert set(unavailable) == {"janus"} and "not installed" in unavailable["janus"]
