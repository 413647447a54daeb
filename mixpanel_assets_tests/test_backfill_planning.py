"""Backfill planning: what a backfill costs in Export API queries, proven against Dagster's own
run chunking and the fake Export API's request log, and the budget concurrent runs share.

The API allows 60 queries an hour (MIXPANEL_SPEC.md section 4): a 6-month backfill of an hourly
pipeline must cost one query per day (180), not one per hour (4,320, three days of budget).
"""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests_with_backfill_policies
from dagster._core.definitions.events import AssetKeyPartitionKey

from mixpanel_assets.defs.partitions import plan_backfill, windows_for_keys
from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.transform.records import LocalFile
from mixpanel_assets.windows import Window, query_spans
from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, SECRET, USERNAME
from mixpanel_assets_tests.helpers import definitions, epoch, run_partition

USER_ENV = "PLANNING_MIXPANEL_USERNAME"
SECRET_ENV = "PLANNING_MIXPANEL_SECRET"
REPO = Path(__file__).resolve().parents[1]


def hourly(name="hourly", from_date="2026-05-26", **extra) -> dict:
    return {"name": name, "data_source": "events", "frequency": "hourly", "from_date": from_date,
            "created": "2026-11-22", "destination": {"type": "local", "path": "bucket"}, **extra}


def daily(name="daily", from_date="2026-05-26", **extra) -> dict:
    return {**hourly(name, from_date, **extra), "frequency": "daily", "destination": {"type": "local", "path": "days"}}


def demo_project(timezone: str) -> dict:
    return {"id": 1, "timezone": timezone, "source": {"type": "demo"}, "state": {"path": "state"}}


def dagster_runs(defs: dg.Definitions, asset_key: dg.AssetKey, keys: list[str]) -> list[list[str]]:
    """The runs Dagster itself launches for a backfill of `keys` (BackfillPolicy chunking)."""
    asset = defs.resolve_assets_def(asset_key)
    with dg.instance_for_test() as instance:
        requests = build_run_requests_with_backfill_policies(
            [AssetKeyPartitionKey(asset_key, key) for key in keys], defs.resolve_asset_graph(), instance)
    runs = []
    for request in requests:
        tags = request.tags
        runs.append(asset.partitions_def.get_partition_keys_in_range(
            dg.PartitionKeyRange(tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])))
    return sorted(runs, key=lambda run: keys.index(run[0]))


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles"])
@pytest.mark.parametrize("first_hour", [0, 5])
def test_a_180_day_hourly_backfill_costs_at_most_one_export_query_per_day(tmp_path, timezone, first_hour):
    defs = definitions(tmp_path, demo_project(timezone), [hourly()])
    key = dg.AssetKey(["hourly", "mp_master_event"])
    partitions_def = defs.resolve_assets_def(key).partitions_def
    keys = partitions_def.get_partition_keys()[first_hour:]
    days = len({k[:10] for k in keys})
    assert days >= 180 and len(keys) > 4300  # six months of hours, the DST change of 2026-11-01 inside

    runs = dagster_runs(defs, key, keys)
    plan = plan_backfill(partitions_def, keys, 24, "hourly")
    assert plan.runs == runs  # our plan is the runs Dagster launches
    assert plan.queries_per_run == [1] * len(runs)  # a run that starts at 05:00 is still one query
    assert plan.queries == len(runs) <= days


def test_a_daily_backfill_costs_one_query_per_day_however_many_days_a_run_takes(tmp_path):
    defs = definitions(tmp_path, demo_project("Europe/Berlin"), [daily(backfill_partitions_per_run=7)])
    key = dg.AssetKey(["daily", "mp_master_event"])
    partitions_def = defs.resolve_assets_def(key).partitions_def
    keys = partitions_def.get_partition_keys()
    plan = plan_backfill(partitions_def, keys, 7, "daily")
    assert plan.runs == dagster_runs(defs, key, keys)
    assert plan.queries == len(keys)  # a query never covers more than one local day (max_days_per_query 1)


def test_a_selection_with_gaps_never_queries_the_hours_in_between(tmp_path):
    defs = definitions(tmp_path, demo_project("UTC"), [hourly()])
    partitions_def = defs.resolve_assets_def(dg.AssetKey(["hourly", "mp_master_event"])).partitions_def
    keys = partitions_def.get_partition_keys()
    missing = keys[10:14] + keys[20:22]  # e.g. re-running only the failed hours
    windows = windows_for_keys(partitions_def, missing, "hourly")
    spans = query_spans(windows, dt.UTC)
    assert [(s.isoformat(), e.isoformat()) for s, e, _ in spans] == [
        (windows[0].start.isoformat(), windows[3].end.isoformat()),
        (windows[4].start.isoformat(), windows[5].end.isoformat()),
    ]


@pytest.fixture
def mixpanel(fake_mixpanel, generated_day, monkeypatch):
    fake_mixpanel.add_events(generated_day.read_bytes().splitlines())
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


def api_project(fake, **export_api) -> dict:
    project = {"id": PROJECT_ID, "timezone": "UTC", "state": {"path": "state"},
               "source": fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}
    if export_api:
        project["export_api"] = export_api
    return project


def test_runs_send_exactly_the_queries_the_plan_counts(tmp_path, mixpanel, instance):
    pipelines = [hourly(from_date="2024-11-20", created="2024-11-20"),
                 daily(from_date="2024-11-20", created="2024-11-20", backfill_partitions_per_run=3)]
    defs = definitions(tmp_path, api_project(mixpanel), pipelines)
    hourly_def = defs.resolve_assets_def(dg.AssetKey(["hourly", "mp_master_event"])).partitions_def
    daily_def = defs.resolve_assets_def(dg.AssetKey(["daily", "mp_master_event"])).partitions_def
    # A run of 24 hours that starts at noon, as a backfill selected from noon is cut: one query.
    hours = hourly_def.get_partition_keys_in_range(dg.PartitionKeyRange("2024-11-21-12:00", "2024-11-22-11:00"))
    days = daily_def.get_partition_keys_in_range(dg.PartitionKeyRange("2024-11-21", "2024-11-23"))
    planned = plan_backfill(hourly_def, hours, 24, "hourly").queries + plan_backfill(daily_def, days, 3, "daily").queries

    assert run_partition(defs, "hourly_job", instance, range_=(hours[0], hours[-1])).success
    (request,) = mixpanel.export_requests()
    assert (request.params["from_date"], request.params["to_date"]) == ("2024-11-21", "2024-11-22")
    assert f"datetime({epoch('2024-11-21T12:00:00')})" in request.params["where"]
    assert run_partition(defs, "daily_job", instance, range_=(days[0], days[-1])).success
    assert len(mixpanel.export_requests()) == planned == 1 + 3


RUN_ONE_RANGE = """
import sys
import dagster as dg
from mixpanel_assets.defs.build import build_definitions
import datetime as dt
config, job, first, last = sys.argv[1:5]
defs = build_definitions(config, today=dt.date(2024, 11, 30))
tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
result = defs.resolve_job_def(job).execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=tags)
sys.exit(0 if result.success else 1)
"""


def test_concurrent_runs_share_one_query_budget_per_project(tmp_path, mixpanel):
    """Two runs in two processes, as two backfill runs on one machine: their queries come out of
    one budget file, so together they stay within the per-second limit (set to 1 here)."""
    from mixpanel_assets.mixpanel.rate_budget import RateBudget

    pipelines = [daily(from_date="2024-11-16", created="2024-11-16", backfill_partitions_per_run=3)]
    config = tmp_path / "pipelines.yaml"
    definitions(tmp_path, api_project(mixpanel, queries_per_second=1), pipelines, today=dt.date(2024, 11, 30))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-c", RUN_ONE_RANGE, str(config), "daily_job", first, last], env=env,
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for first, last in (("2024-11-16", "2024-11-18"), ("2024-11-19", "2024-11-21"))]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-2000:]
    assert len(mixpanel.export_requests()) == 6
    budget_file = next((tmp_path / "state" / "rate_budget").glob("export_*.json"))
    stamps = sorted(json.loads(budget_file.read_text()))
    assert len(stamps) == 6
    assert all(b - a >= 1.0 for a, b in zip(stamps, stamps[1:]))  # never two queries within one second
    assert RateBudget(budget_file, per_hour=60, per_second=1).used_last_hour() == 6


def test_progress_lines_tell_lines_done_and_time_to_go(tmp_path, generated_day, monkeypatch):
    import mixpanel_assets.staging.blocks as staging

    monkeypatch.setattr(staging, "PROGRESS_EVERY_SECONDS", 0.0)
    lines: list[str] = []
    day = epoch("2024-11-22T00:00:00")
    staged = stage_events([LocalFile(str(generated_day), generated_day.name)], [Window(day, day + 86400)], ["d"],
                          staging_root=tmp_path, block_bytes=1 << 20, describe_source="pipeline 'p'",
                          progress=lines.append)
    staged.cleanup()
    progress = lines  # one parser, so no line announcing which one parses (there were two)
    assert len(progress) >= 3
    assert all(line.startswith("pipeline 'p': ") and "lines/s" in line and "s to go" in line for line in progress)
    assert "100% of" in lines[-1]
