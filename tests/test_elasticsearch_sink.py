"""The elasticsearch sink (``rtclake.sinks.elasticsearch``).

No Elasticsearch server can be had on this machine, so the sink talks, through the
official clients, to a stand-in written here that checks each request's shape (the NDJSON
``_bulk`` body, its action lines with ``_index`` and ``_id``, the content type, the
``_index_template`` request) and answers as Elasticsearch does (its product header, per
item statuses and errors, 409 on ``create`` of an existing ``_id``, the depth limit of a
``flattened`` field). Shown: a replay stores nothing twice, an outage loses nothing, a
document refused for good lands in ``dead_letters`` with its reason (behind the writer).
With ``RTCLAKE_TEST_ELASTICSEARCH_URL`` set, the same runs against a real server.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pyarrow as pa
import pytest

from rtclake.catalog import default_registry
from rtclake.config import Settings
from rtclake.errors import ConfigError, SinkError
from rtclake.service import Service
from rtclake.sinks.base import Batch, Rejected
from rtclake.sinks.elasticsearch import (
    ElasticsearchConfig,
    ElasticsearchSink,
    check_pattern,
    index_glob,
    index_name,
    template_name,
)
from rtclake.tables import OUTBOX
from rtclake.testing import free_port, wait_for
from tests.test_query import batch
from tests.test_redis_sink import BEYOND_FLOATS
from tests.test_sora_webhooks import App

REAL = os.environ.get("RTCLAKE_TEST_ELASTICSEARCH_URL")
NO_SERVER = (
    "no Elasticsearch server can be had on this machine; set RTCLAKE_TEST_ELASTICSEARCH_URL"
    " to run this against one"
)


# The stand-in


class StandIn:
    """An HTTP server on a loopback port answering ``_index_template`` and ``_bulk`` as
    Elasticsearch (or OpenSearch) does, keeping documents by ``(_index, _id)``. Whatever
    in a request an Elasticsearch would refuse or a test did not expect is noted in
    :attr:`problems` (and answered 400)."""

    def __init__(self, flavor: str = "elasticsearch", port: int = 0,
                 authorization: str | None = None) -> None:  # fmt: skip
        self.flavor = flavor
        self.authorization = authorization
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: Counter[tuple[str, str]] = Counter()
        self.templates: dict[str, dict[str, Any]] = {}
        self.bulks: list[list[tuple[dict[str, Any], dict[str, Any]]]] = []
        self.problems: list[str] = []
        self.outage = 0  # answer the next requests 503
        self.bulk_outages: list[bool] = []  # of the next _bulk requests, those answered 503
        self.busy: set[str] = set()  # _ids answered 429 (once each)
        self.product_header = flavor == "elasticsearch"
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # the answer's head and body go out at once

            def do_PUT(self) -> None:
                stand_in._handle(self, "PUT")

            def do_POST(self) -> None:
                stand_in._handle(self, "POST")

            def do_GET(self) -> None:
                stand_in._handle(self, "GET")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> set[str]:
        with self.lock:
            return {doc_id for _, doc_id in self.docs}

    # requests

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        body = request.rfile.read(int(request.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in request.headers.items()}
        parts = urlsplit(request.path)
        with self.lock:
            status, answer = self._answer(method, parts.path, parse_qs(parts.query), headers,
                                          body)  # fmt: skip
        text = orjson.dumps(answer)
        request.send_response(status)
        if self.product_header:
            request.send_header("X-Elastic-Product", "Elasticsearch")
        mimetype = "application/json"
        if "compatible-with" in headers.get("accept", ""):
            mimetype = "application/vnd.elasticsearch+json;compatible-with=9"
        request.send_header("Content-Type", mimetype)
        request.send_header("Content-Length", str(len(text)))
        request.end_headers()
        request.wfile.write(text)

    def _problem(self, text: str) -> tuple[int, dict[str, Any]]:
        self.problems.append(text)
        return 400, {"error": {"type": "stand_in_problem", "reason": text}, "status": 400}

    def _answer(self, method: str, path: str, query: dict[str, list[str]],
                headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:  # fmt: skip
        if self.authorization and headers.get("authorization") != self.authorization:
            return 401, {"error": {"type": "security_exception", "reason": "missing"},
                         "status": 401}  # fmt: skip
        failing = path == "/_bulk" and self.bulk_outages and self.bulk_outages.pop(0)
        if self.outage or failing:
            self.outage = max(0, self.outage - (not failing))
            reason = "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];"
            error = {"type": "cluster_block_exception", "reason": reason}
            return 503, {"error": error, "status": 503}
        if self.flavor == "elasticsearch":
            accept = headers.get("accept", "")
            if not re.fullmatch(r"application/vnd\.elasticsearch\+json; ?compatible-with=\d+",
                                accept):  # fmt: skip
                return self._problem(f"accept {accept!r}: not the client's compatible type")
        if method == "PUT" and path.startswith("/_index_template/"):
            return self._template(path.rsplit("/", 1)[1], headers, body)
        if method in ("POST", "PUT") and path == "/_bulk":
            return self._bulk(query, headers, body)
        return self._problem(f"{method} {path}: not a request the sink makes")

    def _template(self, name: str, headers: dict[str, str],
                  body: bytes) -> tuple[int, dict[str, Any]]:  # fmt: skip
        kind = headers.get("content-type", "")
        if not re.fullmatch(r"application/(vnd\.elasticsearch\+)?json(; ?compatible-with=\d+)?",
                            kind):  # fmt: skip
            return self._problem(f"template content-type {kind!r}")
        template = orjson.loads(body)
        patterns = template.get("index_patterns")
        properties = template.get("template", {}).get("mappings", {}).get("properties")
        if not (isinstance(patterns, list) and patterns and isinstance(properties, dict)):
            return self._problem(f"template {name}: no index_patterns or mappings")
        if name != name.lower() or "*" in name:
            return self._problem(f"template name {name!r}")
        for other, known in self.templates.items():
            if other != name and known.get("priority") == template.get("priority"):
                overlap = [p for p in patterns if p in known["index_patterns"]]
                if overlap:
                    return self._problem(f"templates {name} and {other} overlap: {overlap}")
        self.templates[name] = template
        return 200, {"acknowledged": True}

    def _bulk(self, query: dict[str, list[str]], headers: dict[str, str],
              body: bytes) -> tuple[int, dict[str, Any]]:  # fmt: skip
        kind = headers.get("content-type", "")
        wanted = (r"application/vnd\.elasticsearch\+x-ndjson; ?compatible-with=\d+"
                  if self.flavor == "elasticsearch" else r"application/x-ndjson")  # fmt: skip
        if not re.fullmatch(wanted, kind):
            return self._problem(f"_bulk content-type {kind!r}")
        if "filter_path" not in query:
            return self._problem("_bulk without filter_path: every item's answer comes back")
        if not body.endswith(b"\n"):
            return self._problem("_bulk body does not end with a newline")
        lines = body.split(b"\n")[:-1]
        if len(lines) % 2:
            return self._problem("_bulk body: an action line without its document")
        pairs = [
            (orjson.loads(a), orjson.loads(d)) for a, d in zip(lines[::2], lines[1::2], strict=True)
        ]
        self.bulks.append(pairs)
        items = []
        for action, doc in pairs:
            if len(action) != 1 or next(iter(action)) not in ("index", "create"):
                return self._problem(f"action line {action}")
            [(verb, meta)] = action.items()
            index, doc_id = meta.get("_index"), meta.get("_id")
            if not (isinstance(index, str) and isinstance(doc_id, str)):
                return self._problem(f"action line without _index and _id: {action}")
            if doc.get("record_id") != doc_id:
                return self._problem(f"_id {doc_id} is not the record id {doc.get('record_id')}")
            item = self._item(verb, index, doc_id, doc)
            if item is None:
                return self._problem(f"no template matches index {index}")
            items.append({verb: item})
        errors = any("error" in item[next(iter(item))] for item in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    def _item(self, verb: str, index: str, doc_id: str,
              doc: dict[str, Any]) -> dict[str, Any] | None:  # fmt: skip
        properties = None
        for template in self.templates.values():
            if any(fnmatch.fnmatchcase(index, p) for p in template["index_patterns"]):
                properties = template["template"]["mappings"]["properties"]
        if properties is None:
            return None
        head = {"_index": index, "_id": doc_id}
        if doc_id in self.busy:
            self.busy.discard(doc_id)
            return head | {"status": 429, "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution of coordinating operation"}}  # fmt: skip
        refusal = _mapping_error(properties, doc, doc_id)
        if refusal is not None:
            return head | {"status": 400, "error": refusal}
        key = (index, doc_id)
        if verb == "create" and key in self.docs:
            return head | {"status": 409, "error": {
                "type": "version_conflict_engine_exception",
                "reason": f"[{doc_id}]: version conflict, document already exists"}}  # fmt: skip
        created = key not in self.docs
        self.docs[key] = doc
        self.writes[key] += 1
        return head | {"_version": self.writes[key], "result": "created" if created else
                       "updated", "status": 201 if created else 200}  # fmt: skip


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_depth(v) for v in value), default=0)
    return 0


FITS: dict[str, Callable[[Any], bool]] = {
    "keyword": lambda v: isinstance(v, str),
    "date": lambda v: isinstance(v, str) and dt.datetime.fromisoformat(v) is not None,
    "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "binary": lambda v: isinstance(v, str) and base64.b64decode(v) is not None,
    "flattened": lambda v: isinstance(v, dict),
    "flat_object": lambda v: isinstance(v, dict),
    "object": lambda v: isinstance(v, dict),
}
"""Whether a value fits a mapping type, as Elasticsearch's mapper sees it."""


def _mapping_error(properties: dict[str, Any], doc: dict[str, Any],
                   doc_id: str) -> dict[str, Any] | None:  # fmt: skip
    """What Elasticsearch's mapper says of ``doc`` under ``properties`` (None: fine)."""
    for field, value in doc.items():
        mapping = properties.get(field)
        if mapping is None:
            return {"type": "strict_dynamic_mapping_exception",
                    "reason": f"[{field}] is not in the template's mappings"}  # fmt: skip
        if value is None:
            continue
        kind = mapping.get("type", "object")
        disabled = mapping.get("enabled") is False
        if not (disabled or FITS[kind](value)):
            return {"type": "mapper_parsing_exception",
                    "reason": f"failed to parse field [{field}] of type [{kind}] in document"
                              f" with id '{doc_id}'"}  # fmt: skip
        if kind in ("flattened", "flat_object") and _depth(value) > 20:
            return {"type": "document_parsing_exception",
                    "reason": f"[1:2] the provided [{kind}] field [{field}] exceeds the"
                              " maximum depth limit of [20]"}  # fmt: skip
    return None


# Helpers


def lines(n: int, day: int = 20) -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-%02dT00:00:%02dZ", "device_id": "d%d", "temp": %d}'
        % (day, i, i, 20 + i)
        for i in range(n)
    )


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"n": value}
    return value


def sink(url: str, **settings: Any) -> ElasticsearchSink:
    config = ElasticsearchConfig(type="elasticsearch", urls=[url], timeout=5, **settings)
    made = ElasticsearchSink(config, default_registry(), "es")
    return made


# Pure functions


def test_index_names_globs_and_template_names_follow_the_pattern() -> None:
    time = dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    daily = "rtclake-{table}-%Y.%m.%d"
    assert index_name(daily, "rtc_stats", time) == "rtclake-rtc_stats-2026.11.21"
    assert index_glob("rtclake-{table}-%Y.%m.%d", "rtc_stats") == "rtclake-rtc_stats-*"
    assert template_name("rtclake-{table}-%Y.%m.%d", "rtc_stats") == "rtclake-rtc_stats"
    assert index_glob("sorabeat-%Y.%m.%d", "events") == "sorabeat-*"
    assert template_name("logs-%Y-{table}-%H", "events") == "logs-events"
    assert index_glob("{table}", "events") == "events"
    assert check_pattern("rtclake-{table}-%Y.%m.%d", ["telemetry", "events"]) is None
    assert check_pattern("sorabeat-%Y.%m.%d", ["events"]) is None
    assert "{table}" in (check_pattern("sorabeat-%Y.%m.%d", ["events", "telemetry"]) or "")
    assert "lowercase" in (check_pattern("rtclake-{table}-%b", ["events"]) or "")
    assert "not an index name" in (check_pattern("rtc lake-{table}", ["events"]) or "")
    assert "not an index name" in (check_pattern("_{table}", ["events"]) or "")


@pytest.mark.parametrize(
    ("sink_settings", "message"),
    [
        ({"tables": ["telemetri"]}, r"sinks.es.tables: unknown tables \['telemetri'\]"),
        ({"index": "sorabeat-%Y.%m.%d"}, r"sinks.es.index: .* must hold \{table\}"),
        ({"index": "Rtclake-{table}"}, "lowercase"),
        ({"urls": ["http://elastic:changeme@127.0.0.1:9200"]}, "without credentials"),
        ({"api_key": "k", "username": "u"}, "not both"),
        ({"flavor": "opensearch", "api_key": "k"}, "OpenSearch takes username/password"),
        ({"extra": "flat_object"}, "Elasticsearch has flattened"),
    ],
)
def test_settings_it_cannot_use_are_refused_at_start(
    tmp_path: Path, sink_settings: dict[str, Any], message: str
) -> None:
    es = {"type": "elasticsearch", "urls": "http://127.0.0.1:9"} | sink_settings
    settings = Settings(data_dir=tmp_path, node="t", sinks={"es": es})
    with pytest.raises(ConfigError, match=message) as refused:
        Service(settings)
    assert "changeme" not in str(refused.value)


# Against the stand-in


def test_start_puts_a_template_per_table_with_mappings_from_its_schema() -> None:
    with StandIn() as server:
        es = sink(server.url, index_settings={"number_of_replicas": 0})
        es.start()
        names = set(default_registry().names()) - {"dead_letters"}
        assert set(server.templates) == {f"rtclake-{name}" for name in names}
        telemetry = server.templates["rtclake-telemetry"]
        assert telemetry["index_patterns"] == ["rtclake-telemetry-*"]
        assert telemetry["priority"] == 200
        assert telemetry["template"]["settings"] == {"number_of_replicas": 0}
        properties = telemetry["template"]["mappings"]["properties"]
        assert properties["record_id"]["type"] == "keyword"
        assert properties["time"] == properties["received_at"] == {"type": "date"}
        assert properties["device_id"]["type"] == "keyword"
        assert properties["payload"] == {"type": "binary"}
        assert properties["metadata"] == {"type": "object", "enabled": False}  # any JSON
        assert properties["extra"] == {"type": "flattened"}
        alerts = server.templates["rtclake-alerts"]["template"]["mappings"]["properties"]
        assert alerts["value"] == {"type": "double"} and alerts["since"] == {"type": "date"}
        es.close()
        assert server.problems == []


def test_documents_go_to_daily_indices_with_the_record_id_as_id() -> None:
    with StandIn() as server:
        es = sink(server.url)
        made = batch(1, lines(2, day=20) + b"\n" + lines(1, day=21))
        es.write(made)
        assert server.problems == []
        ids = made.tables["telemetry"]["record_id"].to_pylist()
        assert sorted(server.docs) == sorted(
            [("rtclake-telemetry-2026.11.20", ids[0]), ("rtclake-telemetry-2026.11.20", ids[1]),
             ("rtclake-telemetry-2026.11.21", ids[2])]
        )  # fmt: skip
        doc = server.docs[("rtclake-telemetry-2026.11.20", ids[1])]
        assert doc["time"] == "2026-11-20T00:00:01Z" and doc["device_id"] == "d1"
        assert doc["extra"] == {"temp": 21} and doc["source"] == "http"
        [pairs] = server.bulks
        assert [next(iter(action)) for action, _ in pairs] == ["index"] * 3
        es.close()


def test_numbers_beyond_a_float_go_into_the_documents_as_written() -> None:
    items = list(sink("http://127.0.0.1:9").items(batch(1, BEYOND_FLOATS)))
    assert len(items) == 3  # whether the cluster takes them is its answer, per document
    assert b'"extra":{"big":1e400}' in items[0].lines
    assert b'"extra":{"env":{"low":-1e400}}' in items[1].lines
    assert b'"extra":{"digits":' + b"9" * 400 + b"}" in items[2].lines


def test_a_replayed_batch_overwrites_the_same_ids_and_stores_nothing_twice() -> None:
    with StandIn() as server:
        es = sink(server.url)
        made = batch(1, lines(5))
        es.write(made)
        es.write(made)
        es.close()
        again = sink(server.url)  # after a restart
        again.write(Batch(made.node, made.run, 2, made.tables))  # the same records again
        assert len(server.docs) == 5 and set(server.writes.values()) == {3}
        assert server.problems == []


def test_with_action_create_a_replay_is_answered_409_which_counts_as_written() -> None:
    with StandIn() as server:
        es = sink(server.url, action="create")
        made = batch(1, lines(3))
        es.write(made)
        es.write(Batch(made.node, made.run, 2, made.tables))  # the same records again
        assert len(server.docs) == 3 and set(server.writes.values()) == {1}
        assert [next(iter(a)) for a, _ in server.bulks[1]] == ["create"] * 3
        assert server.problems == []


def test_a_503_is_an_outage_and_the_retry_stores_everything_once() -> None:
    with StandIn() as server:
        es = sink(server.url)
        es.start()
        server.outage = 1
        made = batch(1, lines(4))
        failed = "_bulk failed: ApiError 503: cluster_block_exception: blocked by"
        with pytest.raises(SinkError, match=failed):
            es.write(made)
        assert server.docs == {}
        es.write(made)  # the delivery's retry
        assert len(server.docs) == 4 and set(server.writes.values()) == {1}


def test_after_an_outage_in_the_middle_of_a_batch_its_retry_sends_only_the_rest() -> None:
    with StandIn() as server:
        es = sink(server.url, chunk_size=2)
        server.bulk_outages = [False, True]
        made = batch(1, lines(5))
        with pytest.raises(SinkError, match="503"):
            es.write(made)
        ids = made.tables["telemetry"]["record_id"].to_pylist()
        assert server.ids() == set(ids[:2])
        es.write(made)
        assert server.ids() == set(ids) and set(server.writes.values()) == {1}
        sent = [[d["record_id"] for _, d in pairs] for pairs in server.bulks]
        assert sent == [ids[0:2], ids[2:4], ids[4:5]]  # the 503 was answered before parsing


def test_an_outage_at_start_is_retried_before_the_first_write() -> None:
    with StandIn() as server:
        es = sink(server.url)
        server.outage = 1
        with pytest.raises(SinkError, match="index template"):
            es.start()
        es.write(batch(1, lines(1)))
        assert "rtclake-telemetry" in server.templates and len(server.docs) == 1


def test_documents_answered_429_are_retried_alone() -> None:
    with StandIn() as server:
        es = sink(server.url, chunk_size=2)
        made = batch(1, lines(5))
        ids = made.tables["telemetry"]["record_id"].to_pylist()
        server.busy = {ids[1], ids[4]}
        retry = r"2 of 5 documents to retry, e\.g\. elasticsearch 429: es_rejected_execution"
        with pytest.raises(SinkError, match=retry):
            es.write(made)
        assert server.ids() == {ids[0], ids[2], ids[3]}
        es.write(made)
        assert server.ids() == set(ids) and set(server.writes.values()) == {1}
        assert [[d["record_id"] for _, d in pairs] for pairs in server.bulks] == [
            ids[0:2],
            ids[2:4],
            ids[4:5],
            [ids[1], ids[4]],
        ]


def test_a_document_refused_for_good_is_named_once_the_rest_is_stored() -> None:
    with StandIn() as server:
        es = sink(server.url)
        body = lines(1) + b"\n" + orjson.dumps({"time": "2026-11-20T00:00:09Z",
                                                "deep": deep(21)}) + b"\n" + lines(1)  # fmt: skip
        made = batch(1, body.replace(b'"d0"', b'"x"', 1))
        with pytest.raises(Rejected) as refused:
            es.write(made)
        [(row, reason)] = refused.value.rows["telemetry"]
        assert row == 1
        assert reason == (
            "elasticsearch 400: document_parsing_exception: [1:2] the provided [flattened]"
            " field [extra] exceeds the maximum depth limit of [20]"
        )
        assert len(server.docs) == 2
        with pytest.raises(Rejected):  # a replay: refused again, the rest overwritten
            es.write(made)
        assert len(server.docs) == 2 and set(server.writes.values()) == {2}


def test_chunks_hold_at_most_chunk_size_documents_and_chunk_bytes() -> None:
    with StandIn() as server:
        es = sink(server.url, chunk_size=3)
        es.write(batch(1, lines(7)))
        assert [len(pairs) for pairs in server.bulks] == [3, 3, 1]
        es = sink(server.url, chunk_bytes=1)  # one document a request, whatever its size
        es.write(batch(2, lines(2)))
        assert [len(pairs) for pairs in server.bulks[3:]] == [1, 1]


def test_an_unreachable_cluster_is_an_outage() -> None:
    es = sink(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SinkError, match="ConnectionError"):
        es.start()
    with pytest.raises(SinkError, match="ConnectionError"):
        es.write(batch(1, lines(1)))


def test_a_server_that_is_not_elasticsearch_is_an_outage_naming_the_flavor() -> None:
    with StandIn() as server:
        server.product_header = False
        with pytest.raises(SinkError, match="takes `flavor: opensearch`"):
            sink(server.url).start()


def test_the_api_key_is_sent_as_elasticsearch_asks() -> None:
    with StandIn(authorization="ApiKey a2V5OnNlY3JldA==") as server:
        es = sink(server.url, api_key="a2V5OnNlY3JldA==")
        es.write(batch(1, lines(2)))
        assert len(server.docs) == 2
        with pytest.raises(SinkError, match="401"):
            sink(server.url, api_key="wrong").start()


def test_opensearch_through_opensearch_py_with_basic_auth() -> None:
    token = base64.b64encode(b"admin:s3cret").decode()
    with StandIn("opensearch", authorization=f"Basic {token}") as server:
        es = sink(server.url, flavor="opensearch", username="admin", password="s3cret")
        made = batch(1, lines(3))
        es.write(made)
        es.write(made)
        assert len(server.docs) == 3 and set(server.writes.values()) == {2}
        extra = server.templates["rtclake-telemetry"]["template"]["mappings"]["properties"]
        assert extra["extra"] == {"type": "flat_object"}
        server.outage = 1
        with pytest.raises(SinkError, match="opensearch: _bulk failed"):
            es.write(Batch("node", "sp", 2, made.tables))
        assert server.problems == []


def test_of_the_outbox_only_the_rows_addressed_to_the_sink_are_written() -> None:
    now = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)

    def row(n: int, sinks: list[str]) -> dict[str, Any]:
        return {name: None for name in OUTBOX.schema.names} | {
            "record_id": f"o{n}", "time": now, "received_at": now, "source": "broker",
            "stream": "b", "kind": "message", "sinks": json.dumps(sinks), "text": f"t{n}",
        }  # fmt: skip

    rows = [row(1, ["es"]), row(2, ["influxdb"]), row(3, ["influxdb", "es"])]
    made = Batch("n", "r", 1, {"outbox": pa.Table.from_pylist(rows, schema=OUTBOX.schema)})
    with StandIn() as server:
        sink(server.url).write(made)
        assert server.ids() == {"o1", "o3"}
        assert server.docs[("rtclake-outbox-2026.11.20", "o3")]["sinks"] == ["influxdb", "es"]
        assert server.problems == []


# Behind the writer


def writer_settings(url: str) -> dict[str, Any]:
    return {
        "sinks": {"es": {"type": "elasticsearch", "urls": [url], "tables": ["telemetry"],
                         "timeout": 2}},
        "writer": {"retry_initial": 0.05, "retry_max": 0.2},
    }  # fmt: skip


def test_behind_the_writer_a_cluster_down_for_a_while_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    app = App(tmp_path, **writer_settings(f"http://127.0.0.1:{port}")).start()
    try:
        for part in range(3):
            body = lines(5).replace(b'"d', b'"p%d-' % part)
            assert app.post("/ingest/sensors", body).status_code == 200
        # the lake takes the first batch; the writer keeps the batches in order for every
        # sink, so the rest wait in the spool with it until the cluster is back
        assert wait_for(lambda: app.rows("SELECT count(*) FROM telemetry")[0][0] >= 5)
        time.sleep(0.5)
        with StandIn(port=port) as server:
            assert wait_for(lambda: len(server.ids()) == 15, timeout=20)
            assert app.wait_rows("SELECT count(*) FROM telemetry", 15) == 15
            assert app.post("/ingest/sensors", lines(2).replace(b'"d', b'"q')).status_code == 200
            assert wait_for(lambda: len(server.ids()) == 17, timeout=20)
            time.sleep(0.3)
            assert len(server.docs) == 17 and set(server.writes.values()) == {1}
            assert server.problems == []
    finally:
        app.stop()


def test_behind_the_writer_a_refused_document_lands_in_dead_letters(tmp_path: Path) -> None:
    with StandIn() as server:
        app = App(tmp_path, **writer_settings(server.url)).start()
        try:
            body = lines(2) + b"\n" + orjson.dumps(
                {"time": "2026-11-20T00:00:09Z", "device_id": "too-deep", "deep": deep(25)}
            )  # fmt: skip
            assert app.post("/ingest/sensors", body).status_code == 200
            sql = "SELECT count(*) FROM dead_letters"
            assert app.wait_rows(sql, 1) == 1
            [letter] = app.rows(
                "SELECT sink, table_name, reason, record->>'device_id' FROM dead_letters"
            )
            assert letter == [
                "es", "telemetry",
                "elasticsearch 400: document_parsing_exception: [1:2] the provided [flattened]"
                " field [extra] exceeds the maximum depth limit of [20]", "too-deep",
            ]  # fmt: skip
            assert {d["device_id"] for d in server.docs.values()} == {"d0", "d1"}
            metric = app.service.metrics.registry.get_sample_value(
                "rtclake_dead_letters_total", {"sink": "es", "table": "telemetry"}
            )
            assert metric == 1
        finally:
            app.stop()


# Against a real server


@pytest.mark.skipif(not REAL, reason=NO_SERVER)
def test_against_a_real_server_a_replay_stores_nothing_twice_and_a_refusal_is_named() -> None:
    assert REAL is not None
    prefix = f"rtclake-test-{uuid.uuid4().hex[:8]}"
    env = os.environ
    flavor = env.get("RTCLAKE_TEST_ELASTICSEARCH_FLAVOR", "elasticsearch")
    settings: dict[str, Any] = {
        "type": "elasticsearch", "urls": [REAL], "flavor": flavor, "tables": ["telemetry"],
        "index": prefix + "-{table}-%Y.%m.%d", "index_settings": {"number_of_replicas": 0},
        # OpenSearch's flat_object may not limit depth; an object field does (20 levels)
        "extra": "flattened" if flavor == "elasticsearch" else "object",
        "api_key": env.get("RTCLAKE_TEST_ELASTICSEARCH_API_KEY"),
        "username": env.get("RTCLAKE_TEST_ELASTICSEARCH_USERNAME"),
        "password": env.get("RTCLAKE_TEST_ELASTICSEARCH_PASSWORD"),
        "ca_certs": env.get("RTCLAKE_TEST_ELASTICSEARCH_CA_CERTS"),
    }  # fmt: skip
    config = ElasticsearchConfig.model_validate(settings)
    es = ElasticsearchSink(config, default_registry(), "es")
    es.start()
    assert es._client is not None
    client = es._client.client
    try:
        made = batch(1, lines(5))
        es.write(made)
        es.write(Batch(made.node, made.run, 2, made.tables))  # the same records again
        client.indices.refresh(index=f"{prefix}-*")
        assert client.count(index=f"{prefix}-*")["count"] == 5
        body = orjson.dumps({"time": "2026-11-20T00:00:09Z", "deep": deep(25)})
        with pytest.raises(Rejected) as refused:
            es.write(batch(3, lines(1).replace(b'"d0"', b'"z"') + b"\n" + body))
        [(row, reason)] = refused.value.rows["telemetry"]
        assert row == 1 and reason.startswith(f"{flavor} 400: ")
    finally:
        made_indices = list(client.indices.get(index=f"{prefix}-*").keys())  # by name: a
        if made_indices:  # wildcard delete is refused where destructive_requires_name holds
            client.indices.delete(index=",".join(made_indices))
        client.indices.delete_index_template(name=f"{prefix}-telemetry")
        es.close()
