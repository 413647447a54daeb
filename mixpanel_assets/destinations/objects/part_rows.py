"""Rewriting part files without some users: GDPR deletion on object stores.

Every object store (local folder, S3, GCS, Azure) goes through the same `Bucket` operations, so
this works for all of them at once: a folder's parts are downloaded one at a time into a work
folder, searched (JSON lines in any of our compressions, or Parquet) and, where they hold the
users' rows, written again under a new content-derived name, then swapped in with the folder's
replace protocol (store.py). Memory holds one compressed part. Reading parts back for the
deep check is read_back.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from mixpanel_assets.mixpanel.sources import read_file_chunks
from mixpanel_assets.schema import USER_COLUMNS
from mixpanel_assets.staging.parts import JsonPartWriter, PartFile, file_md5

MAX_PATTERNS = 256  # above this many ids, every line of a part is parsed instead of searched for first
_loads = orjson.loads
_dumps = orjson.dumps


def is_parquet(name: str) -> bool:
    return name.endswith(".parquet")


def new_part_name(old_name: str, distinct_ids: frozenset[str]) -> tuple[str, int]:
    """(stem, index) for the rewritten part: a new content-derived stem, the old part number.

    The name must differ from the old one, so the folder's replace protocol (upload new, switch
    the manifest, delete old) never overwrites a file a reader may be reading.
    """
    digest = hashlib.sha1(old_name.encode() + b"|" + b"\n".join(sorted(i.encode() for i in distinct_ids)))
    index_part = old_name.rsplit("-", 1)[-1].split(".", 1)[0]
    index = int(index_part) if index_part.isdigit() else 0
    return f"part-{digest.hexdigest()[:10]}", index


def _patterns(table: str, distinct_ids: frozenset[str]) -> list[bytes] | None:
    """Byte strings one of which every matching row contains, as our writers encode rows (orjson,
    no spaces, fixed keys); None when there are too many ids to search for them one by one."""
    columns = USER_COLUMNS[table]
    if len(distinct_ids) * len(columns) > MAX_PATTERNS:
        return None
    return [b'"' + c.encode() + b'":' + _dumps(i) for c in columns for i in distinct_ids]


def _aligned_chunks(path: Path) -> Iterator[bytes]:
    """The decompressed content of a JSON part in ~1 MB pieces that end at line ends."""
    rest = b""
    for chunk in read_file_chunks(path):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest:
        yield rest + b"\n"


def _matches(row: dict, columns: tuple[str, ...], distinct_ids: frozenset[str]) -> bool:
    return any(row.get(c) in distinct_ids for c in columns)


def json_part_matches(path: Path, table: str, distinct_ids: frozenset[str]) -> int:
    """How many rows of a JSON part belong to `distinct_ids` (a cheap byte search first)."""
    patterns = _patterns(table, distinct_ids)
    columns = USER_COLUMNS[table]
    count = 0
    for chunk in _aligned_chunks(path):
        if patterns is not None and not any(p in chunk for p in patterns):
            continue
        for line in chunk.splitlines():
            candidate = line and (patterns is None or any(p in line for p in patterns))
            if candidate and _matches(_loads(line), columns, distinct_ids):
                count += 1
    return count


def rewrite_json_part(path: Path, table: str, distinct_ids: frozenset[str], out_dir: Path, stem: str,
                      index: int) -> tuple[PartFile | None, int]:
    """Write the part again without the rows of `distinct_ids`; (new part or None if empty, removed)."""
    name = path.name
    compression = "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else "none"
    patterns = _patterns(table, distinct_ids)
    columns = USER_COLUMNS[table]
    writer = JsonPartWriter(out_dir, stem, compression, max_bytes=1 << 62, first_index=index)
    removed = 0
    try:
        for chunk in _aligned_chunks(path):
            if patterns is not None and not any(p in chunk for p in patterns):
                writer.write_block(chunk, chunk.count(b"\n"))
                continue
            kept = []
            for line in chunk.splitlines():
                if not line:
                    continue
                if (patterns is None or any(p in line for p in patterns)) and _matches(_loads(line), columns, distinct_ids):
                    removed += 1
                else:
                    kept.append(line)
            if kept:
                writer.write_block(b"\n".join(kept) + b"\n", len(kept))
        parts = writer.close()
    except BaseException:
        writer.abort()
        raise
    return (parts[0] if parts else None), removed


def parquet_part_matches(path: Path, table: str, distinct_ids: frozenset[str]) -> int:
    import pyarrow.parquet as pq

    table_data = pq.read_table(path, columns=list(USER_COLUMNS[table]))
    return int(_parquet_mask(table_data, table, distinct_ids).sum())


def _parquet_mask(data, table: str, distinct_ids: frozenset[str]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(sorted(distinct_ids), pa.string())
    mask = np.zeros(data.num_rows, dtype=bool)
    for column in USER_COLUMNS[table]:
        hit = pc.is_in(data.column(column), value_set=values).to_numpy(zero_copy_only=False)
        mask |= np.asarray(hit, dtype=bool)
    return mask


def rewrite_parquet_part(path: Path, table: str, distinct_ids: frozenset[str], out_dir: Path, stem: str,
                         index: int) -> tuple[PartFile | None, int]:
    """The Parquet counterpart of rewrite_json_part: same schema, compression and row-group cut."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    codec = parquet.metadata.row_group(0).column(0).compression.lower() if parquet.metadata.num_row_groups else "zstd"
    data = parquet.read()
    mask = _parquet_mask(data, table, distinct_ids)
    removed = int(mask.sum())
    kept = data.filter(pa.array(~mask))
    if kept.num_rows == 0:
        return None, removed
    out = Path(out_dir) / f"{stem}-{index:05d}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    row_group = parquet.metadata.row_group(0).num_rows if parquet.metadata.num_row_groups else kept.num_rows
    pq.write_table(kept, out, compression="none" if codec == "uncompressed" else codec,
                   row_group_size=max(row_group, 1))
    return PartFile(out, kept.num_rows, 0, out.stat().st_size, file_md5(out)), removed


def part_matches(path: Path, table: str, distinct_ids: frozenset[str]) -> int:
    if is_parquet(path.name):
        return parquet_part_matches(path, table, distinct_ids)
    return json_part_matches(path, table, distinct_ids)


def rewrite_part(path: Path, table: str, distinct_ids: frozenset[str], out_dir: Path) -> tuple[PartFile | None, int]:
    stem, index = new_part_name(path.name, distinct_ids)
    if is_parquet(path.name):
        return rewrite_parquet_part(path, table, distinct_ids, out_dir, stem, index)
    return rewrite_json_part(path, table, distinct_ids, out_dir, stem, index)
