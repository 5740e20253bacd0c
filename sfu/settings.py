"""Server configuration: one frozen :class:`Settings` built from CLI flags and ``SFU_*`` variables.

Precedence is *flag > environment > default*. An environment variable that is empty (or only
whitespace) counts as unset, so ``SFU_ANNOUNCE_IP=`` in a compose file means "no announce IP".

Build it with :meth:`Settings.from_env_and_args`::

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    settings = Settings.from_env_and_args(parser.parse_args(), os.environ)

or construct ``Settings(...)`` directly (tests): every field is validated in ``__post_init__``
either way, and every problem raises :class:`SettingsError` naming the flag, variable or field
at fault.

=======================  ======================  ====================  ==========================
field                    environment             flag                  default
=======================  ======================  ====================  ==========================
host                     SFU_HOST                --host                127.0.0.1
port                     SFU_PORT                --port                8080 (0: any free port)
data_dir                 SFU_DATA_DIR            --data-dir            ./sfu-data
log_level                SFU_LOG_LEVEL           --log-level           info
log_format               SFU_LOG_FORMAT          --log-format          auto (console on a TTY)
ice_hosts                SFU_ICE_HOSTS (a,b,..)  --ice-host (repeat)   127.0.0.1
announce_ip              SFU_ANNOUNCE_IP         --announce-ip         none
ice_servers              SFU_ICE_SERVERS (JSON)  --ice-servers         [] (no public STUN)
issuer                   SFU_ISSUER              --issuer              oktorus-sfu
token_leeway_s           SFU_TOKEN_LEEWAY        --token-leeway        10
producer_timeout_s       SFU_PRODUCER_TIMEOUT    --producer-timeout    15
tls_cert                 SFU_TLS_CERT            --tls-cert            none (plain http/ws)
tls_key                  SFU_TLS_KEY             --tls-key             none
tls_self_signed          SFU_TLS_SELF_SIGNED     --tls-self-signed     off
tls_reload_interval_s    SFU_TLS_RELOAD_INTERVAL --tls-reload-interval 10
allow_insecure_http      SFU_ALLOW_INSECURE_HTTP --allow-insecure-http off (http: loopback only)
turn_uris                SFU_TURN_URIS (a,b,..)  --turn-uri (repeat)   none
turn_secret              SFU_TURN_SECRET         --turn-secret         none (secret)
turn_ttl_s               SFU_TURN_TTL            --turn-ttl            86400
webhook_urls             SFU_WEBHOOK_URLS (a,..) --webhook-url (rep.)  none
webhook_key              SFU_WEBHOOK_KEY         --webhook-key         none (secret, >= 32 chars)
webhook_timeout_s        SFU_WEBHOOK_TIMEOUT     --webhook-timeout     5
webhook_retry_max_s      SFU_WEBHOOK_RETRY_MAX   --webhook-retry-max   30
webhook_queue_size       SFU_WEBHOOK_QUEUE_SIZE  --webhook-queue-size  10000 (per URL)
redis_url                SFU_REDIS_URL           --redis               none (cluster, consent...)
node_id                  SFU_NODE_ID             --node-id             <hostname>-<pid>
public_url               SFU_PUBLIC_URL          --public-url          ws(s)://host:port/v1/signal
cluster_ttl_s            SFU_CLUSTER_TTL         --cluster-ttl         3 (node and room claim TTL)
placement                SFU_PLACEMENT           --placement           local (or least-loaded)
drain_deadline_s         SFU_DRAIN_DEADLINE      --drain-deadline      300
workers                  SFU_WORKERS             --workers             1 (N, or auto: one per core)
ice_port_range           SFU_ICE_PORT_RANGE      --ice-port-range      none (any free UDP port)
room_span_subscribers    SFU_ROOM_SPAN_SUBSCRIBERS --room-span-subscribers 0 (never span workers)
room_span_cpu            SFU_ROOM_SPAN_CPU       --room-span-cpu       0 (no CPU limit)
resume_window_s          SFU_RESUME_WINDOW       --resume-window       30 (0: no resumption)
max_message_bytes        -                       -                     65536
subscriber_queue_bytes   -                       -                     262144 (256 KiB)
=======================  ======================  ====================  ==========================
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_ISSUER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OPTIONS",
    "PLACEMENTS",
    "IceServer",
    "Option",
    "Settings",
    "SettingsError",
    "add_serve_arguments",
    "is_loopback_host",
    "usable_cores",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path("sfu-data")
DEFAULT_ISSUER = "oktorus-sfu"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")
PLACEMENTS = ("local", "least-loaded")

_MAX_LEEWAY_S = 300.0
_MAX_PRODUCER_TIMEOUT_S = 3600.0
_MAX_ISSUER_LEN = 128
_ICE_SERVER_KEYS = frozenset({"urls", "username", "credential"})
_ICE_URL_RE = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<rest>[^\s?#]+)(?:\?transport=(?:udp|tcp))?$"
)
_HOSTNAME_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_TURN_TTL_S = 7 * 86400.0
_MAX_DRAIN_DEADLINE_S = 86400.0
_MAX_RESUME_WINDOW_S = 3600.0
_MIN_WEBHOOK_KEY_LEN = 32
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the flag/variable/field at fault."""


class IceServer(TypedDict):
    """One RTCIceServer as sent to clients in ``joined.ice_servers``; ``urls`` is always a list."""

    urls: list[str]
    username: NotRequired[str]
    credential: NotRequired[str]


# --------------------------------------------------------------------------- value checks
# Each ``_check_*`` validates an already-typed value (raising SettingsError without a source
# prefix); each ``_parse_*`` turns a flag/variable string into that typed value.


def _check_ip(value: object) -> None:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        raise SettingsError(f"not an IP address: {value!r}") from None


def _check_host(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise SettingsError("must be a non-empty host name or IP address")
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOSTNAME_LABEL_RE.match(label) for label in labels):
        raise SettingsError(f"not a valid host name or IP address: {value!r}")


def _parse_host(raw: str) -> str:
    value = raw.strip()
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value


def _check_port(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError("must be an integer")
    if not 0 <= value <= 65535:
        raise SettingsError(f"must be in 0..65535 (0 picks a free port), got {value}")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip(), 10)
    except ValueError:
        raise SettingsError(f"not an integer: {raw!r}") from None


def _check_data_dir(value: object) -> None:
    if not isinstance(value, Path):
        raise SettingsError("must be a pathlib.Path")
    if not str(value) or "\x00" in str(value):
        raise SettingsError("must be a non-empty path")


def _parse_path(raw: str) -> Path:
    if not raw.strip():
        raise SettingsError("must be a non-empty path")
    return Path(raw).expanduser()


def _check_choice(choices: Sequence[str]) -> Callable[[object], None]:
    def check(value: object) -> None:
        if value not in choices:
            raise SettingsError(f"must be one of {', '.join(choices)}; got {value!r}")

    return check


def _parse_lower(raw: str) -> str:
    return raw.strip().lower()


def _ip(value: str, *, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise SettingsError(f"{what} is not an IP address: {value!r}") from None
    if ip.is_unspecified or ip.is_multicast:
        raise SettingsError(f"{what} must be a unicast interface address, got {value!r}")
    return ip


def _check_ice_hosts(value: object) -> None:
    if not isinstance(value, tuple) or not value:
        raise SettingsError("must be a non-empty tuple of IP addresses")
    for item in value:
        if not isinstance(item, str):
            raise SettingsError("must be a tuple of IP address strings")
        if _ip(item, what="ICE host").compressed != item:
            raise SettingsError(f"ICE host must be written in compressed form: {item!r}")
    if len(set(value)) != len(value):
        raise SettingsError("ICE host addresses must be unique")


def _parse_ice_hosts(raw: str) -> tuple[str, ...]:
    hosts: list[str] = []
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        compressed = _ip(item, what="ICE host").compressed
        if compressed not in hosts:
            hosts.append(compressed)
    if not hosts:
        raise SettingsError("needs at least one IP address")
    return tuple(hosts)


def _check_announce_ip(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise SettingsError("must be an IP address string or None")
    if _ip(value, what="announce IP").compressed != value:
        raise SettingsError(f"announce IP must be written in compressed form: {value!r}")


def _parse_announce_ip(raw: str) -> str:
    return _ip(raw.strip(), what="announce IP").compressed


def _check_ice_server(entry: object, index: int) -> None:
    where = f"ice server #{index}"
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} must be an object with 'urls'")
    unknown = set(entry) - _ICE_SERVER_KEYS
    if unknown:
        raise SettingsError(
            f"{where} has unknown keys {sorted(map(str, unknown))}; "
            "allowed: urls, username, credential"
        )
    urls = entry.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise SettingsError(f"{where}: 'urls' must be a URL string or a non-empty list of them")
    needs_credentials = False
    for url in urls:
        match = _ICE_URL_RE.match(url)
        if match is None:
            raise SettingsError(f"{where}: not a stun:/stuns:/turn:/turns: URL: {url!r}")
        scheme = match.group("scheme")
        if scheme.startswith("stun") and "?" in url:
            raise SettingsError(f"{where}: a STUN URL takes no query: {url!r}")
        needs_credentials = needs_credentials or scheme.startswith("turn")
    for key in ("username", "credential"):
        if key in entry and not isinstance(entry[key], str):
            raise SettingsError(f"{where}: {key!r} must be a string")
    if needs_credentials and not (entry.get("username") and entry.get("credential")):
        raise SettingsError(f"{where}: TURN URLs need 'username' and 'credential'")


def _check_ice_servers(value: object) -> None:
    if not isinstance(value, tuple):
        raise SettingsError("must be a tuple of RTCIceServer dicts")
    for index, entry in enumerate(value):
        _check_ice_server(entry, index)


def _parse_ice_servers(raw: str) -> tuple[IceServer, ...]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise SettingsError(
            "must be a JSON list of RTCIceServer objects ({urls, username?, credential?})"
        )
    servers: list[IceServer] = []
    for index, entry in enumerate(data):
        if isinstance(entry, dict) and isinstance(entry.get("urls"), str):
            entry = {**entry, "urls": [entry["urls"]]}
        _check_ice_server(entry, index)
        server: IceServer = {"urls": list(entry["urls"])}
        if "username" in entry:
            server["username"] = entry["username"]
        if "credential" in entry:
            server["credential"] = entry["credential"]
        servers.append(server)
    return tuple(servers)


def _check_issuer(value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError("must be a non-empty string")
    if len(value) > _MAX_ISSUER_LEN or _CONTROL_RE.search(value):
        raise SettingsError(f"must be at most {_MAX_ISSUER_LEN} printable characters")


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"not a number: {raw!r}") from None
    return value


def _check_seconds(
    *, minimum: float, maximum: float, inclusive_min: bool
) -> Callable[[object], None]:
    def check(value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError("must be a number of seconds")
        low_ok = value >= minimum if inclusive_min else value > minimum
        if not math.isfinite(value) or not low_ok or value > maximum:
            low = "[" if inclusive_min else "("
            raise SettingsError(f"must be in {low}{minimum:g}, {maximum:g}] seconds, got {value}")

    return check


def _check_positive_int(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SettingsError("must be a positive integer")


def _check_optional_path(value: object) -> None:
    if value is not None:
        _check_data_dir(value)


def _check_bool(value: object) -> None:
    if not isinstance(value, bool):
        raise SettingsError("must be true or false")


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"must be one of 1/true/yes/on or 0/false/no/off, got {raw!r}")


def _split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _check_turn_uris(value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(u, str) for u in value):
        raise SettingsError("must be a tuple of stun:/turn:/turns: URI strings")
    for uri in value:
        match = _ICE_URL_RE.match(uri)
        if match is None:
            raise SettingsError(f"not a stun:/stuns:/turn:/turns: URI: {uri!r}")
        if match.group("scheme").startswith("stun") and "?" in uri:
            raise SettingsError(f"a STUN URI takes no query: {uri!r}")
    if len(set(value)) != len(value):
        raise SettingsError("URIs must be unique")


def _parse_turn_uris(raw: str) -> tuple[str, ...]:
    uris: list[str] = []
    for item in _split_list(raw):
        if item not in uris:
            uris.append(item)
    if not uris:
        raise SettingsError("needs at least one URI")
    _check_turn_uris(tuple(uris))
    return tuple(uris)


def _check_secret(what: str, minimum: int) -> Callable[[object], None]:
    def check(value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str) or len(value) < minimum or _CONTROL_RE.search(value):
            # Never echo the value: it is a secret.
            raise SettingsError(f"{what} must be at least {minimum} printable characters")

    return check


def _parse_secret(raw: str) -> str:
    return raw.strip()


def _check_webhook_urls(value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(u, str) for u in value):
        raise SettingsError("must be a tuple of http(s) URL strings")
    for url in value:
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            # The URL may carry a token: name only its scheme and host.
            raise SettingsError(
                f"not an http:// or https:// URL (scheme {parsed.scheme!r}, "
                f"host {parsed.hostname!r})"
            )
        if _CONTROL_RE.search(url) or " " in url:
            raise SettingsError("a webhook URL must not contain spaces or control characters")
    if len(set(value)) != len(value):
        raise SettingsError("webhook URLs must be unique")


def _parse_webhook_urls(raw: str) -> tuple[str, ...]:
    urls: list[str] = []
    for item in _split_list(raw):
        if item not in urls:
            urls.append(item)
    if not urls:
        raise SettingsError("needs at least one URL")
    return tuple(urls)


def _check_redis_url(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(_REDIS_SCHEMES):
        raise SettingsError("must be a redis://, rediss:// or unix:// URL")
    if _CONTROL_RE.search(value) or " " in value:
        raise SettingsError("must not contain spaces or control characters")


def _check_node_id(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _NODE_ID_RE.match(value):
        raise SettingsError("must be 1-64 characters of letters, digits and _ . : -")


def _check_public_url(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(("ws://", "wss://")):
        raise SettingsError("must be the ws:// or wss:// signalling URL clients are sent to")
    if _CONTROL_RE.search(value) or " " in value or len(value) > 512:
        raise SettingsError("must be a URL without spaces or control characters")
    if not urlsplit(value).hostname:
        raise SettingsError(f"has no host: {value!r}")


MAX_WORKERS = 256


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1: ``--workers auto``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _parse_workers(raw: str) -> int:
    value = raw.strip().lower()
    if value == "auto":
        return usable_cores()
    try:
        return int(value, 10)
    except ValueError:
        raise SettingsError(f"must be a worker count or 'auto', got {raw!r}") from None


def _check_workers(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise SettingsError(f"must be in 1..{MAX_WORKERS} (or 'auto'), got {value!r}")


def _check_span_subscribers(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
        raise SettingsError(f"must be a participant count in 0..100000 (0: off), got {value!r}")


def _check_span_cpu(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise SettingsError(f"must be a CPU percent in 0..100 (0: off), got {value!r}")


def _parse_port_range(raw: str) -> tuple[int, int]:
    low, sep, high = raw.strip().partition("-")
    if not sep:
        raise SettingsError(f"must be LOW-HIGH, e.g. 40000-40999, got {raw!r}")
    return (_parse_int(low), _parse_int(high))


def _check_port_range(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or len(value) != 2:
        raise SettingsError("must be a (low, high) pair of UDP ports")
    low, high = value
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            raise SettingsError(f"ports must be in 1024..65535, got {port!r}")
    if low > high:
        raise SettingsError(f"low port {low} is above high port {high}")


def is_loopback_host(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- option table


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: field name, variable, flag, and how a string becomes a valid value."""

    name: str
    env: str | None
    flag: str | None
    metavar: str
    help: str
    parse: Callable[[str], object] | None
    check: Callable[[object], None]
    action: str = "store"  # argparse action: "store", "append" (repeatable) or "store_true"


_check_leeway = _check_seconds(minimum=0.0, maximum=_MAX_LEEWAY_S, inclusive_min=True)
_check_producer_timeout = _check_seconds(
    minimum=0.0, maximum=_MAX_PRODUCER_TIMEOUT_S, inclusive_min=False
)
_check_reload_interval = _check_seconds(minimum=0.0, maximum=3600.0, inclusive_min=False)
_check_turn_ttl = _check_seconds(minimum=60.0, maximum=_MAX_TURN_TTL_S, inclusive_min=True)
_check_webhook_timeout = _check_seconds(minimum=0.0, maximum=300.0, inclusive_min=False)
_check_retry_max = _check_seconds(minimum=0.0, maximum=86400.0, inclusive_min=False)
_check_cluster_ttl = _check_seconds(minimum=1.0, maximum=300.0, inclusive_min=True)
_check_drain_deadline = _check_seconds(
    minimum=0.0, maximum=_MAX_DRAIN_DEADLINE_S, inclusive_min=True
)
_check_resume_window = _check_seconds(minimum=0.0, maximum=_MAX_RESUME_WINDOW_S, inclusive_min=True)

OPTIONS: tuple[Option, ...] = (
    Option("host", "SFU_HOST", "--host", "ADDR",
           f"address the HTTP/WebSocket server binds (default {DEFAULT_HOST})",
           _parse_host, _check_host),
    Option("port", "SFU_PORT", "--port", "PORT",
           f"TCP port of the HTTP/WebSocket server, 0 for any free port (default {DEFAULT_PORT})",
           _parse_int, _check_port),
    Option("data_dir", "SFU_DATA_DIR", "--data-dir", "DIR",
           f"state directory: signing key, trusted keys, ledger, recordings "
           f"(default ./{DEFAULT_DATA_DIR})",
           _parse_path, _check_data_dir),
    Option("log_level", "SFU_LOG_LEVEL", "--log-level", "LEVEL",
           f"one of {', '.join(LOG_LEVELS)} (default info)",
           _parse_lower, _check_choice(LOG_LEVELS)),
    Option("log_format", "SFU_LOG_FORMAT", "--log-format", "FORMAT",
           "auto (console on a TTY, JSON lines otherwise), json or console (default auto)",
           _parse_lower, _check_choice(LOG_FORMATS)),
    Option("ice_hosts", "SFU_ICE_HOSTS", "--ice-host", "ADDR",
           "IP address to gather ICE host candidates on; repeatable or comma-separated "
           "(default 127.0.0.1; never all interfaces unless listed)",
           _parse_ice_hosts, _check_ice_hosts, "append"),
    Option("announce_ip", "SFU_ANNOUNCE_IP", "--announce-ip", "IP",
           "public IP written into server candidates when behind NAT (default none)",
           _parse_announce_ip, _check_announce_ip),
    Option("ice_servers", "SFU_ICE_SERVERS", "--ice-servers", "JSON",
           'RTCIceServer list handed to clients, e.g. \'[{"urls": "stun:stun.example.org"}]\' '
           "(default [], no public STUN server)",
           _parse_ice_servers, _check_ice_servers),
    Option("issuer", "SFU_ISSUER", "--issuer", "NAME",
           f"'iss' of access tokens this server issues and accepts (default {DEFAULT_ISSUER})",
           _parse_str, _check_issuer),
    Option("token_leeway_s", "SFU_TOKEN_LEEWAY", "--token-leeway", "SECONDS",
           "clock skew tolerated on token exp/nbf/iat (default 10)",
           _parse_float, _check_leeway),
    Option("producer_timeout_s", "SFU_PRODUCER_TIMEOUT", "--producer-timeout", "SECONDS",
           "a published track that receives no packets for this long is removed (default 15)",
           _parse_float, _check_producer_timeout),
    Option("tls_cert", "SFU_TLS_CERT", "--tls-cert", "FILE",
           "PEM certificate chain: serve https/wss (with --tls-key); re-read when it changes",
           _parse_path, _check_optional_path),
    Option("tls_key", "SFU_TLS_KEY", "--tls-key", "FILE",
           "PEM private key of --tls-cert", _parse_path, _check_optional_path),
    Option("tls_self_signed", "SFU_TLS_SELF_SIGNED", "--tls-self-signed", "",
           "serve https/wss with a self-signed certificate kept in the data dir (a first try "
           "on a LAN; its SHA-256 fingerprint is logged)",
           _parse_bool, _check_bool, "store_true"),
    Option("tls_reload_interval_s", "SFU_TLS_RELOAD_INTERVAL", "--tls-reload-interval",
           "SECONDS", "how often the TLS files are checked for changes (default 10)",
           _parse_float, _check_reload_interval),
    Option("allow_insecure_http", "SFU_ALLOW_INSECURE_HTTP", "--allow-insecure-http", "",
           "allow plain http/ws on a non-loopback --host (behind a TLS-terminating proxy)",
           _parse_bool, _check_bool, "store_true"),
    Option("turn_uris", "SFU_TURN_URIS", "--turn-uri", "URI",
           "STUN/TURN URI handed to clients, TURN with per-participant REST credentials from "
           "--turn-secret, e.g. turn:turn.example.org:3478?transport=udp; repeatable",
           _parse_turn_uris, _check_turn_uris, "append"),
    Option("turn_secret", "SFU_TURN_SECRET", "--turn-secret", "SECRET",
           "coturn static-auth-secret for TURN REST credentials (prefer the variable: flags "
           "show in ps)", _parse_secret, _check_secret("the TURN secret", 8)),
    Option("turn_ttl_s", "SFU_TURN_TTL", "--turn-ttl", "SECONDS",
           "lifetime of minted TURN credentials; must outlast the longest call (default 86400)",
           _parse_float, _check_turn_ttl),
    Option("webhook_urls", "SFU_WEBHOOK_URLS", "--webhook-url", "URL",
           "http(s) URL that receives signed webhook events; repeatable",
           _parse_webhook_urls, _check_webhook_urls, "append"),
    Option("webhook_key", "SFU_WEBHOOK_KEY", "--webhook-key", "KEY",
           f"HMAC key (>= {_MIN_WEBHOOK_KEY_LEN} chars) signing webhook JWTs (prefer the variable)",
           _parse_secret, _check_secret("the webhook key", _MIN_WEBHOOK_KEY_LEN)),
    Option("webhook_timeout_s", "SFU_WEBHOOK_TIMEOUT", "--webhook-timeout", "SECONDS",
           "one webhook delivery attempt gives up after this long (default 5)",
           _parse_float, _check_webhook_timeout),
    Option("webhook_retry_max_s", "SFU_WEBHOOK_RETRY_MAX", "--webhook-retry-max", "SECONDS",
           "ceiling of the exponential retry backoff of webhook deliveries (default 30)",
           _parse_float, _check_retry_max),
    Option("webhook_queue_size", "SFU_WEBHOOK_QUEUE_SIZE", "--webhook-queue-size", "N",
           "events kept per webhook URL while undelivered; oldest dropped beyond (default 10000)",
           _parse_int, _check_positive_int),
    Option("redis_url", "SFU_REDIS_URL", "--redis", "URL",
           "Redis shared by a cluster of nodes: room placement, node registry, the durable "
           "webhook queue, the consent ledger and revocations",
           _parse_str, _check_redis_url),
    Option("node_id", "SFU_NODE_ID", "--node-id", "ID",
           "this node's id in the cluster (needs --redis; default <hostname>-<pid>)",
           _parse_str, _check_node_id),
    Option("public_url", "SFU_PUBLIC_URL", "--public-url", "URL",
           "the ws(s):// signalling URL other nodes hand out in 'redirect' (needs --redis; "
           "default the listening address)", _parse_str, _check_public_url),
    Option("cluster_ttl_s", "SFU_CLUSTER_TTL", "--cluster-ttl", "SECONDS",
           "a node and its room claims vanish this long after its last heartbeat (default 3; "
           "heartbeats every third of it)", _parse_float, _check_cluster_ttl),
    Option("placement", "SFU_PLACEMENT", "--placement", "POLICY",
           "where a new room goes: 'local' (the node its first join reaches) or "
           "'least-loaded' (the live node with the fewest participants and tracks; the "
           "join is redirected there) (default local)",
           _parse_lower, _check_choice(PLACEMENTS)),
    Option("drain_deadline_s", "SFU_DRAIN_DEADLINE", "--drain-deadline", "SECONDS",
           "on SIGTERM, wait at most this long for participants to leave (default 300; "
           "SIGINT waits at most 5)", _parse_float, _check_drain_deadline),
    Option("workers", "SFU_WORKERS", "--workers", "N|auto",
           "worker processes behind the one port, rooms placed by load; auto: one per core "
           "(default 1: a single process)", _parse_workers, _check_workers),
    Option("ice_port_range", "SFU_ICE_PORT_RANGE", "--ice-port-range", "LOW-HIGH",
           "UDP ports for ICE host candidates, split evenly between workers "
           "(default: any free port)", _parse_port_range, _check_port_range),
    Option("room_span_subscribers", "SFU_ROOM_SPAN_SUBSCRIBERS", "--room-span-subscribers", "N",
           "with --workers > 1: once a room's home worker holds more than N of its "
           "participants, new joins go to another worker, which receives the room's tracks "
           "over a loopback pipe; with --redis (one worker per node): a join reaching a node "
           "that does not host the room is served there, over an SRTP pipe, once the home "
           "node holds more than N (default 0: a room never spans)",
           _parse_int, _check_span_subscribers),
    Option("pipe_host", "SFU_PIPE_HOST", "--pipe-host", "IP",
           "with --redis and --room-span-subscribers: the address this node's SRTP pipes to "
           "other nodes bind and announce (default 127.0.0.1)", _parse_str, _check_ip),
    Option("room_span_cpu", "SFU_ROOM_SPAN_CPU", "--room-span-cpu", "PERCENT",
           "with --workers > 1: a room whose home worker uses more than PERCENT of a core "
           "spills new joins to another worker too (default 0: no CPU limit)",
           _parse_float, _check_span_cpu),
    Option("resume_window_s", "SFU_RESUME_WINDOW", "--resume-window", "SECONDS",
           "a participant whose signalling connection drops is kept this long for a "
           "'join' with 'resume' (default 30; 0 disables)", _parse_float, _check_resume_window),
    Option("max_message_bytes", None, None, "BYTES",
           "largest signalling message accepted", None, _check_positive_int),
    Option("subscriber_queue_bytes", None, None, "BYTES",
           "bound of one subscriber's pending UDP send buffer", None, _check_positive_int),
)  # fmt: skip


def _dest(option: Option) -> str:
    assert option.flag is not None
    return option.flag.removeprefix("--").replace("-", "_")


# --------------------------------------------------------------------------- Settings


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server is configured with; immutable, validated on construction.

    ``ice_servers`` holds plain dicts (JSON-ready for ``joined.ice_servers``): treat them as
    read-only, copy before changing.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "info"
    log_format: str = "auto"
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    announce_ip: str | None = None
    # repr=False: TURN credentials never end up in logs through repr(settings); see redacted().
    ice_servers: tuple[IceServer, ...] = field(default=(), repr=False)
    issuer: str = DEFAULT_ISSUER
    token_leeway_s: float = 10.0
    producer_timeout_s: float = 15.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    tls_reload_interval_s: float = 10.0
    allow_insecure_http: bool = False
    turn_uris: tuple[str, ...] = ()
    # Secrets (and URLs that may carry tokens) stay out of repr; redacted() masks them.
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: float = 86400.0
    webhook_urls: tuple[str, ...] = field(default=(), repr=False)
    webhook_key: str | None = field(default=None, repr=False)
    webhook_timeout_s: float = 5.0
    webhook_retry_max_s: float = 30.0
    webhook_queue_size: int = 10000
    redis_url: str | None = field(default=None, repr=False)
    node_id: str | None = None
    public_url: str | None = None
    cluster_ttl_s: float = 3.0
    placement: str = "local"
    drain_deadline_s: float = 300.0
    workers: int = 1
    ice_port_range: tuple[int, int] | None = None
    room_span_subscribers: int = 0
    room_span_cpu: float = 0.0
    pipe_host: str = "127.0.0.1"
    resume_window_s: float = 30.0
    max_message_bytes: int = 65536
    subscriber_queue_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for option in OPTIONS:
            try:
                option.check(getattr(self, option.name))
            except SettingsError as exc:
                raise SettingsError(f"{option.name}: {exc}") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key (SFU_TLS_CERT, SFU_TLS_KEY) go together")
        if self.tls_cert is not None and self.tls_self_signed:
            raise SettingsError("give either --tls-cert/--tls-key or --tls-self-signed, not both")
        if any(u.startswith("turn") for u in self.turn_uris) and not self.turn_secret:
            raise SettingsError("TURN URIs (--turn-uri, SFU_TURN_URIS) need --turn-secret")
        if self.turn_secret and not any(u.startswith("turn") for u in self.turn_uris):
            raise SettingsError("--turn-secret (SFU_TURN_SECRET) needs a turn: --turn-uri")
        if (self.node_id is not None or self.public_url is not None) and not self.redis_url:
            raise SettingsError(
                "--node-id and --public-url (SFU_NODE_ID, SFU_PUBLIC_URL) need --redis"
            )
        if self.ice_port_range is not None and (
            self.ice_port_range[1] - self.ice_port_range[0] + 1 < self.workers
        ):
            raise SettingsError("--ice-port-range needs at least one port per worker")
        if self.webhook_urls and not self.webhook_key:
            raise SettingsError(
                "webhooks are always signed: --webhook-url needs --webhook-key (SFU_WEBHOOK_KEY)"
            )

    @property
    def tls(self) -> bool:
        """True when the server speaks https/wss."""
        return self.tls_cert is not None or self.tls_self_signed

    @classmethod
    def from_env_and_args(cls, args: argparse.Namespace | None, env: Mapping[str, str]) -> Settings:
        """Build Settings from parsed ``serve`` flags (may be None) over ``SFU_*`` variables.

        ``args`` is a namespace from a parser set up with :func:`add_serve_arguments`; a flag left
        at its default (``None``) falls back to the variable, then to the field default. Raises
        :class:`SettingsError` whose message starts with the flag or variable name at fault.
        """
        values: dict[str, Any] = {}
        for option in OPTIONS:
            if option.parse is None:
                continue
            raw: str | None = None
            source = ""
            if args is not None and option.flag is not None:
                given = getattr(args, _dest(option), None)
                if isinstance(given, list):  # repeatable flag (--ice-host, --turn-uri, ...)
                    given = ",".join(given)
                if given is not None:
                    raw, source = str(given), option.flag
            if raw is None and option.env is not None:
                from_env = env.get(option.env)
                if from_env is not None and from_env.strip():
                    raw, source = from_env, option.env
            if raw is None:
                continue
            try:
                value = option.parse(raw)
                option.check(value)
            except SettingsError as exc:
                raise SettingsError(f"{source}: {exc}") from None
            values[option.name] = value
        return cls(**values)

    def redacted(self) -> dict[str, object]:
        """A JSON-ready view for start-up logs, with ICE server credentials masked."""
        servers = [
            {**server, "credential": "***"} if "credential" in server else dict(server)
            for server in self.ice_servers
        ]
        return {
            "host": self.host,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "log_level": self.log_level,
            "log_format": self.log_format,
            "ice_hosts": list(self.ice_hosts),
            "announce_ip": self.announce_ip,
            "ice_servers": servers,
            "issuer": self.issuer,
            "token_leeway_s": self.token_leeway_s,
            "producer_timeout_s": self.producer_timeout_s,
            "tls_cert": str(self.tls_cert) if self.tls_cert else None,
            "tls_key": str(self.tls_key) if self.tls_key else None,
            "tls_self_signed": self.tls_self_signed,
            "tls_reload_interval_s": self.tls_reload_interval_s,
            "allow_insecure_http": self.allow_insecure_http,
            "turn_uris": list(self.turn_uris),
            "turn_secret": "***" if self.turn_secret else None,
            "turn_ttl_s": self.turn_ttl_s,
            "webhook_urls": [_redact_url(url) for url in self.webhook_urls],
            "webhook_key": "***" if self.webhook_key else None,
            "webhook_timeout_s": self.webhook_timeout_s,
            "webhook_retry_max_s": self.webhook_retry_max_s,
            "webhook_queue_size": self.webhook_queue_size,
            "redis_url": _redact_url(self.redis_url) if self.redis_url else None,
            "node_id": self.node_id,
            "public_url": self.public_url,
            "cluster_ttl_s": self.cluster_ttl_s,
            "placement": self.placement,
            "drain_deadline_s": self.drain_deadline_s,
            "workers": self.workers,
            "ice_port_range": list(self.ice_port_range) if self.ice_port_range else None,
            "room_span_subscribers": self.room_span_subscribers,
            "room_span_cpu": self.room_span_cpu,
            "pipe_host": self.pipe_host,
            "resume_window_s": self.resume_window_s,
            "max_message_bytes": self.max_message_bytes,
            "subscriber_queue_bytes": self.subscriber_queue_bytes,
        }


def _redact_url(url: str) -> str:
    """scheme://host[:port]/path of a URL: no user info, query or fragment (may hold tokens)."""
    parsed = urlsplit(url)
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    masked = "***@" if parsed.username or parsed.password else ""
    return f"{parsed.scheme}://{masked}{host}{port}{parsed.path}" + ("?***" if parsed.query else "")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` flags of every configurable setting (each defaults to None: unset)."""
    for option in OPTIONS:
        if option.flag is None:
            continue
        extra = f" [env {option.env}]" if option.env else ""
        if option.action == "append":
            parser.add_argument(
                option.flag, dest=_dest(option), action="append", metavar=option.metavar,
                default=None, help=option.help + extra,
            )  # fmt: skip
        elif option.action == "store_true":
            parser.add_argument(
                option.flag, dest=_dest(option), action="store_true", default=None,
                help=option.help + extra,
            )  # fmt: skip
        else:
            parser.add_argument(
                option.flag, dest=_dest(option), metavar=option.metavar, default=None,
                help=option.help + extra,
            )  # fmt: skip
