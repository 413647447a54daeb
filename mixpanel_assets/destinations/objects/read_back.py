"""Reading a folder's parts back: the deep check of an object store (`checks: {read_back: true}`).

Every object store goes through the same `Bucket` operations, so this works for all of them: the
parts readers should see (the manifest's) are downloaded one at a time into a work folder and
re-parsed (JSON lines in any of our compressions, or Parquet), counting rows, duplicate dedup keys
(or distinct_ids) and columns from the data itself. Memory holds one compressed part, a batch of
rows and the keys' hashes (16 bytes per row). The default checks prove a folder without this
(at_rest.py).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import xxhash

from mixpanel_assets.destinations.objects.part_rows import is_parquet
from mixpanel_assets.schema import COLUMNS, DEDUP_KEY, EVENTS_TABLE, INSERT_ID
from mixpanel_assets.staging.parts import iter_part_lines

_loads = orjson.loads
_dumps = orjson.dumps
_hash = xxhash.xxh3_128_intdigest
_MASK64 = (1 << 64) - 1

class KeyCounter:
    """Counts values stored more than once, from 128-bit hashes (collisions: ~1e-20 per pair)."""

    def __init__(self) -> None:
        self.hi = array("Q")
        self.lo = array("Q")

    def add(self, value) -> None:
        h = _hash(_dumps(value))
        self.hi.append(h >> 64)
        self.lo.append(h & _MASK64)

    def duplicates(self) -> tuple[int, int]:
        """(values stored more than once, extra copies beyond the first)."""
        if len(self.hi) < 2:
            return 0, 0
        hi = np.frombuffer(self.hi, dtype=np.uint64)
        lo = np.frombuffer(self.lo, dtype=np.uint64)
        order = np.lexsort((lo, hi))
        hi, lo = hi[order], lo[order]
        same = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
        extra = int(same.sum())
        if not extra:
            return 0, 0
        # A run of equal values starts where `same` turns on.
        starts = int(np.count_nonzero(same & ~np.concatenate(([False], same[:-1]))))
        return starts, extra


@dataclass
class Readback:
    """What the parts of one folder hold, accumulated part by part."""

    table: str
    rows: int = 0
    keys: KeyCounter = field(default_factory=KeyCounter)
    kinds: dict[str, set[str]] = field(default_factory=dict)  # column -> logical types seen (not null)
    layouts: dict[tuple[str, ...], int] = field(default_factory=dict)  # column order -> parts/rows seen
    problems: list[str] = field(default_factory=list)

    def columns(self) -> list[tuple[str, str]]:
        """The stored columns with their logical types; the expected type where only nulls were seen."""
        expected = dict(COLUMNS[self.table])
        if not self.layouts:
            return list(COLUMNS[self.table])
        layout = max(self.layouts, key=self.layouts.get)
        result = []
        for name in layout:
            seen = self.kinds.get(name, set())
            if not seen:
                kind = expected.get(name, "NULL")
            elif len(seen) == 1:
                kind = next(iter(seen))
            else:
                kind = "MIXED(" + "|".join(sorted(seen)) + ")"
            result.append((name, kind))
        if len(self.layouts) > 1:
            others = [list(k) for k in self.layouts if k != layout]
            self.problems.append(f"rows with other columns than {list(layout)}: {others[:3]}")
        return result


def _json_kind(name: str, value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, dict):
        return "JSON"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, (int, float)):
        # JSON has no timestamp type: Mixpanel's JSON exports write `time` as UTC epoch seconds.
        return "TIMESTAMP" if name == "time" else "NUMBER"
    return "ARRAY"


def read_part(path: Path, readback: Readback) -> None:
    """Add one part file's rows, keys and column types to `readback`."""
    if is_parquet(path.name):
        _read_parquet(path, readback)
    else:
        _read_json(path, readback)


def _read_json(path: Path, rb: Readback) -> None:
    events = rb.table == EVENTS_TABLE
    kinds = rb.kinds
    layouts = rb.layouts
    for n, line in enumerate(iter_part_lines(path), start=1):
        try:
            row = _loads(line)
        except orjson.JSONDecodeError as exc:
            if len(rb.problems) < 10:
                rb.problems.append(f"{path.name} line {n}: not valid JSON ({exc})")
            continue
        if not isinstance(row, dict):
            if len(rb.problems) < 10:
                rb.problems.append(f"{path.name} line {n}: not a JSON object")
            continue
        rb.rows += 1
        layout = tuple(row)
        layouts[layout] = layouts.get(layout, 0) + 1
        for name, value in row.items():
            kind = _json_kind(name, value)
            if kind is not None:
                kinds.setdefault(name, set()).add(kind)
        if events:
            if row.get(INSERT_ID) is not None:
                rb.keys.add([row.get(c) for c in DEDUP_KEY])
        else:
            rb.keys.add(row.get("distinct_id"))


def _arrow_kind(name: str, arrow_type) -> str:
    import pyarrow as pa

    if isinstance(arrow_type, pa.BaseExtensionType) and "json" in str(arrow_type.extension_name):
        return "JSON"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        # Parquet readers without the JSON logical type get `properties` as JSON text.
        return "JSON" if name == "properties" else "STRING"
    return str(arrow_type).upper()


_READ_BATCH = 8192  # rows turned into Python values at a time: a few MB, whatever the row groups' size


def _read_parquet(path: Path, rb: Readback) -> None:
    """Rows, key hashes and column types of one Parquet part, from the key columns only.

    `properties` (nearly all of a part's bytes) is never read; the key columns are read a batch at
    a time, on this thread (Arrow's decoding threads would each grow a malloc arena: 172 vs 194 MB
    for a 1M-event day's four parts) and through malloc rather than mimalloc (which keeps what it
    frees), so a check's read-back holds about one batch of Python values and one row group's key
    columns, not the part."""
    import pyarrow.parquet as pq

    from mixpanel_assets.staging.parquet_columns import malloc_pool

    with malloc_pool():  # before the file is opened: its reader takes the pool in force then
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        layout = tuple(schema.names)
        rb.layouts[layout] = rb.layouts.get(layout, 0) + parquet.metadata.num_rows
        for f in schema:
            rb.kinds.setdefault(f.name, set()).add(_arrow_kind(f.name, f.type))
        events = rb.table == EVENTS_TABLE
        wanted = [c for c in (DEDUP_KEY if events else ("distinct_id",)) if c in layout]
        for batch in parquet.iter_batches(columns=wanted, batch_size=_READ_BATCH, use_threads=False):
            rb.rows += batch.num_rows
            if events:
                _add_event_keys(batch, wanted, rb.keys)
            elif wanted:
                _add_keys(rb.keys, batch.column(0).to_pylist())


def _add_event_keys(batch, wanted: list[str], keys: KeyCounter) -> None:
    """Mixpanel's dedup key of each row that has an insert_id (rows without one are never duplicates)."""
    if INSERT_ID not in wanted:
        return
    nulls = [None] * batch.num_rows
    columns = []
    for name in DEDUP_KEY:
        if name not in wanted:
            columns.append(nulls)
        elif name == "time":
            columns.append(_int64_view(batch.column(name)).to_pylist())  # microseconds, as ints
        else:
            columns.append(batch.column(name).to_pylist())
    # Tuples encode as the JSON arrays KeyCounter.add hashes.
    at = DEDUP_KEY.index(INSERT_ID)
    _add_keys(keys, (key for key in zip(*columns) if key[at] is not None))


def _int64_view(column):
    """A timestamp column's int64 values, sharing its buffers: no cast (pyarrow.compute is ~8 MB to
    import) and no datetime objects (their to_pylist imports pandas)."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.int64(), len(column), column.buffers()[:2], offset=column.offset)


def _add_keys(keys: KeyCounter, values) -> None:
    """KeyCounter.add for many values, with its lookups hoisted out of the loop."""
    hi, lo = keys.hi.append, keys.lo.append
    for value in values:
        h = _hash(_dumps(value))
        hi(h >> 64)
        lo(h & _MASK64)


# --- rewriting a part without some users ----------------------------------------------------


def read_back_folder(bucket, folder: str, table: str, manifest: dict | None):
    """The deep check of a folder: every part readers should see (the manifest's) downloaded one at
    a time and re-parsed, counting rows, duplicate keys and columns; problems name what disagrees."""
    import tempfile

    from mixpanel_assets.destinations.base import EventWindowReadback, TableReadback

    readback = Readback(table)
    keys = _current_parts(bucket, folder, manifest, readback.problems)
    with tempfile.TemporaryDirectory(prefix="mp-readback-") as tmp:
        for key in keys:
            local = Path(tmp) / key.rsplit("/", 1)[-1]
            if not bucket.download_file(key, local):
                readback.problems.append(f"{bucket.uri(key)} disappeared while it was read")
                continue
            read_part(local, readback)
            local.unlink()
    duplicate_keys, duplicate_rows = readback.keys.duplicates()
    columns = readback.columns()
    location = bucket.uri(folder)
    if table == EVENTS_TABLE:
        return EventWindowReadback(location, readback.rows, duplicate_keys, duplicate_rows, columns, readback.problems)
    return TableReadback(location, readback.rows, duplicate_keys, columns, readback.problems)


def _current_parts(bucket, folder: str, manifest: dict | None, problems: list[str]) -> list[str]:
    """The part files readers should see (the manifest's), noting where the folder disagrees."""
    listed = bucket.list_files(folder)
    in_folder = [k for k in listed if k.rsplit("/", 1)[-1].startswith("part-")]
    if manifest is None:
        if in_folder:
            problems.append(f"{bucket.uri(folder)} has part files but no manifest.json")
        return in_folder
    named = [folder + p["name"] for p in manifest.get("parts", [])]
    missing = sorted(set(named) - set(listed))
    stale = sorted(set(in_folder) - set(named))
    if missing:
        problems.append(f"{len(missing)} part files listed in manifest.json are missing: {missing[:3]}")
    if stale:
        problems.append(f"{len(stale)} part files not in manifest.json (readers of part-* would count them): {stale[:3]}")
    return [k for k in named if k not in missing]
