"""A room's recording request and each person's answer to it (state, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jwt

from consent.tokens import ConsentClaims, notice_digest, validate_scope
from recorder.sink import RecordingSink, TrackFeed

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.producer import Producer
    from sfu.room import Room

__all__ = [
    "Consent",
    "RecordingError",
    "RemoteConsent",
    "RoomRecording",
    "unverified_scope",
]


class RecordingError(Exception):
    """A request the recorder refuses; ``code`` is a protocol v1 error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Consent:
    """One participant's answer to the room's recording request, and what it records."""

    participant: Participant
    state: str = "pending"  # pending | granted | refused | withdrawn | expired
    claims: ConsentClaims | None = None
    sink: RecordingSink | None = None
    feeds: list[tuple[Producer, TrackFeed]] = field(default_factory=list)
    recordings: list[str] = field(default_factory=list)
    jtis: set[str] = field(default_factory=set)  # renewals change the jti; any names it

    @property
    def scope(self) -> list[str]:
        return sorted(self.claims.scope) if self.claims and self.state == "granted" else []


@dataclass(frozen=True, slots=True)
class RemoteConsent:
    """A participant on the other shard of a spanning room: its answer, and if recorded."""

    state: str
    scope: tuple[str, ...]
    recorded: bool


@dataclass(slots=True)
class RoomRecording:
    """The active recording request of one room."""

    id: str
    room: Room
    scope: frozenset[str]
    notice: str
    requested_by: str  # participant id
    requested_by_identity: str = ""  # the ledger's actor for consent.requested
    # False on the other shard of a spanning room: the request came over the shard link.
    owner: bool = True
    consents: dict[str, Consent] = field(default_factory=dict)
    # The other shard's participants' answers (spanning room), as it last told us.
    remote: dict[str, RemoteConsent] = field(default_factory=dict)
    # Answers by identity, so a reconnecting person is not asked again: a refusal stands,
    # a still-valid consent resumes recording.
    answers: dict[str, tuple[str, ConsentClaims | None]] = field(default_factory=dict)

    @property
    def notice_sha256(self) -> str:
        return notice_digest(self.notice)


def unverified_scope(token: object) -> frozenset[str]:
    """The ``scope`` a token claims (not trusted: only to ask verification for it)."""
    try:
        payload = jwt.decode(str(token), options={"verify_signature": False})
        return validate_scope(payload.get("scope") or [])
    except (jwt.PyJWTError, ValueError, TypeError):
        return frozenset({"audio"})  # verification will refuse it with the real reason
