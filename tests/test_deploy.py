"""Ways to deploy: the compose file, the systemd unit, the example configuration and the
Dockerfile's install step, each checked with what this machine has (a container engine
and a registry it has not: the checks that need none run, the others skip saying why)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtclake.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def test_the_example_configuration_loads() -> None:
    settings = load_settings(DEPLOY / "rtclake.example.yaml")
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose)",
)
def test_the_compose_file_is_valid() -> None:
    out = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True, text=True, cwd=DEPLOY,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    service = resolved["services"]["rtclake"]
    assert Path(service["build"]["context"]).resolve() == ROOT
    assert any("8080" in str(p) for p in service["ports"])
    mounted = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}
    assert {"/var/lib/rtclake", "/etc/rtclake/rtclake.yaml"} <= mounted


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "rtclake.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's rtclake
    here = Path(sys.executable).parent / "rtclake"
    (tmp_path / "rtclake.service").write_text(unit.replace("/opt/rtclake/bin/rtclake", str(here)))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "rtclake.service")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ExecStart=/opt/rtclake/bin/rtclake run" in unit


def test_the_dockerfile_copies_what_the_install_needs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = [p for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for p in line.split()]
    for path in copied:
        assert (ROOT / path).exists(), path
    # what pip builds from: the package metadata, the extension's build script, the sources
    assert {"pyproject.toml", "setup.py", "src"} <= set(copied)
    assert "libsimdjson-dev" in text and "rtclake --version" in text
