"""sfu.cluster.link_auth: tokens of the shard link between nodes (the clock is a parameter)."""

from __future__ import annotations

import pytest

from sfu.cluster.link_auth import LINK_TOKEN_TTL_S, LinkAuthError, sign_link, verify_link

SECRET = b"s" * 32


def test_a_signed_token_names_room_and_node() -> None:
    token = sign_link(SECRET, room="r.1", node="node-b", now=1000.0)
    claims = verify_link(SECRET, token, now=1000.0 + LINK_TOKEN_TTL_S - 1)
    assert (claims.room, claims.node) == ("r.1", "node-b")


@pytest.mark.parametrize("token", [None, "", "nodot", "a" * 2000])
def test_missing_or_malformed_tokens_are_refused(token: str | None) -> None:
    with pytest.raises(LinkAuthError):
        verify_link(SECRET, token, now=0.0)


def test_another_secret_or_a_changed_body_is_refused() -> None:
    token = sign_link(SECRET, room="r", node="b", now=1000.0)
    with pytest.raises(LinkAuthError, match="signature"):
        verify_link(b"x" * 32, token, now=1000.0)
    forged = sign_link(SECRET, room="r", node="evil", now=1000.0).split(".")[0]
    with pytest.raises(LinkAuthError, match="signature"):
        verify_link(SECRET, forged + "." + token.split(".")[1], now=1000.0)


def test_an_expired_token_is_refused() -> None:
    token = sign_link(SECRET, room="r", node="b", now=1000.0)
    with pytest.raises(LinkAuthError, match="expired"):
        verify_link(SECRET, token, now=1000.0 + LINK_TOKEN_TTL_S + 1)
