"""TURN through a real coturn: per-participant REST credentials, a relay-only call.

coturn (Debian's `turnserver`) runs on 127.0.0.1 with ``use-auth-secret``; the SFU is given
the same secret. A client whose peer connections use ICE transport policy ``relay`` gathers
only relayed candidates, so its media can only flow through coturn: the call completing,
its candidates being relay-only and coturn's log showing allocations for exactly the
participants' minted usernames prove the relay path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.calls import local_candidate_types, timed_call
from helpers.coturn import Coturn
from helpers.server import ServerProcess

from sfu.turn import turn_password

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    if not Coturn.available():
        pytest.fail("coturn (turnserver) is not installed: scripts/test installs it")
    server = Coturn(tmp_path_factory.mktemp("coturn")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def turn_server(
    coturn: Coturn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("sfu-turn")),
        ["--turn-uri", coturn.uri, "--turn-uri", "turns:127.0.0.1:443?transport=tcp",
         "--turn-secret", coturn.secret, "--turn-ttl", "600"],
    ).start()  # fmt: skip
    try:
        yield process
    finally:
        assert process.stop() == 0


@pytest.mark.asyncio
async def test_relay_only_call_goes_through_coturn(
    coturn: Coturn, turn_server: ServerProcess, room: str
) -> None:
    url = turn_server.url
    direct = await timed_call(
        url, turn_server.token(room, "d1"), turn_server.token(room, "d2"), relay=False
    )
    await direct.publisher.close()
    await direct.subscriber.close()

    call = await timed_call(
        url, turn_server.token(room, "r1"), turn_server.token(room, "r2"), relay=True
    )
    try:
        publisher, subscriber = call.publisher, call.subscriber
        # Only relayed candidates on both sides of the call's client peer connections.
        assert local_candidate_types(publisher.publish_pc) == {"relay"}
        assert local_candidate_types(subscriber.subscribe_pc) == {"relay"}
        # Each participant was handed its own credential, which coturn accepted.
        for participant in (publisher, subscriber):
            (server,) = participant.joined["ice_servers"]
            assert server["urls"] == [coturn.uri, "turns:127.0.0.1:443?transport=tcp"]
            expiry, user = server["username"].split(":")
            assert user == participant.id and 0 < int(expiry) - time.time() <= 600
            assert server["credential"] == turn_password(coturn.secret, server["username"])
            allocated = re.compile(
                rf"user <{re.escape(server['username'])}>: incoming packet ALLOCATE processed, "
                "success"
            )
            assert allocated.search(coturn.log()), f"no allocation for {participant.id}"
        print(f"\ncall set-up: direct {direct.setup_ms:.0f} ms, relay-only {call.setup_ms:.0f} ms")
    finally:
        await call.publisher.close()
        await call.subscriber.close()
    # The server's own peer connections use the same TURN server, with their own credentials.
    assert re.search(r"user <\d+:sfu>", coturn.log())
    # The secret is never logged nor sent.
    assert not any(coturn.secret in line for line in turn_server.log_lines)
