"""`python -m mixpanel_assets.cli demo`: materialize the newest partitions of every pipeline.

This is the "main job" of the embedded default: it runs against the Dagster instance in
$DAGSTER_HOME, so the runs and materialized partitions are there when the UI opens.

It prints one line per pipeline (a progress line first where the work takes a while) and
nothing else on a clean run: the runs' event logs (every step, partition and check) are in the
instance, which the UI shows under Runs. Dagster's console logger prints them too by default,
some 300 lines for the demo; here it prints only warnings and errors.
"""

from __future__ import annotations

import argparse
import sys
import time

import dagster as dg

from mixpanel_assets.config import load_pipelines_file
from mixpanel_assets.defs.schedules import job_name


# Dagster's console logger at WARNING: the event log in the instance still records every event.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _latest_keys(defs: dg.Definitions, asset_key: dg.AssetKey, count: int) -> list[str]:
    partitions_def = defs.resolve_assets_def(asset_key).partitions_def
    return list(partitions_def.get_partition_keys())[-count:]


def run_demo(config_path, hours: int, days: int) -> int:
    """`config_path`: a pipelines.yaml; None runs this code location's MixpanelPipelines defs.yaml."""
    if config_path is None:
        from mixpanel_assets.component import load_defs_yaml
        from mixpanel_assets.definitions import DEFS_YAML, defs
        from mixpanel_assets.defs.instance import with_key_prefix

        config = with_key_prefix(*load_defs_yaml(DEFS_YAML))
    else:
        from mixpanel_assets.defs.build import build_definitions

        config = load_pipelines_file(config_path)
        defs = build_definitions(config_path)
    instance = dg.DagsterInstance.get()
    ok = True
    order = sorted(config.pipelines, key=lambda p: {"events": 0, "people": 1, "identity": 2}[p.data_source])
    for pipeline in order:
        job = defs.resolve_job_def(job_name(pipeline))
        started = time.monotonic()
        if pipeline.data_source == "events":
            keys = _latest_keys(defs, dg.AssetKey([pipeline.name, "mp_master_event"]), hours if pipeline.frequency == "hourly" else days)
            label = f"partitions {keys[0]} .. {keys[-1]}"
            print(f"...    {pipeline.name:<20} exporting {len(keys)} {pipeline.frequency} partitions", flush=True)
            if pipeline.frequency == "hourly":
                # One run for the whole range: one source query per day, as a backfill would do.
                tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
                results = [job.execute_in_process(instance=instance, tags=tags, run_config=QUIET_CONSOLE,
                                                  raise_on_error=False)]
            else:
                results = [job.execute_in_process(instance=instance, partition_key=k, run_config=QUIET_CONSOLE,
                                                  raise_on_error=False) for k in keys]
        else:
            results = [job.execute_in_process(instance=instance, run_config=QUIET_CONSOLE, raise_on_error=False)]
            label = "whole table"
        success = all(r.success for r in results)
        ok &= success
        print(f"{'ok    ' if success else 'FAILED'} {pipeline.name:<20} {label:<45} {time.monotonic() - started:6.1f} s"
              f"  -> {pipeline.destination.describe()}", flush=True)
        for result in results:
            if not result.success:
                print(f"       run {result.run_id}: its event log (the UI, Runs) says what failed", flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixpanel_assets.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the newest partitions of every pipeline of the code location")
    demo.add_argument("--config", default=None,
                      help="a pipelines.yaml (default: the code location's mixpanel_assets/dg_defs/pipelines/defs.yaml)")
    demo.add_argument("--hours", type=int, default=24, help="hourly partitions to export (default 24)")
    demo.add_argument("--days", type=int, default=2, help="daily partitions to export (default 2)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.config, args.hours, args.days)
    return 2


if __name__ == "__main__":
    sys.exit(main())
