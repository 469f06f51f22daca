"""``lake.catalog``'s forms (:mod:`rtclake.lake.catalog` says what each is), parsed
without loading DuckDB: the settings check them when they are loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rtclake.errors import ConfigError
from rtclake.redact import redact

#: The file a local lake's default catalog is kept in, inside ``lake.root``.
DEFAULT_FILE = "catalog.sqlite"


@dataclass(frozen=True)
class CatalogUrl:
    """A parsed ``lake.catalog``."""

    kind: str  # "sqlite", "postgres" or "hive"
    target: str  # the SQLite path or the PostgreSQL connection string

    @property
    def attach_target(self) -> str:
        return f"ducklake:{self.kind}:{self.target}"

    @property
    def extension(self) -> str:
        return "sqlite" if self.kind == "sqlite" else "postgres"

    def __repr__(self) -> str:
        return f"CatalogUrl({self.kind!r}, {str(self)!r})"  # a password masked, as in str

    def __str__(self) -> str:
        """The URL as shown to a user: a password in it masked."""
        if self.kind == "hive":
            return "hive"
        if self.kind == "sqlite":
            return f"sqlite:{self.target}"
        if self.target.startswith(("postgres://", "postgresql://")):
            return redact(self.target)
        return f"postgres:{redact(self.target)}"


def parse_url(url: str) -> CatalogUrl:
    """``sqlite:PATH``, ``postgres://...``, ``postgresql://...``, ``postgres:key=value ...``
    or ``hive``; anything else is a :class:`ConfigError` naming the forms."""
    text = url.strip()
    if text == "hive":
        return CatalogUrl("hive", "")
    if text.startswith("sqlite:"):
        path = text.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise ConfigError("lake.catalog: sqlite: needs a file path (sqlite:/var/lib/x.sqlite)")
        return CatalogUrl("sqlite", str(Path(path).absolute()))
    if text.startswith(("postgres://", "postgresql://")):
        return CatalogUrl("postgres", text)
    if text.startswith("postgres:"):
        return CatalogUrl("postgres", text.removeprefix("postgres:"))
    raise ConfigError(
        f"lake.catalog {redact(url)!r}: use sqlite:PATH, postgres://USER@HOST/DB or hive"
    )


def default_url(root: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The catalog of a lake whose ``lake.catalog`` is not set: a SQLite file inside a
    local root, or in the data directory when the root is on S3."""
    if root.startswith("s3://"):
        if data_dir is None:
            raise ConfigError("a lake on S3 needs lake.catalog (or a data directory)")
        return f"sqlite:{Path(data_dir).absolute() / 'lake-catalog.sqlite'}"
    return f"sqlite:{Path(root).absolute() / DEFAULT_FILE}"
