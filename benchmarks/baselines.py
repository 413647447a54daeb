"""The baselines of PERF_BASELINES.md, each run as its own process by benchmarks/run.py.

`python benchmarks/baselines.py NAME (--input day.jsonl | --export-url URL) --out DIR`, NAME one of:

  orjson_loop   the streaming loop a careful Python programmer writes: parse each line with
                orjson, build the 7-column row, drop duplicates with a set of keys, gzip -1
  orjson_stream the same loop reading the Export API stream at --export-url (requests with
                stream=True, gzip decoded by urllib3 in 1 MB chunks, split into lines): the
                baseline of the path users run (credentials from BENCH_MIXPANEL_USERNAME/SECRET)
  duckdb        DuckDB: read_json of the day, the 7 columns, Mixpanel's dedup rule with
                QUALIFY row_number() (latest mp_processing_time_ms per key), COPY to Parquet
  polars        Polars eager: read_ndjson the whole day, build the columns, unique, write Parquet
  dlt           a dlt pipeline to the filesystem destination (jsonl), rows from the same loop

Every baseline produces Mixpanel's 7 columns deduplicated by (event, distinct_id, time,
$insert_id), so they do the same work as our export (ours also keeps the latest copy by
mp_processing_time_ms and collects identity links, which the baselines skip).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import orjson


def _file_lines(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as f:
        yield from f


def _stream_lines(url: str) -> Iterable[bytes]:
    """The Export API body's lines, read as a careful programmer does: streamed, gzip decoded by
    requests/urllib3, cut at newlines in 1 MB chunks (iter_lines is several times slower)."""
    import requests

    params = {"project_id": "1", "from_date": "2024-11-22", "to_date": "2024-11-22"}
    auth = (os.environ["BENCH_MIXPANEL_USERNAME"], os.environ["BENCH_MIXPANEL_SECRET"])
    with requests.get(url.rstrip("/") + "/api/2.0/export", params=params, auth=auth, stream=True,
                      headers={"Accept-Encoding": "gzip"}, timeout=(30, 300)) as response:
        response.raise_for_status()
        tail = b""
        for chunk in response.iter_content(chunk_size=1 << 20):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield from lines
        if tail.strip():
            yield tail


def _rows(lines: Iterable[bytes]):
    """(dedup key, row dict) per line, with `properties` as JSON text."""
    loads = orjson.loads
    for line in lines:
        event = loads(line)
        props = event["properties"]
        key = (event["event"], props.get("distinct_id"), props["time"], props.get("$insert_id"))
        yield key, {
            "device_id": props.get("$device_id"), "distinct_id": props.get("distinct_id"),
            "event_name": event["event"], "insert_id": props.get("$insert_id"), "properties": props,
            "time": props["time"], "user_id": props.get("$user_id"),
        }


def orjson_loop(lines: Iterable[bytes], out: Path) -> int:
    seen = set()
    written = 0
    dumps = orjson.dumps
    with gzip.open(out / "part-00000.json.gz", "wb", compresslevel=1) as f:
        for key, row in _rows(lines):
            if key in seen:
                continue
            seen.add(key)
            f.write(dumps(row) + b"\n")
            written += 1
    return written


def polars_eager(path: Path, out: Path) -> int:
    import polars as pl

    df = pl.read_ndjson(path, infer_schema_length=None)
    props = pl.col("properties")
    table = df.select(
        props.struct.field("$device_id").cast(pl.String).alias("device_id"),
        props.struct.field("distinct_id").cast(pl.String).alias("distinct_id"),
        pl.col("event").alias("event_name"),
        props.struct.field("$insert_id").cast(pl.String).alias("insert_id"),
        props.struct.json_encode().alias("properties"),
        props.struct.field("time").alias("time"),
        props.struct.field("$user_id").cast(pl.String).alias("user_id"),
    ).unique(subset=["event_name", "distinct_id", "time", "insert_id"], keep="first", maintain_order=True)
    table.write_parquet(out / "part-00000.parquet", compression="zstd")
    return table.height


def dlt_filesystem(path: Path, out: Path) -> int:
    import dlt

    count = 0

    @dlt.resource(name="mp_master_event", write_disposition="replace")
    def events():
        nonlocal count
        seen = set()
        for key, row in _rows(_file_lines(path)):
            if key in seen:
                continue
            seen.add(key)
            row["properties"] = orjson.dumps(row["properties"]).decode()
            count += 1
            yield row

    pipeline = dlt.pipeline(pipeline_name="mixpanel_bench", pipelines_dir=str(out / "dlt_state"),
                            destination=dlt.destinations.filesystem(bucket_url=(out / "bucket").as_uri()),
                            dataset_name="mixpanel")
    pipeline.run(events(), loader_file_format="jsonl")
    return count


def duckdb_qualify(path: Path, out: Path) -> int:
    import duckdb

    target = out / "part-00000.parquet"
    prop = "properties->>'$.\"{}\"'".format
    with duckdb.connect() as con:
        con.execute(f"""
            COPY (
                SELECT {prop('$device_id')} AS device_id, {prop('distinct_id')} AS distinct_id,
                       event AS event_name, {prop('$insert_id')} AS insert_id, properties::VARCHAR AS properties,
                       ({prop('time')})::BIGINT AS time, {prop('$user_id')} AS user_id
                FROM read_json(?, format = 'newline_delimited', columns = {{'event': 'VARCHAR', 'properties': 'JSON'}})
                QUALIFY row_number() OVER (
                    PARTITION BY event, {prop('distinct_id')}, {prop('time')}, {prop('$insert_id')}
                    ORDER BY ({prop('mp_processing_time_ms')})::BIGINT DESC) = 1
            ) TO '{target}' (FORMAT parquet, COMPRESSION zstd)""", [str(path)])
        return con.execute("SELECT count(*) FROM read_parquet(?)", [str(target)]).fetchone()[0]


BASELINES = {"orjson_loop": orjson_loop, "orjson_stream": orjson_loop, "polars": polars_eager, "dlt": dlt_filesystem,
             "duckdb": duckdb_qualify}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BASELINES))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="the day's JSON lines")
    source.add_argument("--export-url", help="the Export API to stream the day from (orjson_stream)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if (args.name == "orjson_stream") != bool(args.export_url):
        parser.error("orjson_stream reads --export-url; the other baselines read --input")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.name == "orjson_stream":
        rows = orjson_loop(_stream_lines(args.export_url), args.out)
    elif args.name == "orjson_loop":
        rows = orjson_loop(_file_lines(args.input), args.out)
    else:
        rows = BASELINES[args.name](args.input, args.out)
    print(orjson.dumps({"rows": rows}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
