"""Definitions load the same whatever the date; Mixpanel's backfill limit is enforced by runs.

A location that loads today must load in six months and in a year, unchanged. Without a
`created` date the 6-month from_date limit is therefore checked when a run exports: counted from
the pipeline's first export, or the run's day before any, partitions older than that fail the run.
"""

import datetime as dt

import dagster as dg

from mixpanel_assets.config import parse_pipelines
from mixpanel_assets.defs.backfill_limit import backfill_anchor, backfill_limit_problem
from mixpanel_assets.defs.partitions import events_partitions_def, windows_for_keys
from mixpanel_assets_tests.helpers import TODAY, definitions, run_partition

UTC = dt.UTC
DEMO = {"id": 7, "state": {"path": "state"}, "source": {"type": "demo", "events_per_hour": 3, "users": 5}}


def _events(name: str, frequency: str, from_date: str, **extra) -> dict:
    return {"name": name, "data_source": "events", "frequency": frequency, "from_date": from_date,
            "destination": {"type": "local", "path": name}, **extra}


def shape(defs: dg.Definitions) -> dict:
    """What a user sees of a location: assets with their partitions, checks, jobs, resources, sensors."""
    graph = defs.resolve_asset_graph()
    partitions = {}
    for key in graph.get_all_asset_keys():
        partitions_def = graph.get(key).partitions_def
        if partitions_def is not None:
            # Keys up to a fixed instant, so the comparison is about the definitions, not the clock.
            partitions[key] = (partitions_def, partitions_def.get_partition_keys(
                current_time=dt.datetime(2026, 11, 22, tzinfo=UTC))[:3])
    return {
        "assets": sorted(graph.get_all_asset_keys()),
        "partitions": partitions,
        "checks": sorted(graph.asset_check_keys),
        "jobs": sorted(j.name for j in defs.jobs),
        "resources": sorted(defs.resources),
        "sensors": sorted(s.name for s in defs.sensors),
        "schedules": sorted(s.name for s in defs.schedules),
    }


def test_the_same_definitions_load_today_six_months_and_a_year_later(tmp_path):
    pipelines = [
        # Without `created`: from_date is 6 months back today, more than that from then on.
        _events("daily_ev", "daily", "2026-05-25"),
        _events("hourly_ev", "hourly", "2026-09-01", created="2026-11-22"),
        {"name": "ppl", "data_source": "people", "destination": {"type": "duckdb", "path": "w.db"}},
        {"name": "ids", "data_source": "identity", "destination": {"type": "duckdb", "path": "w.db"}},
    ]
    loaded = []
    for today in (TODAY, dt.date(2027, 5, 22), dt.date(2027, 11, 22)):
        defs = definitions(tmp_path, DEMO, pipelines, today=today)
        dg.Definitions.validate_loadable(defs)
        loaded.append(shape(defs))
    assert loaded[0]["partitions"] and len(loaded[0]["assets"]) == 6
    assert loaded[1] == loaded[0] and loaded[2] == loaded[0]


def test_a_run_of_partitions_beyond_the_limit_fails_naming_pipeline_field_and_how_to_lift_it(tmp_path, instance):
    defs = definitions(tmp_path, DEMO, [_events("ev", "daily", "2020-01-01")])
    result = run_partition(defs, "ev_job", instance, "2020-01-01", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    run_day = dt.datetime.now(UTC).date()
    assert "pipeline 'ev', field from_date: partition 2020-01-01 (1 of this run's 1) is more than 6 months before" in message
    assert "the day of this run" in message
    assert any(str(day) in message for day in (run_day, run_day - dt.timedelta(days=1)))  # midnight may pass
    assert "set the pipeline's 'created' date" in message and "enforce_mixpanel_limits: false" in message
    assert not (tmp_path / "ev").exists()  # failed before the source was asked for anything
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]  # permanent

    recent = (dt.datetime.now(UTC) - dt.timedelta(days=2)).date().isoformat()
    assert run_partition(defs, "ev_job", instance, recent).success


def test_created_or_a_lifted_limit_lets_the_run_export_old_partitions(tmp_path, instance):
    with_created = definitions(tmp_path, DEMO, [_events("ev", "daily", "2020-01-01", created="2020-03-01")])
    assert run_partition(with_created, "ev_job", instance, "2020-01-01").success
    lifted = definitions(tmp_path, {**DEMO, "limits": {"enforce_mixpanel_limits": False}},
                         [_events("ev2", "daily", "2020-01-01")])
    assert run_partition(lifted, "ev2_job", instance, "2020-01-01").success


def test_the_limit_counts_from_the_first_export_so_exportable_partitions_never_shrink():
    config = parse_pipelines({"project": DEMO, "pipelines": [_events("ev", "daily", "2026-05-25")]})
    pipeline, project = config.pipeline("ev"), config.project
    windows = windows_for_keys(events_partitions_def(pipeline, project), ["2026-05-25"], "daily")
    first_export = dt.datetime(2026, 11, 22, 12, tzinfo=UTC)
    a_year_later = dt.datetime(2027, 11, 22, 12, tzinfo=UTC)
    anchor = backfill_anchor(first_export, a_year_later, project)
    assert anchor == (dt.date(2026, 11, 22), "the day of the pipeline's first export")
    assert backfill_limit_problem(pipeline, project, windows, *anchor) is None
    # Before any export, the run's own day counts: a year on, 2026-05-25 is too far back.
    anchor = backfill_anchor(None, a_year_later, project)
    assert anchor == (dt.date(2027, 11, 22), "the day of this run")
    assert "partition 2026-05-25" in backfill_limit_problem(pipeline, project, windows, *anchor)
