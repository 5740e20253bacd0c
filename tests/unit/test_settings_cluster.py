"""Settings of a cluster node: --node-id, --public-url, --cluster-ttl (all with --redis)."""

from __future__ import annotations

import argparse

import pytest

from sfu.settings import Settings, SettingsError, add_serve_arguments

REDIS = "redis://127.0.0.1:6379/0"


def build(*argv: str, **env: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return Settings.from_env_and_args(parser.parse_args(list(argv)), env)


def test_defaults_leave_the_node_unclustered() -> None:
    settings = Settings()
    assert (settings.node_id, settings.public_url, settings.cluster_ttl_s) == (None, None, 3.0)
    assert settings.placement == "local"


def test_flags_and_variables() -> None:
    settings = build(
        "--redis", REDIS, "--node-id", "sfu-1.eu:a", "--public-url",
        "wss://sfu-1.example.org/v1/signal", "--cluster-ttl", "1.5", "--placement",
        "Least-Loaded",
    )  # fmt: skip
    assert settings.placement == "least-loaded"
    assert settings.node_id == "sfu-1.eu:a"
    assert settings.public_url == "wss://sfu-1.example.org/v1/signal"
    assert settings.cluster_ttl_s == 1.5
    from_env = build(
        SFU_REDIS_URL=REDIS, SFU_NODE_ID="n2", SFU_PUBLIC_URL="ws://10.0.0.2:8080/v1/signal",
        SFU_CLUSTER_TTL="10",
    )  # fmt: skip
    assert (from_env.node_id, from_env.cluster_ttl_s) == ("n2", 10.0)
    assert from_env.redacted()["node_id"] == "n2"


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--node-id", "n1"], {}, "--node-id"),
        (["--public-url", "ws://a/v1/signal"], {}, "--public-url"),
        (["--redis", REDIS, "--node-id", "has space"], {}, "--node-id"),
        (["--redis", REDIS, "--node-id", "x" * 65], {}, "--node-id"),
        (["--redis", REDIS, "--public-url", "http://a/v1/signal"], {}, "--public-url"),
        (["--redis", REDIS, "--public-url", "ws:///v1/signal"], {}, "--public-url"),
        (["--redis", REDIS], {"SFU_PUBLIC_URL": "ftp://a"}, "SFU_PUBLIC_URL"),
        (["--redis", REDIS, "--cluster-ttl", "0.5"], {}, "--cluster-ttl"),
        (["--redis", REDIS, "--cluster-ttl", "soon"], {}, "--cluster-ttl"),
        (["--redis", REDIS, "--placement", "random"], {}, "--placement"),
        (["--redis", REDIS], {"SFU_PLACEMENT": "round-robin"}, "SFU_PLACEMENT"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        build(*argv, **env)


def test_pipe_host_is_an_ip_address() -> None:
    assert Settings().pipe_host == "127.0.0.1"
    assert build("--redis", REDIS, "--pipe-host", "10.0.0.12").pipe_host == "10.0.0.12"
    assert build(SFU_PIPE_HOST="fd00::2").pipe_host == "fd00::2"
    with pytest.raises(SettingsError, match=r"--pipe-host.*not an IP address"):
        build("--pipe-host", "sfu-2.internal")
