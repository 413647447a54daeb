"""GDPR deletion on BigQuery (bqemulator) and Snowflake (fakesnow): the same story as test_gdpr.py.

A project in America/Los_Angeles exports two local days of events, the profiles and the identity
mappings into one warehouse; `gdpr_deletion_job` then deletes one device id and one user whose id
holds a quote and a backslash. The device's whole cluster (the user it merged into and their
other device) and that user must leave every table, in both partitions; every other row must stay
exactly as it was (its look-alike id included); the audit must list per partition the rows that
were there; a dry run must change nothing; and the asset checks must still pass afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

import dagster as dg
import orjson
import pytest

from mixpanel_assets.defs.checks import NO_DUPLICATES, ROW_COUNT, SCHEMA, TABLE_ROW_COUNT, UNIQUE_IDS
from mixpanel_assets.defs.gdpr_register import register_path
from mixpanel_assets.destinations.base import DestinationError, Removal
from mixpanel_assets.destinations.io_managers import write_staged_window
from mixpanel_assets.destinations.warehouses.bigquery import BigQueryDestination
from mixpanel_assets.destinations.warehouses.snowflake import SnowflakeDestination, snowflake_resource
from mixpanel_assets.destinations.warehouses.window_counts import bucket_seconds, removals_by_window
from mixpanel_assets.windows import PartitionWindow
from mixpanel_assets_tests.emulators.bigquery import PROJECT, start_bigquery_emulator
from mixpanel_assets_tests.emulators.snowflake import (
    ACCOUNT,
    DATABASE,
    NETWORK_TIMEOUT_S,
    PASSWORD,
    USER,
    start_snowflake_emulator,
)
from mixpanel_assets_tests.helpers import definitions, event_line, run_partition
from mixpanel_assets_tests.warehouse_cases import good_events, staged_window, window_of

TZ = "America/Los_Angeles"
LA = zoneinfo.ZoneInfo(TZ)
DAYS = ("2024-11-21", "2024-11-22")
PROJECT_ID = 4242
ODD = "o'brien\\"  # a quote and a backslash: the ids are user data, never SQL
REQUESTED = ["$device:da1", ODD]
DELETED = {"alice", "$device:da1", "$device:da2", ODD}  # da1's cluster, and the odd user
PASSWORD_ENV = "MP_TEST_GDPR_SNOWFLAKE_PASSWORD"


def at(day: str, hour: int, minute: int) -> int:
    return int(dt.datetime.fromisoformat(f"{day}T{hour:02d}:{minute:02d}").replace(tzinfo=LA).timestamp())


def day_lines(day: str) -> list[bytes]:
    """Anonymous then identified events of alice (two devices) and bob; the odd user and their
    look-alike; carol without insert ids. Late evening hours: the local day is the next UTC day."""
    lines = []
    for hour in (9, 18, 22):
        for device, user in (("da1", "alice"), ("da2", "alice"), ("db1", "bob")):
            lines.append(event_line("Viewed", at(day, hour, 5), f"$device:{device}", f"a-{device}-{day}-{hour}",
                                    **{"$device_id": device}))
            lines.append(event_line("Purchase", at(day, hour, 35), user, f"k-{device}-{day}-{hour}",
                                    **{"$device_id": device, "$user_id": user, "$email": f"{user}@example.com"}))
        for user in (ODD, "o'brien"):
            lines.append(event_line("Ping", at(day, hour, 40), user, f"p-{user}-{day}-{hour}", **{"$city": "Cork"}))
        lines.append(event_line("Ping", at(day, hour, 50), "carol", None))
    return lines


def write_source(folder):
    folder.mkdir()
    for day in DAYS:
        (folder / f"{day}.jsonl").write_bytes(b"\n".join(day_lines(day)) + b"\n")
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": u, "$properties": {"$email": f"{i}@example.com"}})
        for i, u in enumerate(("alice", "bob", "carol", ODD, "o'brien"))))
    return folder


def pipelines(prefix: str, destination: dict) -> list[dict]:
    return [
        {"name": f"{prefix}_events", "data_source": "events", "frequency": "daily", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": destination},
        {"name": f"{prefix}_people", "data_source": "people", "destination": destination},
        {"name": f"{prefix}_identity", "data_source": "identity", "destination": destination},
    ]


# --- the two warehouses, behind one interface: a destination config and every row it holds ----


class BigQuery:
    prefix = "bq"

    def __init__(self, emulator):
        self.emulator, self.client = emulator, emulator.client()
        self.dataset = emulator.new_dataset("gdpr")

    def destination(self) -> dict:
        return {"type": "bigquery", "project": PROJECT, "dataset": self.dataset, "api_endpoint": self.emulator.endpoint,
                "job_timeout_seconds": 120}

    def rows(self, sql) -> list[dict]:
        return [dict(r.items()) for r in self.client.query(sql, timeout=60).result(timeout=120)]

    def snapshot(self) -> dict[str, list[str]]:
        """Every row of the three tables readers query, as sorted JSON (a row's exact content)."""
        t = f"{PROJECT}.{self.dataset}"
        found = {"events": self.rows(f"SELECT *, DATE(_PARTITIONTIME) AS partition_date FROM `{t}.mp_master_event`"),
                 "people": self.rows(f"SELECT * FROM `{t}.mp_people_data_view`"),
                 "identity": self.rows(f"SELECT * FROM `{t}.mp_identity_mappings_data_view`")}
        return {name: sorted(orjson.dumps(r, default=str, option=orjson.OPT_SORT_KEYS).decode() for r in rows)
                for name, rows in found.items()}

    @staticmethod
    def partition(event: dict) -> str:
        return event["partition_date"]  # the ingestion-time partition: the local date, the daily partition key

    def close(self):
        self.client.close()


class Snowflake:
    prefix = "sf"

    def __init__(self, emulator):
        self.emulator = emulator
        self.schema = emulator.new_schema()
        self.conn = emulator.connect(self.schema)

    def destination(self) -> dict:
        return {"type": "snowflake", "account": ACCOUNT, "user": USER, "database": DATABASE, "schema": self.schema,
                "password_env": PASSWORD_ENV, "host": "127.0.0.1", "port": self.emulator.port, "protocol": "http",
                "network_timeout_seconds": NETWORK_TIMEOUT_S, "login_timeout_seconds": NETWORK_TIMEOUT_S}

    def rows(self, sql) -> list[tuple]:
        return self.conn.cursor().execute(sql).fetchall()

    def snapshot(self) -> dict[str, list[str]]:
        """The raw VARIANT text of every event, and the two tables' rows."""
        q = f"{DATABASE}.{self.schema}"
        events = [json.loads(data) for (data,) in self.rows(f"SELECT DATA FROM {q}.MP_MASTER_EVENT_RAW")]
        people = [{"distinct_id": d, "properties": json.loads(p)}
                  for d, p in self.rows(f"SELECT DISTINCT_ID, PROPERTIES FROM {q}.MP_PEOPLE_DATA")]
        identity = [{"distinct_id": d, "resolved_distinct_id": r}
                    for d, r in self.rows(f"SELECT DISTINCT_ID, RESOLVED_DISTINCT_ID FROM {q}.MP_IDENTITY_MAPPINGS_DATA")]
        return {name: sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode() for r in rows)
                for name, rows in {"events": events, "people": people, "identity": identity}.items()}

    @staticmethod
    def partition(event: dict) -> str:
        return dt.datetime.fromtimestamp(event["time"], LA).date().isoformat()

    def close(self):
        self.conn.close()


@pytest.fixture(scope="module")
def bigquery_server():
    """A server of this module's own, stopped when the module is done (not at the session's end)."""
    emulator = start_bigquery_emulator()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def snowflake_server():
    emulator = start_snowflake_emulator()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PASSWORD_ENV, PASSWORD)
        yield emulator
    emulator.stop()


WAREHOUSES = {"bigquery": (BigQuery, "bigquery_server"), "snowflake": (Snowflake, "snowflake_server")}


@pytest.fixture(params=sorted(WAREHOUSES))
def warehouse(request):
    kind, server = WAREHOUSES[request.param]
    found = kind(request.getfixturevalue(server))
    yield found
    found.close()


def deleted(row: str) -> bool:
    data = json.loads(row)
    return data["distinct_id"] in DELETED or data.get("resolved_distinct_id") in DELETED


def run_gdpr(defs, instance, **config):
    return defs.resolve_job_def("gdpr_deletion_job").execute_in_process(
        instance=instance, run_config={"ops": {"gdpr_delete_users": {"config": config}}})


def latest_audit(tmp_path) -> dict:
    """The newest audit record (their names start with the time)."""
    return json.loads(max((tmp_path / "state" / "gdpr_audit").glob("*.json")).read_text())


def removed_by_place(audit: dict) -> dict:
    return {(e["pipeline"], e["partition"]): e["rows"] for e in audit["removed"]}


def run_checks(defs, instance, prefix: str) -> list[dg.AssetCheckEvaluation]:
    """The read-back checks of the three assets, on both days, as the UI's 'Execute checks' runs them
    (not the freshness check: these days are two years old)."""
    events = dg.AssetKey([f"{prefix}_events", "mp_master_event"])
    tables = [dg.AssetKey([f"{prefix}_{name}", table])
              for name, table in (("people", "mp_people_data"), ("identity", "mp_identity_mappings_data"))]
    jobs = [dg.define_asset_job("events_checks", selection=dg.AssetSelection.checks(
                *(dg.AssetCheckKey(events, name) for name in (ROW_COUNT, NO_DUPLICATES, SCHEMA)))),
            dg.define_asset_job("table_checks", selection=dg.AssetSelection.checks(
                *(dg.AssetCheckKey(key, name) for key in tables for name in (TABLE_ROW_COUNT, UNIQUE_IDS, SCHEMA))))]
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=jobs))
    results = [run_partition(merged, "events_checks", instance, range_=DAYS), run_partition(merged, "table_checks", instance)]
    return [e for result in results for e in result.get_asset_check_evaluations()]


@pytest.mark.emulator
def test_a_gdpr_deletion_removes_the_whole_cluster_from_the_warehouse_and_nothing_else(warehouse, tmp_path, instance):
    prefix = warehouse.prefix
    source = write_source(tmp_path / "mixpanel_files")
    project = {"id": PROJECT_ID, "timezone": TZ, "state": {"path": "state"},
               "source": {"type": "local", "path": str(source), "profiles_path": str(source / "profiles.jsonl")}}
    defs = definitions(tmp_path, project, pipelines(prefix, warehouse.destination()))
    run_partition(defs, f"{prefix}_events_job", instance, range_=DAYS)
    for name in ("people", "identity"):
        run_partition(defs, f"{prefix}_{name}_job", instance)
    before = warehouse.snapshot()
    assert all(any(deleted(r) for r in rows) and not all(deleted(r) for r in rows) for rows in before.values())
    there = {}  # what the audit must report: the deleted users' rows per partition, as exported
    for row in filter(deleted, before["events"]):
        key = (f"{prefix}_events", warehouse.partition(json.loads(row)))
        there[key] = there.get(key, 0) + 1
    there[(f"{prefix}_people", None)] = sum(map(deleted, before["people"]))
    there[(f"{prefix}_identity", None)] = sum(map(deleted, before["identity"]))
    assert {k[1] for k in there} == {*DAYS, None} and there[(f"{prefix}_people", None)] == 2
    assert there[(f"{prefix}_identity", None)] == 2  # $device:da1 and $device:da2 -> alice

    run_gdpr(defs, instance, distinct_ids=REQUESTED, dry_run=True)
    assert warehouse.snapshot() == before
    assert removed_by_place(latest_audit(tmp_path)) == there
    # Without cluster expansion only alice's own rows, but every mapping that resolves to her.
    run_gdpr(defs, instance, distinct_ids=["alice"], expand_clusters=False, dry_run=True)
    alone = removed_by_place(latest_audit(tmp_path))
    assert (alone[(f"{prefix}_people", None)], alone[(f"{prefix}_identity", None)]) == (1, 2)
    assert sum(n for (pipeline, _), n in alone.items() if pipeline == f"{prefix}_events") == 2 * 3 * len(DAYS)
    assert warehouse.snapshot() == before and not register_path(tmp_path / "state").exists()

    result = run_gdpr(defs, instance, distinct_ids=REQUESTED)
    after = warehouse.snapshot()
    for name, rows in before.items():
        assert after[name] == [r for r in rows if not deleted(r)], name
    audit = latest_audit(tmp_path)
    assert set(audit["deleted_distinct_ids"]) == DELETED and removed_by_place(audit) == there
    metadata = next(e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT").step_output_data.metadata
    assert metadata["rows_removed"].value[f"{prefix}_events/mp_master_event"] == sum(
        n for (pipeline, _), n in there.items() if pipeline == f"{prefix}_events")

    evaluations = run_checks(defs, instance, prefix)
    assert len(evaluations) == 3 * len(DAYS) + 3 + 3
    assert [(e.asset_key.to_user_string(), e.partition, e.check_name, e.description)
            for e in evaluations if not e.passed] == []
    removed = {(e.asset_key.path[0], e.partition): e.metadata["gdpr_rows_removed"].value
               for e in evaluations if "gdpr_rows_removed" in e.metadata}
    assert removed == there

    run_gdpr(defs, instance, distinct_ids=REQUESTED)  # a rerun finds nothing left and changes nothing
    assert warehouse.snapshot() == after


# --- the count-then-delete guard, on a destination without Dagster ----------------------------


class _RacedBigQuery(BigQueryDestination):
    """An export writes one more row of the user between the count and the deletion."""

    def _run(self, sql, purpose):
        if purpose == "delete the rows":
            row = orjson.loads(good_events(2)[1])
            self.client.query(f"INSERT INTO {self.sql_ref('mp_master_event')} (_PARTITIONTIME, distinct_id, event_name, "
                              f"time) VALUES (TIMESTAMP '2024-11-22', 'u1', 'Late', "
                              f"TIMESTAMP_SECONDS({row['properties']['time']}))").result(timeout=60)
        return super()._run(sql, purpose)


class _RacedSnowflake(SnowflakeDestination):
    def _delete(self, cur, target, match, expected):
        late = {"distinct_id": "u1", "event_name": "Late", "time": orjson.loads(good_events(2)[1])["properties"]["time"]}
        cur.execute(f"INSERT INTO {target} (DATA) SELECT PARSE_JSON(%s)", (orjson.dumps(late).decode(),))
        return super()._delete(cur, target, match, expected)


def raced_destination(kind: str, request):
    if kind == "bigquery":
        server = request.getfixturevalue("bigquery_server")
        destination = _RacedBigQuery("bq_events", PROJECT_ID, server.client(), server.new_dataset("gdpr"), timezone=TZ)
        return destination, lambda: destination._count(f"SELECT COUNT(*) FROM {destination.sql_ref('mp_master_event')} "
                                                       "WHERE distinct_id = 'u1'")
    server = request.getfixturevalue("snowflake_server")
    schema = server.new_schema()
    resource = snowflake_resource(account=ACCOUNT, user=USER, password=PASSWORD, database=DATABASE, schema=schema,
                                  host="127.0.0.1", port=server.port, protocol="http",
                                  network_timeout=NETWORK_TIMEOUT_S, login_timeout=NETWORK_TIMEOUT_S)
    destination = _RacedSnowflake("sf_events", PROJECT_ID, resource, DATABASE, schema, timezone=TZ)

    def count():
        with destination._cursor(ensure=False) as cur:
            return cur.execute(f"SELECT COUNT(*) FROM {destination.q}.MP_MASTER_EVENT_RAW "
                               "WHERE DATA:distinct_id::STRING = 'u1'").fetchone()[0]
    return destination, count


@pytest.mark.emulator
@pytest.mark.parametrize("kind", sorted(WAREHOUSES))
def test_rows_written_between_the_count_and_the_delete_stop_the_deletion_and_it_deletes_nothing(kind, request, tmp_path):
    destination, rows_of_u1 = raced_destination(kind, request)
    window = window_of("2024-11-22")
    write_staged_window(destination, staged_window(tmp_path, window, good_events(4)), tmp_path / "parts", window=window)
    with pytest.raises(DestinationError) as failure:
        destination.delete_event_rows(frozenset({"u1"}), [window], tmp_path / "gdpr")
    message = str(failure.value)
    assert f"pipeline '{destination.pipeline}'" in message and "counted" in message and "still there" in message
    assert rows_of_u1() == 2  # the exported row and the one written meanwhile
    destination.close()


# --- attributing counted rows to partitions -----------------------------------------------------


def test_counted_rows_land_in_their_partition_or_outside_every_partition_in_a_quarter_hour_time_zone():
    """Kathmandu is UTC+5:45: hour boundaries fall on quarter hours, so the warehouse must count
    per 15 minutes; a row in the gap between two partitions belongs to none (partition None)."""
    nepal = zoneinfo.ZoneInfo("Asia/Kathmandu")
    windows = []
    for hour in (10, 11, 13):
        local = dt.datetime(2024, 11, 22, hour, tzinfo=nepal)
        windows.append(PartitionWindow(f"2024-11-22-{hour}:00", local.astimezone(dt.UTC),
                                       (local + dt.timedelta(hours=1)).astimezone(dt.UTC), local, "hourly"))
    bucket = bucket_seconds(windows)
    assert bucket == 900

    def local_time(hour, minute, second=0):
        return int(dt.datetime(2024, 11, 22, hour, minute, second, tzinfo=nepal).timestamp())

    times = [local_time(10, 0), local_time(10, 59, 59), local_time(11, 59, 59), local_time(12, 30), local_time(13, 0)]
    counts = {}
    for t in times:  # what `GROUP BY DIV(UNIX_SECONDS(time), bucket)` returns
        counts[t // bucket] = counts.get(t // bucket, 0) + 1
    assert removals_by_window(windows, counts.items(), bucket, "somewhere") == [
        Removal("mp_master_event", "2024-11-22-10:00", 2, "somewhere"),
        Removal("mp_master_event", "2024-11-22-11:00", 1, "somewhere"),
        Removal("mp_master_event", "2024-11-22-13:00", 1, "somewhere"),
        Removal("mp_master_event", None, 1, "somewhere"),
    ]
