"""Staged row files: reading a block's rows back, minus the duplicates dedup decided to drop.

Shared by the part writers (block_worker.write_part for JSON, parquet_parts for Parquet) and by
`StagedRows` (part plans, iter_rows), so none of them imports another for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Segment:
    """One staged block's rows for one window, and which of them are duplicates to drop."""

    path: Path
    rows: int
    raw_bytes: int
    drop_rows: Any = None  # numpy row numbers (this module stays importable without numpy)


def line_starts(data: bytes):
    """Byte offset of each line of newline-terminated `data` (vectorised: ~1 GB/s)."""
    import numpy as np  # not at import time: parse workers never need it, and every MB counts there

    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts


def filtered_lines(path, drop_rows) -> tuple[bytes, int]:
    """A staged block's rows minus the rows listed in `drop_rows`; (newline-terminated data, rows)."""
    return filter_lines(Path(path).read_bytes(), drop_rows)


def filter_lines(data: bytes, drop_rows) -> tuple[bytes, int]:
    """`data` minus the lines listed in `drop_rows`, and the number of lines kept.

    Dropped rows (about 1% of a day) are cut out as byte ranges, so a block costs a copy, not a
    split and join of every line, and the worker needs no numpy.
    """
    total = data.count(b"\n")
    if drop_rows is None or len(drop_rows) == 0:
        return data, total
    drop = sorted({int(r) for r in drop_rows if 0 <= r < total})
    if len(drop) == total:
        return b"", 0
    find = data.find
    pieces = []
    kept_from = 0  # start of the bytes not yet copied
    row, start = 0, 0  # a row number and the byte offset where it starts
    for target in drop:
        while row < target:
            start = find(b"\n", start) + 1
            row += 1
        end = find(b"\n", start) + 1
        if start > kept_from:
            pieces.append(data[kept_from:start])
        kept_from = start = end
        row += 1
    if kept_from < len(data):
        pieces.append(data[kept_from:])
    return b"".join(pieces), total - len(drop)
