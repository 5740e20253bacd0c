"""``python -m sfu``: the token command end to end, usage/runtime errors, serve wiring, logging."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import sfu
import sfu.cli
from sfu.keys import SIGNING_KEY_FILE, KeyStore
from sfu.logs import configure_logging
from sfu.settings import Settings
from signaling.access import verify_access_token

REPO = Path(__file__).resolve().parents[2]


def run_sfu(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sfu", *args],
        cwd=cwd, env=clean, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def main(argv: list[str], env: dict[str, str] | None = None) -> int:
    return sfu.cli.main(argv, env or {})


# --------------------------------------------------------------------------- token, end to end


def test_token_command_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = run_sfu(
        "token", "--data-dir", str(data_dir), "--room", "support-42", "--identity", "alice",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    lines = first.stdout.splitlines()
    assert len(lines) == 1 and first.stdout.endswith("\n")

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    key_file = data_dir / SIGNING_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_bytes = key_file.read_bytes()

    keys = KeyStore.open(data_dir)
    claims = verify_access_token(keys, lines[0], issuer="oktorus-sfu")
    assert claims.identity == "alice"
    assert claims.room == "support-42"
    assert claims.role == "customer"
    assert claims.grants == frozenset({"publish", "subscribe"})
    assert claims.expires_at - claims.issued_at == 3600

    second = run_sfu(
        "token", "--data-dir", str(data_dir), "--room", "support-42", "--identity", "bob",
        "--role", "agent", "--grants", "publish,subscribe,record", "--ttl", "60",
        cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert key_file.read_bytes() == key_bytes  # the key is reused, not replaced
    claims = verify_access_token(keys, second.stdout.strip(), issuer="oktorus-sfu")
    assert claims.identity == "bob"
    assert claims.role == "agent"
    assert claims.grants == frozenset({"publish", "subscribe", "record"})
    assert claims.expires_at - claims.issued_at == 60
    assert not (tmp_path / "sfu-data").exists()  # nothing written to the working directory


def test_token_issuer_and_data_dir_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SFU_DATA_DIR": str(tmp_path / "d"), "SFU_ISSUER": "acme"}
    assert main(["token", "--room", "r", "--identity", "i", "--grants", "admin"], env) == 0
    token = capsys.readouterr().out.strip()
    keys = KeyStore.open(tmp_path / "d")
    assert verify_access_token(keys, token, issuer="acme").grants == frozenset({"admin"})
    # a flag wins over the variable
    argv = ["token", "--room", "r", "--identity", "i", "--issuer", "other"]
    assert main(argv, env) == 0
    token = capsys.readouterr().out.strip()
    assert verify_access_token(keys, token, issuer="other").identity == "i"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "required: COMMAND"),
        (["token", "--data-dir", "D", "--identity", "i"], "--room"),
        (["token", "--data-dir", "D", "--room", "r"], "--identity"),
        (["token", "--room", "r", "--identity", "i"], "--data-dir"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", "i", "--role", "boss"],
         "--role"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", "i", "--grants", "fly"],
         "unknown grant 'fly'"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", "i", "--grants", ","],
         "--grants"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", "i", "--ttl", "0"], "--ttl"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", "i", "--ttl", "soon"],
         "--ttl"),
        (["token", "--data-dir", "D", "--room", "a room", "--identity", "i"], "room"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", ""], "identity"),
        (["token", "--data-dir", "D", "--room", "r", "--identity", "i", "--issuer", ""],
         "issuer"),
        (["serve", "--port", "99999"], "--port: must be in 0..65535"),
        (["serve", "--ice-host", "0.0.0.0"], "--ice-host"),
        (["serve", "--bogus"], "unrecognized arguments"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    argv = [str(tmp_path / "d") if item == "D" else item for item in argv]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert fragment in captured.err
    assert not (tmp_path / "d").exists()  # nothing created on a usage error


def test_bad_variable_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve"], {"SFU_PORT": "eighty"})
    assert caught.value.code == 2
    assert "SFU_PORT: not an integer" in capsys.readouterr().err


def test_runtime_error_is_one_line_exit_1(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_sfu(
        "token", "--data-dir", str(not_a_dir), "--room", "r", "--identity", "i", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    KeyStore.open(tmp_path / "d")
    (tmp_path / "d" / SIGNING_KEY_FILE).chmod(0o640)
    result = run_sfu(
        "token", "--data-dir", str(tmp_path / "d"), "--room", "r", "--identity", "i",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "readable by group or others" in result.stderr
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert sfu.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--data-dir", "--ice-host", "--announce-ip", "--issuer"):
        assert flag in out


def test_cli_does_not_import_the_server(tmp_path: Path) -> None:
    code = "import sys, sfu.cli; print('sfu.server_main' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- serve wiring


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace sfu.server_main (the lead's module) and logging setup with recorders."""
    seen: dict[str, Any] = {"result": None, "raise": None}

    def run(settings: Settings) -> object:
        seen["settings"] = settings
        if seen["raise"] is not None:
            raise seen["raise"]
        return seen["result"]

    module = types.ModuleType("sfu.server_main")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sfu.server_main", module)
    monkeypatch.setattr(sfu, "server_main", module, raising=False)
    monkeypatch.setattr(
        sfu.cli, "configure_logging", lambda level, fmt: seen.update(logging=(level, fmt))
    )
    return seen


def test_serve_builds_settings_and_runs(tmp_path: Path, fake_server: dict[str, Any]) -> None:
    argv = ["serve", "--port", "0", "--data-dir", str(tmp_path), "--ice-host", "127.0.0.2"]
    assert main(argv, {"SFU_LOG_LEVEL": "debug", "SFU_PORT": "1234"}) == 0
    settings: Settings = fake_server["settings"]
    assert settings.port == 0
    assert settings.data_dir == tmp_path
    assert settings.ice_hosts == ("127.0.0.2",)
    assert settings.log_level == "debug"
    assert fake_server["logging"] == ("debug", "auto")


def test_serve_exit_status(fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    fake_server["result"] = 3
    assert main(["serve"]) == 3
    fake_server["raise"] = OSError(98, "Address already in use")
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "python -m sfu serve: error: Address already in use"
    fake_server["raise"] = KeyboardInterrupt()
    assert main(["serve"]) == 130


# --------------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiortc", "aioice")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_include_stdlib_and_context() -> None:
    buffer = io.StringIO()
    configure_logging("info", "json", stream=buffer)
    configure_logging("info", "json", stream=buffer)  # idempotent: one handler, not two
    log = structlog.get_logger("sfu.test").bind(room="r1")
    log.info("participant.joined", participant="p1")
    log.debug("hidden")
    logging.getLogger("aiohttp.access").info("GET %s", "/healthz")
    logging.getLogger("aioice").info("per-check noise")
    logging.getLogger("aiortc").warning("kept")
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["participant.joined", "GET /healthz", "kept"]
    first = records[0]
    assert first["room"] == "r1" and first["participant"] == "p1"
    assert first["level"] == "info" and first["logger"] == "sfu.test"
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]


@pytest.mark.usefixtures("restore_logging")
def test_console_logs_and_bad_arguments() -> None:
    buffer = io.StringIO()
    configure_logging("debug", "console", stream=buffer)
    structlog.get_logger("sfu.test").debug("shown", x=1)
    assert "shown" in buffer.getvalue() and "{" not in buffer.getvalue()
    buffer = io.StringIO()  # not a TTY: auto means JSON
    configure_logging("warning", "auto", stream=buffer)
    structlog.get_logger("sfu.test").warning("w")
    assert json.loads(buffer.getvalue())["event"] == "w"
    with pytest.raises(ValueError):
        configure_logging("loud", "json")
    with pytest.raises(ValueError):
        configure_logging("info", "xml")
