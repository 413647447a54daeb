"""BigQuery end to end on bqemulator: Dagster runs -> load jobs -> Mixpanel's tables, views and log."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.io_managers import write_staged_window
from mixpanel_assets.destinations.warehouses.bigquery import BigQueryDestination
from mixpanel_assets_tests.emulators.bigquery import PROJECT, bigquery_emulator  # noqa: F401
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, run_partition
from mixpanel_assets_tests.warehouse_cases import (
    DAY,
    DAY_UTC,
    HOUR,
    HOUR_UTC,
    PROFILES,
    PROJECT_ID,
    TZ,
    corrupt,
    expected_cities,
    expected_unique_users,
    good_events,
    kept_events,
    misplace,
    pipelines,
    project,
    source_lines,
    staged_window,
    window_of,
    write_source,
)

pytestmark = pytest.mark.emulator


def bigquery(endpoint, dataset):
    return {"type": "bigquery", "project": PROJECT, "dataset": dataset, "api_endpoint": endpoint,
            "job_timeout_seconds": 120}


def rows(client, sql):
    return [tuple(r.values()) for r in client.query(sql, timeout=60).result(timeout=120)]


def view_definition(client, dataset, view):
    return rows(client, f"SELECT view_definition FROM `{PROJECT}.{dataset}.INFORMATION_SCHEMA.VIEWS` "
                        f"WHERE table_name = '{view}'")[0][0]


def table_ids(client, dataset) -> list[str]:
    return sorted(t.table_id for t in client.list_tables(f"{PROJECT}.{dataset}"))


class Export:
    """Fresh datasets, a source folder and the definitions of the four pipelines."""

    def __init__(self, emulator, tmp, generated_day):
        self.client = emulator.client()
        self.daily, self.hourly = emulator.new_dataset(), emulator.new_dataset()
        self.source = write_source(tmp / "mixpanel_files", generated_day)
        self.lines = source_lines(generated_day)
        daily, hourly = bigquery(emulator.endpoint, self.daily), bigquery(emulator.endpoint, self.hourly)
        self.defs = definitions(tmp, project(self.source), pipelines(daily, hourly, daily, "bq"))

    def t(self, dataset, table):
        return f"`{PROJECT}.{dataset}.{table}`"


@pytest.fixture(scope="module")
def exported(bigquery_emulator, generated_day, tmp_path_factory):  # noqa: F811
    """One export of everything, shared by the read-only tests below."""
    export = Export(bigquery_emulator, tmp_path_factory.mktemp("bq"), generated_day)
    with dg.instance_for_test() as instance:
        export.results = {
            "daily": run_partition(export.defs, "bq_daily_job", instance, DAY),
            "hourly": run_partition(export.defs, "bq_hourly_job", instance, HOUR),
            "people": run_partition(export.defs, "bq_people_job", instance),
            "identity": run_partition(export.defs, "bq_identity_job", instance),
        }
    yield export
    export.client.close()


def test_a_daily_partition_holds_the_projects_local_day_deduplicated(exported):
    expected = len(kept_events(exported.lines, DAY_UTC))
    table = exported.t(exported.daily, "mp_master_event")
    assert rows(exported.client, f"SELECT DATE(_PARTITIONTIME) AS day, COUNT(*) FROM {table} GROUP BY day") == [
        (dt.date(2024, 11, 22), expected)]
    assert rows(exported.client, f"SELECT COUNT(*) FROM (SELECT DISTINCT event_name, distinct_id, time, insert_id "
                                 f"FROM {table})") == [(expected,)]
    (mat,) = exported.results["daily"].asset_materializations_for_node("bq_daily__mp_master_event")
    assert mat.metadata["rows_written"].value == expected
    assert mat.metadata["destination"].value == f"BigQuery dataset {PROJECT}.{exported.daily}"


def test_an_hourly_partition_holds_one_hour_in_the_partition_of_its_local_date(exported):
    expected = len(kept_events(exported.lines, HOUR_UTC))
    table = exported.t(exported.hourly, "mp_master_event")
    assert rows(exported.client, f"SELECT DATE(_PARTITIONTIME) AS day, COUNT(*), "
                                 f"MIN(time) >= TIMESTAMP '2024-11-22 13:00:00+00', "
                                 f"MAX(time) < TIMESTAMP '2024-11-22 14:00:00+00' FROM {table} GROUP BY day") == [
        (dt.date(2024, 11, 22), expected, True, True)]


def test_mp_master_event_has_mixpanels_columns_and_is_partitioned_by_the_local_date(exported):
    """Ingestion-time partitioned by day, as Mixpanel's; the partition of a row is simulated by the
    emulator (bqemu_server.py), the decorator each write names is checked in test_bigquery_partitions.py."""
    table = exported.client.get_table(f"{PROJECT}.{exported.daily}.mp_master_event")
    assert [(f.name, f.field_type) for f in table.schema] == [
        ("device_id", "STRING"), ("distinct_id", "STRING"), ("event_name", "STRING"), ("insert_id", "STRING"),
        ("properties", "JSON"), ("time", "TIMESTAMP"), ("user_id", "STRING")]
    assert table.time_partitioning.field is None and table.time_partitioning.type_ == "DAY"
    assert rows(exported.client, f"SELECT COUNTIF(DATE(_PARTITIONTIME) != DATE(time, '{TZ}')) FROM "
                                 f"{exported.t(exported.daily, 'mp_master_event')}") == [(0,)]


def test_people_and_identity_are_read_through_views_over_new_tables(exported):
    client, ds = exported.client, exported.daily
    tables = {t.table_id: t.table_type for t in client.list_tables(f"{PROJECT}.{ds}")}
    people = [name for name in tables if name.startswith("mp_people_data_2")]
    identity = [name for name in tables if name.startswith("mp_identity_mappings_data_2")]
    assert len(people) == 1 and len(identity) == 1
    assert tables["mp_people_data_view"] == tables["mp_identity_mappings_data_view"] == "VIEW"
    assert people[0] in view_definition(client, ds, "mp_people_data_view")
    assert rows(client, f"SELECT COUNT(*), COUNT(DISTINCT distinct_id) FROM {exported.t(ds, 'mp_people_data_view')}") == [
        (PROFILES, PROFILES)]
    assert rows(client, f"""SELECT JSON_VALUE(properties, '$."$email"') FROM {exported.t(ds, 'mp_people_data_view')}
                            WHERE distinct_id = 'u7'""") == [("u7@example.com",)]
    mappings, unique = rows(client, f"SELECT COUNT(*), COUNT(DISTINCT distinct_id) FROM "
                                    f"{exported.t(ds, 'mp_identity_mappings_data_view')}")[0]
    assert mappings > 0 and mappings == unique
    schema = client.get_table(f"{PROJECT}.{ds}.{identity[0]}").schema
    assert [(f.name, f.field_type) for f in schema] == [("distinct_id", "STRING"), ("resolved_distinct_id", "STRING")]


def test_each_export_is_recorded_in_the_export_log(exported):
    log = rows(exported.client, f"SELECT table_name, partition_key, partition_date, row_count, window_start "
                                f"FROM {exported.t(exported.daily, 'mp_nessie_export_log')} ORDER BY table_name")
    assert [r[0] for r in log] == ["mp_identity_mappings_data", "mp_master_event", "mp_people_data"]
    assert log[1][1:] == (DAY, dt.date(2024, 11, 22), len(kept_events(exported.lines, DAY_UTC)),
                          dt.datetime(2024, 11, 22, 8, tzinfo=dt.timezone.utc))
    assert log[2][3] == PROFILES


def test_the_asset_checks_read_back_every_export_and_pass(exported):
    read_back = {"row_count_matches_source", "no_duplicate_dedup_keys", "schema_matches_mixpanel",
                 "row_count_matches_export", "distinct_id_unique"}
    evaluations = [e for result in exported.results.values() for e in result.get_asset_check_evaluations()
                   if e.check_name in read_back]
    assert {e.check_name for e in evaluations} == read_back
    assert [(e.asset_key.to_user_string(), e.check_name, e.description) for e in evaluations if not e.passed] == []

def test_the_natural_queries_work_on_our_tables(exported):
    """The README's three queries: events per local day, users through the mappings, a $ property."""
    client, ds = exported.client, exported.daily
    kept = kept_events(exported.lines, DAY_UTC)
    assert rows(client, f"""SELECT DATE(time, '{TZ}') AS day, COUNT(*) FROM {exported.t(ds, 'mp_master_event')}
                            GROUP BY day ORDER BY day""") == [(dt.date(2024, 11, 22), len(kept))]

    mapping = dict(rows(client, f"SELECT distinct_id, resolved_distinct_id FROM "
                                f"{exported.t(ds, 'mp_identity_mappings_data_view')}"))
    users = expected_unique_users(kept, mapping)
    assert rows(client, f"""SELECT COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id))
                            FROM {exported.t(ds, 'mp_master_event')} e
                            LEFT JOIN {exported.t(ds, 'mp_identity_mappings_data_view')} m
                            ON e.distinct_id = m.distinct_id""") == [(users,)]
    assert rows(client, f"SELECT COUNT(DISTINCT resolved_distinct_id) FROM "
                        f"{exported.t(ds, 'mp_master_event_resolved')}") == [(users,)]

    got = rows(client, f"""SELECT JSON_VALUE(properties, '$."$city"') AS city, COUNT(*) AS n
                           FROM {exported.t(ds, 'mp_master_event')} GROUP BY city""")
    assert dict(got) == expected_cities(kept)


def test_rerunning_a_partition_replaces_its_window_and_picks_up_changed_source_data(
        bigquery_emulator, generated_day, tmp_path, instance):  # noqa: F811
    export = Export(bigquery_emulator, tmp_path, generated_day)
    table = export.t(export.hourly, "mp_master_event")
    run_partition(export.defs, "bq_hourly_job", instance, HOUR)
    first = rows(export.client, f"SELECT COUNT(*) FROM {table}")[0][0]
    assert first == len(kept_events(export.lines, HOUR_UTC))
    run_partition(export.defs, "bq_hourly_job", instance, HOUR)
    assert rows(export.client, f"SELECT COUNT(*) FROM {table}") == [(first,)]

    late = event_line("Late Event", epoch("2024-11-22T13:30:00"), "late_user", "late-1", **{"$city": "Lviv"})
    (export.source / "2024-11-22-late.jsonl").write_bytes(late + b"\n")
    run_partition(export.defs, "bq_hourly_job", instance, HOUR)
    assert rows(export.client, f"SELECT COUNT(*) FROM {table}") == [(first + 1,)]
    assert rows(export.client, f"""SELECT distinct_id, JSON_VALUE(properties, '$."$city"') FROM {table}
                                   WHERE event_name = 'Late Event'""") == [("late_user", "Lviv")]
    log = rows(export.client, f"SELECT row_count FROM {export.t(export.hourly, 'mp_nessie_export_log')} "
                              "ORDER BY exported_at")
    assert log == [(first,), (first,), (first + 1,)]
    assert table_ids(export.client, export.hourly) == ["mp_master_event", "mp_nessie_export_log"]


def test_rerunning_people_points_the_view_at_a_new_table_and_drops_the_old_one(
        bigquery_emulator, generated_day, tmp_path, instance):  # noqa: F811
    export = Export(bigquery_emulator, tmp_path, generated_day)
    names = []
    for _ in range(2):
        run_partition(export.defs, "bq_people_job", instance)
        names.append([t for t in table_ids(export.client, export.daily) if t.startswith("mp_people_data_2")])
    assert len(names[0]) == len(names[1]) == 1 and names[0] != names[1]
    view = view_definition(export.client, export.daily, "mp_people_data_view")
    assert names[1][0] in view and names[0][0] not in view
    assert rows(export.client, f"SELECT COUNT(*) FROM {export.t(export.daily, 'mp_people_data_view')}") == [(PROFILES,)]


@pytest.fixture
def destination(bigquery_emulator):  # noqa: F811
    """A destination on a fresh dataset, without Dagster: for the failure cases."""
    dataset = bigquery_emulator.new_dataset()
    destination = BigQueryDestination("bq_daily", PROJECT_ID, bigquery_emulator.client(), dataset, timezone=TZ)
    yield destination
    destination.close()


def test_a_failed_load_job_leaves_the_previous_rows_and_names_pipeline_table_and_partition(destination, tmp_path):
    window = window_of(DAY)
    write_staged_window(destination, staged_window(tmp_path, window, good_events(5)), tmp_path / "parts", window=window)

    changed = staged_window(tmp_path, window, good_events(3, city="Rome"))
    corrupt(changed)
    with pytest.raises(DestinationError) as failure:
        write_staged_window(destination, changed, tmp_path / "parts", window=window)
    message = str(failure.value)
    assert "pipeline 'bq_daily'" in message and f"partition {DAY}" in message
    assert f"{PROJECT}.{destination.dataset}.mp_master_event" in message and "unchanged" in message
    table = destination.sql_ref("mp_master_event")
    assert rows(destination.client, f"""SELECT COUNT(*), COUNTIF(JSON_VALUE(properties, '$."$city"') = 'Oslo')
                                        FROM {table}""") == [(5, 5)]
    assert table_ids(destination.client, destination.dataset) == ["mp_master_event", "mp_nessie_export_log"]


def test_rows_outside_the_window_are_refused_before_the_table_is_touched(destination, tmp_path):
    window = window_of(DAY)
    write_staged_window(destination, staged_window(tmp_path, window, good_events(1)), tmp_path / "parts", window=window)
    wrong = staged_window(tmp_path, window, good_events(2))
    misplace(wrong, "2024-11-25T12:00:00")
    with pytest.raises(DestinationError, match="outside the window"):
        write_staged_window(destination, wrong, tmp_path / "parts", window=window)
    assert rows(destination.client, f"SELECT COUNT(*) FROM {destination.sql_ref('mp_master_event')}") == [(1,)]


def test_a_dataset_that_does_not_exist_is_named_in_the_error(bigquery_emulator, tmp_path):  # noqa: F811
    destination = BigQueryDestination("bq_daily", PROJECT_ID, bigquery_emulator.client(), "no_such_dataset")
    window = window_of(DAY)
    with pytest.raises(DestinationError, match=f"dataset {PROJECT}.no_such_dataset does not exist"):
        write_staged_window(destination, staged_window(tmp_path, window, good_events(1)), tmp_path / "parts", window=window)
    destination.close()
