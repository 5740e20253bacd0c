"""Janus VideoRoom (Debian's ``janus`` package) as a :class:`bench.target.Target`.

The bench installs nothing at run time: ``apt-get install janus`` first. Without it (or
without root for the network namespace) :func:`unavailable_reason` says why and the
scenarios report the Janus target as unavailable instead of failing.

How it runs:

* a generated configuration in a temporary folder: ``janus.jcfg`` with only the
  VideoRoom plugin and the WebSocket transport loaded (the plugin and transport folders
  are temporary folders holding a symlink to just those two ``.so`` files; event handlers
  and loggers folders are empty), the Admin API off, no STUN/TURN server, no mDNS, ICE
  candidates only on the target address, the WebSocket API on that address only;
* inside the bench's own network namespace (:mod:`bench.netns`): Janus 1.1.2 never gathers
  on an ``IFF_LOOPBACK`` interface, so it gets a veth address there instead;
* pinned to one core (``taskset -c CPU`` before ``exec``, so every thread it starts,
  one per handle, stays on that core): its CPU per forwarded packet compares with one
  event-loop worker of ours pinned the same way;
* stopped by its PID (SIGTERM, then SIGKILL).

The VideoRoom API is driven with aiortc peers: a room per bench room (``create``), a
publisher handle per publishing participant (``join`` + ``configure`` with the offer),
and one multistream subscriber handle per subscribing participant (``join`` as
``subscriber`` with the feeds, ``start`` with the answer; later feeds are added with
``subscribe``/``updated``/``start``), as janus.js would.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from bench.netns import NetNamespace
from bench.procfs import (
    read_all_threads_voluntary_switches,
    read_cpu_seconds,
    read_rss_bytes,
)
from bench.target import PacketCounters, Peer, RtpTap, install_subscriber_tap
from signaling.client import Impairment, impair_peer_connection, rtc_configuration

__all__ = ["JanusServer", "janus_configs", "unavailable_reason"]

WS_PORT = 8188
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 15.0
_LOG_TAIL = 300
_PLUGIN = "libjanus_videoroom.so"
_TRANSPORT = "libjanus_websockets.so"
_VIDEOROOM = "janus.plugin.videoroom"


def _janus_lib_dir() -> Path | None:
    for candidate in [*sorted(glob.glob("/usr/lib/*/janus")), "/usr/lib/janus",
                      "/opt/janus/lib/janus"]:
        path = Path(candidate)
        if (path / "plugins" / _PLUGIN).exists() and (path / "transports" / _TRANSPORT).exists():
            return path
    return None


def unavailable_reason() -> str | None:
    """Why the Janus target cannot run here, or None."""
    if shutil.which("janus") is None:
        return "Janus is not installed (Debian: `apt-get install janus`)"
    if _janus_lib_dir() is None:
        return f"Janus is installed but its {_PLUGIN} / {_TRANSPORT} were not found"
    if shutil.which("taskset") is None:
        return "`taskset` (util-linux) is not installed"
    return NetNamespace.unavailable_reason()


def janus_configs(folder: Path, address: str, ws_port: int, debug_level: int = 3) -> dict[str, str]:
    """The generated configuration files (name → text) for a loopback-only Janus."""
    return {
        "janus.jcfg": f"""general: {{
	configs_folder = "{folder}"
	plugins_folder = "{folder / "plugins"}"
	transports_folder = "{folder / "transports"}"
	events_folder = "{folder / "events"}"
	loggers_folder = "{folder / "loggers"}"
	debug_level = {debug_level}
	debug_colors = false
	interface = "{address}"
	server_name = "oktorus-bench"
	session_timeout = 0
	hide_dependencies = true
	protected_folders = ["/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys",
		"/usr", "/var"]
}}
certificates: {{
}}
media: {{
	ipv6 = false
	no_media_timer = 0
}}
nat: {{
	nice_debug = false
	ignore_mdns = true
	ice_enforce_list = "{address}"
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
	broadcast = false
}}
""",
        "janus.transport.websockets.jcfg": f"""general: {{
	json = "compact"
	ws = true
	ws_port = {ws_port}
	ws_ip = "{address}"
	wss = false
}}
admin: {{
	admin_ws = false
	admin_wss = false
}}
""",
        f"{_VIDEOROOM}.jcfg": """general: {
	string_ids = false
}
""",
    }


class JanusServer:
    """One Janus process in the bench's network namespace, pinned to ``cpu``."""

    name = "janus"

    def __init__(self, cpu: int | None = None) -> None:
        self.cpu = cpu
        self._ns: NetNamespace | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.log_tail: deque[str] = deque(maxlen=_LOG_TAIL)
        self.version = ""
        self._rooms = itertools.count(1000)
        self._room_ids: dict[str, int] = {}
        self._admin: JanusSession | None = None

    # lifecycle (blocking)

    def start(self) -> JanusServer:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        lib = _janus_lib_dir()
        assert lib is not None
        self._ns = NetNamespace().create()
        try:
            self._tmp = tempfile.TemporaryDirectory(prefix="bench-janus-")
            folder = Path(self._tmp.name)
            for sub in ("plugins", "transports", "events", "loggers"):
                (folder / sub).mkdir()
            (folder / "plugins" / _PLUGIN).symlink_to(lib / "plugins" / _PLUGIN)
            (folder / "transports" / _TRANSPORT).symlink_to(lib / "transports" / _TRANSPORT)
            for filename, text in janus_configs(folder, self._ns.target_address, WS_PORT).items():
                (folder / filename).write_text(text)
            pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
            self._proc = subprocess.Popen(
                [*self._ns.exec_prefix(), *pin, "janus", "-C", str(folder / "janus.jcfg"),
                 "-F", str(folder), "-o"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", cwd=folder,
            )
            threading.Thread(target=self._drain_log, name="janus-log", daemon=True).start()
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _drain_log(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            self.log_tail.append(line)
            if not self.version and "Janus version:" in line:
                self.version = line.split("Janus version:", 1)[1].strip()

    def _wait_listening(self) -> None:
        assert self._ns is not None and self._proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._ns.entered():
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError("Janus exited during start-up:\n" + "".join(self.log_tail))
                with contextlib.suppress(OSError), socket.create_connection(
                    (self._ns.target_address, WS_PORT), timeout=0.5
                ):
                    return
                time.sleep(0.05)
        raise RuntimeError(
            f"Janus did not listen within {STARTUP_TIMEOUT_S:g} s:\n" + "".join(self.log_tail)
        )

    def stop(self) -> int | None:
        code: int | None = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    code = proc.wait(timeout=5)
            else:
                code = proc.returncode
            if code is not None and code < 0 and -code == signal.SIGTERM:
                code = 0
        if self._ns is not None:
            self._ns.delete()
            self._ns = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    async def aclose(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    # Target: process figures

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("Janus is not started")
        return self._proc.pid

    @property
    def description(self) -> str:
        pinned = f"pinned to CPU {self.cpu} (all threads)" if self.cpu is not None else "not pinned"
        return (
            f"Janus {self.version or '?'} VideoRoom (Debian package), WebSocket API, "
            f"thread per handle, {pinned}, in network namespace "
            f"{self._ns.name if self._ns else '?'} (veth address, kernel loopback path)"
        )

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return read_rss_bytes(self.pid)

    def wakeups(self) -> int | None:
        """Summed over its threads (one per handle): every hand-off to a handle's thread
        is a wake-up."""
        return read_all_threads_voluntary_switches(self.pid)

    async def packet_counters(self) -> PacketCounters | None:
        return None  # the Admin API is off: forwarded packets are counted by subscribers

    # Target: network and sessions

    @property
    def host_addresses(self) -> list[str]:
        assert self._ns is not None
        return [self._ns.generator_address]

    def network(self) -> contextlib.AbstractContextManager[None]:
        assert self._ns is not None
        return self._ns.entered()

    @property
    def ws_url(self) -> str:
        assert self._ns is not None
        return f"ws://{self._ns.target_address}:{WS_PORT}/"

    async def open_room(self, room: str, publishers: int) -> None:
        if self._admin is None:
            self._admin = await JanusSession.connect(self.ws_url)
            await self._admin.attach()
        room_id = next(self._rooms)
        handle = self._admin.handles[0]
        reply = await self._admin.message(handle, {
            "request": "create", "room": room_id, "publishers": max(1, publishers),
            "bitrate": 0, "fir_freq": 0, "audiocodec": "opus", "videocodec": "vp8",
            "notify_joining": False, "permanent": False,
        })
        data = reply.get("plugindata", {}).get("data", {})
        if data.get("videoroom") != "created":
            raise RuntimeError(f"Janus did not create the room: {reply}")
        self._room_ids[room] = room_id

    async def join(
        self,
        room: str,
        identity: str,
        *,
        tracks: Sequence[MediaStreamTrack] = (),
        subscribe: bool = True,
        tap: RtpTap | None = None,
        swallow: bool = True,
        timeout: float = REQUEST_TIMEOUT_S,
        impair_send: Impairment | None = None,
        impair_receive: Impairment | None = None,
    ) -> JanusPeer:
        room_id = self._room_ids.get(room)
        if room_id is None:
            raise RuntimeError(f"open_room({room!r}) first")
        peer = JanusPeer(identity, room_id, tap, swallow, timeout)
        peer.impair = (impair_send, impair_receive)
        try:
            async with asyncio.timeout(timeout):
                await peer.start(self.ws_url, tracks, subscribe)
        except BaseException:
            await peer.close()
            raise
        return peer


class JanusError(RuntimeError):
    pass


class JanusSession:
    """One Janus session over its own WebSocket: requests matched by transaction."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self.session_id = 0
        self.handles: list[int] = []
        self._waiters: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str) -> JanusSession:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        try:
            ws = await http.ws_connect(url, protocols=("janus-protocol",), heartbeat=None)
        except BaseException:
            await http.close()
            raise
        session = cls(http, ws)
        session._reader = asyncio.get_running_loop().create_task(session._read())
        reply = await session.request({"janus": "create"})
        session.session_id = int(reply["data"]["id"])
        return session

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            for item in data if isinstance(data, list) else [data]:
                queue = self._waiters.get(str(item.get("transaction", "")))
                if queue is not None:
                    queue.put_nowait(item)
                for listener in self._listeners:
                    listener(item)

    async def request(
        self, message: dict[str, Any], *, wait_event: bool = False,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        transaction = secrets.token_hex(8)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[transaction] = queue
        body = dict(message, transaction=transaction)
        if self.session_id:
            body["session_id"] = self.session_id
        try:
            await self._ws.send_str(json.dumps(body))
            async with asyncio.timeout(timeout):
                while True:
                    reply = await queue.get()
                    kind = reply.get("janus")
                    if kind == "error":
                        raise JanusError(f"{message.get('janus')}: {reply.get('error')}")
                    if kind == "ack" and wait_event:
                        continue
                    if kind in ("success", "ack", "event"):
                        data = reply.get("plugindata", {}).get("data", {})
                        if "error" in data:
                            raise JanusError(f"{message.get('body')}: {data['error']}")
                        return reply
        finally:
            self._waiters.pop(transaction, None)

    async def attach(self) -> int:
        reply = await self.request({"janus": "attach", "plugin": _VIDEOROOM})
        handle = int(reply["data"]["id"])
        self.handles.append(handle)
        return handle

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None,
        *, wait_event: bool = False,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"janus": "message", "handle_id": handle, "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        return await self.request(message, wait_event=wait_event)

    async def trickle_done(self, handle: int) -> None:
        """Our candidates are all in the SDP (aiortc gathers before it offers/answers)."""
        await self.request(
            {"janus": "trickle", "handle_id": handle, "candidate": {"completed": True}}
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.session_id and not self._ws.closed:
                await self._ws.send_str(json.dumps({
                    "janus": "destroy", "session_id": self.session_id,
                    "transaction": secrets.token_hex(8),
                }))
        with contextlib.suppress(Exception):
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self._http.close()


def _local_jsep(pc: RTCPeerConnection) -> dict[str, str]:
    description = pc.localDescription
    return {"type": description.type, "sdp": description.sdp}


class JanusPeer(Peer):
    """A participant on Janus: a publisher handle and/or a multistream subscriber handle,
    both on one session (one WebSocket), each with its own aiortc peer connection."""

    def __init__(
        self, identity: str, room_id: int, tap: RtpTap | None, swallow: bool, timeout: float
    ) -> None:
        super().__init__(identity)
        self._room_id = room_id
        self._tap = tap
        self._swallow = swallow
        self._timeout = timeout
        self._session: JanusSession | None = None
        self._publisher: int | None = None
        self._subscriber: int | None = None
        self._feeds: set[int] = set()
        self.feed_id: int | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._publisher_up = asyncio.Event()
        self._subscribe_wanted = False
        self.impair: tuple[Impairment | None, Impairment | None] = (None, None)
        self._subscribe_impaired = False

    async def start(
        self, url: str, tracks: Sequence[MediaStreamTrack], subscribe: bool
    ) -> None:
        self._session = session = await JanusSession.connect(url)
        self._subscribe_wanted = subscribe
        others: list[int] = []
        if tracks:
            self._publisher = await session.attach()
            session.add_listener(self._on_event)
            joined = await session.message(self._publisher, {
                "request": "join", "ptype": "publisher", "room": self._room_id,
                "display": self.identity,
            }, wait_event=True)
            data = joined["plugindata"]["data"]
            self.feed_id = int(data["id"])
            others = [int(p["id"]) for p in data.get("publishers", [])]
            pc = self.publish_pc = RTCPeerConnection(rtc_configuration())
            for track in tracks:
                pc.addTransceiver(track, direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            impair_peer_connection(pc, *self.impair, stream=0)
            reply = await session.message(
                self._publisher,
                {"request": "configure", "audio": True, "video": True},
                _local_jsep(pc), wait_event=True,
            )
            jsep = reply.get("jsep")
            if not jsep:
                raise JanusError(f"configure: no answer in {reply}")
            await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))
            await session.trickle_done(self._publisher)
            self.track_ids = [f"{self.feed_id}:{t.kind}" for t in tracks]
            # Janus lists a participant as a publisher only once its PeerConnection is up.
            await self._publisher_up.wait()
        elif subscribe:
            handle = await session.attach()
            reply = await session.message(
                handle, {"request": "listparticipants", "room": self._room_id}
            )
            others = [
                int(p["id"])
                for p in reply["plugindata"]["data"].get("participants", [])
                if p.get("publisher")
            ]
        if subscribe and others:
            await self._subscribe(others)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("sender") != self._publisher:
            return
        if event.get("janus") == "webrtcup":
            self._publisher_up.set()
        if event.get("janus") != "event" or self._subscribe_wanted is False:
            return
        data = event.get("plugindata", {}).get("data", {})
        publishers = data.get("publishers")
        if data.get("videoroom") == "event" and publishers:
            feeds = [int(p["id"]) for p in publishers]
            task = asyncio.get_running_loop().create_task(self._subscribe(feeds))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _subscribe(self, feeds: list[int]) -> None:
        async with self._lock:
            fresh = [f for f in feeds if f not in self._feeds and f != self.feed_id]
            if not fresh or self._session is None:
                return
            self._feeds.update(fresh)
            session = self._session
            streams = [{"feed": f} for f in fresh]
            if self._subscriber is None:
                self._subscriber = await session.attach()
                reply = await session.message(self._subscriber, {
                    "request": "join", "ptype": "subscriber", "room": self._room_id,
                    "streams": streams, "use_msid": False,
                }, wait_event=True)
            else:
                reply = await session.message(
                    self._subscriber, {"request": "subscribe", "streams": streams},
                    wait_event=True,
                )
            jsep = reply.get("jsep")
            if not jsep:
                raise JanusError(f"subscribe: no offer in {reply}")
            if self.subscribe_pc is None:
                self.subscribe_pc = RTCPeerConnection(rtc_configuration())
            pc = self.subscribe_pc
            await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))
            if self._tap is not None and not self.tapped:
                install_subscriber_tap(self, self._tap, self._swallow)
            await pc.setLocalDescription(await pc.createAnswer())
            if not self._subscribe_impaired:
                self._subscribe_impaired = True
                impair_peer_connection(pc, *self.impair, stream=2)
            await session.message(
                self._subscriber, {"request": "start"}, _local_jsep(pc), wait_event=True
            )
            await session.trickle_done(self._subscriber)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await pc.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
