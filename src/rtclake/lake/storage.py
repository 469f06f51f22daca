"""Where the lake's files live: a local folder, or ``s3://BUCKET/PREFIX`` on any
S3-compatible store (AWS, MinIO, R2, moto).

Writes go through :mod:`pyarrow.fs`. Locally a file is written under a hidden temporary
name, fsync'd, renamed, and its folder fsync'd; on S3 a file is one PUT, which S3 shows
whole or not at all. Readers list the files of a table (:meth:`Storage.files`) and hand
DuckDB exactly those (local paths or ``s3://`` URLs); for S3 the query engine loads httpfs
from its package and creates a secret from the same credentials (:meth:`Storage.duckdb_setup`).

Endpoint and credentials come from the ``lake`` settings, else from the standard AWS
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rtclake import faults
from rtclake.config import Settings
from rtclake.durable import fsync_dir
from rtclake.errors import ConfigError
from rtclake.lake import layout


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store (None: the AWS variable, then the default)."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None

    def resolved(self) -> S3Options:
        env = os.environ.get
        return S3Options(
            endpoint_url=self.endpoint_url or env("AWS_ENDPOINT_URL") or None,
            access_key_id=self.access_key_id or env("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.secret_access_key or env("AWS_SECRET_ACCESS_KEY") or None,
            region=self.region or env("AWS_REGION") or env("AWS_DEFAULT_REGION") or None,
        )


class Storage:
    """A lake root: writes files, lists a table's files, sets DuckDB up to read them."""

    root: str

    def write(self, relative: str, produce: Callable[[IO[bytes]], None]) -> None:
        raise NotImplementedError

    def write_bytes(self, relative: str, content: Any) -> None:
        """:meth:`write` of bytes made beforehand (``bytes`` or a ``pyarrow.Buffer``)."""

        def produce(out: IO[bytes]) -> None:
            out.write(content)

        self.write(relative, produce)

    def files(self, table: str) -> list[str]:
        raise NotImplementedError

    def holds_parquet(self, folder: str) -> bool:
        """Whether any Parquet file is under ``folder`` (relative to the root)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Make the root usable (create the folder; check the bucket)."""

    def duckdb_setup(self, con: Any) -> None:
        """What a DuckDB connection needs before it can read :meth:`files`."""

    @property
    def remote(self) -> bool:
        return False

    def exists(self) -> bool:
        return True


class LocalStorage(Storage):
    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self.path = Path(root)

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return self.path.is_dir()

    def write(self, relative: str, produce: Callable[[IO[bytes]], None]) -> None:
        target = self.path / relative
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / layout.temporary_name(target.name)
        try:
            with open(tmp, "wb") as fh:
                faults.check("lake.write")
                produce(fh)
                fh.flush()
                os.fsync(fh.fileno())
            faults.check("lake.before_rename")
        except BaseException:
            # A full disk must not also keep the half file: it holds space the retry needs.
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        fsync_dir(folder)

    def files(self, table: str) -> list[str]:
        return layout.local_files(self.root, table)

    def holds_parquet(self, folder: str) -> bool:
        for _dirs, _subdirs, names in os.walk(self.path / folder):
            if any(name.endswith(".parquet") for name in names):
                return True
        return False


class S3Storage(Storage):
    def __init__(self, url: str, options: S3Options) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"lake.root {url!r}: use a folder or s3://BUCKET/PREFIX")
        self.root = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.options = options.resolved()
        endpoint = urlparse(self.options.endpoint_url) if self.options.endpoint_url else None
        self.fs = pafs.S3FileSystem(
            access_key=self.options.access_key_id,
            secret_key=self.options.secret_access_key,
            region=self.options.region or "us-east-1",
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
            allow_bucket_creation=False,
        )

    @property
    def remote(self) -> bool:
        return True

    def _key(self, relative: str) -> str:
        return "/".join(p for p in (self.bucket, self.prefix, relative) if p)

    def exists(self) -> bool:
        return bool(self.fs.get_file_info(self.bucket).type != pafs.FileType.NotFound)

    def prepare(self) -> None:
        if not self.exists():
            raise ConfigError(f"lake.root {self.root}: the bucket {self.bucket!r} does not exist")

    def write(self, relative: str, produce: Callable[[IO[bytes]], None]) -> None:
        faults.check("lake.write")
        # One PUT: the object appears whole, under its final name, or not at all.
        with self.fs.open_output_stream(self._key(relative)) as out:
            produce(out)
        faults.check("lake.before_rename")

    def files(self, table: str) -> list[str]:
        selector = pafs.FileSelector(self._key(table), recursive=True, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            parts = info.path.split("/")
            if (
                info.type == pafs.FileType.File
                and layout.is_data_file(parts[-1])
                and len(parts) >= 2
                and layout.is_partition(parts[-2])
            ):
                found.append(f"s3://{info.path}")
        return sorted(found)

    def holds_parquet(self, folder: str) -> bool:
        selector = pafs.FileSelector(self._key(folder), recursive=True, allow_not_found=True)
        return any(
            info.type == pafs.FileType.File and info.path.endswith(".parquet")
            for info in self.fs.get_file_info(selector)
        )

    def duckdb_setup(self, con: Any) -> None:
        o = self.options
        endpoint = urlparse(o.endpoint_url) if o.endpoint_url else None
        fields = {
            "KEY_ID": o.access_key_id,
            "SECRET": o.secret_access_key,
            "REGION": o.region or "us-east-1",
            "ENDPOINT": endpoint.netloc if endpoint else None,
            "URL_STYLE": "path" if endpoint else None,
            "USE_SSL": None if endpoint is None else str(endpoint.scheme == "https").lower(),
        }
        given = ", ".join(
            f"{k} {v}" if k == "USE_SSL" else f"{k} '{_quote(v)}'"
            for k, v in fields.items()
            if v is not None
        )
        con.execute(f"CREATE SECRET lake (TYPE s3{', ' if given else ''}{given})")


def _quote(text: str) -> str:
    return text.replace("'", "''")


def storage_for(root: str | Path, options: S3Options | None = None) -> Storage:
    """The storage of a lake root: ``s3://...`` or a local folder."""
    text = str(root)
    if text.startswith("s3://"):
        return S3Storage(text, options or S3Options())
    if "://" in text:
        raise ConfigError(f"lake.root {text!r}: use a folder or s3://BUCKET/PREFIX")
    return LocalStorage(root)


def lake_storage(settings: Settings) -> Storage:
    """The storage of the configured lake (``lake.root`` and its S3 settings)."""
    lake = settings.lake
    secret = lake.secret_access_key
    return storage_for(
        settings.lake_root,
        S3Options(
            endpoint_url=lake.endpoint_url,
            access_key_id=lake.access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            region=lake.region,
        ),
    )
