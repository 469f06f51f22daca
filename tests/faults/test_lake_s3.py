"""The lake on S3 (moto's S3 server): ingest, queries, and kill -9 between the upload of a
batch and its confirmation: after the restart every acknowledged record is there once."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from rtclake.testing import wait_for
from tests.conftest import Server
from tests.faults.conftest import NO_DEDUP, post, stored_counts


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path) -> str:
    """moto's S3 with a bucket of this test's own."""
    bucket = f"lake-{abs(hash(tmp_path)) % 10**8}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket=bucket)  # fmt: skip
    return f"{s3_endpoint}#{bucket}"


def s3_env(s3: str) -> dict[str, str]:
    # the lake's root in the config, the endpoint and credentials as the AWS variables
    endpoint, _, bucket = s3.partition("#")
    return {
        "RTCLAKE_LAKE__ROOT": f"s3://{bucket}/rtclake",
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

    endpoint, _, bucket = s3.partition("#")
    keys = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="k", aws_secret_access_key="s",
                        ).list_objects_v2(Bucket=bucket)  # fmt: skip
    names = [o["Key"] for o in keys["Contents"]]
    data_files = [k for k in names if k.startswith("rtclake/main/telemetry/date=")]
    assert data_files and all(k.endswith(".parquet") for k in names)
    assert {k.split("/")[2] for k in names} == {"telemetry", "rtclake_ledger"}


def test_an_import_into_an_s3_lake_is_queried_from_it(tmp_path: Path, s3: str) -> None:
    """`rtclake import` then `rtclake query` with `lake.root: s3://…`: the rows are read
    back from the bucket, a second import of the same file stores nothing twice."""
    from tests.test_cli import ROTC, rtclake

    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [ROTC % (f"conn{i % 3}", "2025-07-25T00:00:00Z", i, i, i, i) for i in range(50)]
    (logs / "rtc_stats.jsonl").write_text("\n".join(lines) + "\n")
    env = s3_env(s3)  # the query without the view that hides repeated record ids
    first = rtclake("import", str(logs), cwd=tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert "imported 50 rows" in first.stdout
    (tmp_path / "rtclake-data" / "import-state.json").unlink()
    again = rtclake("import", str(logs), cwd=tmp_path, **env)
    assert again.returncode == 0, again.stderr

    sql = "SELECT count(*) AS n, count(DISTINCT record_id) AS ids FROM rtc_stats"
    out = rtclake("query", sql, "--format", "json", cwd=tmp_path, **env)
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == [{"n": 50, "ids": 50}]
    assert not (tmp_path / "rtclake-data" / "lake").exists()  # nothing went to a local folder

    # the store out of reach (its endpoint wrong): said so, and no file called damaged
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    out = rtclake("query", sql, cwd=tmp_path, **{**env, "AWS_ENDPOINT_URL": closed})
    assert out.returncode == 1
    assert "the files of table rtc_stats cannot be read from the store" in out.stderr
    assert "check lake.root, lake.endpoint_url and the S3 credentials" in out.stderr
    assert "damaged" not in out.stderr


def test_a_query_host_without_the_writers_catalog_is_told_so(tmp_path: Path, s3: str) -> None:
    """On S3 the default catalog is each host's own file: a query host that names no
    catalog finds none, and says so rather than showing an empty lake silently."""
    from tests.test_cli import rtclake

    out = rtclake("query", "SELECT count(*) AS n FROM telemetry", "--format", "json",
                  cwd=tmp_path, **s3_env(s3))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == [{"n": 0}]
    catalog = tmp_path / "rtclake-data" / "lake-catalog.sqlite"
    assert f"note: the lake's catalog sqlite:{catalog} does not exist" in out.stderr
    assert "set lake.catalog to theirs" in out.stderr
