"""Ways to deploy: the compose file, the systemd unit, the example configuration and the
Dockerfile's install step, each checked with what this machine has (a container engine
and a registry it has not: the checks that need none run, the others skip saying why)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from rtclake.config import load_settings
from rtclake.grafana import DATA_DIR, DATASOURCE_FILE, EMPTY_LAKE, PLUGIN
from rtclake.testing import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def test_the_example_configuration_loads() -> None:
    settings = load_settings(DEPLOY / "rtclake.example.yaml")
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose)",
)


def compose_config() -> dict[str, Any]:
    """deploy/compose.yaml as docker-compose resolves it (paths absolute)."""
    out = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True, text=True, cwd=DEPLOY,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    resolved: dict[str, Any] = yaml.safe_load(out.stdout)
    return resolved


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """A service's mounts: target -> (source, read-only)."""
    found = {}
    for volume in service["volumes"]:
        if isinstance(volume, dict):
            found[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            found[target] = (source, "ro" in mode)
    return found


@needs_compose
def test_the_compose_file_is_valid() -> None:
    resolved = compose_config()
    service = resolved["services"]["rtclake"]
    assert Path(service["build"]["context"]).resolve() == ROOT
    assert any("8080" in str(p) for p in service["ports"])
    assert {"/var/lib/rtclake", "/etc/rtclake/rtclake.yaml"} <= set(mounts(service))


@needs_compose
def test_the_compose_files_grafana_reads_the_lake_read_only_with_the_provisioning() -> None:
    """Grafana (the -ubuntu image: the DuckDB plugin needs glibc) with the plugin, the data
    volume read-only where the generated init SQL reads it, and deploy/grafana/'s files."""
    resolved = compose_config()
    grafana = resolved["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana-oss:[\d.]+-ubuntu", grafana["image"]), grafana["image"]
    assert "rtclake" in grafana["depends_on"]
    assert any("3000" in str(p) for p in grafana["ports"])
    env = grafana["environment"]
    assert re.fullmatch(rf"{PLUGIN}@[\d.]+@https://github\.com/\S+\.zip",
                        env["GF_PLUGINS_PREINSTALL_SYNC"])  # fmt: skip
    assert env["GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS"] == PLUGIN

    mounted = mounts(grafana)
    data = mounts(resolved["services"]["rtclake"])["/var/lib/rtclake"][0]
    assert mounted[DATA_DIR] == (data, True)  # the same volume, read-only
    grafana_dir = DEPLOY / "grafana"
    assert mounted[f"{DATA_DIR}-empty/lake"] == (str(grafana_dir / EMPTY_LAKE), True)
    for folder in ("datasources", "dashboards"):
        source = grafana_dir / "provisioning" / folder
        assert mounted[f"/etc/grafana/provisioning/{folder}"] == (str(source), True)
    assert (grafana_dir / DATASOURCE_FILE).is_file()
    (provider,) = yaml.safe_load(
        (grafana_dir / "provisioning" / "dashboards" / "rtclake.yaml").read_text()
    )["providers"]
    dashboards = provider["options"]["path"]
    assert mounted[dashboards] == (str(grafana_dir / "dashboards"), True)
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (grafana_dir / "dashboards" / Path(home).relative_to(dashboards)).is_file()


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


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    steps = [(m[1], m[2].strip()) for m in re.finditer(r"^([A-Z]+) (.+)$", joined, re.M)]
    return steps


def test_the_dockerfiles_build_steps_install_a_working_rtclake(tmp_path: Path) -> None:
    """The image's steps, run here as far as they can run without a container engine:
    the Debian packages it installs are the ones the build needs (present on this machine),
    the build context holds only what COPY copies, the RUN that installs creates a fresh
    virtualenv from that context alone, and the image's command with the image's
    environment starts a server that answers."""
    steps = dockerfile()
    apt = next(arg for op, arg in steps if op == "RUN" and "apt-get install" in arg)
    packages = re.search(r"--no-install-recommends ([\w+. -]+?) &&", apt)
    assert packages is not None, apt
    if shutil.which("dpkg-query") is None:
        pytest.skip("dpkg-query is missing: cannot check the Debian packages the build needs")
    for package in packages[1].split():
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        assert status.stdout == "install ok installed", f"{package}: {status.stderr}"

    # the build context: only what COPY copies, where WORKDIR puts it
    workdir = next(arg for op, arg in steps if op == "WORKDIR")
    context = tmp_path / "context"
    copied = []
    for op, arg in steps:
        if op != "COPY":
            continue
        *sources, dest = arg.split()
        target = context / Path(dest if dest.startswith("/") else f"{workdir}/{dest}").relative_to(
            workdir
        )
        for source in sources:
            copied.append(source)
            into = target / Path(source).name if dest.endswith("/") else target
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.so", "*.egg-info"))  # fmt: skip
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, into)
    assert {"pyproject.toml", "setup.py", "src"} <= set(copied)

    # the install step, with /opt/rtclake under this test's folder; pip may use its cache
    install = next(arg for op, arg in steps if op == "RUN" and "-m venv" in arg)
    prefix = tmp_path / "opt-rtclake"
    command = (
        install.replace("/opt/rtclake", str(prefix))
        .replace("python -m venv", f"{sys.executable} -m venv")
        .replace(" --no-cache-dir", "")
    )
    built = subprocess.run(
        ["bash", "-c", command], cwd=context, capture_output=True, text=True, timeout=900
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert built.stdout.strip().endswith("rtclake 0.1.0"), built.stdout[-500:]
    installed = prefix / "bin" / "rtclake"
    # a fresh virtualenv: none of this checkout's packages leak in, no test tools
    listed = subprocess.run([str(prefix / "bin" / "python"), "-m", "pip", "list"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "pytest" not in listed and "mypy" not in listed and "moto" not in listed
    assert "rtclake" in listed and "editable" not in listed.lower()

    # the image's ENTRYPOINT and CMD with its ENV (the data directory and port moved here)
    env_line = " ".join(arg for op, arg in steps if op == "ENV")
    image_env = dict(re.findall(r"(\w+)=(\S+)", env_line))
    assert {"RTCLAKE_DATA_DIR", "RTCLAKE_SERVER__HOST"} <= set(image_env)
    entry = yaml.safe_load(next(arg for op, arg in steps if op == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(arg for op, arg in steps if op == "CMD"))
    assert entry == ["/opt/rtclake/bin/rtclake"] and cmd == ["run"]
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    env = {**base, **image_env, "RTCLAKE_DATA_DIR": str(tmp_path / "data"),
           "RTCLAKE_SERVER__PORT": str(port)}  # fmt: skip
    proc = subprocess.Popen([str(installed), *cmd], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_for(healthy, 60):
            proc.kill()
            pytest.fail("the image's command did not start:\n" + proc.communicate()[0].decode())
        posted = httpx.post(f"http://127.0.0.1:{port}/ingest/telemetry", json={"n": 1})
        assert posted.status_code == 200, posted.text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # a graceful stop (uvicorn re-raises SIGTERM once shut down, as docker stop expects)
    assert proc.returncode in (0, -signal.SIGTERM), out.decode()[-2000:]
    # RTCLAKE_LOG_FORMAT=json: every line a JSON object, uvicorn's too
    lines = out.decode().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines
    events = [orjson.loads(line).get("event") for line in lines]
    assert "rtclake started" in events and "writer: batch stored" in events
