"""Kraken's gRPC contract (``kraken_grpc``): a client generated from ``kraken.proto`` with
grpc_tools.protoc, as Kraken's collector is, against a real ``rtclake run``."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from rtclake.integrations.kraken import contract
from rtclake.registry import load_registry
from tests.conftest import ROOT, Server, free_port

PROTO_DIR = ROOT / "src" / "rtclake" / "integrations" / "kraken"


def _protoc(*args: str) -> None:
    assert protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", *args, "kraken.proto"]) == 0


@pytest.fixture(scope="module")
def kraken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``kraken_pb2`` and ``kraken_pb2_grpc``, generated from kraken.proto for this run."""
    out = tmp_path_factory.mktemp("kraken-client")
    _protoc(f"--python_out={out}", f"--grpc_python_out={out}")
    sys.path.insert(0, str(out))
    try:
        yield SimpleNamespace(
            pb=importlib.import_module("kraken_pb2"),
            grpc=importlib.import_module("kraken_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


BROKERS = """
import threading

from rtclake.messages import Reply


def echo(message, ctx):
    return Reply(b"hello " + message.payload, "text/plain", {"broker": "echo"})


def hang(message, ctx):
    threading.Event().wait(20)


def status(message, ctx):
    return {"status": 7, "seen": message.data}


def text(message, ctx):
    return "hello " + message.payload.decode()
"""


def _broker(name: str, handler: str, stream: str, folder: Path) -> dict[str, str]:
    prefix = f"RTCLAKE_PROCESSORS__{name.upper()}__"
    return {prefix + "TYPE": "broker", prefix + "HANDLER": f"kraken_test_brokers:{handler}",
            prefix + "PATH": str(folder), prefix + "MATCH": json.dumps({"stream": stream}),
            prefix + "TIMEOUT": "30"}  # fmt: skip


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with a kraken_grpc source and two brokers: ``echo`` replies to stream
    ``websocket``, ``hang`` never answers stream ``hang``; (the server, the gRPC target)."""
    folder = tmp_path_factory.mktemp("kraken")
    (folder / "kraken_test_brokers.py").write_text(BROKERS)
    target = f"127.0.0.1:{free_port()}"
    env = {"RTCLAKE_SOURCES__KRAKEN__TYPE": "kraken_grpc",
           "RTCLAKE_SOURCES__KRAKEN__LISTEN": target,
           **_broker("echo", "echo", "websocket", folder),
           **_broker("hang", "hang", "hang", folder),
           **_broker("status", "status", "old-status", folder),
           **_broker("text", "text", "text-reply", folder)}  # fmt: skip
    server = Server(folder / "data", env=env)
    server.data_dir.mkdir(parents=True)
    server.start()
    yield server, target
    server.stop()


def _rows(server: Server, where: str, expected: int) -> list[dict[str, Any]]:
    """The telemetry rows ``where`` selects, once there are ``expected`` of them."""
    assert server.wait_rows(f"SELECT count(*) FROM telemetry WHERE {where}", expected) == expected
    result = server.query(
        "SELECT record_id, source, stream, collector, content_type, metadata, payload,"
        f" device_id, extra FROM telemetry WHERE {where} ORDER BY received_at"
    )
    rows = [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]
    for row in rows:  # a JSON column comes back as its text
        row["metadata"] = None if row["metadata"] is None else json.loads(row["metadata"])
    return rows


def _process(kraken: SimpleNamespace, target: str, **fields: Any) -> Any:
    """One ProcessKrakenRequest on a connection of its own, as Kraken's collector sends."""
    with grpc.insecure_channel(target) as channel:
        stub = kraken.grpc.KrakenServiceStub(channel)
        return stub.ProcessKrakenRequest(kraken.pb.KrakenRequest(**fields), timeout=10)


def test_runtime_descriptors_are_what_protoc_compiles_from_kraken_proto(tmp_path: Path) -> None:
    _protoc(f"--descriptor_set_out={tmp_path / 'kraken.pb'}")
    compiled = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "kraken.pb").read_bytes())
    assert len(compiled.file) == 1
    assert compiled.file[0] == contract.file_descriptor()


def test_json_and_binary_messages_are_records_with_the_default_reply(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    reading = {"device_id": "t1", "time": "2026-11-23T12:00:00Z", "temp": 21.5}
    image = bytes(range(256)) * 4  # not UTF-8, not JSON
    answers = [
        _process(kraken, target, collector_name="webhook", content_type="application/json",
                 metadata='{"x-site": "a"}', payload=json.dumps(reading).encode()),
        _process(kraken, target, collector_name="camera", content_type="application/octet-stream",
                 metadata='{"camera_name": "cam1", "width": 32, "height": 8}', payload=image),
    ]  # fmt: skip
    ids = []
    for answer in answers:
        assert answer.collector_name == "rtclake"  # addressed to no collector's client
        assert answer.content_type == "application/json"
        record_id = json.loads(answer.metadata)["record_id"]
        assert json.loads(answer.payload) == {"accepted": 1, "record_id": record_id}
        ids.append(record_id)

    rows = _rows(server, "collector IN ('webhook', 'camera')", 2)
    assert [r["record_id"] for r in rows] == ids
    json_row, binary_row = rows
    assert json_row["source"] == "kraken" and json_row["stream"] == "webhook"
    assert json_row["content_type"] == "application/json"
    assert json_row["metadata"] == {"x-site": "a"}
    assert json_row["device_id"] == "t1" and json_row["extra"] == {"temp": 21.5}
    assert json_row["payload"] is None  # a JSON object is the record itself
    assert binary_row["stream"] == "camera"
    assert binary_row["content_type"] == "application/octet-stream"
    assert binary_row["metadata"] == {"camera_name": "cam1", "width": 32, "height": 8}
    assert base64.b64decode(binary_row["payload"]) == image  # BLOB: base64 in JSON results
    types = server.query("SELECT typeof(payload) FROM telemetry WHERE collector = 'camera'")
    assert types["rows"] == [["BLOB"]]


def test_a_brokers_reply_goes_back_addressed_to_the_collector_that_sent(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    answer = _process(kraken, target, collector_name="websocket", content_type="text/plain",
                      metadata="{}", payload=b"frame")  # fmt: skip
    assert answer.collector_name == "websocket"  # Kraken's collector passes it to its client
    assert (answer.content_type, answer.payload) == ("text/plain", b"hello frame")
    metadata = json.loads(answer.metadata)
    assert metadata["broker"] == "echo"
    rows = _rows(server, "collector = 'websocket'", 1)
    assert rows[0]["record_id"] == metadata["record_id"]


def test_a_text_reply_is_text_plain_which_krakens_websocket_collector_sends_as_text(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    _, target = lake
    answer = _process(kraken, target, collector_name="text-reply", content_type="text/plain",
                      payload=b"frame")  # fmt: skip
    assert (answer.content_type, answer.payload) == ("text/plain", b"hello frame")


def test_a_callers_deadline_is_met_with_the_default_reply_while_a_broker_hangs(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    request = kraken.pb.KrakenRequest(collector_name="hang", payload=b'{"device_id": "h1"}')
    with grpc.insecure_channel(target) as channel:
        stub = kraken.grpc.KrakenServiceStub(channel)
        started = time.monotonic()
        answer = stub.ProcessKrakenRequest(request, timeout=1.5)
        took = time.monotonic() - started
    assert took < 1.5
    assert answer.collector_name == "rtclake"
    assert json.loads(answer.payload)["accepted"] == 1
    assert _rows(server, "collector = 'hang'", 1)[0]["device_id"] == "h1"


def test_older_contract_send_is_stored_and_answered_status_1(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    with grpc.insecure_channel(target) as channel:
        stub = kraken.grpc.KrakenMessageStub(channel)
        for payload in ('{"device_id": "m1", "v": 1}', "plain text"):
            request = kraken.pb.KrakenMessageRequest(
                kind="collector", provider="old-mqtt", payload=payload
            )
            assert stub.Send(request, timeout=10).status == 1
    rows = _rows(server, "collector = 'old-mqtt'", 2)
    assert {r["stream"] for r in rows} == {"old-mqtt"}
    assert [r["metadata"] for r in rows] == [{"kind": "collector"}] * 2
    assert rows[0]["device_id"] == "m1" and rows[0]["extra"] == {"v": 1}
    assert base64.b64decode(rows[1]["payload"]) == b"plain text"


def test_older_contract_send_answers_a_brokers_status(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    with grpc.insecure_channel(target) as channel:
        stub = kraken.grpc.KrakenMessageStub(channel)
        request = kraken.pb.KrakenMessageRequest(
            kind="collector", provider="old-status", payload='{"device_id": "s7"}'
        )
        assert stub.Send(request, timeout=10).status == 7
    assert _rows(server, "collector = 'old-status'", 1)[0]["device_id"] == "s7"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"metadata": "not json"}, "metadata is not JSON"),
        ({"metadata": "[1, 2]"}, "metadata must be a JSON object"),
        ({"payload": b'{"time": "yesterday"}'}, "Invalid time 'yesterday'"),
        ({"collector_name": "", "payload": b'{"device_id": {"a": 1}}'}, "device_id"),
    ],
)
def test_refused_input_is_invalid_argument_and_not_stored(
    kraken: SimpleNamespace, lake: tuple[Server, str], fields: dict[str, Any], says: str
) -> None:
    server, target = lake
    request = {"collector_name": "refused", "content_type": "application/json",
               "metadata": "{}", "payload": b"{}", **fields}  # fmt: skip
    with pytest.raises(grpc.RpcError) as refused:
        _process(kraken, target, **request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in refused.value.details()
    # a message sent after it is stored; the refused one never is
    after = f"after-{uuid.uuid4().hex}"
    _process(kraken, target, collector_name=after, payload=b'{"n": 1}')
    assert server.wait_rows(f"SELECT count(*) FROM telemetry WHERE collector = '{after}'", 1) == 1
    count = server.query("SELECT count(*) FROM telemetry WHERE collector IN ('refused', '')")
    assert count["rows"] == [[0]]


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("/kraken.KrakenService/ProcessKrakenRequest", b"\x1a\x02\xff\xfe"),  # metadata
        ("/kraken.KrakenMessage/Send", b"\x1a\x02\xff\xfe"),  # payload: not UTF-8
        ("/kraken.KrakenMessage/Send", b"\xff\xff\xff"),  # not protobuf
    ],
)
def test_a_request_that_is_not_the_contracts_message_is_invalid_argument(
    lake: tuple[Server, str], method: str, body: bytes
) -> None:
    server, target = lake
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            call(body, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad_request: not a kraken." in refused.value.details()
    assert server.metric("rtclake_records_rejected_total", source="kraken", reason="bad_request")


def test_a_new_connection_per_message_and_a_reused_one_are_both_served(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    for n in range(20):  # as Kraken's collector: connect, send, close
        answer = _process(kraken, target, collector_name="per-message", payload=b"%d" % n)
        assert json.loads(answer.payload)["accepted"] == 1
    with grpc.insecure_channel(target) as channel:
        stub = kraken.grpc.KrakenServiceStub(channel)
        for n in range(20):
            request = kraken.pb.KrakenRequest(collector_name="reused", payload=b"%d" % n)
            assert stub.ProcessKrakenRequest(request, timeout=10).collector_name == "rtclake"
    rows = _rows(server, "collector IN ('per-message', 'reused')", 40)
    assert sorted(int(base64.b64decode(r["payload"])) for r in rows) == sorted(list(range(20)) * 2)


def test_a_retry_with_the_same_message_id_is_stored_once(
    kraken: SimpleNamespace, lake: tuple[Server, str]
) -> None:
    server, target = lake
    sent = [
        _process(kraken, target, collector_name="retrying", metadata=json.dumps(meta),
                 payload=b'{"v": 1}')
        for meta in ({"message_id": "m-1"}, {"message_id": "m-1"}, {"message_id": "m-2"})
    ]  # fmt: skip
    ids = [json.loads(answer.metadata)["record_id"] for answer in sent]
    assert ids[0] == ids[1] != ids[2]
    rows = _rows(server, "collector = 'retrying'", 2)
    assert sorted(r["record_id"] for r in rows) == sorted(ids[1:])


@pytest.mark.parametrize("listen", [":50051", "127.0.0.1:99999", "[::]:65536", "host"])
def test_a_listen_address_grpc_would_not_serve_is_refused_in_the_configuration(
    listen: str,
) -> None:
    from pydantic import ValidationError

    from rtclake.integrations.kraken import KrakenGrpcConfig

    with pytest.raises(ValidationError, match="is not host:port with a port up to 65535"):
        KrakenGrpcConfig(type="kraken_grpc", listen=listen)
    for good in ("127.0.0.1:50051", "[::]:50051", "localhost:65535", "0.0.0.0:0"):
        assert KrakenGrpcConfig(type="kraken_grpc", listen=good).listen == good


def test_krakenb_grpc_host_alone_starts_the_server(
    kraken: SimpleNamespace, make_server: Any
) -> None:
    target = f"127.0.0.1:{free_port()}"
    server = make_server(KRAKENB_GRPC_HOST=target)  # and no rtclake setting
    answer = _process(kraken, target, collector_name="mqtt", content_type="application/json",
                      metadata="{}", payload=b'{"device_id": "k1"}')  # fmt: skip
    assert json.loads(answer.payload)["accepted"] == 1
    rows = _rows(server, "device_id = 'k1'", 1)
    row = rows[0]
    assert (row["source"], row["stream"], row["collector"]) == ("kraken", "mqtt", "mqtt")


def test_krakenb_grpc_host_is_a_default_the_configuration_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "kraken" not in load_registry().defaults["source"]
    monkeypatch.setenv("KRAKENB_GRPC_HOST", "[::]:50051")
    registry = load_registry()
    merged = registry.merged("source", {})["kraken"]
    assert merged == {"type": "kraken_grpc", "listen": "[::]:50051"}
    given = {"kraken": {"listen": "127.0.0.1:6000"}}
    assert registry.merged("source", given)["kraken"]["listen"] == "127.0.0.1:6000"
    off = {"kraken": {"enabled": False}}
    assert not [n for n, *_ in registry.configured("source", off) if n == "kraken"]


EXAMPLES = ROOT / "examples" / "brokers"


def test_kraken_variables_alone_serve_grpc_and_feed_an_example_brokers_sinks(
    kraken: SimpleNamespace, tmp_path: Path
) -> None:
    """A Kraken user's environment (KRAKENB_GRPC_HOST, _SLACK_URL, _REDIS_*), the threshold
    alarm of examples/brokers: a collector's message is stored, the broker's reply comes
    back, and its alarm reaches Slack and Redis through the sinks those variables make."""
    import redis

    from rtclake.testing import HttpReceiver, wait_for

    client = redis.Redis(host="127.0.0.1", port=6379, db=7)
    client.delete("rtclake:outbox")
    target = f"127.0.0.1:{free_port()}"
    alarm = "RTCLAKE_PROCESSORS__ALARM__"
    with HttpReceiver() as slack:
        env = {
            "KRAKENB_GRPC_HOST": target,
            "KRAKENB_SLACK_URL": slack.url + "/slack",
            "KRAKENB_REDIS_HOST": "127.0.0.1",
            "KRAKENB_REDIS_PORT": "6379",
            "KRAKENB_REDIS_DB": "7",
            alarm + "TYPE": "broker",
            alarm + "HANDLER": "threshold_alarm:ThresholdAlarm",
            alarm + "PATH": str(EXAMPLES),
            alarm + "MATCH": json.dumps({"source": "kraken"}),
            alarm + "OPTIONS": json.dumps({"threshold": 30, "sinks": ["slack", "redis"]}),
        }
        server = Server(tmp_path / "data", env=env)
        server.data_dir.mkdir(parents=True)
        server.start()
        try:
            hot = _process(kraken, target, collector_name="mqtt", content_type="application/json",
                           metadata="{}", payload=b'{"device_id": "k9", "temp": 35}')  # fmt: skip
            cool = _process(kraken, target, collector_name="mqtt", content_type="application/json",
                            metadata="{}", payload=b'{"device_id": "k9", "temp": 25}')  # fmt: skip
            assert json.loads(hot.payload) == {"alarm": True, "value": 35, "threshold": 30.0}
            assert json.loads(cool.payload) == {"alarm": False}
            assert hot.collector_name == "mqtt"
            rows = _rows(server, "device_id = 'k9'", 2)
            assert [r["record_id"] for r in rows] == [
                json.loads(hot.metadata)["record_id"], json.loads(cool.metadata)["record_id"]
            ]  # fmt: skip
            posted = wait_for(lambda: slack.received("/slack"), timeout=20)
            assert [p.json() for p in posted] == [{"text": "k9: temp 35 is above 30"}]
            entries = wait_for(lambda: client.xrange("rtclake:outbox"), timeout=20)
            (record,) = [json.loads(fields[b"record"]) for _, fields in entries]
            assert (record["text"], record["sinks"]) == (
                "k9: temp 35 is above 30",
                ["slack", "redis"],
            )
        finally:
            server.stop()
            client.delete("rtclake:outbox")


def test_the_default_reply_counts_a_record_an_intake_processor_dropped_as_0_accepted(
    kraken: SimpleNamespace, tmp_path: Path
) -> None:
    """As HTTP ingest's ``{"accepted": N}``: a record an intake-stage processor dropped is
    not stored, and the default reply says 0 (it had said 1)."""
    from rtclake.integrations.kraken.grpc_server import KrakenGrpc
    from rtclake.processors.base import RecordProcessor
    from tests.test_brokers import make_intake

    def dropper(record: dict[str, Any], ctx: Any) -> Any:
        return [] if record.get("drop") else None

    async def main() -> list[Any]:
        intake = make_intake(tmp_path, RecordProcessor(dropper, name="drop", stage="intake"))  # type: ignore[arg-type]
        await intake.spool.start()
        source = KrakenGrpc(intake, listen=f"127.0.0.1:{free_port()}", max_message_bytes=1 << 20)
        await source.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{source.port}") as channel:
                stub = kraken.grpc.KrakenServiceStub(channel)
                return [
                    await stub.ProcessKrakenRequest(
                        kraken.pb.KrakenRequest(
                            collector_name="webhook",
                            metadata="{}",
                            content_type="application/json",
                            payload=body,
                        ),
                        timeout=10,
                    )
                    for body in (b'{"drop": true}', b'{"n": 1}')
                ]
        finally:
            await source.stop()
            await intake.spool.close()

    dropped, kept = asyncio.run(main())
    assert json.loads(dropped.payload) == {"accepted": 0}
    assert json.loads(kept.payload)["accepted"] == 1
