"""The consent-gated recorder of a server: requests, grants, withdrawals, and the sinks.

An agent asks to record (``recording.start``); every other participant is asked; only an
explicit ``consent.grant`` (or a trusted token presented with ``consent.present``) creates
consent. The recorder then verifies the consent token itself — signature, room, subject,
scope, time, revocation — and only then attaches a sink to that participant's producers in
scope: no byte of anyone's media reaches a sink before. Withdrawal, revocation, expiry, the
participant leaving and ``recording.stop`` detach at once. Every step is written to the
hash-chained ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import redis.asyncio
import structlog

from consent.ledger import Ledger, LedgerEntry
from consent.ledger_redis import RedisLedger
from consent.ledger_sqlite import SqliteLedger
from consent.revocation import MemoryRevocationStore, RedisRevocationStore, RevocationStore
from consent.tokens import MAX_TTL_S as MAX_CONSENT_TTL_S
from consent.tokens import (
    ConsentClaims,
    ConsentInvalid,
    issue_consent_token,
    validate_scope,
    verify_consent_token,
)
from recorder.crypto import load_master_key
from recorder.remux import TrackSpec
from recorder.requests import (
    Consent,
    RecordingError,
    RemoteConsent,
    RoomRecording,
    unverified_scope,
)
from recorder.span_wire import (
    RemoteStart,
    consents_message,
    parse_consents,
    parse_start,
    parse_stop,
    start_message,
    stop_message,
)
from recorder.store import RecordingStore, hold_recordings_lock
from sfu.ids import new_id
from sfu.keys import KeyStore
from sfu.shard import ShardProtocolError

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.producer import Producer
    from sfu.room import Room

__all__ = ["CONSENT_TTL_S", "PURPOSE", "RecordingService"]

log = structlog.get_logger(__name__)

PURPOSE = "support session recording"
CONSENT_TTL_S = 600  # short-lived; renewed while the call lasts
RENEW_WITHIN_S = 300
RENEW_EVERY_S = 5.0  # also how soon an unreadable revocation store stops recording
MAX_NOTICE_CHARS = 4000
SINK_FINISH_TIMEOUT_S = 15.0
# Ledger kinds that are also webhook events (the ledger is the record; webhooks notify).
_WEBHOOK_EVENTS = {
    "consent.granted": "consent_granted",
    "consent.withdrawn": "consent_withdrawn",
    "recording.started": "recording_started",
    "recording.stopped": "recording_stopped",
}


class RecordingService:
    """Consent and recording for every room of this server (one per process)."""

    def __init__(
        self,
        *,
        keys: KeyStore,
        ledger: Ledger,
        revocations: RevocationStore,
        store: RecordingStore,
        issuer: str,
        trusted_issuers: Sequence[str] = (),
    ) -> None:
        self.keys = keys
        self.ledger = ledger
        self.revocations = revocations
        self.store = store
        self.issuer = issuer
        self.issuers = (issuer, *trusted_issuers)
        self.rooms: dict[str, RoomRecording] = {}
        self._unsubscribe = revocations.subscribe(self._on_revoked)
        self._renewals: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock_file: IO[bytes] | None = None
        # Rooms that span workers: how to reach the other shard, and its messages in order.
        self._links: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._link_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        keys: KeyStore,
        issuer: str,
        *,
        redis_url: str | None = None,
        recover: bool = True,
    ) -> RecordingService:
        """Recordings in the data dir; ledger and revocations embedded (SQLite in the data
        dir) or, with ``redis_url``, in Redis so every node of a cluster shares them.

        ``recover=False`` for a worker process: its siblings may be recording right now, so
        only the supervisor seals what a killed process left (:func:`recover_recordings`).
        """
        store = RecordingStore(data_dir, load_master_key(data_dir), keys)
        in_use = hold_recordings_lock(data_dir)  # shared: offline recovery must wait for us
        if recover:
            recovered = await asyncio.to_thread(store.recover)
            if recovered:
                log.info("recordings_recovered", recordings=recovered)
        revocations: MemoryRevocationStore | RedisRevocationStore
        ledger: Ledger
        if redis_url:
            revocations = RedisRevocationStore.from_url(redis_url)
            ledger = RedisLedger(redis.asyncio.Redis.from_url(redis_url))
        else:
            revocations = MemoryRevocationStore.in_data_dir(data_dir)
            ledger = await asyncio.to_thread(SqliteLedger.in_data_dir, data_dir)
        await revocations.start()
        service = cls(keys=keys, ledger=ledger, revocations=revocations, store=store, issuer=issuer)
        service._renewals = asyncio.get_running_loop().create_task(service._renew_loop())
        service._lock_file = in_use
        return service

    # --- the protocol state -----------------------------------------------------------

    def state(self, room: Room) -> dict[str, Any]:
        """``recording.state`` (without ``type``): the "you are being recorded" indicator.

        ``requests`` (an addition to protocol v1) gives each participant's consent state
        for the agent console.
        """
        active = self.rooms.get(room.id)
        if active is None:
            return {"active": False, "recording": None, "participants": [], "requests": []}
        # Both shards of a spanning room list everyone (theirs and ours), in id order, so
        # every client sees the same state wherever it is connected.
        recorded = [
            {"id": c.participant.id, "scope": c.scope}
            for c in active.consents.values()
            if c.sink is not None
        ] + [{"id": pid, "scope": list(r.scope)} for pid, r in active.remote.items() if r.recorded]
        requests = [{"participant": pid, "state": c.state} for pid, c in active.consents.items()]
        requests += [
            {"participant": pid, "state": r.state}
            for pid, r in active.remote.items()
            if pid not in active.consents
        ]
        return {
            "active": bool(recorded),
            "recording": active.id,
            "participants": sorted(recorded, key=lambda p: str(p["id"])),
            "requests": sorted(requests, key=lambda r: r["participant"]),
        }

    def _announce(self, room: Room, *, tell_shard: bool = True) -> None:
        room.broadcast({"type": "recording.state", **self.state(room)})
        request = self.rooms.get(room.id)
        if tell_shard and request is not None:
            self._tell(room.id, consents_message(request))

    def _tell(self, room_id: str, message: dict[str, Any]) -> None:
        send = self._links.get(room_id)
        if send is not None:
            send(message)

    # --- agent requests ---------------------------------------------------------------

    async def start(
        self, room: Room, agent: Participant, scope: object, notice: object
    ) -> RoomRecording:
        if not agent.can("record"):
            raise RecordingError("forbidden", "recording needs the 'record' grant")
        if room.id in self.rooms:
            raise RecordingError("conflict", "a recording request is already active")
        try:
            kinds = validate_scope(scope if isinstance(scope, list) else [])
        except ValueError as exc:
            raise RecordingError("bad_request", f"scope: {exc}") from None
        if not isinstance(notice, str) or not notice.strip() or len(notice) > MAX_NOTICE_CHARS:
            raise RecordingError("bad_request", "notice must be the text shown to participants")
        request = RoomRecording(
            new_id("RQ"), room, kinds, notice, agent.id, requested_by_identity=agent.identity
        )
        self.rooms[room.id] = request
        self._tell(room.id, start_message(request))  # the other shard asks its own people
        for participant in room.participants.values():
            if participant.id != agent.id:
                await self._ask(request, participant)
        self._announce(room)
        return request

    async def _ask(self, request: RoomRecording, participant: Participant) -> None:
        request.consents[participant.id] = Consent(participant)
        await self._log(
            request, "consent.requested", participant.identity, request.requested_by_identity
        )
        participant.send(_consent_request(request))

    async def stop(self, room: Room, agent: Participant) -> None:
        if not agent.can("record"):
            raise RecordingError("forbidden", "recording needs the 'record' grant")
        request = self.rooms.pop(room.id, None)
        if request is None:
            raise RecordingError("conflict", "no recording is active")
        self._tell(room.id, stop_message(request, agent.identity))  # both shards stop
        for consent in request.consents.values():
            await self._detach(request, consent, "stopped by agent", agent.identity)
        self._announce(room)

    # --- participant answers ------------------------------------------------------------

    async def grant(
        self, room: Room, participant: Participant, request_id: object, scope: object
    ) -> dict[str, Any]:
        request, consent = self._pending(room, participant, request_id)
        try:
            kinds = validate_scope(scope if isinstance(scope, list) else [])
        except ValueError as exc:
            raise RecordingError("bad_request", f"scope: {exc}") from None
        if not kinds <= request.scope:
            raise RecordingError("bad_request", "scope is wider than what was requested")
        token, claims = issue_consent_token(
            self.keys,
            room=room.id,
            subject=participant.identity,
            scope=kinds,
            purpose=PURPOSE,
            notice_text=request.notice,
            ttl_s=CONSENT_TTL_S,
            issuer=self.issuer,
        )
        await self._log(
            request, "consent.granted", participant.identity, participant.identity, claims=claims
        )
        await self._accept(request, consent, token, kinds)
        return {"type": "consent.granted", "token": token, "jti": claims.jti}

    async def present(self, room: Room, participant: Participant, token: object) -> None:
        """A consent token from a trusted issuer, verified exactly like our own."""
        request = self.rooms.get(room.id)
        consent = request.consents.get(participant.id) if request else None
        if request is None or consent is None:
            raise RecordingError("conflict", "no recording request is waiting for you")
        # Record what the token grants of what was requested; verification checks it all.
        needed = unverified_scope(token) & request.scope
        if not needed:
            raise RecordingError("consent_invalid", "the token's scope covers nothing requested")
        await self._accept(request, consent, token, needed, presented=True)

    async def refuse(self, room: Room, participant: Participant, request_id: object) -> None:
        request, consent = self._pending(room, participant, request_id)
        consent.state = "refused"
        request.answers[participant.identity] = ("refused", None)
        await self._log(request, "consent.refused", participant.identity, participant.identity)
        self._announce(room)

    async def withdraw(
        self, room: Room, participant: Participant, jti: object, erase: bool
    ) -> None:
        request = self.rooms.get(room.id)
        consent = request.consents.get(participant.id) if request else None
        if request is None or consent is None or consent.claims is None:
            raise RecordingError("not_found", "you have given no consent in this room")
        if jti is not None and jti not in consent.jtis:
            raise RecordingError("not_found", "no such consent")
        claims = consent.claims
        await self._detach(request, consent, "consent withdrawn", participant.identity)
        consent.state = "withdrawn"
        request.answers[participant.identity] = ("withdrawn", None)
        for revoked in consent.jtis | {claims.jti}:
            await self.revocations.revoke(revoked, claims.expires_at)
        await self._log(
            request, "consent.withdrawn", participant.identity, participant.identity, claims=claims
        )
        self._announce(room)
        if erase:
            for recording_id in consent.recordings:
                report = await asyncio.to_thread(self.store.erase, recording_id)
                await self._log(
                    request,
                    "recording.erased",
                    participant.identity,
                    participant.identity,
                    recording=recording_id,
                    details=report.to_dict(),
                )
            consent.recordings.clear()

    async def withdraw_subject(self, subject: str, actor: str, jti: str | None = None) -> list[str]:
        """Withdraw a person's consents from outside the call (``POST
        /v1/subjects/{subject}/withdraw``, on any node): every consent ``jti`` the ledger
        holds for ``subject`` (or just ``jti``) is revoked. The revocation store tells every
        node, and the node recording that person detaches at once (:meth:`_on_revoked`).
        Returns the ``jti``s withdrawn now (not those revoked before)."""
        granted: dict[str, str | None] = {}  # jti → room
        for record in await self.ledger.records_for_subject(subject):
            entry = record.entry
            if entry.kind == "consent.granted" and entry.jti:
                granted[entry.jti] = entry.room
        if jti is not None:
            if jti not in granted:
                raise RecordingError("not_found", "no such consent")
            granted = {jti: granted[jti]}
        withdrawn: list[str] = []
        until = time.time() + MAX_CONSENT_TTL_S  # the ledger does not keep the token's exp
        for item, room in granted.items():
            if await self.revocations.is_revoked(item):
                continue
            await self.revocations.revoke(item, until)
            await self.ledger.append(
                LedgerEntry(
                    kind="consent.withdrawn",
                    room=room,
                    subject=subject,
                    actor=actor,
                    jti=item,
                    purpose=PURPOSE,
                    details={"how": "api"},
                )
            )
            withdrawn.append(item)
        return withdrawn

    def _pending(
        self, room: Room, participant: Participant, request_id: object
    ) -> tuple[RoomRecording, Consent]:
        request = self.rooms.get(room.id)
        if request is None or request_id != request.id:
            raise RecordingError("not_found", "no such recording request")
        consent = request.consents.get(participant.id)
        if consent is None:
            raise RecordingError("forbidden", "this request was not addressed to you")
        if consent.state == "granted":
            raise RecordingError("conflict", "consent already given")
        return request, consent

    async def _accept(
        self,
        request: RoomRecording,
        consent: Consent,
        token: object,
        needed: frozenset[str],
        *,
        presented: bool = False,
    ) -> None:
        """The recorder's own check of the token, then attach (never before)."""
        participant = consent.participant
        try:
            claims = await verify_consent_token(
                self.keys,
                token,
                room=request.room.id,
                subject=participant.identity,
                needed_scope=needed,
                revocations=self.revocations,
                issuers=self.issuers,
            )
        except ConsentInvalid as exc:
            raise RecordingError("consent_invalid", exc.reason) from None
        if presented:
            await self._log(
                request,
                "consent.granted",
                participant.identity,
                participant.identity,
                claims=claims,
                details={"presented": True},
            )
        consent.claims = claims
        consent.jtis.add(claims.jti)
        consent.state = "granted"
        request.answers[participant.identity] = ("granted", claims)
        self._attach(request, consent)
        self._announce(request.room)

    # --- sinks ------------------------------------------------------------------------

    def _attach(self, request: RoomRecording, consent: Consent) -> None:
        """Start recording this participant's producers in scope (if it has any yet)."""
        if consent.sink is not None or consent.claims is None:
            return
        claims = consent.claims
        producers: dict[str, Producer] = {}
        for producer in request.room.tracks.values():
            if (
                producer.participant_id == consent.participant.id
                and producer.kind in claims.scope
                and producer.kind not in producers
            ):
                producers[producer.kind] = producer
        if not producers:
            return  # producer_added() attaches when the participant publishes
        chosen = list(producers.values())
        loop = asyncio.get_running_loop()
        by_id = {p.id: p for p in chosen}
        try:
            sink = self.store.create(
                room=request.room.id,
                subject=consent.participant.identity,
                consents=[claims],
                tracks=[TrackSpec.from_codec(p.codec, p.id) for p in chosen],
                keyframe_request=lambda track: _request_keyframe(by_id.get(track)),
                loop=loop,
            )
        except (ConsentInvalid, ValueError) as exc:
            log.warning("recording_not_started", room=request.room.id, error=str(exc))
            return
        consent.sink = sink
        consent.recordings.append(sink.recording_id)
        now = time.monotonic()
        for producer in chosen:
            feed = sink.feed(producer.id)
            producer.recorders.append(feed)
            consent.feeds.append((producer, feed))
            producer.request_keyframe(now)
        self._spawn(
            self._log(
                request,
                "recording.started",
                consent.participant.identity,
                "system",
                claims=claims,
                recording=sink.recording_id,
            )
        )

    async def _detach(
        self, request: RoomRecording, consent: Consent, reason: str, actor: str
    ) -> None:
        """Stop feeding the sink now (synchronously), then finish its file."""
        sink, consent.sink = consent.sink, None
        for producer, feed in consent.feeds:
            with contextlib.suppress(ValueError):
                producer.recorders.remove(feed)
        consent.feeds.clear()
        if sink is None:
            return
        sink.stop(reason)
        await self._log(
            request,
            "recording.stopped",
            consent.participant.identity,
            actor,
            recording=sink.recording_id,
            details={"reason": reason},
        )

    # --- room events ------------------------------------------------------------------

    async def participant_joined(self, room: Room, participant: Participant) -> None:
        request = self.rooms.get(room.id)
        if request is None or participant.id in request.consents:
            return
        answer, claims = request.answers.get(participant.identity, ("", None))
        if answer == "granted" and claims is not None and await self._still_valid(claims):
            # Back after a reconnect: the consent given stands (same room, same person).
            request.consents[participant.id] = Consent(
                participant, state="granted", claims=claims, jtis={claims.jti}
            )
        elif answer in ("refused", "withdrawn", "granted"):
            request.consents[participant.id] = Consent(participant, state=answer)
        elif participant.id != request.requested_by:
            await self._ask(request, participant)  # the agent may be on the other shard
        self._announce(room)

    async def _still_valid(self, claims: ConsentClaims) -> bool:
        if claims.expires_at <= time.time():
            return False
        try:
            return not await self.revocations.is_revoked(claims.jti)
        except Exception:  # noqa: BLE001 - fail closed
            return False

    def participant_resumed(self, room: Room, participant: Participant) -> None:
        """A participant took over a new signalling connection (same id, same consent):
        a question it has not answered yet is asked again, nothing else changes."""
        request = self.rooms.get(room.id)
        consent = request.consents.get(participant.id) if request is not None else None
        if request is not None and consent is not None and consent.state == "pending":
            participant.send(_consent_request(request))

    async def participant_left(self, room: Room, participant: Participant) -> None:
        request = self.rooms.get(room.id)
        if request is None:
            return
        consent = request.consents.pop(participant.id, None)
        if consent is not None:
            if consent.state == "pending":
                await self._log(
                    request,
                    "consent.refused",
                    participant.identity,
                    participant.identity,
                    details={"reason": "left"},
                )
            await self._detach(request, consent, "participant left", participant.identity)
        if participant.id == request.requested_by or (request.owner and not room.participants):
            # The other shard of a spanning room keeps a request while its agent is here.
            self._tell(room.id, stop_message(request, "system"))
            for other in request.consents.values():
                await self._detach(request, other, "requester left", "system")
            del self.rooms[room.id]
        self._announce(room)

    def producer_added(self, room: Room, producer: Producer) -> None:
        request = self.rooms.get(room.id)
        consent = request.consents.get(producer.participant_id) if request else None
        if request is not None and consent is not None and consent.state == "granted":
            self._attach(request, consent)
            self._announce(room)

    # --- rooms that span workers ---------------------------------------------------------

    def link_opened(self, room: Room, send: Callable[[dict[str, Any]], None]) -> None:
        """``room`` now spans another worker: tell it about an active request."""
        self._links[room.id] = send
        request = self.rooms.get(room.id)
        if request is not None:
            send(start_message(request))

    def link_message(self, room: Room, message: dict[str, Any]) -> None:
        """A ``recording.*`` message from the other shard: checked now (bad input raises
        ShardProtocolError and ends the link), applied in arrival order."""
        op = message.get("op")
        if op == "recording.start":
            start = parse_start(message)
            self._spawn(self._serial(self._remote_start(room, start)))
        elif op == "recording.stop":
            request_id, actor = parse_stop(message)
            self._spawn(self._serial(self._remote_stop(room, request_id, actor)))
        elif op == "recording.consents":
            request_id, consents = parse_consents(message)
            self._spawn(self._serial(self._remote_consents(room, request_id, consents)))
        else:
            raise ShardProtocolError(f"unknown op {str(op)[:40]!r}")

    async def _serial(self, action: Any) -> None:
        async with self._link_lock:
            await action

    async def _remote_start(self, room: Room, start: RemoteStart) -> None:
        current = self.rooms.get(room.id)
        if current is not None and current.id == start.request:
            current.remote = start.consents
            self._announce(room, tell_shard=False)
            return
        if current is not None:
            if current.id < start.request:
                return  # both agents started at once: the smaller id stands on both shards
            await self._end(current, "superseded by the other shard's request", "system")
        request = RoomRecording(
            start.request,
            room,
            start.scope,
            start.notice,
            start.by,
            requested_by_identity=start.by_identity,
            owner=False,
            remote=start.consents,
        )
        self.rooms[room.id] = request
        for participant in list(room.participants.values()):
            if participant.id != start.by and participant.id not in request.consents:
                await self._ask(request, participant)  # (a join meanwhile asked already)
        self._announce(room)

    async def _remote_consents(
        self, room: Room, request_id: str, consents: dict[str, RemoteConsent]
    ) -> None:
        request = self.rooms.get(room.id)
        if request is not None and request.id == request_id:
            request.remote = consents
            self._announce(room, tell_shard=False)  # no echo

    async def _remote_stop(self, room: Room, request_id: str, actor: str) -> None:
        request = self.rooms.get(room.id)
        if request is not None and request.id == request_id:
            await self._end(request, "stopped by agent", actor)
            self._announce(room)

    async def _end(self, request: RoomRecording, reason: str, actor: str) -> None:
        if self.rooms.get(request.room.id) is request:
            del self.rooms[request.room.id]
        for consent in request.consents.values():
            await self._detach(request, consent, reason, actor)

    def link_closed(self, room: Room) -> None:
        """The other shard is gone: forget its answers; a request that came from it ends
        (its agent is no longer reachable), so this shard's recorders stop."""
        self._links.pop(room.id, None)
        request = self.rooms.get(room.id)
        if request is None:
            return
        request.remote.clear()
        if request.owner:
            self._announce(room)
        else:
            self.rooms.pop(room.id, None)
            self._spawn(self._serial(self._closed_end(request)))

    async def _closed_end(self, request: RoomRecording) -> None:
        await self._end(request, "requester's worker gone", "system")
        self._announce(request.room)

    # --- revocation, expiry, renewal -----------------------------------------------------

    def _on_revoked(self, jti: str | None) -> None:
        """Another worker or node revoked a consent (None: re-check everything)."""
        for request in self.rooms.values():
            for consent in request.consents.values():
                if (
                    consent.claims is not None
                    and consent.sink is not None
                    and (jti is None or consent.claims.jti == jti)
                ):
                    self._spawn(self._recheck(request, consent))

    async def _recheck(self, request: RoomRecording, consent: Consent) -> None:
        claims = consent.claims
        if claims is None or consent.sink is None:
            return
        try:
            revoked = await self.revocations.is_revoked(claims.jti)
        except Exception:  # noqa: BLE001 - fail closed: unreadable state stops recording
            revoked = True
        if revoked:
            await self._detach(request, consent, "consent revoked", "system")
            consent.state = "withdrawn"
            self._announce(request.room)

    async def _renew_loop(self) -> None:
        """Every few seconds: re-check revocation (fail closed) and renew expiring tokens."""
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            for request in list(self.rooms.values()):
                for consent in list(request.consents.values()):
                    await self._recheck(request, consent)
                    try:
                        await self._renew(request, consent)
                    except Exception:
                        log.exception("consent_renewal_failed")

    async def _renew(self, request: RoomRecording, consent: Consent) -> None:
        old = consent.claims
        if old is None or consent.state != "granted":
            return
        if old.expires_at <= time.time():
            # Renewal failed or the participant was away: the sink stopped itself at expiry.
            await self._detach(request, consent, "consent expired", "system")
            consent.state = "expired"
            request.answers.pop(old.subject, None)
            await self._log(request, "consent.expired", old.subject, "system", claims=old)
            self._announce(request.room)
            return
        if consent.sink is None or old.expires_at - time.time() > RENEW_WITHIN_S:
            return
        token, _ = issue_consent_token(
            self.keys,
            room=old.room,
            subject=old.subject,
            scope=old.scope,
            purpose=PURPOSE,
            notice_text=request.notice,
            ttl_s=CONSENT_TTL_S,
            issuer=self.issuer,
        )
        verified = await verify_consent_token(
            self.keys,
            token,
            room=old.room,
            subject=old.subject,
            needed_scope=old.scope,
            revocations=self.revocations,
            issuers=self.issuers,
        )
        await asyncio.to_thread(self.store.renew, consent.sink.recording_id, verified)
        consent.claims = verified
        consent.jtis.add(verified.jti)
        request.answers[old.subject] = ("granted", verified)
        await self._log(
            request,
            "consent.granted",
            old.subject,
            "system",
            claims=verified,
            details={"renewal_of": old.jti},
        )
        consent.participant.send(
            {"type": "consent.granted", "token": token, "jti": verified.jti, "renewed": True}
        )

    # --- plumbing ---------------------------------------------------------------------

    async def _log(
        self,
        request: RoomRecording,
        kind: str,
        subject: str | None,
        actor: str,
        *,
        claims: ConsentClaims | None = None,
        recording: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        event = _WEBHOOK_EVENTS.get(kind)
        if event is not None:
            request.room.hooks.events.emit(
                event,
                room=request.room.describe(),
                subject=subject,
                recording=recording,
                scope=sorted(claims.scope) if claims else sorted(request.scope),
            )
        await self.ledger.append(
            LedgerEntry(
                kind=kind,
                room=request.room.id,
                subject=subject,
                actor=actor,
                notice_sha256=request.notice_sha256,
                method=claims.method if claims else None,
                scope=claims.scope if claims else request.scope,
                purpose=PURPOSE,
                jti=claims.jti if claims else None,
                recording=recording,
                details={"request": request.id, **(details or {})},
            )
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Finish every recording cleanly (SIGTERM): trailers written, files sealed."""
        if self._renewals is not None:
            self._renewals.cancel()
        for request in list(self.rooms.values()):
            for consent in request.consents.values():
                await self._detach(request, consent, "server shutting down", "system")
        self.rooms.clear()
        for sink in self.store.active():
            # Bounded (in the thread too): a stuck worker must not keep the process alive.
            if await asyncio.to_thread(sink.join, SINK_FINISH_TIMEOUT_S) is None:
                log.error("recording_not_finished", recording=sink.recording_id)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._unsubscribe()
        await _close(self.revocations)
        await _close(self.ledger)
        if self._lock_file is not None:
            self._lock_file.close()


def _request_keyframe(producer: Producer | None) -> None:
    if producer is not None:
        producer.request_keyframe(time.monotonic())


async def _close(resource: object) -> None:
    close: Callable[[], Any] | None = getattr(resource, "close", None)
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            await result


def _consent_request(request: RoomRecording) -> dict[str, Any]:
    """``consent.request`` of protocol v1 (``purpose`` is an addition)."""
    return {
        "type": "consent.request",
        "request": request.id,
        "notice": request.notice,
        "scope": sorted(request.scope),
        "by": request.requested_by,
        "purpose": PURPOSE,
    }
