"""Shard link: one room living on two workers, each worker holding one shard of it.

Each shard keeps its own participants; the link tells the other shard what protocol v1
clients must see (participant.joined/left, track.published/unpublished/updated,
speaker.changed), so a participant on either worker sees what it would on one worker:
``joined`` lists everyone and every track. The other shard's tracks appear here as
:class:`~sfu.pipe.PipedProducer` s in ``room.tracks``; a piped producer that gains its first
subscriber asks the other side to pipe it (``demand``), and stops it when the last one goes,
so only tracks with remote subscribers cross the pipe.

The link is transport-agnostic: messages are JSON-ready dicts handed to ``send``; the
workers carry them over a WebSocket on their private sockets (:mod:`sfu.workers.span`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from sfu.pipe import PipedProducer, PipeEndpoint, codec_from_wire, codec_to_wire

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.producer import Producer
    from sfu.room import Room

__all__ = ["EMPTY_GRACE_S", "ShardLink", "ShardProtocolError"]

log = structlog.get_logger(__name__)

EMPTY_GRACE_S = 2.0  # a spill shard left empty this long closes its link (joins may race)
MAX_REMOTE = 10_000  # bound what the other shard can make us hold


class ShardProtocolError(ValueError):
    """The other shard sent something this link does not understand."""


def _text(data: Any, key: str, limit: int = 128) -> str:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ShardProtocolError(f"{key!r} must be a string of 1..{limit} characters")
    return value


def _participant(data: Any) -> dict[str, str]:
    return {
        "id": _text(data, "id"),
        "identity": _text(data, "identity", 256),
        "role": _text(data, "role", 64),
    }


def track_info(producer: Producer) -> dict[str, Any]:
    """What the other shard needs to make a piped producer of ``producer``."""
    return {
        **producer.describe(),
        "mid": producer.mid,
        "ssrcs": [layer.ssrc for layer in producer.layers],  # lowest layer first
        "rids": [layer.rid for layer in reversed(producer.layers) if layer.rid is not None],
        "favour_resolution": producer.favour_resolution,
        "audio_level_id": producer.audio_level_id,
        "codec": codec_to_wire(producer.codec),
    }


class ShardLink:
    """This worker's end of a spanning room: implements the room's ``ShardHooks``."""

    def __init__(
        self,
        room: Room,
        endpoint: PipeEndpoint,
        send: Callable[[dict[str, Any]], None],
        *,
        home: bool,
        on_closed: Callable[[ShardLink], None] | None = None,
    ) -> None:
        self.room = room
        self.endpoint = endpoint
        self._send = send
        self._home = home
        self._on_closed = on_closed
        self.remote: dict[str, dict[str, str]] = {}  # the other shard's participants
        self.piped: dict[str, PipedProducer] = {}  # the other shard's tracks, by track id
        self.closed = False
        self._empty_timer: asyncio.TimerHandle | None = None
        endpoint.on_layer = self._layer_known
        # ``recording.*`` messages go to the recorder (:mod:`recorder.span_wire`); None:
        # recording is disabled here, and they are ignored.
        self.on_recording: Callable[[dict[str, Any]], None] | None = None

    # --- ShardHooks: what happened on this worker ---------------------------------------

    @property
    def home(self) -> bool:
        return self._home

    def is_remote(self, track_id: str) -> bool:
        return track_id in self.piped

    def remote_participants(self) -> list[dict[str, str]]:
        return list(self.remote.values())

    def participant_joined(self, participant: Participant) -> None:
        if self._empty_timer is not None:
            self._empty_timer.cancel()
            self._empty_timer = None
        self.send({"op": "participant.joined", "participant": participant.describe()})

    def participant_left(self, participant: Participant) -> None:
        self.send({"op": "participant.left", "participant": participant.describe()})

    def track_published(self, producer: Producer) -> None:
        if not self.is_remote(producer.id):
            self.send({"op": "track.published", "track": track_info(producer)})

    def track_unpublished(self, producer: Producer) -> None:
        if self.is_remote(producer.id):
            return
        self.endpoint.stop_sending(producer)
        self.send({"op": "track.unpublished", "track": producer.describe()})

    def track_updated(self, producer: Producer) -> None:
        if not self.is_remote(producer.id):
            self.send({"op": "track.updated", "track": producer.describe()})

    def speakers_changed(self, speakers: list[str]) -> None:
        if self._home:
            self.send({"op": "speaker.changed", "speakers": speakers})

    def room_empty(self) -> None:
        """A spill shard with nobody left closes its link after a grace period."""
        if self._home or self.closed or self._empty_timer is not None:
            return
        self._empty_timer = asyncio.get_running_loop().call_later(
            EMPTY_GRACE_S, self._close_if_empty
        )

    def _close_if_empty(self) -> None:
        self._empty_timer = None
        if self.room.empty:
            self.close("empty")

    # --- the link's own messages ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This shard's participants and its own tracks (sent when the link opens)."""
        return {
            "participants": [p.describe() for p in self.room.participants.values()],
            "tracks": [
                track_info(p) for p in self.room.tracks.values() if not self.is_remote(p.id)
            ],
        }

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self._send(message)

    def apply_snapshot(self, snapshot: Any) -> None:
        if not isinstance(snapshot, dict):
            raise ShardProtocolError("'state' must be an object")
        for participant in snapshot.get("participants") or []:
            self._on_joined(participant)
        for track in snapshot.get("tracks") or []:
            self._on_published(track)

    def on_message(self, message: Any) -> None:
        """One message from the other shard; bad input raises ShardProtocolError."""
        if not isinstance(message, dict):
            raise ShardProtocolError("a message must be an object")
        op = message.get("op")
        if op == "participant.joined":
            self._on_joined(message.get("participant"))
        elif op == "participant.left":
            self._on_left(message.get("participant"))
        elif op == "track.published":
            self._on_published(message.get("track"))
        elif op == "track.unpublished":
            self._on_unpublished(_text(message.get("track"), "id"))
        elif op == "track.updated":
            self._on_updated(message.get("track"))
        elif op == "speaker.changed":
            speakers = message.get("speakers")
            if not isinstance(speakers, list) or not all(isinstance(s, str) for s in speakers):
                raise ShardProtocolError("'speakers' must be a list of ids")
            self.room.broadcast({"type": "speaker.changed", "speakers": speakers[:MAX_REMOTE]})
        elif op == "track.layer":
            self._on_layer(message)
        elif op == "demand":
            on = message.get("on")
            if not isinstance(on, bool):
                raise ShardProtocolError("'on' must be a boolean")
            self._on_demand(_text(message, "track"), on)
        elif isinstance(op, str) and op.startswith("recording."):
            if self.on_recording is not None:
                self.on_recording(message)
        else:
            raise ShardProtocolError(f"unknown op {str(op)[:40]!r}")

    def _on_joined(self, data: Any) -> None:
        participant = _participant(data)
        if participant["id"] in self.remote or len(self.remote) >= MAX_REMOTE:
            return
        self.remote[participant["id"]] = participant
        self.room.broadcast({"type": "participant.joined", "participant": participant})

    def _on_left(self, data: Any) -> None:
        participant = self.remote.pop(_text(data, "id"), None)
        if participant is not None:
            self.room.broadcast({"type": "participant.left", "participant": participant})

    def _on_published(self, data: Any) -> None:
        track_id = _text(data, "id", 64)
        if track_id in self.room.tracks or len(self.piped) >= MAX_REMOTE:
            return
        assert isinstance(data, dict)
        kind = _text(data, "kind", 16)
        ssrcs, rids = data.get("ssrcs"), data.get("rids") or []
        level_id = data.get("audio_level_id", 0)
        if (
            kind not in ("audio", "video")
            or not isinstance(ssrcs, list)
            or not 1 <= len(ssrcs) <= 3
        ):
            raise ShardProtocolError("a track needs kind audio/video and 1..3 layer ssrcs")
        if not all(s is None or (isinstance(s, int) and 0 <= s < 2**32) for s in ssrcs):
            raise ShardProtocolError("a layer ssrc must be a 32-bit number or null")
        if not isinstance(rids, list) or not all(isinstance(r, str) and len(r) <= 16 for r in rids):
            raise ShardProtocolError("'rids' must be a list of short strings")
        if len(ssrcs) != (len(rids) if len(rids) > 1 else 1):
            raise ShardProtocolError("one ssrc per layer")
        if not isinstance(level_id, int) or not 0 <= level_id < 256:
            raise ShardProtocolError("'audio_level_id' must be in 0..255")
        source = data.get("source")
        try:
            codec = codec_from_wire(data["codec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardProtocolError(f"bad codec ({type(exc).__name__})") from None
        producer = self.endpoint.make_piped(
            track_id=track_id,
            participant_id=_text(data, "participant"),
            kind=kind,
            mid=_text(data, "mid", 32),
            codec=codec,
            ssrcs=ssrcs,
            audio_level_id=level_id,
            muted=data.get("muted") is True,
            on_demand=self._demand_changed,
            rids=rids,
            source=source if isinstance(source, str) and len(source) <= 16 else None,
            favour_resolution=data.get("favour_resolution") is True,
        )
        if producer is None:
            log.warning("shard_track_ssrc_taken", room=self.room.id, track=track_id, ssrcs=ssrcs)
            return
        self.piped[track_id] = producer
        self.room.producer_added(producer)

    def _on_layer(self, message: dict[str, Any]) -> None:
        producer = self.piped.get(_text(message, "track", 64))
        index, ssrc = message.get("index"), message.get("ssrc")
        if not isinstance(index, int) or not isinstance(ssrc, int) or not 0 <= ssrc < 2**32:
            raise ShardProtocolError("'track.layer' needs an index and a 32-bit ssrc")
        if producer is not None and not self.endpoint.learn_layer(producer, index, ssrc):
            log.warning("shard_track_ssrc_taken", room=self.room.id, track=producer.id, ssrc=ssrc)

    def _layer_known(self, producer: Producer, index: int) -> None:
        """Our sink's first packet of a layer: the other side routes its SSRC from now on."""
        ssrc = producer.layers[index].ssrc
        self.send({"op": "track.layer", "track": producer.id, "index": index, "ssrc": ssrc})

    def _on_unpublished(self, track_id: str) -> None:
        producer = self.piped.get(track_id)
        if producer is None:
            return
        self.room.producer_removed(producer)  # still listed as remote while it reports
        del self.piped[track_id]
        self.endpoint.remove_piped(producer)
        producer.close()

    def _on_updated(self, data: Any) -> None:
        producer = self.piped.get(_text(data, "id", 64))
        muted = data.get("muted") if isinstance(data, dict) else None
        if producer is None or not isinstance(muted, bool):
            return
        self.room.set_muted(producer, muted, time.monotonic())

    def _on_demand(self, track_id: str, on: bool) -> None:
        producer = self.room.tracks.get(track_id)
        if producer is None or self.is_remote(track_id):
            return  # gone meanwhile; never re-pipe what came from the other side
        if on:
            self.endpoint.start_sending(producer)
        else:
            self.endpoint.stop_sending(producer)

    def _demand_changed(self, producer: PipedProducer, on: bool) -> None:
        self.send({"op": "demand", "track": producer.id, "on": on})

    # --- closing ------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """The link ended (either side closed, or the other worker died): forget its part."""
        if self.closed:
            return
        self.closed = True
        if self._empty_timer is not None:
            self._empty_timer.cancel()
            self._empty_timer = None
        for track_id in list(self.piped):
            self._on_unpublished(track_id)
        for participant_id in list(self.remote):
            self._on_left({"id": participant_id})
        self.endpoint.close()
        if self.room.shard is self:
            self.room.shard = None
            self.room.finish_if_empty()  # the home's room ends when both shards have
        log.info("shard_link_closed", room=self.room.id, home=self._home, reason=reason)
        if self._on_closed is not None:
            self._on_closed(self)
