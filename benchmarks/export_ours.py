"""Our export, measured as a user runs it: a daily pipeline's events asset or job, in-process.

`python benchmarks/export_ours.py --out DIR --format json|parquet (--input day.jsonl | --export-url URL) [--job]`

Writes a pipelines.yaml with a `local` destination and either a `local` source (a folder holding
the input, named for its day) or a `mixpanel` source reading the Export API at `--export-url`
(benchmarks/stream_server.py; credentials by the env vars it names). Without `--job` it
materializes the day's partition of the events asset alone (`dg.materialize`); with `--job` it
runs the pipeline's job as its schedule does (`execute_in_process` of `<pipeline>_job`: the
export and its asset checks, which read the output back), on an ephemeral instance. Prints one
JSON line: rows written, seconds inside the run and, for a job, the seconds its check steps took
(from the run's step events) and whether every check passed. The harness measures the whole
process from outside (wall time and memory of its tree).

Works with the package before its move into subpackages too (`mixpanel_assets.build`), so
`run.py --before PATH` can run another checkout's code with this same script.
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
PIPELINE = "bench"
PROJECT_ID = 1
USER_ENV, SECRET_ENV = "BENCH_MIXPANEL_USERNAME", "BENCH_MIXPANEL_SECRET"


def _local_source(work: Path, source_file: Path) -> dict:
    source_dir = work / "source"
    source_dir.mkdir(parents=True, exist_ok=True)
    link = source_dir / f"{DAY}.jsonl"
    if link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(source_file.resolve(), link)
    return {"type": "local", "path": str(source_dir)}


def write_config(work: Path, source: dict, fmt: str, workers: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "project": {"id": PROJECT_ID, "timezone": "UTC", "source": source,
                    "state": {"path": str(work / "state")}, "export_workers": workers},
        "pipelines": [{"name": PIPELINE, "data_source": "events", "frequency": "daily", "from_date": DAY,
                       "to_date": DAY, "created": DAY,
                       "destination": {"type": "local", "path": str(work / "bucket"), "format": fmt}}],
    }
    path = work / "pipelines.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _build_definitions():
    """build_definitions from wherever `mixpanel_assets` was imported (this tree or another checkout).

    Decided by the package's own folder, not by trying the import: the venv's editable install
    would otherwise supply `mixpanel_assets.defs` from the main checkout to an older tree."""
    import mixpanel_assets

    if (Path(mixpanel_assets.__file__).parent / "defs").is_dir():
        from mixpanel_assets.defs.build import build_definitions
    else:  # the tree before the move into subpackages
        from mixpanel_assets.build import build_definitions
    return build_definitions


def _run_step_seconds(instance, run_id: str) -> dict[str, float]:
    """Wall seconds of each step of the run, from its STEP_START and STEP_SUCCESS/FAILURE events."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in started:
            seconds[event.step_key] = entry.timestamp - started[event.step_key]
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="a local file: the `local` source")
    source.add_argument("--export-url", help="the Export API to read (a `mixpanel` source)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=["json", "parquet"], default="json")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--job", action="store_true", help="run the pipeline's job (export + asset checks)")
    args = parser.parse_args()
    import dagster as dg

    build_definitions = _build_definitions()
    if args.input:
        source_block = _local_source(args.out, args.input)
    else:
        source_block = {"type": "mixpanel", "export_url": args.export_url, "engage_url": args.export_url,
                        "credentials": {"username_env": USER_ENV, "secret_env": SECRET_ENV}}
    config = write_config(args.out, source_block, args.format, args.workers)
    defs = build_definitions(config, today=dt.date.fromisoformat(DAY) + dt.timedelta(days=1))
    instance = dg.DagsterInstance.ephemeral()
    asset_node = f"{PIPELINE}__mp_master_event"
    started = time.monotonic()
    if args.job:
        result = defs.resolve_job_def(f"{PIPELINE}_job").execute_in_process(partition_key=DAY, instance=instance)
    else:
        # The asset alone: the job's asset checks read the output back; their cost is theirs.
        asset = defs.resolve_assets_def(dg.AssetKey([PIPELINE, "mp_master_event"]))
        result = dg.materialize([asset], partition_key=DAY,  # resolved assets carry their resources
                                instance=instance)
    seconds = time.monotonic() - started
    (mat,) = result.asset_materializations_for_node(asset_node)
    import mixpanel_assets

    info = {"rows": mat.metadata["dagster/partition_row_count"].value, "run_seconds": round(seconds, 2),
            "package": str(Path(mixpanel_assets.__file__).parent)}
    if args.job:
        steps = _run_step_seconds(instance, result.run_id)
        evaluations = result.get_asset_check_evaluations()
        info.update({
            "steps": {k: round(v, 2) for k, v in steps.items()},
            "check_seconds": round(sum(v for k, v in steps.items() if k != asset_node), 2),
            "checks": len(evaluations),
            "checks_failed": sorted(e.check_name for e in evaluations if not e.passed),
        })
    print(json.dumps(info))
    return 0 if result.success else 1


if __name__ == "__main__":  # the worker processes re-import this file: keep the run out of import time
    sys.exit(main())
