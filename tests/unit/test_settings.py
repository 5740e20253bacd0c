"""Settings: defaults, SFU_* variables, flags over variables, and validation."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from sfu.settings import OPTIONS, Settings, SettingsError, add_serve_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def build(*argv: str, **env: str) -> Settings:
    return Settings.from_env_and_args(parse(*argv), env)


def test_defaults_are_local_and_private() -> None:
    settings = Settings.from_env_and_args(None, {})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.data_dir == Path("sfu-data")
    assert settings.log_level == "info"
    assert settings.log_format == "auto"
    assert settings.ice_hosts == ("127.0.0.1",)  # never all interfaces by default
    assert settings.announce_ip is None
    assert settings.ice_servers == ()  # never a public STUN server by default
    assert settings.issuer == "oktorus-sfu"
    assert settings.token_leeway_s == 10
    assert settings.producer_timeout_s == 15.0
    assert settings.max_message_bytes == 65536
    assert settings.subscriber_queue_bytes == 256 * 1024


def test_flags_with_nothing_given_are_defaults() -> None:
    assert build() == Settings()


def test_every_variable() -> None:
    servers = [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": ["turn:turn.example.org?transport=udp", "turns:turn.example.org:5349"],
         "username": "u", "credential": "c"},
    ]  # fmt: skip
    env = {
        "SFU_HOST": "0.0.0.0",
        "SFU_PORT": "9000",
        "SFU_DATA_DIR": "/var/lib/sfu",
        "SFU_LOG_LEVEL": "DEBUG",
        "SFU_LOG_FORMAT": "json",
        "SFU_ICE_HOSTS": "10.0.0.5, ::1,10.0.0.5",
        "SFU_ANNOUNCE_IP": "203.0.113.7",
        "SFU_ICE_SERVERS": json.dumps(servers),
        "SFU_ISSUER": "acme",
        "SFU_TOKEN_LEEWAY": "2.5",
        "SFU_PRODUCER_TIMEOUT": "30",
    }
    settings = Settings.from_env_and_args(None, env)
    assert settings.host == "0.0.0.0"
    assert settings.port == 9000
    assert settings.data_dir == Path("/var/lib/sfu")
    assert settings.log_level == "debug"
    assert settings.log_format == "json"
    assert settings.ice_hosts == ("10.0.0.5", "::1")  # deduplicated, order kept
    assert settings.announce_ip == "203.0.113.7"
    assert settings.ice_servers == (
        {"urls": ["stun:stun.example.org:3478"]},
        {"urls": ["turn:turn.example.org?transport=udp", "turns:turn.example.org:5349"],
         "username": "u", "credential": "c"},
    )  # fmt: skip
    assert settings.issuer == "acme"
    assert settings.token_leeway_s == 2.5
    assert settings.producer_timeout_s == 30.0


def test_flags_win_over_variables() -> None:
    env = {"SFU_HOST": "10.1.1.1", "SFU_PORT": "9000", "SFU_ICE_HOSTS": "10.0.0.5",
           "SFU_ISSUER": "from-env", "SFU_LOG_LEVEL": "debug"}  # fmt: skip
    settings = build(
        "--host", "localhost", "--port", "0", "--ice-host", "127.0.0.2",
        "--ice-host", "127.0.0.3,::1", "--issuer", "from-flag", **env,
    )  # fmt: skip
    assert settings.host == "localhost"
    assert settings.port == 0
    assert settings.ice_hosts == ("127.0.0.2", "127.0.0.3", "::1")
    assert settings.issuer == "from-flag"
    assert settings.log_level == "debug"  # no flag: the variable applies


def test_empty_variables_count_as_unset() -> None:
    settings = Settings.from_env_and_args(
        None, {"SFU_ANNOUNCE_IP": "", "SFU_PORT": "  ", "SFU_ICE_SERVERS": ""}
    )
    assert settings == Settings()


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env_and_args(None, {"PORT": "1", "SFU_UNKNOWN": "x"}) == Settings()


def test_data_dir_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert build("--data-dir", "~/state").data_dir == tmp_path / "state"


def test_ipv6_addresses_are_normalised() -> None:
    settings = build("--ice-host", "0:0:0:0:0:0:0:1", "--announce-ip", "2001:db8:0::1")
    assert settings.ice_hosts == ("::1",)
    assert settings.announce_ip == "2001:db8::1"


@pytest.mark.parametrize(
    ("argv", "env", "where"),
    [
        (["--port", "65536"], {}, "--port"),
        (["--port", "-1"], {}, "--port"),
        (["--port", "http"], {}, "--port"),
        ([], {"SFU_PORT": "99999"}, "SFU_PORT"),
        (["--host", "bad host"], {}, "--host"),
        (["--host=-leading.dash"], {}, "--host"),
        (["--log-level", "verbose"], {}, "--log-level"),
        (["--log-format", "xml"], {}, "--log-format"),
        (["--ice-host", "not-an-ip"], {}, "--ice-host"),
        (["--ice-host", "example.org"], {}, "--ice-host"),
        (["--ice-host", "0.0.0.0"], {}, "--ice-host"),  # all interfaces: never implicitly
        (["--ice-host", "::"], {}, "--ice-host"),
        (["--ice-host", "224.0.0.1"], {}, "--ice-host"),
        ([], {"SFU_ICE_HOSTS": ",,"}, "SFU_ICE_HOSTS"),
        (["--announce-ip", "1.2.3"], {}, "--announce-ip"),
        (["--announce-ip", ""], {}, "--announce-ip"),
        ([], {"SFU_ANNOUNCE_IP": "0.0.0.0"}, "SFU_ANNOUNCE_IP"),
        (["--issuer", ""], {}, "--issuer"),
        (["--issuer", "x" * 129], {}, "--issuer"),
        (["--issuer", "a\nb"], {}, "--issuer"),
        (["--token-leeway", "-1"], {}, "--token-leeway"),
        (["--token-leeway", "nan"], {}, "--token-leeway"),
        (["--token-leeway", "301"], {}, "--token-leeway"),
        ([], {"SFU_TOKEN_LEEWAY": "soon"}, "SFU_TOKEN_LEEWAY"),
        (["--producer-timeout", "0"], {}, "--producer-timeout"),
        (["--producer-timeout", "inf"], {}, "--producer-timeout"),
        ([], {"SFU_PRODUCER_TIMEOUT": "-5"}, "SFU_PRODUCER_TIMEOUT"),
        (["--data-dir", ""], {}, "--data-dir"),
    ],
)
def test_invalid_values_name_their_source(argv: list[str], env: dict[str, str], where: str) -> None:
    with pytest.raises(SettingsError) as caught:
        build(*argv, **env)
    assert str(caught.value).startswith(f"{where}: ")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('"stun:x"', "JSON list"),
        ("42", "JSON list"),
        ("[42]", "must be an object"),
        ("[{}]", "'urls'"),
        ('[{"urls": []}]', "'urls'"),
        ('[{"urls": [1]}]', "'urls'"),
        ('[{"urls": "http://example.org"}]', "stun:/stuns:/turn:/turns:"),
        ('[{"urls": "stun:"}]', "stun:/stuns:/turn:/turns:"),
        ('[{"urls": "stun:a b"}]', "stun:/stuns:/turn:/turns:"),
        ('[{"urls": "stun:x?transport=udp"}]', "no query"),
        ('[{"urls": "turn:x"}]', "username"),
        ('[{"urls": "turn:x", "username": "u"}]', "credential"),
        ('[{"urls": "turn:x", "username": "u", "credential": 5}]', "'credential'"),
        ('[{"urls": "stun:x", "password": "p"}]', "unknown keys"),
    ],
)
def test_ice_servers_shape(raw: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=r"^SFU_ICE_SERVERS: ") as caught:
        Settings.from_env_and_args(None, {"SFU_ICE_SERVERS": raw})
    assert fragment in str(caught.value)


def test_single_ice_server_object_is_accepted() -> None:
    settings = build("--ice-servers", '{"urls": "stun:127.0.0.1:3478"}')
    assert settings.ice_servers == ({"urls": ["stun:127.0.0.1:3478"]},)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(SettingsError, match=r"^port: "):
        Settings(port=70000)
    with pytest.raises(SettingsError, match=r"^ice_hosts: "):
        Settings(ice_hosts=())
    with pytest.raises(SettingsError, match=r"^ice_hosts: "):
        Settings(ice_hosts=("0.0.0.0",))
    with pytest.raises(SettingsError, match=r"^ice_hosts: "):
        Settings(ice_hosts=("::0001",))  # not in compressed form
    with pytest.raises(SettingsError, match=r"^data_dir: "):
        Settings(data_dir="sfu-data")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"^port: "):
        Settings(port=True)
    with pytest.raises(SettingsError, match=r"^ice_servers: "):
        Settings(ice_servers=({"urls": "stun:x"},))  # type: ignore[typeddict-item]
    with pytest.raises(SettingsError, match=r"^max_message_bytes: "):
        Settings(max_message_bytes=0)


def test_settings_are_frozen_and_replace_revalidates() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    assert dataclasses.replace(settings, port=0).port == 0
    with pytest.raises(SettingsError):
        dataclasses.replace(settings, port=-1)


def test_credentials_stay_out_of_repr_and_redacted_view() -> None:
    raw = '[{"urls": "turn:t.example.org", "username": "u", "credential": "s3cret"}]'
    settings = build("--ice-servers", raw)
    assert "s3cret" not in repr(settings)
    view = settings.redacted()
    assert "s3cret" not in json.dumps(view)
    assert view["ice_servers"] == [{"urls": ["turn:t.example.org"], "username": "u",
                                    "credential": "***"}]  # fmt: skip
    assert settings.ice_servers[0]["credential"] == "s3cret"


def test_every_configurable_option_has_a_flag_and_a_variable() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for option in OPTIONS:
        if option.parse is None:
            continue
        assert option.flag in flags
        assert option.env is not None and option.env.startswith("SFU_")
    field_names = {f.name for f in dataclasses.fields(Settings)}
    assert {option.name for option in OPTIONS} == field_names
