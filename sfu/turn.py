"""ICE servers for clients and for the server's own peer connections, with TURN REST credentials.

TURN REST credentials (the scheme coturn's ``use-auth-secret`` implements, also used by
Twilio and LiveKit): the username is ``"<unix expiry>:<user>"`` and the password is
``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the password from its
copy of the secret, so the SFU never stores per-user TURN accounts and a credential is
useless after its expiry. The secret itself never leaves this module: it is not logged,
not put in any message, and only the derived password is handed out.

Every participant gets its own credential (user = its participant id, never its identity,
so TURN logs hold no personal data). The server's own aiortc peer connections are built
from the same configuration through :class:`ServerIceServers`, which mints a credential for
``sfu`` each time a peer connection is created (see :meth:`IceServerSet.for_server`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

from sfu.settings import IceServer, Settings

__all__ = ["IceServerSet", "ServerIceServers", "turn_credentials", "turn_password"]

SERVER_USER = "sfu"


def turn_password(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``: what coturn expects for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credentials(secret: str, user: str, ttl_s: float, now: float) -> tuple[str, str]:
    """A (username, password) pair valid until ``now + ttl_s`` (unix seconds)."""
    if ":" in user:
        raise ValueError("a TURN REST user must not contain ':'")
    username = f"{int(now + ttl_s)}:{user}"
    return username, turn_password(secret, username)


class IceServerSet:
    """The RTCIceServer lists handed out: static ``--ice-servers`` plus ``--turn-uri``s."""

    def __init__(
        self,
        *,
        static: Sequence[IceServer] = (),
        uris: Sequence[str] = (),
        secret: str | None = None,
        ttl_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._static = tuple(static)
        self._stun = [u for u in uris if u.startswith("stun")]
        self._turn = [u for u in uris if u.startswith("turn")]
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        if self._turn and not secret:
            raise ValueError("TURN URIs need a secret")

    @classmethod
    def from_settings(cls, settings: Settings) -> IceServerSet:
        return cls(
            static=settings.ice_servers,
            uris=settings.turn_uris,
            secret=settings.turn_secret,
            ttl_s=settings.turn_ttl_s,
        )

    def __repr__(self) -> str:  # never the secret
        return f"IceServerSet(static={len(self._static)}, stun={self._stun}, turn={self._turn})"

    @property
    def has_turn(self) -> bool:
        return bool(self._turn) or any(
            u.startswith("turn") for s in self._static for u in s["urls"]
        )

    def for_user(self, user: str, *, turn: bool = True) -> list[IceServer]:
        """A fresh list for ``user`` (a participant id, or ``sfu`` for the server itself);
        ``turn=False`` leaves every TURN URL out (STUN only)."""
        servers: list[IceServer] = []
        for static in self._static:
            urls = [u for u in static["urls"] if turn or u.startswith("stun")]
            if not urls:
                continue
            copy: IceServer = {"urls": urls}
            if "username" in static and any(u.startswith("turn") for u in urls):
                copy["username"] = static["username"]
            if "credential" in static and any(u.startswith("turn") for u in urls):
                copy["credential"] = static["credential"]
            servers.append(copy)
        if self._stun:
            servers.append({"urls": list(self._stun)})
        if self._turn and turn:
            assert self._secret is not None
            username, password = turn_credentials(self._secret, user, self._ttl_s, self._clock())
            servers.append({"urls": list(self._turn), "username": username, "credential": password})
        return servers

    def for_server(self, *, turn: bool = False) -> ServerIceServers:
        """The view the server's own peer connections are built from (fresh credentials).

        With ``turn`` the server allocates relayed candidates too (the same TURN servers as
        its clients). A relayed route sends through aioice's ``TurnTransport`` (one task per
        datagram, no write-buffer bound): fine for the few calls that need it.
        """
        return ServerIceServers(self, turn=turn)


class ServerIceServers(Sequence[Mapping[str, Any]]):
    """A read-only sequence that mints a fresh server credential each time it is iterated.

    ``MediaConfig.ice_servers`` holds one; ``new_peer_connection`` iterates it once per peer
    connection, so a long-running server never hands aioice an expired TURN credential.
    """

    def __init__(self, source: IceServerSet, *, turn: bool = False) -> None:
        self._source = source
        self._turn = turn

    def _current(self) -> list[IceServer]:
        return self._source.for_user(SERVER_USER, turn=self._turn)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        return self._current()[index]

    def __repr__(self) -> str:
        return f"ServerIceServers({self._source!r})"
