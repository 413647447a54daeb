"""Parquet part files (`format: parquet`), written inside the worker processes like JSON parts.

Input is the staged JSON-lines rows (records.py), whose key order is fixed, so each column can be
cut out of the rows' bytes without parsing them (parquet_columns.py: numpy over a whole row group,
no Python per row). `properties` is by far the largest field of a row, and readers want it as JSON
text anyway, so it is copied as bytes, never decoded and re-encoded. A row group the cutter cannot
vouch for (an id with an escape in it) is read here with orjson, line by line, as before:

  mp_master_event            {"device_id":…,"distinct_id":…,"event_name":…,"insert_id":…,"properties":{…},"time":N,"user_id":…}
  mp_people_data             {"distinct_id":…,"properties":{…}}
  mp_identity_mappings_data  {"distinct_id":…,"resolved_distinct_id":…}

In that path the `,"properties":` that starts `properties` is the first such byte sequence in the
line (the id strings before it escape their quotes), and the `,"time":` that ends it is the last
one (a quote inside `user_id` would be escaped too).

Row groups are cut every ROW_GROUP_BYTES of the part's JSON rows (at the end of the row holding
that byte), counted from the start of the part: so where the staged blocks ended does not show,
and a part is byte-identical whichever run (one partition, or a range of them) wrote it. Each row
group is one Arrow batch, written as soon as it is complete: a worker holds one row group's bytes
and columns, ~3x ROW_GROUP_BYTES at most, whatever the part size. No Arrow array is built from
Python objects (`pa.array` imports pandas: +50 MB in every process that writes a part).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from mixpanel_assets.schema import COLUMNS, INSERT_ID, JSON, STRING, TIMESTAMP
from mixpanel_assets.schema import parquet_json_type as _json_type
from mixpanel_assets.schema import parquet_schema as schema_for
from mixpanel_assets.staging.parquet_columns import (
    Irregular,
    bytes_array,
    cut_columns,
    layout,
    malloc_pool,
    numbers_to_array,
    string_array,
)
from mixpanel_assets.staging.parts import file_md5
from mixpanel_assets.staging.pool import trim_heap
from mixpanel_assets.staging.rows_files import filtered_lines

# Uncompressed JSON per row group (~17,000 events, ~4 MB of zstd Parquet). A worker holds about
# three times this while it writes a part: 16, 32, 64 MB row groups -> 133, 180, 267 MB peak RSS
# for a worker writing a 256 MB part (272k events; 2026-12, one run each). What readers lose is
# small: scans still read whole ~1 MB pages, and DuckDB and Spark split work by row group (more
# groups, more parallelism); the file is 1.1% larger than with 64 MB groups (more dictionaries
# of the id columns and more footer metadata), and writing costs ~5% more CPU.
ROW_GROUP_BYTES = 16 << 20
ZSTD_LEVEL = 3

_PROPS_KEY = b',"properties":'
_TIME_KEY = b',"time":'
_loads = orjson.loads
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _json_array(storage: pa.Array) -> pa.Array:
    json_type = _json_type()
    return storage if json_type == pa.string() else pa.ExtensionArray.from_storage(json_type, storage)


def _micros(seconds: np.ndarray) -> pa.Array:
    # Epoch seconds -> whole microseconds, rounded as the DuckDB destination rounds them.
    return numbers_to_array(np.rint(seconds * 1e6).astype(np.int64), _TIMESTAMP)


def _batch(data: bytes, table: str, schema: pa.Schema) -> pa.RecordBatch:
    """One row group's columns from its newline-terminated staged rows."""
    try:
        cut = cut_columns(data, layout(table))
    except Irregular:
        return _COLUMNS[table](data.splitlines(), schema)
    arrays = []
    for name, kind in COLUMNS[table]:
        values = cut[name]
        if kind == JSON:
            values = _json_array(values)
        elif kind == TIMESTAMP:
            values = _micros(np.frombuffer(values.buffers()[1], dtype=np.float64, count=len(values),
                                           offset=values.offset * 8))
        arrays.append(values)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- the orjson path: row groups the byte cutter cannot vouch for ------------------------------


def _bytes_json_array(values: list[bytes]) -> pa.Array:
    """JSON texts (bytes) as the JSON column, validated as UTF-8 by the cast."""
    return _json_array(bytes_array(pa.binary(), values).cast(pa.string()))


def _event_columns(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    device, distinct, name, insert, props, times, user = [], [], [], [], [], [], []
    for line in lines:
        p = line.find(_PROPS_KEY)
        t = line.rfind(_TIME_KEY)
        props.append(line[p + len(_PROPS_KEY):t])
        row = _loads(line[:p] + line[t:])
        device.append(row["device_id"])
        distinct.append(row["distinct_id"])
        name.append(row["event_name"])
        insert.append(row["insert_id"])
        times.append(row["time"])
        user.append(row["user_id"])
    return pa.RecordBatch.from_arrays(
        [string_array(device), string_array(distinct), string_array(name), string_array(insert),
         _bytes_json_array(props), _micros(np.asarray(times, dtype=np.float64)), string_array(user)],
        schema=schema,
    )


def _people_columns(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    ids, props = [], []
    for line in lines:
        p = line.find(_PROPS_KEY)
        ids.append(_loads(line[:p] + b"}")["distinct_id"])
        props.append(line[p + len(_PROPS_KEY):-1])
    return pa.RecordBatch.from_arrays([string_array(ids), _bytes_json_array(props)], schema=schema)


def _identity_columns(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    rows = [_loads(line) for line in lines]
    return pa.RecordBatch.from_arrays(
        [string_array([r["distinct_id"] for r in rows]), string_array([r["resolved_distinct_id"] for r in rows])],
        schema=schema,
    )


_COLUMNS = {
    "mp_master_event": _event_columns,
    "mp_people_data": _people_columns,
    "mp_identity_mappings_data": _identity_columns,
}


# --- writing -------------------------------------------------------------------------------


def _writer_options(compression: str, table: str | None = None) -> dict:
    if compression == "zstd":
        options = {"compression": "zstd", "compression_level": ZSTD_LEVEL}
    elif compression == "gzip":
        options = {"compression": "gzip"}
    elif compression == "none":
        options = {"compression": "none"}
    else:
        raise ValueError(f"unknown Parquet compression {compression!r}")
    if table is not None:
        # Dictionaries pay for repeated ids (event names, users, devices), not for `properties` or
        # `insert_id`, nearly all distinct: the writer would build a dictionary for each group only
        # to give it up. Min/max statistics help readers skip groups by id or time, never by JSON.
        cols = COLUMNS[table]
        options["use_dictionary"] = [n for n, kind in cols if kind == STRING and n != INSERT_ID]
        options["write_statistics"] = [n for n, kind in cols if kind != JSON]
    return options


def write_parquet_part(segments: list[tuple[str, object]], out_dir: str, stem: str, index: int, compression: str,
                       table: str) -> tuple[str, int, int, int, str]:
    """Write one Parquet part from consecutive staged blocks; returns (path, rows, JSON bytes, size, md5).

    Same contract as block_worker.write_part for JSON: duplicates listed in each segment's drop
    rows are left out, and an empty result writes no file and returns ("", 0, 0, 0, ""). The MD5 is
    of the finished file (pyarrow writes it, and hashing one part is a fraction of encoding it).
    """
    schema = schema_for(table)
    options = _writer_options(compression, table)
    path = Path(out_dir) / f"{stem}-{index:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    rows = raw = 0
    group = bytearray()  # the row group's rows, copied in once from the staged blocks

    def flush() -> None:
        nonlocal writer, group
        if not group:
            return
        data, group = group, bytearray()
        batch = _batch(data, table, schema)
        del data
        if writer is None:
            writer = pq.ParquetWriter(path, schema, **options)
        writer.write_batch(batch, row_group_size=batch.num_rows)

    with malloc_pool():  # a part written in the run process itself (one part) leaves nothing resident
        try:
            for segment_path, drop_rows in segments:
                data, count = filtered_lines(segment_path, drop_rows)
                if not count:
                    continue
                rows += count
                raw += len(data)
                view = memoryview(data)
                start = 0
                while start < len(data):
                    room = ROW_GROUP_BYTES - len(group)
                    if len(data) - start < room:
                        group += view[start:]
                        break
                    cut = data.index(b"\n", start + room - 1) + 1  # the group ends with the row holding its last byte
                    group += view[start:cut]
                    flush()
                    start = cut
                view.release()
                del data
            flush()
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.close()
            path.unlink(missing_ok=True)
            raise
        finally:
            trim_heap()
    if writer is None:
        return "", 0, 0, 0, ""
    return str(path), rows, raw, path.stat().st_size, file_md5(path)
