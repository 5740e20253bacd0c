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
max_message_bytes        -                       -                     65536
subscriber_queue_bytes   -                       -                     262144 (256 KiB)
=======================  ======================  ====================  ==========================
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_ISSUER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OPTIONS",
    "IceServer",
    "Option",
    "Settings",
    "SettingsError",
    "add_serve_arguments",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path("sfu-data")
DEFAULT_ISSUER = "oktorus-sfu"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")

_MAX_LEEWAY_S = 300.0
_MAX_PRODUCER_TIMEOUT_S = 3600.0
_MAX_ISSUER_LEN = 128
_ICE_SERVER_KEYS = frozenset({"urls", "username", "credential"})
_ICE_URL_RE = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<rest>[^\s?#]+)(?:\?transport=(?:udp|tcp))?$"
)
_HOSTNAME_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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


_check_leeway = _check_seconds(minimum=0.0, maximum=_MAX_LEEWAY_S, inclusive_min=True)
_check_producer_timeout = _check_seconds(
    minimum=0.0, maximum=_MAX_PRODUCER_TIMEOUT_S, inclusive_min=False
)

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
           _parse_ice_hosts, _check_ice_hosts),
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
    max_message_bytes: int = 65536
    subscriber_queue_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for option in OPTIONS:
            try:
                option.check(getattr(self, option.name))
            except SettingsError as exc:
                raise SettingsError(f"{option.name}: {exc}") from None

    @classmethod
    def from_env_and_args(
        cls, args: argparse.Namespace | None, env: Mapping[str, str]
    ) -> Settings:
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
                if isinstance(given, list):  # repeatable flag (--ice-host)
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
            "max_message_bytes": self.max_message_bytes,
            "subscriber_queue_bytes": self.subscriber_queue_bytes,
        }


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` flags of every configurable setting (each defaults to None: unset)."""
    for option in OPTIONS:
        if option.flag is None:
            continue
        extra = f" [env {option.env}]" if option.env else ""
        if option.name == "ice_hosts":
            parser.add_argument(
                option.flag, dest=_dest(option), action="append", metavar=option.metavar,
                default=None, help=option.help + extra,
            )  # fmt: skip
        else:
            parser.add_argument(
                option.flag, dest=_dest(option), metavar=option.metavar, default=None,
                help=option.help + extra,
            )  # fmt: skip
