"""Import of the S3 layout Kohaku's Fluent Bit writes: ``PREFIX/TAG/YYYY/MM/DD/HOST-UUID.gz``.

Works with any S3-compatible store (AWS, MinIO, RustFS, R2): endpoint, credentials and
path-style addressing are options. Keys are listed page by page and only from the day
folders not yet finished; one day folder's objects are held at a time and read in the
order they were written, by last-modified time, then key: Fluent Bit's ``$UUID`` keys are
random, and what is derived as the lines are read (rates from consecutive samples, one
row per report, spans of activity) needs them in order. What was imported is remembered
per key and ETag, not as a last-modified cursor, so objects from several hosts that share
a last-modified time are all imported; a line that Fluent Bit uploaded twice gets the same
record id both times and is stored once.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import msgspec
import structlog

from rtclake.importer import FileState, Importer, ImportStats, UnreadableFile
from rtclake.tables import Table

log = structlog.get_logger(__name__)

TAGS = ("rtc_stats", "session_webhook")
_DAY = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/")
KEEP_DAYS = 2  # day folders listed again on the next run (late uploads land there)
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)  # an object listed without its time


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{url!r} is not an s3://BUCKET/PREFIX address")
        prefix = parsed.path.strip("/")
        return cls(parsed.netloc, prefix + "/" if prefix else "")


class TagState(msgspec.Struct):
    """For one TAG: the first day folder still listed, and the keys imported since."""

    since: str = ""
    keys: dict[str, str] = msgspec.field(default_factory=dict)  # key -> ETag


def s3_client(
    *,
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    region: str | None = None,
    path_style: bool = False,
) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if path_style else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region or "us-east-1",
        config=config,
    )


class S3Importer:
    """Imports new objects of the Fluent Bit layout with an :class:`Importer`."""

    def __init__(self, importer: Importer, client: Any, location: S3Location) -> None:
        self.importer = importer
        self.client = client
        self.location = location

    def _state_key(self, tag: str) -> str:
        return f"s3://{self.location.bucket}/{self.location.prefix}{tag}/"

    def _load(self, tag: str) -> TagState:
        raw = self.importer.state.extra.get(self._state_key(tag))
        return msgspec.convert(raw, TagState) if raw else TagState()

    def _save(self, tag: str, state: TagState) -> None:
        self.importer.state.extra[self._state_key(tag)] = msgspec.to_builtins(state)
        self.importer.state.save()

    def _body(self, key: str) -> Any:
        """The object's content, as a stream (fetched again to salvage a damaged one)."""
        return self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"]

    def objects(self, tag: str, since: str) -> Iterator[dict[str, Any]]:
        """Objects under TAG/ from the day folder ``since`` on, page by page."""
        base = f"{self.location.prefix}{tag}/"
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": base}
        if since:
            kwargs["StartAfter"] = base + since
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            yield from page.get("Contents", ())

    def days(
        self, tag: str, state: TagState
    ) -> Iterator[tuple[str, list[tuple[dt.datetime, str, str]]]]:
        """Each day folder (``YYYY/MM/DD/``) under TAG/ from ``state.since`` on, with its
        objects not imported yet (last-modified time, key, ETag) in the order they were
        written: by last-modified time (a second's precision), then key. A key outside
        the layout is logged and passed over."""
        base = f"{self.location.prefix}{tag}/"
        day = ""
        objects: list[tuple[dt.datetime, str, str]] = []
        for obj in self.objects(tag, state.since):
            key, etag = obj["Key"], obj.get("ETag", "")
            found = _DAY.match(key[len(base) :])
            if found is None:
                log.info("s3 import: key outside the TAG/YYYY/MM/DD/ layout", key=key)
                continue
            if found.group(0) != day:  # listed in key order: a day's objects together
                if day:
                    yield day, sorted(objects)
                day, objects = found.group(0), []
            if state.keys.get(key) != etag:
                objects.append((obj.get("LastModified") or _NEVER, key, etag))
        if day:
            yield day, sorted(objects)

    def run(self, stats: ImportStats | None = None) -> ImportStats:
        stats = stats or ImportStats()
        self.importer.delivery.start()
        for tag in TAGS:
            table = self.importer.tables[self.importer.table_for(tag + ".jsonl") or ""]
            state = self._load(tag)
            newest = state.since
            base = f"{self.location.prefix}{tag}/"
            for day, objects in self.days(tag, state):
                newest = max(newest, day)
                for _, key, etag in objects:
                    self._import(key, etag, table, tag, state, stats)
            state.since = _days_before(newest, KEEP_DAYS)
            state.keys = {k: v for k, v in state.keys.items() if k[len(base) :] >= state.since}
            self._save(tag, state)
        return stats

    def _import(
        self, key: str, etag: str, table: Table, tag: str, state: TagState, stats: ImportStats
    ) -> None:
        """Import one object and remember it (unless it is unreadable)."""
        body = self._body(key)
        label = f"s3://{self.location.bucket}/{key}"
        try:
            self.importer.import_stream(
                label,
                label,
                body,
                key.endswith(".gz"),
                table,
                FileState(etag),
                stats,
                reopen=functools.partial(self._body, key),
            )
        except UnreadableFile as exc:  # left for a later run (a new ETag, fixed)
            log.error("s3 import: object unreadable; the rest of it skipped", key=key,
                      error=str(exc))  # fmt: skip
            stats.unreadable.append(str(exc))
            return
        stats.files += 1
        state.keys[key] = etag
        self._save(tag, state)


def _days_before(day_folder: str, days: int) -> str:
    """``YYYY/MM/DD/`` minus ``days`` days ("" stays "")."""
    if not day_folder:
        return ""
    day = dt.datetime.strptime(day_folder, "%Y/%m/%d/").date() - dt.timedelta(days=days)
    return day.strftime("%Y/%m/%d/")
