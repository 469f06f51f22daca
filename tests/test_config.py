"""Configuration: file + environment, defaults, masked secrets, precise errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rtclake.config import load_settings, masked_dump
from rtclake.errors import ConfigError


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTCLAKE_CONFIG", raising=False)
    settings = load_settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.lake_root == str(Path("rtclake-data") / "lake")
    assert settings.spool.flush_interval == 10.0


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rtclake.yaml"
    path.write_text("server:\n  port: 9000\n  host: 0.0.0.0\nspool:\n  flush_interval: 2\n")
    monkeypatch.setenv("RTCLAKE_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"
    assert settings.spool.flush_interval == 2.0


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "rtclake.toml"
    path.write_text(
        'data_dir = "/srv/lake"\n[[router.routes]]\nstream = "alerts-*"\ntable = "events"\n'
    )
    settings = load_settings(path)
    assert settings.data_dir == Path("/srv/lake")
    assert settings.router.routes[0].table == "events"


def test_bad_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rtclake.yaml"
    path.write_text("server:\n  prot: 9000\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(path)


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTCLAKE_SPOOL__MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match=r"spool\.max_bytes.*RTCLAKE_SPOOL__MAX_BYTES"):
        load_settings()


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTCLAKE_SERVER__INGEST_TOKEN", "hunter2")
    settings = load_settings()
    assert settings.server.ingest_token is not None
    assert settings.server.ingest_token.get_secret_value() == "hunter2"
    assert "hunter2" not in str(masked_dump(settings))


def test_config_command_prints_effective_config_and_errors(tmp_path: Path) -> None:
    env = {"RTCLAKE_SERVER__QUERY_TOKEN": "s3cret", "RTCLAKE_NODE": "n1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-m", "rtclake", "config"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "node: n1" in out.stdout
    assert "s3cret" not in out.stdout and "query_token: '**********'" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("lake:\n  compression: lzma\n")
    out = subprocess.run(
        [sys.executable, "-m", "rtclake", "config", "--config", str(bad)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "lake.compression" in out.stderr
