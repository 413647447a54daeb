"""The Dagster assets reading a Mixpanel project through the fake Export and Engage APIs over HTTP.

The source block is what a user writes (`type: mixpanel`, credentials by env var name); the env
vars are set with monkeypatch because the resource resolves `dg.EnvVar` only when a run starts.
Covered: a non-UTC daily partition is exactly the local day's deduplicated rows, a 24-hour range
run costs one Export API query, a cut stream is retried inside the run without loss or doubles,
refused credentials fail for good without leaking the secret, and Engage pages land in
mp_people_data.
"""

import duckdb
import orjson
import pytest

from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, SECRET, USERNAME, cut_stream, terminated_early
from mixpanel_assets_tests.helpers import (
    dedup_expected,
    definitions,
    epoch,
    events_pipeline,
    read_folder_rows,
    run_partition,
)

USER_ENV = "E2E_MIXPANEL_USERNAME"
SECRET_ENV = "E2E_MIXPANEL_SECRET"


@pytest.fixture
def mixpanel(fake_mixpanel, generated_day, monkeypatch):
    """The fake holding the generated day (2024-11-22 UTC, duplicates included) and the env vars set."""
    fake_mixpanel.add_events(generated_day.read_bytes().splitlines())
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


@pytest.fixture
def day_lines(generated_day) -> list[bytes]:
    return generated_day.read_bytes().splitlines()


def project(fake, timezone: str = "UTC") -> dict:
    return {"id": PROJECT_ID, "timezone": timezone, "state": {"path": "state"},
            "source": fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}


DAILY_DB = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
HOURLY_FILES = events_pipeline("hourly_files", "hourly", {"type": "local", "path": "bucket"})
PEOPLE_DB = {"name": "people_db", "data_source": "people", "destination": {"type": "duckdb", "path": "wh.duckdb"}}


def query(db, sql: str):
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_a_los_angeles_day_exports_exactly_the_sources_deduplicated_rows_of_that_local_day(
        tmp_path, mixpanel, day_lines, instance):
    defs = definitions(tmp_path, project(mixpanel, "America/Los_Angeles"), [DAILY_DB])
    result = run_partition(defs, "daily_db_job", instance, "2024-11-22")
    # The Los Angeles day 2024-11-22 is 08:00Z on the 22nd to 08:00Z on the 23rd.
    expected = dedup_expected(day_lines, epoch("2024-11-22T08:00:00"), epoch("2024-11-23T08:00:00"))["count"]
    assert 0 < expected < len(day_lines)
    assert query(tmp_path / "wh.duckdb", "SELECT count(*) FROM mp_master_event")[0][0] == expected
    (request,) = mixpanel.export_requests()
    assert (request.params["from_date"], request.params["to_date"]) == ("2024-11-22", "2024-11-23")
    assert f'datetime({epoch("2024-11-22T08:00:00")})' in request.params["where"]
    (mat,) = result.asset_materializations_for_node("daily_db__mp_master_event")
    assert mat.metadata["dagster/partition_row_count"].value == expected
    (output,) = [e for e in result.events_for_node("daily_db__mp_master_event") if e.event_type_value == "STEP_OUTPUT"]
    assert output.step_output_data.metadata["rows_outside_window"].value == 0  # the server filtered by time
    assert output.step_output_data.metadata["source_queries"].value == 1


def test_a_24_hour_range_run_sends_one_export_request_and_fills_every_hour(tmp_path, mixpanel, day_lines, instance):
    defs = definitions(tmp_path, project(mixpanel), [HOURLY_FILES])
    result = run_partition(defs, "hourly_files_job", instance, range_=("2024-11-22-00:00", "2024-11-22-23:00"))
    assert result.success
    (request,) = mixpanel.export_requests()
    assert (request.params["from_date"], request.params["to_date"]) == ("2024-11-22", "2024-11-22")
    assert "where" not in request.params  # whole UTC day: no time filter needed
    day = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    hours = sorted(p.name for p in day.iterdir())
    assert hours == [f"{h:02d}" for h in range(24)]
    for hour in (0, 13, 23):
        rows = read_folder_rows(day / f"{hour:02d}")
        start = epoch(f"2024-11-22T{hour:02d}:00:00")
        assert len(rows) == dedup_expected(day_lines, start, start + 3600)["count"]
    assert sum(len(read_folder_rows(day / h)) for h in hours) == dedup_expected(day_lines)["count"]


@pytest.mark.parametrize("fault", [cut_stream, terminated_early], ids=["cut-mid-body", "terminated-early"])
def test_a_broken_stream_is_retried_inside_the_run_and_the_result_is_exact(
        tmp_path, mixpanel, day_lines, instance, fault):
    mixpanel.queue_fault(fault())
    defs = definitions(tmp_path, project(mixpanel), [DAILY_DB])
    result = run_partition(defs, "daily_db_job", instance, "2024-11-22")
    assert result.success
    assert [r.faults for r in mixpanel.export_requests()] == [(fault().kind,), ()]
    expected = dedup_expected(day_lines)
    db = tmp_path / "wh.duckdb"
    assert query(db, "SELECT count(*) FROM mp_master_event")[0][0] == expected["count"]
    assert query(db, "SELECT count(*) FROM (SELECT DISTINCT event_name, distinct_id, time, insert_id "
                     "FROM mp_master_event)")[0][0] == expected["count"]
    kept = {(e["event"], e["properties"].get("distinct_id"), e["properties"]["$insert_id"],
             e["properties"].get("mp_processing_time_ms")) for e in expected["kept"].values()}
    written = set(query(db, """SELECT event_name, distinct_id, insert_id,
                                  CAST(properties->>'$.mp_processing_time_ms' AS BIGINT) FROM mp_master_event"""))
    assert written == kept  # nothing missing, nothing doubled, the latest copy of each duplicate
    warnings = [e.message for e in instance.all_logs(result.run_id) if "exporting the span again" in (e.message or "")]
    assert len(warnings) == 1


def test_refused_credentials_fail_the_run_for_good_and_the_secret_appears_nowhere_in_its_logs(
        tmp_path, mixpanel, instance, monkeypatch):
    planted = "planted-secret-5c1e0b7a9d"
    monkeypatch.setenv(SECRET_ENV, planted)
    defs = definitions(tmp_path, project(mixpanel), [DAILY_DB])
    result = run_partition(defs, "daily_db_job", instance, "2024-11-22", raise_on_error=False)
    assert not result.success
    assert len(mixpanel.export_requests()) == 1  # neither the client nor Dagster retried
    logs = instance.all_logs(result.run_id)
    (failure,) = [e for e in logs if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    error = failure.dagster_event.step_failure_data.error
    assert error.cls_name == "Failure"
    assert "Invalid credentials" in error.message and "HTTP 401" in error.message and "env vars" in error.message
    assert not [e for e in logs if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
    for entry in logs:
        assert planted not in repr(entry) and planted not in (entry.message or "")
    assert not (tmp_path / "wh.duckdb").exists() or not query(
        tmp_path / "wh.duckdb", "SELECT * FROM information_schema.tables WHERE table_name = 'mp_master_event'")


def test_profiles_paged_from_engage_land_in_mp_people_data(tmp_path, mixpanel, instance):
    profiles = [{"$distinct_id": f"user-{i}", "$properties": {"$email": f"user{i}@example.com", "$city": "Zürich"}}
                for i in range(50)]
    mixpanel.add_profiles(profiles)
    mixpanel.engage_page_size = 20
    defs = definitions(tmp_path, project(mixpanel), [PEOPLE_DB])
    run_partition(defs, "people_db_job", instance)
    db = tmp_path / "wh.duckdb"
    assert query(db, "SELECT count(*), count(DISTINCT distinct_id) FROM mp_people_data")[0] == (50, 50)
    row = query(db, """SELECT properties FROM mp_people_data WHERE distinct_id = 'user-7'""")[0][0]
    assert orjson.loads(row) == profiles[7]["$properties"]
    pages = mixpanel.engage_requests()
    assert [r.form["page"] for r in pages] == ["0", "1", "2"]
    assert pages[1].form["session_id"] == pages[2].form["session_id"]
