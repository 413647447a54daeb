"""Asset checks read each destination back: results land on the partitions, and tampering fails them.

"Shown in the UI" is tested the way the UI computes it: per check and partition, the instance's
event log gives the newest execution's status and whether it targeted the partition's newest
materialization (`get_asset_check_partition_info`). The checks run inside the export jobs, and on
their own (as from a partition's page) through a job selecting only the checks.
"""

import datetime as dt
import json
import shutil

import dagster as dg
import duckdb
import orjson
import pytest

from mixpanel_assets.defs.checks import NO_DUPLICATES, ROW_COUNT, SCHEMA, TABLE_ROW_COUNT, UNIQUE_IDS, _evaluate_window
from mixpanel_assets.destinations.base import Destination
from mixpanel_assets.windows import PartitionWindow
from mixpanel_assets_tests.helpers import definitions, event_line, events_pipeline, local_project

UTC = dt.timezone.utc
DAY = dt.date(2024, 11, 22)
PROJECT_ID = 4711
EVENT_CHECKS = (ROW_COUNT, NO_DUPLICATES, SCHEMA)


def at(hour: int, minute: int = 0) -> int:
    return int(dt.datetime(2024, 11, 22, hour, minute, tzinfo=UTC).timestamp())


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    lines = []
    for hour in range(24):
        for i in range(5):
            lines.append(event_line("Viewed", at(hour, i), f"u{i}", f"{hour}-{i}", **{"$device_id": f"d{i}", "$user_id": f"u{i}"}))
        lines.append(lines[-1])
    (folder / f"{DAY}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": f"u{i}", "$properties": {"$name": f"User {i}"}}) for i in range(5)))
    return folder


def project(folder) -> dict:
    return local_project(PROJECT_ID, folder, profiles=True, export_workers=1,
                         limits={"enforce_mixpanel_limits": False})  # three recurring events pipelines side by side


def events(name, frequency, destination):
    return events_pipeline(name, frequency, destination, sync=False)


DAILY_DB = events("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
HOURLY_FILES = events("hourly_files", "hourly", {"type": "local", "path": "bucket"})
HOURLY_PARQUET = events("hourly_parquet", "hourly", {"type": "local", "path": "bucket", "prefix": "pq", "format": "parquet"})
PEOPLE_DB = {"name": "people_db", "data_source": "people", "destination": {"type": "duckdb", "path": "wh.duckdb"}}
PEOPLE_FILES = {"name": "people_files", "data_source": "people", "destination": {"type": "local", "path": "bucket"}}
IDENTITY_DB = {"name": "identity_db", "data_source": "identity", "destination": {"type": "duckdb", "path": "wh.duckdb"}}


def check_keys(pipeline: str, table: str = "mp_master_event", names=EVENT_CHECKS) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(dg.AssetKey([pipeline, table]), name) for name in names]


def partition_status(instance, keys) -> dict:
    """(check name, partition) -> (status, current), as the UI's per-partition check status reads it."""
    infos = instance.event_log_storage.get_asset_check_partition_info(keys)
    return {(i.check_key.name, i.partition_key): (i.latest_execution_status.value, i.is_current) for i in infos}


def with_check_job(defs: dg.Definitions, pipeline: str, table: str = "mp_master_event",
                   names=EVENT_CHECKS) -> dg.Definitions:
    """The definitions plus a job running only the asset's checks, as the UI's 'Execute checks' does."""
    job = dg.define_asset_job(f"{pipeline}_checks_only", selection=dg.AssetSelection.checks(*check_keys(pipeline, table, names)))
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))


def run_checks(defs: dg.Definitions, pipeline: str, instance, partition_key: str | None = None):
    tags = {"dagster/partition": partition_key} if partition_key else {}
    return defs.resolve_job_def(f"{pipeline}_checks_only").execute_in_process(instance=instance, tags=tags)


def evaluations(result: dg.ExecuteInProcessResult) -> dict:
    return {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}


def test_an_export_run_records_its_checks_on_each_partition_it_wrote(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), [DAILY_DB, HOURLY_PARQUET])
    daily = defs.resolve_job_def("daily_db_job").execute_in_process(instance=instance, partition_key=str(DAY))
    hours = {"dagster/asset_partition_range_start": f"{DAY}-00:00", "dagster/asset_partition_range_end": f"{DAY}-23:00"}
    defs.resolve_job_def("hourly_parquet_job").execute_in_process(instance=instance, tags=hours)

    assert partition_status(instance, check_keys("daily_db")) == {
        (name, str(DAY)): ("SUCCEEDED", True) for name in EVENT_CHECKS}
    assert partition_status(instance, check_keys("hourly_parquet")) == {
        (check, f"{DAY}-{h:02d}:00"): ("SUCCEEDED", True) for check in EVENT_CHECKS for h in range(24)}
    row_count = evaluations(daily)[(ROW_COUNT, str(DAY))]
    assert row_count.metadata["destination_rows"].value == row_count.metadata["source_rows"].value == 24 * 5
    assert row_count.metadata["method"].value == "read_back"  # DuckDB: one query over the stored rows
    hourly = instance.get_latest_asset_check_evaluation_record(check_keys("hourly_parquet")[0])
    assert hourly.event.dagster_event.event_specific_data.metadata["method"].value == "manifest"


def test_duplicates_extra_rows_and_schema_drift_in_duckdb_fail_the_checks(tmp_path, source, instance):
    defs = with_check_job(definitions(tmp_path, project(source), [DAILY_DB]), "daily_db")
    defs.resolve_job_def("daily_db_job").execute_in_process(instance=instance, partition_key=str(DAY))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as conn:
        conn.execute("INSERT INTO mp_master_event SELECT * FROM mp_master_event WHERE insert_id = '13-2'")
    result = run_checks(defs, "daily_db", instance, str(DAY))
    found = evaluations(result)
    assert not found[(ROW_COUNT, str(DAY))].passed
    assert found[(ROW_COUNT, str(DAY))].description == "121 rows in the destination, 120 expected"
    assert not found[(NO_DUPLICATES, str(DAY))].passed
    assert found[(NO_DUPLICATES, str(DAY))].metadata["duplicate_keys"].value == 1
    assert found[(SCHEMA, str(DAY))].passed
    assert partition_status(instance, check_keys("daily_db"))[(ROW_COUNT, str(DAY))] == ("FAILED", True)

    with duckdb.connect(str(tmp_path / "wh.duckdb")) as conn:
        conn.execute("ALTER TABLE mp_master_event ALTER COLUMN user_id TYPE INTEGER USING NULL")
    result = run_checks(defs, "daily_db", instance, str(DAY))
    schema = evaluations(result)[(SCHEMA, str(DAY))]
    assert not schema.passed
    assert schema.metadata["found_columns"].value[-1] == ["user_id", "INTEGER"]


@pytest.mark.parametrize("read_back", [True, False], ids=["read_back", "manifest"])
def test_a_part_file_outside_the_manifest_or_listed_twice_fails_the_folder_checks(tmp_path, source, instance, read_back):
    pipeline = {**HOURLY_FILES, "checks": {"read_back": read_back}}
    defs = with_check_job(definitions(tmp_path, project(source), [pipeline]), "hourly_files")
    key = f"{DAY}-13:00"
    defs.resolve_job_def("hourly_files_job").execute_in_process(instance=instance, partition_key=key)
    folder = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22" / "13"
    (part,) = folder.glob("part-*")
    shutil.copy(part, folder / "part-0000000000-00001.json.gz")

    found = evaluations(run_checks(defs, "hourly_files", instance, key))
    assert not found[(ROW_COUNT, key)].passed
    assert "1 part files not in manifest.json" in found[(ROW_COUNT, key)].description
    assert found[(NO_DUPLICATES, key)].passed  # readers honouring the manifest see each row once

    manifest = json.loads((folder / "manifest.json").read_bytes())
    manifest["parts"].append({**manifest["parts"][0], "name": "part-0000000000-00001.json.gz"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    found = evaluations(run_checks(defs, "hourly_files", instance, key))
    if read_back:
        assert found[(ROW_COUNT, key)].description == "10 rows in the destination, 5 expected"
    else:  # the manifest's own total no longer adds up either, and that is said too
        assert found[(ROW_COUNT, key)].description == (
            "10 rows in the destination, 5 expected; manifest.json says 5 rows, its parts hold 10")
    assert found[(NO_DUPLICATES, key)].metadata["duplicate_keys"].value == 5
    assert found[(ROW_COUNT, key)].metadata["method"].value == ("read_back" if read_back else "manifest")


def test_people_and_identity_tables_are_checked_for_counts_and_unique_ids(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), [DAILY_DB, PEOPLE_DB, PEOPLE_FILES, IDENTITY_DB])
    defs.resolve_job_def("daily_db_job").execute_in_process(instance=instance, partition_key=str(DAY))
    for name in ("people_db", "people_files", "identity_db"):
        defs.resolve_job_def(f"{name}_job").execute_in_process(instance=instance)
    for name, table in (("people_db", "mp_people_data"), ("people_files", "mp_people_data"),
                        ("identity_db", "mp_identity_mappings_data")):
        keys = check_keys(name, table, (TABLE_ROW_COUNT, UNIQUE_IDS, SCHEMA))
        assert {k.name: instance.get_latest_asset_check_evaluation_record(k).status.value for k in keys} == {
            TABLE_ROW_COUNT: "SUCCEEDED", UNIQUE_IDS: "SUCCEEDED", SCHEMA: "SUCCEEDED"}, name
        record = instance.get_latest_asset_check_evaluation_record(keys[1])
        method = record.event.dagster_event.event_specific_data.metadata["method"].value
        assert method == ("manifest" if name == "people_files" else "read_back"), name

    with duckdb.connect(str(tmp_path / "wh.duckdb")) as conn:
        conn.execute("INSERT INTO mp_people_data SELECT * FROM mp_people_data WHERE distinct_id = 'u1'")
    defs = with_check_job(defs, "people_db", "mp_people_data", (TABLE_ROW_COUNT, UNIQUE_IDS, SCHEMA))
    result = run_checks(defs, "people_db", instance)
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not found[UNIQUE_IDS].passed and found[UNIQUE_IDS].metadata["duplicate_distinct_ids"].value == 1
    assert not found[TABLE_ROW_COUNT].passed and found[SCHEMA].passed


class _WriteOnly(Destination):
    """A destination whose writer exists but whose read-back does not yet."""

    def describe(self):
        return "a warehouse in the making"

    def write_event_window(self, parts, window, fingerprint):
        raise AssertionError("not used")

    def write_table(self, parts, table, digest):
        raise AssertionError("not used")


def test_a_destination_without_read_back_gets_a_warning_naming_its_type_not_a_failed_run():
    window = PartitionWindow(str(DAY), dt.datetime(2024, 11, 22, tzinfo=UTC), dt.datetime(2024, 11, 23, tzinfo=UTC),
                             dt.datetime(2024, 11, 22, tzinfo=UTC), "daily")
    results = list(_evaluate_window(_WriteOnly("wh", 1), window, None, 0, list(EVENT_CHECKS)))
    assert [(name, passed, severity) for name, passed, severity, _, _ in results] == [
        (name, False, dg.AssetCheckSeverity.WARN) for name in EVENT_CHECKS]
    assert "_WriteOnly destination (a warehouse in the making) does not implement read_event_window" in results[0][3]

