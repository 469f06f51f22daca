"""Configuration: file + environment, defaults, masked secrets, precise errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from rtclake.config import load_settings, masked_dump
from rtclake.errors import ConfigError
from rtclake.logs import configure
from rtclake.redact import redact


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


def test_a_catalog_urls_password_is_masked_and_the_default_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTCLAKE_LAKE__CATALOG", "postgres://lake:hunter2@db.internal:5432/lake")
    shown = masked_dump(load_settings())
    assert shown["lake"]["catalog"] == "postgres://lake:***@db.internal:5432/lake"
    assert "hunter2" not in str(shown)
    monkeypatch.setenv("RTCLAKE_LAKE__CATALOG", "postgres:host=db password='a b' dbname=lake")
    shown = masked_dump(load_settings())
    assert shown["lake"]["catalog"] == "postgres:host=db password=*** dbname=lake"
    # blank, as a compose file's ${CATALOG:-} gives it: the default, as before the check
    monkeypatch.setenv("RTCLAKE_LAKE__CATALOG", "")
    assert load_settings().lake.catalog is None
    # not set: the catalog the lake resolves to, not null
    monkeypatch.delenv("RTCLAKE_LAKE__CATALOG")
    monkeypatch.setenv("RTCLAKE_DATA_DIR", str(tmp_path))
    assert masked_dump(load_settings())["lake"]["catalog"] == (
        f"sqlite:{tmp_path.absolute() / 'lake' / 'catalog.sqlite'}"
    )


def test_a_catalog_url_of_no_known_kind_is_refused_when_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTCLAKE_LAKE__CATALOG", "mysql://root:hunter2@127.0.0.1/x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "lake.catalog" in text and "RTCLAKE_LAKE__CATALOG" in text
    assert "use sqlite:PATH, postgres://USER@HOST/DB or hive" in text
    assert "mysql://root:***@127.0.0.1/x" in text and "hunter2" not in text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
        ('at "postgresql://u:p@ss@h/db": refused', 'at "postgresql://u:***@h/db": refused'),
        ("nats://a:1@h1:4222,nats://b:2@h2:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222"),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("PASSWORD = 'a b' user=u", "PASSWORD = *** user=u"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("nats://token@h:4222", "nats://***@h:4222"),
        (
            "postgres://u@h/db?password=x&sslmode=require",
            "postgres://u@h/db?password=***&sslmode=require",
        ),
        ('password="a b" user=u', "password=*** user=u"),
        ("https://host:443?q=a@b", "https://host:443?q=a@b"),
        ('{"to": "x@y.org", "n": 1}', '{"to": "x@y.org", "n": 1}'),
        ("http://127.0.0.1:8080/api/query", "http://127.0.0.1:8080/api/query"),
    ],
)
def test_redact_masks_the_passwords_of_connection_strings(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_log_lines_have_passwords_masked(capsys: pytest.CaptureFixture[str]) -> None:
    before, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    try:
        configure("info", "json")
        structlog.get_logger("test").error(
            "sink failed", error='Unable to connect to Postgres at "postgres://u:hunter2@h/db"'
        )
        err = capsys.readouterr().err
    finally:
        structlog.configure(**before)
        logging.getLogger().handlers = handlers
    assert "postgres://u:***@h/db" in err and "hunter2" not in err


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


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RTCLAKE_ROUTER__ROUTES", "[{stream: a-*, table: events}]"),  # YAML, not JSON
        ("RTCLAKE_LAKE__MAINTENANCE__RETENTION", '{"*": 90'),
        ("RTCLAKE_SERVER", "{port: 9000}"),
    ],
)
def test_a_list_or_map_variable_that_is_not_json_is_named(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it had escaped as pydantic-settings' SettingsError ("error parsing value for field
    # 'router'"), a traceback naming no variable
    monkeypatch.delenv("RTCLAKE_CONFIG", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable}: not JSON"):
        load_settings()
