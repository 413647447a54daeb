"""Freshness: the 24 h SLA as a FreshnessPolicy on each recurring events asset, and per partition.

The policy is Dagster's to evaluate (its freshness daemon); here we check that every recurring
events asset carries it, with windows derived from the SLA and the partition length, in the asset
graph the UI is built from. The per-partition check is ours to wire: it runs with each export and
from its sensor, fails when the newest partition due is missing (an error for daily pipelines, a
warning for hourly ones) and passes once it is exported, whatever older partitions were backfilled.
"""

import datetime as dt

import dagster as dg
import pytest

from mixpanel_assets.defs.freshness import FRESHNESS_SENSOR
from mixpanel_assets_tests.helpers import definitions, event_line, events_pipeline, local_project

UTC = dt.timezone.utc
TODAY = dt.datetime.now(UTC).date()
FIRST = TODAY - dt.timedelta(days=5)


def day(n: int) -> dt.date:
    return TODAY - dt.timedelta(days=n)


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    for n in range(1, 5):
        d = day(n)
        t = int(dt.datetime(d.year, d.month, d.day, 12, tzinfo=UTC).timestamp())
        (folder / f"{d}.jsonl").write_bytes(event_line("Viewed", t, "u1", f"e-{d}") + b"\n")
    return folder


def project(folder) -> dict:
    return local_project(5150, folder, export_workers=1)


def events(name, frequency, **extra):
    return events_pipeline(name, frequency, {"type": "duckdb", "path": f"{name}.duckdb"}, str(FIRST),
                           sync=False, **extra)


def freshness_result(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "freshness_check"]
    return evaluation


def test_recurring_events_assets_carry_the_sla_as_a_freshness_policy(tmp_path, source):
    defs = definitions(tmp_path, project(source), [
        events("hourly_db", "hourly"), events("daily_db", "daily"),
        events("backfill_db", "daily", to_date=str(day(2))),
    ], today=TODAY)
    graph = defs.resolve_asset_graph()
    windows = {}
    for name in ("hourly_db", "daily_db", "backfill_db"):
        policy = graph.get(dg.AssetKey([name, "mp_master_event"])).freshness_policy
        windows[name] = policy and (policy.fail_window.to_timedelta(), policy.warn_window.to_timedelta())
    assert windows == {
        "hourly_db": (dt.timedelta(hours=25), dt.timedelta(hours=2, minutes=30)),
        "daily_db": (dt.timedelta(hours=48), dt.timedelta(hours=25, minutes=30)),
        "backfill_db": None,  # a date-ranged pipeline is done once backfilled: nothing to be fresh
    }


def test_the_newest_daily_partition_due_is_checked_by_itself(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), [events("daily_db", "daily")], today=TODAY)
    job = defs.resolve_job_def("daily_db_job")
    # The day before yesterday is due by 23:59 yesterday, yesterday by 23:59 today: a backfill of an
    # older day does not count.
    stale = freshness_result(job.execute_in_process(instance=instance, partition_key=str(day(4))))
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.ERROR
    for n in (2, 1):
        fresh = freshness_result(job.execute_in_process(instance=instance, partition_key=str(day(n))))
    assert fresh.passed


def test_a_missing_newest_hour_is_a_warning(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), [events("hourly_db", "hourly")], today=TODAY)
    old_hour = f"{day(3)}-12:00"
    late = freshness_result(defs.resolve_job_def("hourly_db_job").execute_in_process(instance=instance, partition_key=old_hour))
    assert not late.passed and late.severity == dg.AssetCheckSeverity.WARN


def test_the_freshness_sensor_asks_for_every_newest_partition_check(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), [events("hourly_db", "hourly"), events("daily_db", "daily")], today=TODAY)
    sensor = defs.resolve_sensor_def(FRESHNESS_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    requested = {key for request in data.run_requests for key in request.asset_check_keys}
    assert requested == {dg.AssetCheckKey(dg.AssetKey([name, "mp_master_event"]), "freshness_check")
                         for name in ("hourly_db", "daily_db")}
