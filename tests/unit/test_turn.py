"""TURN REST credentials and the ICE server lists handed to clients and to aiortc."""

from __future__ import annotations

import json

import pytest

from sfu.peer_connection import new_peer_connection
from sfu.settings import Settings
from sfu.turn import IceServerSet, turn_credentials, turn_password

SECRET = "north-wind-secret"


def test_password_is_base64_hmac_sha1_of_the_username() -> None:
    # echo -n 1700000000:PA_0123456789ab | openssl dgst -binary -sha1 -hmac $SECRET | base64
    assert turn_password(SECRET, "1700000000:PA_0123456789ab") == "quS82tUAeDFoTkePrLdhWd77bnM="


def test_username_is_expiry_colon_user() -> None:
    username, password = turn_credentials(SECRET, "PA_0123456789ab", 3600, now=1_699_996_400.7)
    assert username == "1700000000:PA_0123456789ab"
    assert password == turn_password(SECRET, username)
    with pytest.raises(ValueError):
        turn_credentials(SECRET, "a:b", 60, now=0)


def test_each_participant_gets_its_own_short_lived_credential() -> None:
    now = [1_000_000.0]
    ice = IceServerSet(
        static=({"urls": ["stun:stun.example.org"]},),
        uris=("stun:turn.example.org:3478", "turn:turn.example.org:3478?transport=udp",
              "turns:turn.example.org:443?transport=tcp"),
        secret=SECRET, ttl_s=600, clock=lambda: now[0],
    )  # fmt: skip
    alice, bob = ice.for_user("PA_a"), ice.for_user("PA_b")
    assert alice[0] == {"urls": ["stun:stun.example.org"]}
    assert alice[1] == {"urls": ["stun:turn.example.org:3478"]}
    turn = alice[2]
    assert turn["urls"] == [
        "turn:turn.example.org:3478?transport=udp",
        "turns:turn.example.org:443?transport=tcp",
    ]
    assert turn["username"] == "1000600:PA_a"
    assert turn["credential"] == turn_password(SECRET, "1000600:PA_a")
    assert bob[2]["username"] == "1000600:PA_b" and bob[2]["credential"] != turn["credential"]
    # The secret is never part of what is handed out, nor of repr().
    assert SECRET not in json.dumps([alice, bob]) and SECRET not in repr(ice)
    assert ice.has_turn


def test_server_view_mints_a_fresh_credential_per_peer_connection() -> None:
    now = [1_000_000.0]
    ice = IceServerSet(uris=("turn:127.0.0.1:3478",), secret=SECRET, ttl_s=60,
                       clock=lambda: now[0])  # fmt: skip
    view = ice.for_server(turn=True)
    first = next(iter(view))["username"]
    now[0] += 100
    assert next(iter(view))["username"] == "1000160:sfu" != first
    assert len(view) == 1 and view[0]["urls"] == ["turn:127.0.0.1:3478"]
    assert SECRET not in repr(view)


@pytest.mark.asyncio
async def test_aiortc_peer_connection_takes_the_minted_turn_server() -> None:
    settings = Settings(turn_uris=("turn:127.0.0.1:3478?transport=udp",), turn_secret=SECRET)
    ice = IceServerSet.from_settings(settings)
    pc = new_peer_connection(ice.for_server(turn=True))
    try:
        config = pc._RTCPeerConnection__configuration  # type: ignore[attr-defined]  # no getter
        (server,) = config.iceServers
        assert server.urls == ["turn:127.0.0.1:3478?transport=udp"]
        assert server.username.endswith(":sfu")
        assert server.credential == turn_password(SECRET, server.username)
    finally:
        await pc.close()


def test_no_turn_configured_hands_out_only_static_servers() -> None:
    ice = IceServerSet.from_settings(Settings())
    assert ice.for_user("PA_x") == [] and not ice.has_turn


def test_server_side_leaves_turn_out_by_default() -> None:
    ice = IceServerSet(
        static=({"urls": ["stun:s.example.org", "turn:t.example.org"], "username": "u",
                 "credential": "c"},),
        uris=("stun:a.example.org", "turn:b.example.org"), secret=SECRET,
    )  # fmt: skip
    assert list(ice.for_server()) == [
        {"urls": ["stun:s.example.org"]},
        {"urls": ["stun:a.example.org"]},
    ]
