"""Snowflake end to end on fakesnow (server mode, real connector): Dagster runs -> PUT + COPY INTO ->
MP_MASTER_EVENT_RAW and its views, people, identity mappings and the export log."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.io_managers import write_staged_window
from mixpanel_assets.destinations.warehouses.snowflake import SnowflakeDestination, snowflake_resource
from mixpanel_assets_tests.emulators.snowflake import (  # noqa: F401
    ACCOUNT,
    DATABASE,
    NETWORK_TIMEOUT_S,
    PASSWORD,
    USER,
    snowflake_emulator,
)
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
    write_profiles,
    write_source,
)

pytestmark = pytest.mark.emulator

PASSWORD_ENV = "MP_TEST_SNOWFLAKE_PASSWORD"


def snowflake(port, schema):
    return {"type": "snowflake", "account": ACCOUNT, "user": USER, "database": DATABASE, "schema": schema,
            "password_env": PASSWORD_ENV, "host": "127.0.0.1", "port": port, "protocol": "http",
            "network_timeout_seconds": NETWORK_TIMEOUT_S, "login_timeout_seconds": NETWORK_TIMEOUT_S}


class Export:
    def __init__(self, emulator, tmp, generated_day):
        self.daily, self.hourly = emulator.new_schema(), emulator.new_schema()
        self.conn = emulator.connect()
        self.source = write_source(tmp / "mixpanel_files", generated_day)
        self.lines = source_lines(generated_day)
        daily, hourly = snowflake(emulator.port, self.daily), snowflake(emulator.port, self.hourly)
        self.defs = definitions(tmp, project(self.source), pipelines(daily, hourly, daily, "sf"))

    def rows(self, sql, params=None):
        return self.conn.cursor().execute(sql, params).fetchall()

    def t(self, schema, name):
        return f"{DATABASE}.{schema}.{name}"


@pytest.fixture(scope="module")
def password():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PASSWORD_ENV, PASSWORD)
        yield


@pytest.fixture(scope="module")
def exported(snowflake_emulator, generated_day, tmp_path_factory, password):  # noqa: F811
    """One export of everything, shared by the read-only tests below."""
    export = Export(snowflake_emulator, tmp_path_factory.mktemp("sf"), generated_day)
    with dg.instance_for_test() as instance:
        export.results = {
            "daily": run_partition(export.defs, "sf_daily_job", instance, DAY),
            "hourly": run_partition(export.defs, "sf_hourly_job", instance, HOUR),
            "people": run_partition(export.defs, "sf_people_job", instance),
            "identity": run_partition(export.defs, "sf_identity_job", instance),
        }
    yield export
    export.conn.close()


def local_day(column: str = "TIME") -> str:
    return f"TO_DATE(CONVERT_TIMEZONE('UTC', '{TZ}', {column}))"


def test_a_daily_partition_holds_the_projects_local_day_deduplicated(exported):
    expected = len(kept_events(exported.lines, DAY_UTC))
    view = exported.t(exported.daily, "MP_MASTER_EVENT")
    assert exported.rows(f"SELECT {local_day()} AS d, COUNT(*) FROM {view} GROUP BY d") == [(dt.date(2024, 11, 22), expected)]
    assert exported.rows(f"SELECT COUNT(*) FROM (SELECT DISTINCT EVENT_NAME, DISTINCT_ID, TIME, INSERT_ID FROM {view})") == [
        (expected,)]
    (mat,) = exported.results["daily"].asset_materializations_for_node("sf_daily__mp_master_event")
    assert mat.metadata["rows_written"].value == expected


def test_an_hourly_partition_holds_exactly_one_hour(exported):
    view = exported.t(exported.hourly, "MP_MASTER_EVENT")
    assert exported.rows(f"SELECT COUNT(*), MIN(TIME), MAX(TIME) < '2024-11-22 14:00:00'::TIMESTAMP_NTZ FROM {view}") == [
        (len(kept_events(exported.lines, HOUR_UTC)), dt.datetime(2024, 11, 22, 13, 0), True)]


def test_the_raw_table_holds_one_variant_and_the_view_exposes_mixpanels_seven_columns(exported):
    def columns(name):
        return exported.rows("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
                             "AND table_name = %s ORDER BY ordinal_position", (exported.daily, name))

    assert columns("MP_MASTER_EVENT_RAW") == [("DATA", "VARIANT")]
    assert columns("MP_MASTER_EVENT") == [
        ("DEVICE_ID", "TEXT"), ("DISTINCT_ID", "TEXT"), ("EVENT_NAME", "TEXT"), ("INSERT_ID", "TEXT"),
        ("PROPERTIES", "VARIANT"), ("TIME", "TIMESTAMP_NTZ"), ("USER_ID", "TEXT")]
    assert columns("MP_PEOPLE_DATA") == [("DISTINCT_ID", "TEXT"), ("PROPERTIES", "VARIANT")]
    assert columns("MP_IDENTITY_MAPPINGS_DATA") == [("DISTINCT_ID", "TEXT"), ("RESOLVED_DISTINCT_ID", "TEXT")]
    # raw DATA:time stays the exported epoch number, as in Mixpanel's clustering key
    raw = exported.t(exported.daily, "MP_MASTER_EVENT_RAW")
    assert exported.rows(f"SELECT COUNT_IF(DATA:time::FLOAT IS NULL), MIN(DATA:time::FLOAT) >= {epoch(DAY_UTC[0])} "
                         f"FROM {raw}") == [(0, True)]


def test_people_and_identity_tables_hold_the_exported_rows(exported):
    people = exported.t(exported.daily, "MP_PEOPLE_DATA")
    assert exported.rows(f"SELECT COUNT(*), COUNT(DISTINCT DISTINCT_ID) FROM {people}") == [(PROFILES, PROFILES)]
    assert exported.rows(f"""SELECT PROPERTIES:"$email"::STRING FROM {people} WHERE DISTINCT_ID = 'u7'""") == [
        ("u7@example.com",)]
    mappings, unique = exported.rows(f"SELECT COUNT(*), COUNT(DISTINCT DISTINCT_ID) FROM "
                                     f"{exported.t(exported.daily, 'MP_IDENTITY_MAPPINGS_DATA')}")[0]
    assert mappings > 0 and mappings == unique


def test_each_export_is_recorded_in_the_export_log(exported):
    log = exported.rows(f"SELECT TABLE_NAME, PARTITION_KEY, PARTITION_DATE, ROW_COUNT, WINDOW_START FROM "
                        f"{exported.t(exported.daily, 'MP_EXPORT_LOG')} ORDER BY TABLE_NAME")
    assert [r[0] for r in log] == ["mp_identity_mappings_data", "mp_master_event", "mp_people_data"]
    assert log[1][1:] == (DAY, dt.date(2024, 11, 22), len(kept_events(exported.lines, DAY_UTC)),
                          dt.datetime(2024, 11, 22, 8, 0))
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
    kept = kept_events(exported.lines, DAY_UTC)
    view, mappings = exported.t(exported.daily, "MP_MASTER_EVENT"), exported.t(exported.daily, "MP_IDENTITY_MAPPINGS_DATA")
    assert exported.rows(f"SELECT {local_day('time')} AS day, COUNT(*) FROM {view} GROUP BY day ORDER BY day") == [
        (dt.date(2024, 11, 22), len(kept))]

    users = expected_unique_users(kept, dict(exported.rows(f"SELECT distinct_id, resolved_distinct_id FROM {mappings}")))
    assert exported.rows(f"""SELECT COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id))
                             FROM {view} e LEFT JOIN {mappings} m ON e.distinct_id = m.distinct_id""") == [(users,)]
    assert exported.rows(f"SELECT COUNT(DISTINCT resolved_distinct_id) FROM "
                         f"{exported.t(exported.daily, 'MP_MASTER_EVENT_RESOLVED')}") == [(users,)]

    got = exported.rows(f"""SELECT properties:"$city"::STRING AS city, COUNT(*) FROM {view} GROUP BY city""")
    assert dict(got) == expected_cities(kept)


def test_rerunning_a_partition_replaces_its_window_and_picks_up_changed_source_data(
        snowflake_emulator, generated_day, tmp_path, instance, password):  # noqa: F811
    export = Export(snowflake_emulator, tmp_path, generated_day)
    raw = export.t(export.hourly, "MP_MASTER_EVENT_RAW")
    run_partition(export.defs, "sf_hourly_job", instance, HOUR)
    first = export.rows(f"SELECT COUNT(*) FROM {raw}")[0][0]
    assert first == len(kept_events(export.lines, HOUR_UTC))
    run_partition(export.defs, "sf_hourly_job", instance, HOUR)
    assert export.rows(f"SELECT COUNT(*) FROM {raw}") == [(first,)]

    late = event_line("Late Event", epoch("2024-11-22T13:30:00"), "late_user", "late-1", **{"$city": "Lviv"})
    (export.source / "2024-11-22-late.jsonl").write_bytes(late + b"\n")
    run_partition(export.defs, "sf_hourly_job", instance, HOUR)
    assert export.rows(f"SELECT COUNT(*) FROM {raw}") == [(first + 1,)]
    assert export.rows(f"""SELECT DISTINCT_ID, PROPERTIES:"$city"::STRING FROM {export.t(export.hourly, 'MP_MASTER_EVENT')}
                           WHERE EVENT_NAME = 'Late Event'""") == [("late_user", "Lviv")]
    assert export.rows(f"SELECT ROW_COUNT FROM {export.t(export.hourly, 'MP_EXPORT_LOG')} ORDER BY EXPORTED_AT") == [
        (first,), (first,), (first + 1,)]
    export.conn.close()


def test_rerunning_people_replaces_the_whole_table(snowflake_emulator, generated_day, tmp_path, instance, password):  # noqa: F811
    export = Export(snowflake_emulator, tmp_path, generated_day)
    people = export.t(export.daily, "MP_PEOPLE_DATA")
    run_partition(export.defs, "sf_people_job", instance)
    write_profiles(export.source, city="Odesa")
    run_partition(export.defs, "sf_people_job", instance)
    assert export.rows(f"""SELECT PROPERTIES:"$city"::STRING, COUNT(*) FROM {people} GROUP BY 1""") == [("Odesa", PROFILES)]
    export.conn.close()


@pytest.fixture
def destination(snowflake_emulator):  # noqa: F811
    """A destination on a fresh schema, without Dagster: for the failure cases."""
    schema = snowflake_emulator.new_schema()
    resource = snowflake_resource(account=ACCOUNT, user=USER, password=PASSWORD, database=DATABASE, schema=schema,
                                  host="127.0.0.1", port=snowflake_emulator.port, protocol="http",
                                  network_timeout=NETWORK_TIMEOUT_S, login_timeout=NETWORK_TIMEOUT_S)
    destination = SnowflakeDestination("sf_daily", PROJECT_ID, resource, DATABASE, schema, timezone=TZ)
    conn = snowflake_emulator.connect(schema)
    destination.rows = lambda sql: conn.cursor().execute(sql).fetchall()
    yield destination
    conn.close()


def test_a_failed_copy_leaves_the_previous_rows_and_names_pipeline_table_and_partition(destination, tmp_path):
    window = window_of(DAY)
    write_staged_window(destination, staged_window(tmp_path, window, good_events(5)), tmp_path / "parts", window=window)

    changed = staged_window(tmp_path, window, good_events(3, city="Rome"))
    corrupt(changed)
    with pytest.raises(DestinationError) as failure:
        write_staged_window(destination, changed, tmp_path / "parts", window=window)
    message = str(failure.value)
    assert "pipeline 'sf_daily'" in message and f"partition {DAY}" in message
    assert f"{DATABASE}.{destination.schema}.MP_MASTER_EVENT_RAW" in message and "unchanged" in message
    assert destination.rows(f"""SELECT COUNT(*), COUNT_IF(DATA:properties:"$city"::STRING = 'Oslo')
                                FROM {destination.q}.MP_MASTER_EVENT_RAW""") == [(5, 5)]


def test_rows_outside_the_window_are_refused_before_the_table_is_touched(destination, tmp_path):
    window = window_of(DAY)
    write_staged_window(destination, staged_window(tmp_path, window, good_events(1)), tmp_path / "parts", window=window)
    wrong = staged_window(tmp_path, window, good_events(2))
    misplace(wrong, "2024-11-25T12:00:00")
    with pytest.raises(DestinationError, match="outside the window"):
        write_staged_window(destination, wrong, tmp_path / "parts", window=window)
    assert destination.rows(f"SELECT COUNT(*) FROM {destination.q}.MP_MASTER_EVENT_RAW") == [(1,)]
