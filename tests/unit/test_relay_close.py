"""sfu.workers.relay: what the worker is told when the client's side of the relay ends.

A single process keeps a participant whose connection vanished (resume) and ends one that
said goodbye or broke the protocol; through the relay the worker must be told the same."""

from __future__ import annotations

from aiohttp import WebSocketError, WSCloseCode, WSMessage, WSMsgType

from sfu.workers.relay import DROPPED, _upstream_code


def test_a_vanished_client_is_kept_for_a_resume() -> None:
    assert _upstream_code(None, None) == DROPPED
    assert _upstream_code(1006, None) == DROPPED
    reset = WSMessage(WSMsgType.ERROR, ConnectionResetError(), None)
    assert _upstream_code(1006, reset) == DROPPED


def test_a_goodbye_or_a_reconnect_passes_through() -> None:
    assert _upstream_code(1000, None) == 1000
    assert _upstream_code(1001, None) == 1001
    assert _upstream_code(4000, None) == 4000  # a client giving a socket up for a new one


def test_a_frame_too_large_ends_the_participant() -> None:
    too_big = WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "too big")
    ended = WSMessage(WSMsgType.ERROR, too_big, None)
    assert _upstream_code(1006, ended) == 1000
