"""The elasticsearch sink for the sink benchmark (bench/sinks.py): only against a real
cluster, ``RTCLAKE_TEST_ELASTICSEARCH_URL`` (none can be had on this machine; the tests'
stand-in checks requests, it is no measure of a cluster), with the tests' optional
``RTCLAKE_TEST_ELASTICSEARCH_FLAVOR``, ``_API_KEY``, ``_USERNAME``, ``_PASSWORD`` and
``_CA_CERTS``; indices and a template of the run's own, deleted afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.elasticsearch import ElasticsearchConfig, ElasticsearchSink, template_name

UNAVAILABLE = (
    "no Elasticsearch server can be had on this machine; set RTCLAKE_TEST_ELASTICSEARCH_URL"
    " to measure it"
)


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    env = os.environ
    url = env.get("RTCLAKE_TEST_ELASTICSEARCH_URL")
    if not url:
        print(f"elasticsearch: not measured, {UNAVAILABLE}")
        return None
    prefix = f"rtclake-bench-{uuid.uuid4().hex[:8]}"
    config = ElasticsearchConfig.model_validate({
        "type": "elasticsearch", "urls": [url], "tables": ["telemetry"],
        "flavor": env.get("RTCLAKE_TEST_ELASTICSEARCH_FLAVOR", "elasticsearch"),
        "index": prefix + "-{table}-%Y.%m.%d", "index_settings": {"number_of_replicas": 0},
        "api_key": env.get("RTCLAKE_TEST_ELASTICSEARCH_API_KEY"),
        "username": env.get("RTCLAKE_TEST_ELASTICSEARCH_USERNAME"),
        "password": env.get("RTCLAKE_TEST_ELASTICSEARCH_PASSWORD"),
        "ca_certs": env.get("RTCLAKE_TEST_ELASTICSEARCH_CA_CERTS"),
    })  # fmt: skip
    sink = ElasticsearchSink(config, default_registry(), "elasticsearch")
    sink.start()
    assert sink._client is not None
    client = sink._client.client  # the flavor's official client, as the sink set it up
    pattern = f"{prefix}-*"

    def count() -> int:
        client.indices.refresh(index=pattern)
        return int(client.count(index=pattern)["count"])

    def cleanup() -> None:
        try:
            names = list(client.indices.get(index=pattern).keys())
            if names:  # by name: a wildcard delete is refused by destructive_requires_name
                client.indices.delete(index=",".join(names))
            client.indices.delete_index_template(name=template_name(config.index, "telemetry"))
        finally:
            sink.close()

    return sink, count, cleanup
