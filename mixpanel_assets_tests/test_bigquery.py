"""BigQuery end to end on bqemulator: Dagster runs -> load jobs -> Mixpanel's tables, views and log."""

from __future__ import annotations

import collections
import datetime as dt
import json
import shutil
import zoneinfo

import dagster as dg
import orjson
import pytest

from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.bigquery import BigQueryDestination
from mixpanel_assets.partitions import PartitionWindow
from mixpanel_assets.staging import stage_events
from mixpanel_assets_tests.emulators.bigquery import PROJECT, bigquery_emulator  # noqa: F401
from mixpanel_assets_tests.helpers import dedup_expected, definitions, epoch, event_line, run_partition

pytestmark = pytest.mark.emulator

PROJECT_ID = 777
TZ = "America/Los_Angeles"
LA = zoneinfo.ZoneInfo(TZ)
DAY = "2024-11-22"  # local day: 2024-11-22T08:00Z .. 2024-11-23T08:00Z
HOUR = "2024-11-22-05:00-0800"  # 13:00Z .. 14:00Z


def merging_events() -> list[bytes]:
    """Three devices seen first anonymous, then identified: the mappings must merge each pair into one user
    (the generated day keeps its anonymous and identified devices apart)."""
    lines = []
    for i in range(3):
        at = epoch("2024-11-22T12:00:00") + 60 * i
        lines.append(event_line("Viewed Page", at, f"$device:merge-d{i}", f"m-a{i}", **{"$device_id": f"merge-d{i}"}))
        lines.append(event_line("Signed Up", at + 30, f"merge-user{i}", f"m-b{i}",
                                **{"$device_id": f"merge-d{i}", "$user_id": f"merge-user{i}"}))
    return lines


def write_source(folder, generated_day):
    folder.mkdir()
    shutil.copy(generated_day, folder / generated_day.name)
    (folder / "2024-11-22-merging.jsonl").write_bytes(b"\n".join(merging_events()) + b"\n")
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": f"u{i}", "$properties": {"$email": f"u{i}@example.com", "$city": "Kyiv"}})
        for i in range(50)
    ))
    return folder


def project(source_dir):
    return {"id": PROJECT_ID, "timezone": TZ, "state": {"path": "state"},
            "source": {"type": "local", "path": str(source_dir), "profiles_path": str(source_dir / "profiles.jsonl")}}


def bigquery(endpoint, dataset):
    return {"type": "bigquery", "project": PROJECT, "dataset": dataset, "api_endpoint": endpoint,
            "load_compression": "gzip", "job_timeout_seconds": 120}


def pipelines(endpoint, daily_dataset, hourly_dataset):
    return [
        {"name": "bq_daily", "data_source": "events", "frequency": "daily", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": bigquery(endpoint, daily_dataset)},
        {"name": "bq_hourly", "data_source": "events", "frequency": "hourly", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": bigquery(endpoint, hourly_dataset)},
        {"name": "bq_people", "data_source": "people", "destination": bigquery(endpoint, daily_dataset)},
        {"name": "bq_identity", "data_source": "identity", "destination": bigquery(endpoint, daily_dataset)},
    ]


def rows(client, sql):
    return [tuple(r.values()) for r in client.query(sql, timeout=60).result(timeout=120)]


def view_definition(client, dataset, view):
    (definition,) = rows(client, f"SELECT view_definition FROM `{PROJECT}.{dataset}.INFORMATION_SCHEMA.VIEWS` "
                                 f"WHERE table_name = '{view}'")[0]
    return definition


class Export:
    """One export of everything into fresh datasets, shared by the read-only tests below."""

    def __init__(self, emulator, tmp, generated_day):
        self.client = emulator.client()
        self.daily, self.hourly = emulator.new_dataset(), emulator.new_dataset()
        self.source = write_source(tmp / "mixpanel_files", generated_day)
        self.lines = generated_day.read_bytes().splitlines() + merging_events()
        self.defs = definitions(tmp, project(self.source), pipelines(emulator.endpoint, self.daily, self.hourly))

    def t(self, dataset, table):
        return f"`{PROJECT}.{dataset}.{table}`"


@pytest.fixture(scope="module")
def exported(bigquery_emulator, generated_day, tmp_path_factory):  # noqa: F811
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


def expected_events(lines, start_iso, end_iso):
    return dedup_expected(lines, epoch(start_iso), epoch(end_iso))


def test_a_daily_partition_holds_the_projects_local_day_deduplicated(exported):
    expected = expected_events(exported.lines, "2024-11-22T08:00:00", "2024-11-23T08:00:00")["count"]
    table = exported.t(exported.daily, "mp_master_event")
    assert rows(exported.client, f"SELECT mp_date, COUNT(*) FROM {table} GROUP BY mp_date") == [(dt.date(2024, 11, 22), expected)]
    assert rows(exported.client, f"SELECT COUNT(*) FROM (SELECT DISTINCT event_name, distinct_id, time, insert_id "
                                 f"FROM {table})") == [(expected,)]
    (mat,) = exported.results["daily"].asset_materializations_for_node("bq_daily__mp_master_event")
    assert mat.metadata["rows_written"].value == expected
    assert mat.metadata["destination"].value == f"BigQuery dataset {PROJECT}.{exported.daily}"


def test_an_hourly_partition_holds_one_hour_in_the_partition_of_its_local_date(exported):
    expected = expected_events(exported.lines, "2024-11-22T13:00:00", "2024-11-22T14:00:00")["count"]
    table = exported.t(exported.hourly, "mp_master_event")
    assert rows(exported.client, f"SELECT mp_date, COUNT(*), MIN(time) >= TIMESTAMP '2024-11-22 13:00:00+00', "
                                 f"MAX(time) < TIMESTAMP '2024-11-22 14:00:00+00' FROM {table} GROUP BY mp_date") == [
        (dt.date(2024, 11, 22), expected, True, True)]


def test_mp_master_event_has_mixpanels_columns_and_is_partitioned_by_the_local_date(exported):
    table = exported.client.get_table(f"{PROJECT}.{exported.daily}.mp_master_event")
    assert [(f.name, f.field_type) for f in table.schema] == [
        ("device_id", "STRING"), ("distinct_id", "STRING"), ("event_name", "STRING"), ("insert_id", "STRING"),
        ("properties", "JSON"), ("time", "TIMESTAMP"), ("user_id", "STRING"), ("mp_date", "DATE")]
    assert table.time_partitioning.field == "mp_date" and table.time_partitioning.type_ == "DAY"
    # mp_date is the Los Angeles date of the UTC time, for every row
    assert rows(exported.client, f"SELECT COUNTIF(mp_date != DATE(time, '{TZ}')) FROM "
                                 f"{exported.t(exported.daily, 'mp_master_event')}") == [(0,)]


def test_people_and_identity_are_read_through_views_over_new_tables(exported):
    client, ds = exported.client, exported.daily
    tables = {t.table_id: t.table_type for t in client.list_tables(f"{PROJECT}.{ds}")}
    people = [name for name in tables if name.startswith("mp_people_data_2")]
    identity = [name for name in tables if name.startswith("mp_identity_mappings_data_2")]
    assert len(people) == 1 and len(identity) == 1
    assert tables["mp_people_data_view"] == tables["mp_identity_mappings_data_view"] == "VIEW"
    assert people[0] in view_definition(client, ds, "mp_people_data_view")
    assert rows(client, f"SELECT COUNT(*), COUNT(DISTINCT distinct_id) FROM {exported.t(ds, 'mp_people_data_view')}") == [(50, 50)]
    assert rows(client, f"""SELECT JSON_VALUE(properties, '$."$email"') FROM {exported.t(ds, 'mp_people_data_view')}
                            WHERE distinct_id = 'u7'""") == [("u7@example.com",)]
    (mappings, unique) = rows(client, f"SELECT COUNT(*), COUNT(DISTINCT distinct_id) FROM "
                                      f"{exported.t(ds, 'mp_identity_mappings_data_view')}")[0]
    assert mappings > 0 and mappings == unique
    schema = client.get_table(f"{PROJECT}.{ds}.{identity[0]}").schema
    assert [(f.name, f.field_type) for f in schema] == [("distinct_id", "STRING"), ("resolved_distinct_id", "STRING")]


def test_each_export_is_recorded_in_the_export_log(exported):
    log = rows(exported.client, f"SELECT table_name, partition_key, partition_date, row_count, window_start "
                                f"FROM {exported.t(exported.daily, 'mp_nessie_export_log')} ORDER BY table_name")
    expected = expected_events(exported.lines, "2024-11-22T08:00:00", "2024-11-23T08:00:00")["count"]
    assert [r[0] for r in log] == ["mp_identity_mappings_data", "mp_master_event", "mp_people_data"]
    assert log[1][1:] == (DAY, dt.date(2024, 11, 22), expected, dt.datetime(2024, 11, 22, 8, tzinfo=dt.timezone.utc))
    assert log[2][3] == 50


def test_the_natural_queries_work_on_our_tables(exported):
    """The README's three queries: events per local day, users through the mappings, a $ property."""
    client, ds = exported.client, exported.daily
    kept = list(expected_events(exported.lines, "2024-11-22T08:00:00", "2024-11-23T08:00:00")["kept"].values())
    kept += expected_events(exported.lines, "2024-11-22T08:00:00", "2024-11-23T08:00:00")["no_insert_id"]
    per_day = rows(client, f"""SELECT DATE(time, '{TZ}') AS day, COUNT(*) FROM {exported.t(ds, 'mp_master_event')}
                               GROUP BY day ORDER BY day""")
    assert per_day == [(dt.date(2024, 11, 22), len(kept))]

    mapping = dict(rows(client, f"SELECT distinct_id, resolved_distinct_id FROM "
                                f"{exported.t(ds, 'mp_identity_mappings_data_view')}"))
    users = {mapping.get(e["properties"]["distinct_id"], e["properties"]["distinct_id"]) for e in kept}
    assert len(users) == len({e["properties"]["distinct_id"] for e in kept}) - 3  # the three merged devices
    assert rows(client, f"""SELECT COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id))
                            FROM {exported.t(ds, 'mp_master_event')} e
                            LEFT JOIN {exported.t(ds, 'mp_identity_mappings_data_view')} m
                            ON e.distinct_id = m.distinct_id""") == [(len(users),)]
    assert rows(client, f"SELECT COUNT(DISTINCT resolved_distinct_id) FROM {exported.t(ds, 'mp_master_event_resolved')}") == [(len(users),)]

    cities = collections.Counter(e["properties"].get("$city") for e in kept)
    got = rows(client, f"""SELECT JSON_VALUE(properties, '$."$city"') AS city, COUNT(*) AS n
                           FROM {exported.t(ds, 'mp_master_event')} GROUP BY city""")
    assert dict(got) == dict(cities)


def test_rerunning_a_partition_replaces_its_window_and_picks_up_changed_source_data(
        bigquery_emulator, generated_day, tmp_path, instance):  # noqa: F811
    export = Export(bigquery_emulator, tmp_path, generated_day)
    table = export.t(export.hourly, "mp_master_event")
    run_partition(export.defs, "bq_hourly_job", instance, HOUR)
    first = rows(export.client, f"SELECT COUNT(*) FROM {table}")[0][0]
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
    leftovers = [t.table_id for t in export.client.list_tables(f"{PROJECT}.{export.hourly}")]
    assert sorted(leftovers) == ["mp_master_event", "mp_nessie_export_log"]


def test_rerunning_people_points_the_view_at_a_new_table_and_drops_the_old_one(
        bigquery_emulator, generated_day, tmp_path, instance):  # noqa: F811
    export = Export(bigquery_emulator, tmp_path, generated_day)
    names = []
    for round_ in range(2):
        run_partition(export.defs, "bq_people_job", instance)
        names.append([t.table_id for t in export.client.list_tables(f"{PROJECT}.{export.daily}")
                      if t.table_id.startswith("mp_people_data_2")])
    assert len(names[0]) == len(names[1]) == 1 and names[0] != names[1]
    view = view_definition(export.client, export.daily, "mp_people_data_view")
    assert names[1][0] in view and names[0][0] not in view
    assert rows(export.client, f"SELECT COUNT(*) FROM {export.t(export.daily, 'mp_people_data_view')}") == [(50,)]


def window_of(day: str) -> PartitionWindow:
    start = dt.datetime.fromisoformat(day).replace(tzinfo=LA)
    end = start + dt.timedelta(days=1)
    return PartitionWindow(day, start.astimezone(dt.timezone.utc), end.astimezone(dt.timezone.utc), start, "daily")


def staged_window(tmp_path, window: PartitionWindow, lines: list[bytes]):
    staged = stage_events([b"\n".join(lines) + b"\n"], [window.window], [window.partition_key],
                          staging_root=tmp_path, workers=1)
    staged.windows[0].info = window
    return staged


def test_a_failed_load_job_leaves_the_previous_rows_and_names_pipeline_table_and_partition(
        bigquery_emulator, tmp_path):  # noqa: F811
    dataset = bigquery_emulator.new_dataset()
    client = bigquery_emulator.client()
    destination = BigQueryDestination("bq_daily", PROJECT_ID, client, dataset, timezone=TZ)
    window = window_of(DAY)
    good = [event_line("Signed Up", epoch("2024-11-22T12:00:00") + i, f"u{i}", f"i{i}", **{"$city": "Oslo"})
            for i in range(5)]
    staged = staged_window(tmp_path, window, good)
    destination.write_event_window(staged.windows[0], window, tmp_path / "parts")

    changed = staged_window(tmp_path, window, good[:3])
    segment = changed.windows[0].segments[0]
    segment.path.write_bytes(segment.path.read_bytes() + b'{"device_id": "d", "distinct_id": "broken\n')
    segment.rows += 1
    changed.windows[0].rows_read += 1
    with pytest.raises(DestinationError) as failure:
        destination.write_event_window(changed.windows[0], window, tmp_path / "parts")
    message = str(failure.value)
    assert "pipeline 'bq_daily'" in message and f"partition {DAY}" in message
    assert f"{PROJECT}.{dataset}.mp_master_event" in message and "unchanged" in message
    assert rows(client, f"SELECT COUNT(*), COUNTIF(JSON_VALUE(properties, '$.\"$city\"') = 'Oslo') "
                        f"FROM `{PROJECT}.{dataset}.mp_master_event`") == [(5, 5)]
    assert sorted(t.table_id for t in client.list_tables(f"{PROJECT}.{dataset}")) == [
        "mp_master_event", "mp_nessie_export_log"]  # the staging table is gone
    destination.close()


def test_rows_outside_the_window_are_refused_before_the_table_is_touched(bigquery_emulator, tmp_path):  # noqa: F811
    dataset = bigquery_emulator.new_dataset()
    client = bigquery_emulator.client()
    destination = BigQueryDestination("bq_daily", PROJECT_ID, client, dataset, timezone=TZ)
    window = window_of(DAY)
    inside = [event_line("Signed Up", epoch("2024-11-22T12:00:00"), "u1", "i1")]
    destination.write_event_window(staged_window(tmp_path, window, inside).windows[0], window, tmp_path / "parts")
    wrong = staged_window(tmp_path, window, inside)
    segment = wrong.windows[0].segments[0]
    row = json.loads(segment.path.read_bytes())
    row["time"] = epoch("2024-11-25T12:00:00")  # a staged row that does not belong to the window
    segment.path.write_bytes(json.dumps(row).encode() + b"\n")
    with pytest.raises(DestinationError, match="outside the window"):
        destination.write_event_window(wrong.windows[0], window, tmp_path / "parts")
    assert rows(client, f"SELECT COUNT(*) FROM `{PROJECT}.{dataset}.mp_master_event`") == [(1,)]
    destination.close()


def test_a_dataset_that_does_not_exist_is_named_in_the_error(bigquery_emulator, tmp_path):  # noqa: F811
    destination = BigQueryDestination("bq_daily", PROJECT_ID, bigquery_emulator.client(), "no_such_dataset")
    window = window_of(DAY)
    staged = staged_window(tmp_path, window, [event_line("A", epoch("2024-11-22T12:00:00"), "u", "i")])
    with pytest.raises(DestinationError, match=f"dataset {PROJECT}.no_such_dataset does not exist"):
        destination.write_event_window(staged.windows[0], window, tmp_path / "parts")
