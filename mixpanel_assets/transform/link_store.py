"""Small per-partition state shared by all runs of a project: the identity links of each export.

Identity mappings are recomputed from every exported partition's links, so a run must not have
to rescan all events: each events export stores its partitions' links here (a few KB to MB per
day), and a re-exported (synced) partition overwrites its own file. Files are replaced
atomically (write to a temporary name, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
from isal import igzip

Link = tuple[str, str, str]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _safe(name: str) -> str:
    return _UNSAFE.sub(lambda m: f"~{ord(m.group()):02x}", name)


class StateStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _links_dir(self, pipeline: str) -> Path:
        return self.root / "identity_links" / _safe(pipeline)

    def write_links(self, pipeline: str, partition_key: str, links: dict[Link, float]) -> Path:
        directory = self._links_dir(pipeline)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{_safe(partition_key)}.jsonl.gz"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # staging.LinkSet streams its links already sorted from disk: sorting them here would hold
        # a whole day's links in memory.
        items = links.sorted_items() if hasattr(links, "sorted_items") else sorted(links.items())
        with igzip.open(tmp, "wb", compresslevel=1) as f:
            for (kind, a, b), time in items:
                f.write(orjson.dumps([kind, a, b, time]) + b"\n")
        os.replace(tmp, path)
        return path

    def link_files(self, pipelines: Iterable[str]) -> list[Path]:
        files: list[Path] = []
        for pipeline in pipelines:
            directory = self._links_dir(pipeline)
            if directory.is_dir():
                files.extend(sorted(p for p in directory.iterdir() if p.name.endswith(".jsonl.gz")))
        return files

    def iter_links(self, pipelines: Iterable[str]) -> Iterator[tuple[str, str, str, float]]:
        """Every stored link, file by file (small checks; resolution reads files through DuckDB)."""
        for path in self.link_files(pipelines):
            with igzip.open(path, "rb") as f:
                for line in f:
                    kind, a, b, time = orjson.loads(line)
                    yield kind, a, b, time


def read_links_sql(paths: Iterable[str | Path]) -> str:
    """A DuckDB query over link files with columns (kind, a, b, time), for identity resolution.

    DuckDB parses the files itself (in parallel, spilling to disk under a memory limit), so
    millions of links never become Python objects. Each line is a JSON array; reading it as
    VARCHAR[] unescapes the strings exactly like a JSON parser would.
    """
    listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return (
        "SELECT json[1] AS kind, json[2] AS a, json[3] AS b, TRY_CAST(json[4] AS DOUBLE) AS time "
        f"FROM read_json([{listed}], format = 'newline_delimited', records = false, "
        "columns = {'json': 'VARCHAR[]'}, compression = 'gzip')"
    )
