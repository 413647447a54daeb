"""Our export, measured as a user runs it: the real Dagster asset of a daily pipeline, in-process.

`python benchmarks/export_ours.py --input day.jsonl --out DIR --format json|parquet`

Writes a pipelines.yaml with a `local` source (a folder holding the input, named for its day) and
a `local` destination, materializes the day's partition of the events asset with `dg.materialize`
on an ephemeral instance, and prints one JSON line: rows written and the seconds spent inside the run (the
benchmark harness measures the whole process from outside: wall time and memory of its tree).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import yaml

DAY = "2024-11-22"


def write_config(work: Path, source_file: Path, fmt: str, workers: int) -> Path:
    source_dir = work / "source"
    source_dir.mkdir(parents=True, exist_ok=True)
    link = source_dir / f"{DAY}.jsonl"
    if link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(source_file.resolve(), link)
    config = {
        "project": {"id": 1, "timezone": "UTC", "source": {"type": "local", "path": str(source_dir)},
                    "state": {"path": str(work / "state")}, "export_workers": workers},
        "pipelines": [{"name": "bench", "data_source": "events", "frequency": "daily", "from_date": DAY,
                       "to_date": DAY, "created": DAY,
                       "destination": {"type": "local", "path": str(work / "bucket"), "format": fmt}}],
    }
    path = work / "pipelines.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=["json", "parquet"], default="json")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    import dagster as dg

    from mixpanel_assets.defs.build import build_definitions

    config = write_config(args.out, args.input, args.format, args.workers)
    defs = build_definitions(config, today=dt.date.fromisoformat(DAY) + dt.timedelta(days=1))
    asset = defs.resolve_assets_def(dg.AssetKey(["bench", "mp_master_event"]))
    started = time.monotonic()
    # The asset alone: the pipeline's job also runs its asset checks, which read the output back
    # (their cost belongs to the checks, not to the export).
    result = dg.materialize([asset], partition_key=DAY,  # resolved assets carry their resources
                            instance=dg.DagsterInstance.ephemeral())
    seconds = time.monotonic() - started
    (mat,) = result.asset_materializations_for_node("bench__mp_master_event")
    print(json.dumps({"rows": mat.metadata["dagster/partition_row_count"].value, "run_seconds": round(seconds, 2)}))
    return 0 if result.success else 1


if __name__ == "__main__":  # the worker processes re-import this file: keep the run out of import time
    sys.exit(main())
