"""The baselines of PERF_BASELINES.md, each run as its own process by benchmarks/run.py.

`python benchmarks/baselines.py NAME --input day.jsonl --out DIR`, NAME one of:

  orjson_loop   the streaming loop a careful Python programmer writes: parse each line with
                orjson, build the 7-column row, drop duplicates with a set of keys, gzip -1
  polars        Polars eager: read_ndjson the whole day, build the columns, unique, write Parquet
  dlt           a dlt pipeline to the filesystem destination (jsonl), rows from the same loop

Every baseline produces Mixpanel's 7 columns deduplicated by (event, distinct_id, time,
$insert_id), so they do the same work as our export (ours also keeps the latest copy by
mp_processing_time_ms and collects identity links, which the baselines skip).
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import orjson


def _rows(path: Path):
    """(dedup key, row dict) per line, with `properties` as JSON text."""
    loads = orjson.loads
    with open(path, "rb") as f:
        for line in f:
            event = loads(line)
            props = event["properties"]
            key = (event["event"], props.get("distinct_id"), props["time"], props.get("$insert_id"))
            yield key, {
                "device_id": props.get("$device_id"), "distinct_id": props.get("distinct_id"),
                "event_name": event["event"], "insert_id": props.get("$insert_id"), "properties": props,
                "time": props["time"], "user_id": props.get("$user_id"),
            }


def orjson_loop(path: Path, out: Path) -> int:
    seen = set()
    written = 0
    dumps = orjson.dumps
    with gzip.open(out / "part-00000.json.gz", "wb", compresslevel=1) as f:
        for key, row in _rows(path):
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
        for key, row in _rows(path):
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


BASELINES = {"orjson_loop": orjson_loop, "polars": polars_eager, "dlt": dlt_filesystem}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BASELINES))
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = BASELINES[args.name](args.input, args.out)
    print(orjson.dumps({"rows": rows}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
