"""Settings of the operations features: TLS, TURN, webhooks, Redis, drain."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sfu.settings import Settings, SettingsError, add_serve_arguments, is_loopback_host
from sfu.tls import check_transport_security

KEY = "k" * 32


def build(*argv: str, **env: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return Settings.from_env_and_args(parser.parse_args(list(argv)), env)


def test_defaults() -> None:
    settings = Settings()
    assert (settings.tls_cert, settings.tls_key, settings.tls_self_signed) == (None, None, False)
    assert not settings.tls and not settings.allow_insecure_http
    assert settings.turn_uris == () and settings.turn_secret is None
    assert settings.turn_ttl_s == 86400
    assert settings.webhook_urls == () and settings.webhook_key is None
    assert settings.redis_url is None
    assert settings.drain_deadline_s == 300


def test_flags() -> None:
    settings = build(
        "--tls-cert", "/etc/sfu/cert.pem", "--tls-key", "/etc/sfu/key.pem",
        "--turn-uri", "turn:turn.example.org:3478?transport=udp",
        "--turn-uri", "turns:turn.example.org:443?transport=tcp,stun:turn.example.org",
        "--turn-secret", "s3cret-s3cret", "--turn-ttl", "3600",
        "--webhook-url", "https://hooks.example.org/sfu", "--webhook-key", KEY,
        "--webhook-timeout", "2", "--webhook-retry-max", "30", "--webhook-queue-size", "50",
        "--redis", "redis://127.0.0.1:6379/0", "--drain-deadline", "60",
        "--tls-reload-interval", "0.5",
    )  # fmt: skip
    assert settings.tls and settings.tls_cert == Path("/etc/sfu/cert.pem")
    assert settings.turn_uris == (
        "turn:turn.example.org:3478?transport=udp",
        "turns:turn.example.org:443?transport=tcp",
        "stun:turn.example.org",
    )
    assert settings.turn_secret == "s3cret-s3cret" and settings.turn_ttl_s == 3600
    assert settings.webhook_urls == ("https://hooks.example.org/sfu",)
    assert settings.webhook_timeout_s == 2 and settings.webhook_retry_max_s == 30
    assert settings.webhook_queue_size == 50
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.drain_deadline_s == 60 and settings.tls_reload_interval_s == 0.5


def test_variables_and_switches() -> None:
    settings = build(
        SFU_TLS_SELF_SIGNED="yes", SFU_ALLOW_INSECURE_HTTP="1",
        SFU_TURN_URIS="turn:a.example.org, turn:b.example.org", SFU_TURN_SECRET="abcdefgh",
        SFU_WEBHOOK_URLS="http://127.0.0.1:9/a,http://127.0.0.1:9/b", SFU_WEBHOOK_KEY=KEY,
        SFU_REDIS_URL="redis://127.0.0.1:1", SFU_DRAIN_DEADLINE="0",
    )  # fmt: skip
    assert settings.tls_self_signed and settings.allow_insecure_http
    assert settings.turn_uris == ("turn:a.example.org", "turn:b.example.org")
    assert settings.webhook_urls == ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    assert settings.drain_deadline_s == 0
    assert build("--tls-self-signed").tls_self_signed
    assert not build(SFU_TLS_SELF_SIGNED="off").tls_self_signed


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--tls-cert", "c.pem"], {}, "go together"),
        (["--tls-key", "k.pem"], {}, "go together"),
        (["--tls-cert", "c", "--tls-key", "k", "--tls-self-signed"], {}, "either"),
        (["--turn-uri", "turn:t.example.org"], {}, "need --turn-secret"),
        (["--turn-secret", "abcdefgh"], {}, "needs a turn:"),
        (["--turn-uri", "http://t.example.org", "--turn-secret", "abcdefgh"], {}, "--turn-uri"),
        (["--turn-uri", "turn:t", "--turn-secret", "short"], {}, "--turn-secret"),
        (["--turn-ttl", "10"], {}, "--turn-ttl"),
        (["--webhook-url", "https://h.example.org"], {}, "--webhook-key"),
        (["--webhook-url", "ftp://h.example.org", "--webhook-key", KEY], {}, "--webhook-url"),
        (["--webhook-url", "https://h.example.org", "--webhook-key", "short"], {}, "32"),
        (["--webhook-queue-size", "0"], {}, "--webhook-queue-size"),
        (["--redis", "http://127.0.0.1"], {}, "--redis"),
        (["--drain-deadline", "-1"], {}, "--drain-deadline"),
        ([], {"SFU_TLS_SELF_SIGNED": "maybe"}, "SFU_TLS_SELF_SIGNED"),
    ],
)
def test_invalid(argv: list[str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        build(*argv, **env)
    assert fragment in str(caught.value)


def test_secrets_never_show() -> None:
    settings = build(
        "--turn-uri", "turn:t.example.org", "--turn-secret", "turn-s3cret-value",
        "--webhook-url", "https://user:pw@h.example.org/x?token=hook-t0ken", "--webhook-key",
        "webhook-key-" + "x" * 24, "--redis", "redis://:redis-passw0rd@127.0.0.1:6379",
    )  # fmt: skip
    for text in (repr(settings), json.dumps(settings.redacted())):
        for secret in ("turn-s3cret-value", "webhook-key-", "hook-t0ken", "redis-passw0rd", ":pw@"):
            assert secret not in text
    view = settings.redacted()
    assert view["turn_secret"] == "***" and view["webhook_key"] == "***"
    assert view["webhook_urls"] == ["https://***@h.example.org/x?***"]
    with pytest.raises(SettingsError) as caught:
        build("--turn-uri", "turn:t", "--turn-secret", "ab\ncdefgh")
    assert "ab\ncdefgh" not in str(caught.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.5", False), ("sfu.example.org", False)],
)  # fmt: skip
def test_plain_http_only_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    settings = Settings(host=host)
    if loopback:
        check_transport_security(settings)
    else:
        with pytest.raises(SettingsError, match="--allow-insecure-http"):
            check_transport_security(settings)
        check_transport_security(Settings(host=host, allow_insecure_http=True))
        check_transport_security(Settings(host=host, tls_self_signed=True))
