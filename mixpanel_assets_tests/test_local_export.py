"""The embedded default end to end: source -> Dagster asset -> local folder (Mixpanel's layout) and DuckDB."""

import shutil

import duckdb
import orjson
import pytest

from mixpanel_assets_tests.helpers import (
    dedup_expected,
    definitions,
    epoch,
    event_line,
    local_project,
    read_folder_rows,
    run_partition,
)

PROJECT_ID = 777


@pytest.fixture
def source_dir(tmp_path, generated_day):
    folder = tmp_path / "mixpanel_files"
    folder.mkdir()
    shutil.copy(generated_day, folder / generated_day.name)
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": f"u{i}", "$properties": {"$email": f"u{i}@example.com"}}) for i in range(50)
    ))
    return folder


def project(source_dir, timezone="UTC"):
    return local_project(PROJECT_ID, source_dir, profiles=True, timezone=timezone)


def pipelines():
    return [
        {"name": "hourly_files", "data_source": "events", "frequency": "hourly", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": {"type": "local", "path": "bucket"}},
        {"name": "daily_db", "data_source": "events", "frequency": "daily", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
        {"name": "people_db", "data_source": "people", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
        {"name": "identity_db", "data_source": "identity", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
        {"name": "people_files", "data_source": "people", "destination": {"type": "local", "path": "bucket"}},
    ]


def query(db, sql, *params):
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def test_daily_partition_lands_in_duckdb_with_the_sources_deduplicated_count(tmp_path, source_dir, generated_day, instance):
    defs = definitions(tmp_path, project(source_dir), pipelines())
    result = run_partition(defs, "daily_db_job", instance, "2024-11-22")
    expected = dedup_expected(generated_day.read_bytes().splitlines())["count"]
    assert query(tmp_path / "wh.duckdb", "SELECT count(*) FROM mp_master_event")[0][0] == expected
    (mat,) = result.asset_materializations_for_node("daily_db__mp_master_event")
    assert mat.metadata["dagster/partition_row_count"].value == expected
    assert mat.metadata["duplicates_dropped"].value == 20000 - expected
    assert mat.metadata["rows_written"].value == expected
    columns = query(tmp_path / "wh.duckdb", "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'mp_master_event' ORDER BY ordinal_position")
    assert columns == [("device_id", "VARCHAR"), ("distinct_id", "VARCHAR"), ("event_name", "VARCHAR"),
                       ("insert_id", "VARCHAR"), ("properties", "JSON"), ("time", "TIMESTAMP"), ("user_id", "VARCHAR")]


def test_rerunning_a_partition_leaves_exactly_one_copy(tmp_path, source_dir, generated_day, instance):
    defs = definitions(tmp_path, project(source_dir), pipelines())
    for _ in range(2):
        run_partition(defs, "daily_db_job", instance, "2024-11-22")
        run_partition(defs, "hourly_files_job", instance, "2024-11-22-13:00")
    expected = dedup_expected(generated_day.read_bytes().splitlines())["count"]
    assert query(tmp_path / "wh.duckdb", "SELECT count(*) FROM mp_master_event")[0][0] == expected
    assert query(tmp_path / "wh.duckdb", "SELECT count(*) FROM (SELECT DISTINCT event_name, distinct_id, time, insert_id "
                 "FROM mp_master_event)")[0][0] == expected
    folder = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22" / "13"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("part-")) == ["complete", "manifest.json"]
    assert len([p for p in folder.iterdir() if p.name.startswith("part-")]) == 1


def test_a_changed_source_day_replaces_the_windows_files_instead_of_adding_to_them(tmp_path, source_dir, instance):
    defs = definitions(tmp_path, project(source_dir), pipelines())
    run_partition(defs, "hourly_files_job", instance, "2024-11-22-13:00")
    folder = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22" / "13"
    before = read_folder_rows(folder)
    late = event_line("Late Event", epoch("2024-11-22T13:30:00"), "late_user", "late-1")
    (source_dir / "2024-11-22-late.jsonl").write_bytes(late + b"\n")
    run_partition(defs, "hourly_files_job", instance, "2024-11-22-13:00")
    after = read_folder_rows(folder)
    assert len(after) == len(before) + 1
    assert [r for r in after if r["event_name"] == "Late Event"][0]["distinct_id"] == "late_user"
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    assert [p["name"] for p in manifest["parts"]] == [p.name for p in folder.iterdir() if p.name.startswith("part-")]


def test_hourly_and_daily_windows_use_mixpanels_paths_in_the_project_timezone(tmp_path, source_dir, generated_day, instance):
    defs = definitions(tmp_path, project(source_dir, "Asia/Tokyo"), [
        {"name": "hourly_files", "data_source": "events", "frequency": "hourly", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": {"type": "local", "path": "bucket"}},
        {"name": "daily_files", "data_source": "events", "frequency": "daily", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": {"type": "local", "path": "bucket", "prefix": "daily"}},
    ])
    run_partition(defs, "hourly_files_job", instance, "2024-11-22-09:00+0900")
    run_partition(defs, "daily_files_job", instance, "2024-11-22")
    events = tmp_path / "bucket"
    hour = events / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22" / "09"
    day = events / "daily" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    lines = generated_day.read_bytes().splitlines()
    # 09:00 in Tokyo is 00:00 UTC; the Tokyo day 2024-11-22 is 2024-11-21T15:00Z .. 2024-11-22T15:00Z.
    assert len(read_folder_rows(hour)) == dedup_expected(lines, epoch("2024-11-22T00:00:00"), epoch("2024-11-22T01:00:00"))["count"]
    assert len(read_folder_rows(day)) == dedup_expected(lines, epoch("2024-11-21T15:00:00"), epoch("2024-11-22T15:00:00"))["count"]
    assert all(p.name.endswith(".json.gz") for p in hour.iterdir() if p.name.startswith("part-"))


def test_a_24_hour_range_run_writes_what_24_single_runs_write(tmp_path, source_dir, instance):
    defs = definitions(tmp_path, project(source_dir), pipelines())
    run_partition(defs, "hourly_files_job", instance, range_=("2024-11-22-00:00", "2024-11-22-23:00"))
    day = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    ranged = {h.name: sorted(map(orjson.dumps, read_folder_rows(h))) for h in sorted(day.iterdir())}
    shutil.rmtree(tmp_path / "bucket")
    for hour in range(24):
        run_partition(defs, "hourly_files_job", instance, f"2024-11-22-{hour:02d}:00")
    single = {h.name: sorted(map(orjson.dumps, read_folder_rows(h))) for h in sorted(day.iterdir())}
    assert len(ranged) == 24 and ranged == single


def test_people_and_identity_tables_are_replaced_whole(tmp_path, source_dir, instance):
    defs = definitions(tmp_path, project(source_dir), pipelines())
    run_partition(defs, "daily_db_job", instance, "2024-11-22")
    for _ in range(2):
        run_partition(defs, "people_db_job", instance)
        run_partition(defs, "identity_db_job", instance)
        run_partition(defs, "people_files_job", instance)
    db = tmp_path / "wh.duckdb"
    assert query(db, "SELECT count(*), count(DISTINCT distinct_id) FROM mp_people_data")[0] == (50, 50)
    assert query(db, """SELECT properties->>'$."$email"' FROM mp_people_data WHERE distinct_id = 'u7'""")[0][0] == "u7@example.com"
    mappings = query(db, "SELECT count(*), count(DISTINCT distinct_id) FROM mp_identity_mappings_data")[0]
    assert mappings[0] > 0 and mappings[0] == mappings[1]
    assert query(db, "SELECT count(*) FROM mp_identity_mappings_data WHERE distinct_id NOT LIKE '$device:%'")[0][0] == 0
    people = tmp_path / "bucket" / str(PROJECT_ID) / "mp_people_data"
    assert len(read_folder_rows(people)) == 50 and (people / "complete").exists()


def test_the_events_allow_list_is_applied_to_local_files(tmp_path, source_dir, generated_day, instance):
    config = pipelines()[:2]
    config[1] = {**config[1], "events": ["Purchase", "Signed Up"]}
    defs = definitions(tmp_path, project(source_dir), config)
    run_partition(defs, "daily_db_job", instance, "2024-11-22")
    names = {r[0] for r in query(tmp_path / "wh.duckdb", "SELECT DISTINCT event_name FROM mp_master_event")}
    assert names == {"Purchase", "Signed Up"}
