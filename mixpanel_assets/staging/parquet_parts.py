"""Parquet part files (`format: parquet`), written inside the worker processes like JSON parts.

Input is the staged JSON-lines rows (records.py), whose key order is fixed, so each column can be
cut out of a line without parsing the line as a whole:

  mp_master_event            {"device_id":…,"distinct_id":…,"event_name":…,"insert_id":…,"properties":{…},"time":N,"user_id":…}
  mp_people_data             {"distinct_id":…,"properties":{…}}
  mp_identity_mappings_data  {"distinct_id":…,"resolved_distinct_id":…}

`properties` is by far the largest field of a row, and readers want it as JSON text anyway, so it
is sliced out of the line as bytes (never decoded and re-encoded); only the small remainder of
the row goes through orjson. The `,"properties":` that starts it is the first such byte sequence
in the line (the id strings before it escape their quotes), and the `,"time":` that ends it is
the last one (a quote inside `user_id` would be escaped too).

Each staged block becomes an Arrow batch at once, and batches are written as one row group per
~ROW_GROUP_BYTES of JSON, so a worker holds at most one row group's columns in memory whatever
the part size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from mixpanel_assets.schema import parquet_json_type as _json_type
from mixpanel_assets.schema import parquet_schema as schema_for
from mixpanel_assets.staging.parts import file_md5
from mixpanel_assets.staging.rows_files import filtered_lines

ROW_GROUP_BYTES = 64 << 20  # uncompressed JSON per row group: large enough for scans, small enough for memory
ZSTD_LEVEL = 3

_PROPS_KEY = b',"properties":'
_TIME_KEY = b',"time":'
_loads = orjson.loads


def _json_array(values: list[bytes]) -> pa.Array:
    # bytes -> binary -> string validates UTF-8 in one vectorised pass: ~10x pa.array(type=string).
    storage = pa.array(values, type=pa.binary()).cast(pa.string())
    json_type = _json_type()
    return storage if json_type == pa.string() else pa.ExtensionArray.from_storage(json_type, storage)


_TIMESTAMP = pa.timestamp("us", tz="UTC")


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
    # Epoch seconds -> whole microseconds, rounded as the DuckDB destination rounds them.
    micros = np.rint(np.asarray(times, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.RecordBatch.from_arrays(
        [pa.array(device, pa.string()), pa.array(distinct, pa.string()), pa.array(name, pa.string()),
         pa.array(insert, pa.string()), _json_array(props), pa.array(micros, _TIMESTAMP), pa.array(user, pa.string())],
        schema=schema,
    )


def _people_columns(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    ids, props = [], []
    for line in lines:
        p = line.find(_PROPS_KEY)
        ids.append(_loads(line[:p] + b"}")["distinct_id"])
        props.append(line[p + len(_PROPS_KEY):-1])
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), _json_array(props)], schema=schema)


def _identity_columns(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    rows = [_loads(line) for line in lines]
    return pa.RecordBatch.from_arrays(
        [pa.array([r["distinct_id"] for r in rows], pa.string()),
         pa.array([r["resolved_distinct_id"] for r in rows], pa.string())],
        schema=schema,
    )


_COLUMNS = {
    "mp_master_event": _event_columns,
    "mp_people_data": _people_columns,
    "mp_identity_mappings_data": _identity_columns,
}


def _writer_options(compression: str) -> dict:
    if compression == "zstd":
        return {"compression": "zstd", "compression_level": ZSTD_LEVEL}
    if compression == "gzip":
        return {"compression": "gzip"}
    if compression == "none":
        return {"compression": "none"}
    raise ValueError(f"unknown Parquet compression {compression!r}")


def write_parquet_part(segments: list[tuple[str, object]], out_dir: str, stem: str, index: int, compression: str,
                       table: str) -> tuple[str, int, int, int, str]:
    """Write one Parquet part from consecutive staged blocks; returns (path, rows, JSON bytes, size, md5).

    Same contract as block_worker.write_part for JSON: duplicates listed in each segment's drop
    rows are left out, and an empty result writes no file and returns ("", 0, 0, 0, ""). The MD5 is
    of the finished file (pyarrow writes it, and hashing one part is a fraction of encoding it).
    """
    schema = schema_for(table)
    to_batch = _COLUMNS[table]
    path = Path(out_dir) / f"{stem}-{index:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    rows = raw = 0
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal writer, pending, pending_bytes
        if not pending:
            return
        if writer is None:
            writer = pq.ParquetWriter(path, schema, **_writer_options(compression))
        group = pa.Table.from_batches(pending, schema=schema)
        writer.write_table(group, row_group_size=group.num_rows)
        pending, pending_bytes = [], 0

    try:
        for segment_path, drop_rows in segments:
            data, count = filtered_lines(segment_path, drop_rows)
            if not count:
                continue
            rows += count
            raw += len(data)
            pending.append(to_batch(data.splitlines(), schema))
            pending_bytes += len(data)
            del data
            if pending_bytes >= ROW_GROUP_BYTES:
                flush()
        flush()
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        path.unlink(missing_ok=True)
        raise
    if writer is None:
        return "", 0, 0, 0, ""
    return str(path), rows, raw, path.stat().st_size, file_md5(path)
