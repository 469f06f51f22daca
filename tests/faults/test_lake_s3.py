"""The lake on S3 (moto's S3 server): ingest, queries, and kill -9 between the upload of a
batch and its confirmation: after the restart every acknowledged record is there once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from rtclake.testing import free_port, wait_for
from tests.conftest import Server
from tests.faults.conftest import NO_DEDUP, post, stored_counts


@pytest.fixture
def s3() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="lake")  # fmt: skip
    yield url
    proc.terminate()
    proc.wait(10)


def s3_env(endpoint: str) -> dict[str, str]:
    # the lake's root in the config, the endpoint and credentials as the AWS variables
    return {
        "RTCLAKE_LAKE__ROOT": "s3://lake/rtclake",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
        **NO_DEDUP,
    }


def batch(first: int, n: int) -> bytes:
    return b"\n".join(
        orjson.dumps({"seq": i, **({"time": 1_795_132_800 + i} if i % 2 else {})})
        for i in range(first, first + n)
    )


def test_kill_between_upload_and_confirmation_loses_nothing_and_stores_nothing_twice(
    make_server: Any, tmp_path: Path, s3: str
) -> None:
    data = tmp_path / "data"
    env = s3_env(s3)
    server: Server = make_server(data, RTCLAKE_FAULTS="writer.after_sink_write=kill@1", **env)
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert wait_for(lambda: sum(stored_counts(server, "k").values()) == 100, 20)
    assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
    assert server.proc is not None
    server.proc.wait(20)  # uploaded, then killed before the spool recorded the confirmation
    assert server.proc.returncode == -9

    again: Server = make_server(data, **env)  # replays the batch: the same object key
    assert post(again, "k", batch(200, 100)).json() == {"accepted": 100}
    wait_for(lambda: sum(stored_counts(again, "k").values()) >= 300, 30)
    assert stored_counts(again, "k") == Counter(range(300))
    assert not (data / "lake").exists()  # nothing went to a local folder

    keys = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="k",
                        aws_secret_access_key="s").list_objects_v2(Bucket="lake")  # fmt: skip
    names = [o["Key"] for o in keys["Contents"]]
    assert all(k.startswith("rtclake/telemetry/date=") and k.endswith(".parquet") for k in names)
