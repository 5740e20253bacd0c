"""Command line: ``python -m sfu serve``, ``python -m sfu token`` and ``python -m sfu webhook``.

``serve [--host 127.0.0.1] [--port 8080] [--data-dir DIR] ...`` builds a
:class:`~sfu.settings.Settings` from its flags over ``SFU_*`` variables (see :mod:`sfu.settings`
for the table), configures logging and runs the server until SIGINT/SIGTERM.

``webhook verify --authorization JWT [--body FILE] [--key KEY]`` checks a received webhook
(key from ``SFU_WEBHOOK_KEY`` by default) and prints its event: for receivers' tests.

``token --data-dir DIR --room ROOM --identity ID [--role agent|customer]
[--grants publish,subscribe,record] [--ttl SECONDS] [--issuer NAME]`` prints one access token on
stdout, signed with the key in DIR (created on first use), valid for a server started with the
same data dir and issuer. ``--data-dir`` and ``--issuer`` fall back to ``SFU_DATA_DIR`` and
``SFU_ISSUER``.

Exit status: 0 success, 2 usage or configuration error (argparse style message), 1 runtime error
(one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from recorder.cli import add_data_commands
from sfu import __version__
from sfu.cluster.placement import ClusterUnavailable
from sfu.keys import KeyStore, KeyStoreError
from sfu.logs import configure_logging
from sfu.settings import DEFAULT_ISSUER, Settings, SettingsError, add_serve_arguments
from sfu.tls import check_transport_security, load_context
from signaling.access import (
    GRANTS,
    MAX_TTL_S,
    issue_access_token,
    validate_grants,
    validate_identity,
    validate_room,
)

__all__ = ["build_parser", "main"]

PROG = "python -m sfu"
ROLES = ("agent", "customer")
DEFAULT_GRANTS = frozenset({"publish", "subscribe"})
DEFAULT_TTL_S = 3600


def _grants_arg(raw: str) -> frozenset[str]:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"needs at least one of {','.join(sorted(GRANTS))}")
    try:
        return validate_grants(items)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ttl_arg(raw: str) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if not 0 < value <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_TTL_S} seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m sfu`` parser with its ``serve`` and ``token`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Oktorus SFU: WebRTC selective forwarding unit."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the server until SIGINT/SIGTERM",
        description="Run the SFU. Every flag can also be set with the SFU_* variable shown; "
        "flags win over variables, variables over defaults.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve, command_parser=serve)

    token = commands.add_parser(
        "token",
        help="print an access token signed with the data dir's key",
        description="Print one access token (a JWT) on stdout, valid for a server started with "
        "the same --data-dir and --issuer.",
    )
    token.add_argument(
        "--data-dir", type=Path, metavar="DIR", default=None,
        help="data dir holding the signing key, created on first use [env SFU_DATA_DIR]",
    )  # fmt: skip
    token.add_argument("--room", required=True, help="room id: letters, digits and _ . : -")
    token.add_argument("--identity", required=True, help="participant identity (token 'sub')")
    token.add_argument("--role", choices=ROLES, default="customer", help="default customer")
    token.add_argument(
        "--grants", type=_grants_arg, default=DEFAULT_GRANTS, metavar="LIST",
        help=f"comma-separated subset of {','.join(sorted(GRANTS))} (default publish,subscribe)",
    )  # fmt: skip
    token.add_argument(
        "--ttl", type=_ttl_arg, default=DEFAULT_TTL_S, metavar="SECONDS",
        help=f"lifetime in seconds (default {DEFAULT_TTL_S})",
    )  # fmt: skip
    token.add_argument(
        "--issuer", default=None, metavar="NAME",
        help=f"token 'iss' (default {DEFAULT_ISSUER}) [env SFU_ISSUER]",
    )  # fmt: skip
    token.set_defaults(handler=_token, command_parser=token)

    add_data_commands(commands)

    webhook = commands.add_parser(
        "webhook", help="webhook helpers for receivers", description="Webhook helpers."
    )
    webhook_commands = webhook.add_subparsers(
        dest="webhook_command", metavar="ACTION", required=True
    )
    verify = webhook_commands.add_parser(
        "verify",
        help="check a received webhook's signature and print the event",
        description="Check that BODY was sent by a server holding the webhook key: the "
        "Authorization JWT (HS256) must verify and carry the body's SHA-256. Prints the event "
        "JSON and exits 0, or prints why not and exits 1.",
    )
    verify.add_argument(
        "--authorization", required=True, metavar="HEADER",
        help="the Authorization header value (the JWT, with or without 'Bearer ')",
    )  # fmt: skip
    verify.add_argument(
        "--body", type=Path, default=None, metavar="FILE",
        help="file with the exact request body (default: standard input)",
    )  # fmt: skip
    verify.add_argument(
        "--key", default=None, metavar="KEY",
        help="the webhook key [env SFU_WEBHOOK_KEY] (prefer the variable: flags show in ps)",
    )  # fmt: skip
    verify.add_argument("--issuer", default=None, metavar="NAME", help="require this 'iss'")
    verify.set_defaults(handler=_webhook_verify, command_parser=verify)
    return parser


class _Runner(Protocol):
    def __call__(self, settings: Settings, /) -> object: ...


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 1


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value is not None and value.strip() else None


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command_parser: argparse.ArgumentParser = args.command_parser
    try:
        settings = Settings.from_env_and_args(args, env)
        check_transport_security(settings)
    except SettingsError as exc:
        command_parser.error(str(exc))  # exits 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:  # fail fast, before the media stack is imported (run() loads them again)
            load_context(settings.tls_cert, settings.tls_key)
        except SettingsError as exc:
            return _fail("serve", str(exc))

    # Imported here: the CLI (and `token`) must not depend on the server at import time.
    from sfu import server_main

    # run(settings) is synchronous (it owns the event loop) and may return an exit status.
    run: _Runner = server_main.run
    try:
        result = run(settings)
    except (KeyStoreError, SettingsError) as exc:
        return _fail("serve", str(exc))
    except ClusterUnavailable as exc:
        return _fail("serve", f"--redis: cannot join the cluster: {exc}")
    except OSError as exc:  # e.g. address already in use, permission denied
        return _fail("serve", f"{exc.strerror or exc}")
    return result if isinstance(result, int) else 0


def _token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command_parser: argparse.ArgumentParser = args.command_parser
    data_dir: Path | None = args.data_dir
    if data_dir is None:
        from_env = _env(env, "SFU_DATA_DIR")
        if from_env is None:
            command_parser.error("the following arguments are required: --data-dir")
        data_dir = Path(from_env.strip())
    issuer: str = args.issuer if args.issuer is not None else (
        _env(env, "SFU_ISSUER") or DEFAULT_ISSUER
    )  # fmt: skip
    try:
        # Validates the data dir and issuer exactly as `serve` would.
        checked = Settings(data_dir=data_dir.expanduser(), issuer=issuer.strip())
        validate_room(args.room)
        validate_identity(args.identity)
    except ValueError as exc:  # SettingsError is a ValueError
        command_parser.error(str(exc))  # exits 2

    try:
        keys = KeyStore.open(checked.data_dir)
    except KeyStoreError as exc:
        return _fail("token", str(exc))
    token = issue_access_token(
        keys,
        room=args.room,
        identity=args.identity,
        role=args.role,
        grants=args.grants,
        ttl_s=args.ttl,
        issuer=checked.issuer,
    )
    print(token, flush=True)
    return 0


def _webhook_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command_parser: argparse.ArgumentParser = args.command_parser
    key = args.key if args.key is not None else _env(env, "SFU_WEBHOOK_KEY")
    if not key:
        command_parser.error("give --key or set SFU_WEBHOOK_KEY")
    from sfu.webhooks import WebhookError, verify_webhook

    try:
        body = args.body.read_bytes() if args.body is not None else sys.stdin.buffer.read()
    except OSError as exc:
        return _fail("webhook verify", f"{args.body}: {exc.strerror or exc}")
    try:
        event = verify_webhook(body, args.authorization, key.strip(), issuer=args.issuer)
    except WebhookError as exc:
        return _fail("webhook verify", f"not verified: {exc}")
    print(json.dumps(event, indent=2, sort_keys=True), flush=True)
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse itself exits 2 on usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args, os.environ if env is None else env)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `python -m sfu token ... | head -c 10`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status
