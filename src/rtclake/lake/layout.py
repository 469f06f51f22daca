"""The lake's layout, known here and nowhere else:
``ROOT/TABLE/date=YYYY-MM-DD/NODE-RUN-SEQ.parquet``.

A file's name is its batch's name (:attr:`rtclake.sinks.base.Batch.name`), so a replayed
batch rewrites its own file. A file being written has a hidden temporary name (a leading
dot), which readers skip.
"""

from __future__ import annotations

import os

PARTITION = "date"
SUFFIX = ".parquet"
#: At the lake's root (beside ``main/``): the names of the data files still in the folders
#: that the current snapshot no longer holds (replaced by a merge or a day's sort,
#: deleted by retention), until cleanup removes them; one column ``path``, relative to the
#: root (``main/TABLE/date=D/NAME.parquet``: a file's name alone is not unique, the
#: writer names a batch's files of every table alike). Maintenance
#: writes it after each step. Readers of the folders (Grafana's data source) leave
#: these files out: their rows are in the files that replaced them.
REPLACED = "rtclake_replaced.parquet"


def partition(table: str, date: str) -> str:
    """The folder of one table's rows of one UTC date, relative to the root."""
    return f"{table}/{PARTITION}={date}"


def file_name(batch: str) -> str:
    return f"{batch}{SUFFIX}"


def temporary_name(name: str) -> str:
    """Where ``name`` is written before it is renamed into place (hidden from readers)."""
    return f".{name}.tmp"


def is_partition(name: str) -> bool:
    return name.startswith(f"{PARTITION}=")


def is_data_file(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".")


def local_files(root: str | os.PathLike[str], table: str) -> list[str]:
    """The Parquet files of one table in a local lake, regular files only, in order.

    Symbolic links are not followed (a linked table or ``date=`` folder or file could
    point anywhere), and paths start from the lake's real path, so every path is the real
    path of a file inside the lake.
    """
    files: list[str] = []
    table_dir = os.path.join(os.path.realpath(root), table)
    if os.path.islink(table_dir) or not os.path.isdir(table_dir):
        return files
    with os.scandir(table_dir) as days:
        folders = [d.path for d in days if is_partition(d.name) and d.is_dir(follow_symlinks=False)]
    for folder in sorted(folders):
        with os.scandir(folder) as entries:
            files.extend(
                sorted(
                    e.path
                    for e in entries
                    if is_data_file(e.name) and e.is_file(follow_symlinks=False)
                )
            )
    return files
