"""BigQuery's mp_master_event as Mixpanel's: ingestion-time partitioned by day, written through
partition decorators, Mixpanel's documented `_PARTITIONTIME` queries running unchanged.

What the emulator can and cannot show: bqemulator keeps no partition per row, so bqemu_server.py
simulates one, the date of `time` in the test project's timezone, and applies a WRITE_TRUNCATE
into `table$YYYYMMDD` to that simulated partition. Counts read back here therefore show that the
other days and hours survive a replace and that the documented queries run and count per day;
which partition each write names (the decorator, computed from the window's local date), with
which write disposition, and that the table is created without a partitioning field, are
asserted on the requests the google-cloud-bigquery client sends (RecordingProxy).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest

from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.io_managers import write_staged_window
from mixpanel_assets.destinations.warehouses.bigquery import BigQueryDestination, migration_sql
from mixpanel_assets.windows import PartitionWindow
from mixpanel_assets_tests.emulators.bigquery import PROJECT, bigquery_emulator  # noqa: F401
from mixpanel_assets_tests.emulators.recording_proxy import RecordingProxy
from mixpanel_assets_tests.helpers import epoch, event_line
from mixpanel_assets_tests.warehouse_cases import LA, PROJECT_ID, TZ, staged_window, window_of

pytestmark = pytest.mark.emulator

EVENT_COLUMNS = [("device_id", "STRING"), ("distinct_id", "STRING"), ("event_name", "STRING"),
                 ("insert_id", "STRING"), ("properties", "JSON"), ("time", "TIMESTAMP"), ("user_id", "STRING")]

# Verbatim from Mixpanel's BigQuery page (MIXPANEL_SPEC.md 2.4); the tests fill in the placeholders
# and move the documented May 2024 range to November 2024, where the test data is.
EVENTS_PER_DAY = """SELECT
  _PARTITIONTIME AS pt,
  COUNT(*)
FROM
  `<your gcp project>.<your dataset>.mp_master_event`
WHERE
  DATE(_PARTITIONTIME) <= "2024-05-31"
  AND DATE(_PARTITIONTIME) >= "2024-05-01"
GROUP BY
  pt
"""
EVENTS_PER_RESOLVED_USER = """SELECT
  CASE
    WHEN mappings.resolved_distinct_id IS NOT NULL THEN mappings.resolved_distinct_id
    WHEN mappings.resolved_distinct_id IS NULL THEN events.distinct_id
END
  AS resolved_distinct_id,
  COUNT(*) AS count
FROM
  `<your gcp project>.<your dataset>.mp_master_event` events
INNER JOIN
  `<your gcp project>.<your dataset>.mp_identity_mappings_data_view` mappings
ON
  events.distinct_id = mappings.distinct_id
  AND JSON_VALUE(properties,'$."$city"') = "San Francisco"
  AND DATE(events._PARTITIONTIME) <= "2024-05-31"
  AND DATE(events._PARTITIONTIME) >= "2024-05-01"
GROUP BY
  resolved_distinct_id
LIMIT
  100
"""


def documented(query: str, dataset: str) -> str:
    return (query.replace("<your gcp project>", PROJECT).replace("<your dataset>", dataset)
            .replace('"2024-05-31"', '"2024-11-30"').replace('"2024-05-01"', '"2024-11-01"'))


def rows(client, sql):
    return [tuple(r.values()) for r in client.query(sql, timeout=60).result(timeout=120)]


def hour_window(local_iso: str) -> PartitionWindow:
    """The hourly partition starting at `local_iso` in the project's timezone."""
    local = dt.datetime.fromisoformat(local_iso).replace(tzinfo=LA)
    start = local.astimezone(dt.UTC)
    return PartitionWindow(local.strftime("%Y-%m-%d-%H:%M"), start, start + dt.timedelta(hours=1), local, "hourly")


def stage(tmp_path, run: str, window: PartitionWindow, lines: list[bytes]):
    (tmp_path / f"stage-{run}").mkdir()
    return staged_window(tmp_path / f"stage-{run}", window, lines)


def events(at_utc: str, n: int, city: str, prefix: str = "e") -> list[bytes]:
    return [event_line("Signed Up", epoch(at_utc) + i, f"{prefix}-u{i}", f"{prefix}-{city}-{i}", **{"$city": city})
            for i in range(n)]


class Recorded:
    """A destination on a fresh dataset whose client talks to the emulator through a recording proxy."""

    def __init__(self, emulator, proxy):
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        self.proxy = proxy
        self.dataset = emulator.new_dataset("partitions")
        client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=proxy.endpoint))
        self.destination = BigQueryDestination("bq_events", PROJECT_ID, client, self.dataset, timezone=TZ)
        self.client = emulator.client()
        self.table = f"`{PROJECT}.{self.dataset}.mp_master_event`"

    def write(self, tmp_path, window: PartitionWindow, lines: list[bytes], run: str):
        staged = stage(tmp_path, run, window, lines)
        return write_staged_window(self.destination, staged, tmp_path / f"parts-{run}", window=window)

    def per_partition(self) -> list[tuple]:
        return rows(self.client, f"SELECT DATE(_PARTITIONTIME) AS day, COUNT(*) FROM {self.table} GROUP BY day "
                                 "ORDER BY day")

    def replaces(self) -> list[dict]:
        """The query jobs that wrote mp_master_event, as sent."""
        return [job for job in self.proxy.jobs("query")
                if job.get("destinationTable", {}).get("tableId", "").startswith("mp_master_event")]

    def close(self):
        self.destination.close()
        self.client.close()


@pytest.fixture
def recorded(bigquery_emulator, tmp_path):  # noqa: F811
    with RecordingProxy(bigquery_emulator.endpoint) as proxy:
        setup = Recorded(bigquery_emulator, proxy)
        yield setup
        setup.close()


def test_the_table_is_ingestion_time_partitioned_by_day_with_mixpanels_seven_columns(recorded, tmp_path):
    recorded.write(tmp_path, window_of("2024-11-22"), events("2024-11-22T12:00:00", 2, "Oslo"), "a")
    (created,) = [t for t in recorded.proxy.tables_created() if t["tableReference"]["tableId"] == "mp_master_event"]
    assert created["timePartitioning"] == {"type": "DAY"}  # no field: ingestion time
    assert [(f["name"], f["type"]) for f in created["schema"]["fields"]] == EVENT_COLUMNS
    table = recorded.client.get_table(f"{PROJECT}.{recorded.dataset}.mp_master_event")
    assert [(f.name, f.field_type) for f in table.schema] == EVENT_COLUMNS
    assert table.time_partitioning.type_ == "DAY" and table.time_partitioning.field is None


def test_a_daily_replace_writes_its_days_decorator_with_write_truncate_and_keeps_the_other_days(recorded, tmp_path):
    recorded.write(tmp_path, window_of("2024-11-21"), events("2024-11-21T12:00:00", 3, "Oslo"), "a")
    recorded.write(tmp_path, window_of("2024-11-22"), events("2024-11-22T12:00:00", 5, "Oslo"), "b")
    result = recorded.write(tmp_path, window_of("2024-11-22"), events("2024-11-22T20:00:00", 2, "Rome", "r"), "c")
    assert result.rows == 2 and result.removed == 5
    assert recorded.per_partition() == [(dt.date(2024, 11, 21), 3), (dt.date(2024, 11, 22), 2)]
    assert rows(recorded.client, f"""SELECT JSON_VALUE(properties, '$."$city"'), COUNT(*) FROM {recorded.table}
                                     WHERE DATE(_PARTITIONTIME) = '2024-11-22' GROUP BY 1""") == [("Rome", 2)]

    jobs = recorded.replaces()
    assert [j["destinationTable"]["tableId"] for j in jobs] == [
        "mp_master_event$20241121", "mp_master_event$20241122", "mp_master_event$20241122"]
    assert {(j["writeDisposition"], j["createDisposition"]) for j in jobs} == {("WRITE_TRUNCATE", "CREATE_NEVER")}
    assert all(j["destinationTable"]["datasetId"] == recorded.dataset for j in jobs)
    # A whole day is the staged rows alone: the job does not read the partition it replaces, and no
    # DML touches the table.
    assert all("mp_master_event`" not in j["query"] for j in jobs)
    dml = [j["query"] for j in recorded.proxy.jobs("query") if "destinationTable" not in j]
    assert not [q for q in dml if "DELETE" in q.upper() and "mp_master_event`" in q]


def test_an_hourly_replace_rewrites_its_local_days_partition_and_keeps_the_other_hours(recorded, tmp_path):
    recorded.write(tmp_path, window_of("2024-11-21"), events("2024-11-21T12:00:00", 3, "Oslo", "d"), "day")
    early, next_hour = hour_window("2024-11-22T05:00"), hour_window("2024-11-22T06:00")
    late = hour_window("2024-11-22T20:00")  # 04:00Z on the 23rd: still the 22nd's partition
    recorded.write(tmp_path, early, events("2024-11-22T13:00:00", 4, "Oslo", "a"), "a")
    recorded.write(tmp_path, next_hour, events("2024-11-22T14:00:00", 2, "Oslo", "b"), "b")
    recorded.write(tmp_path, late, events("2024-11-23T04:00:00", 3, "Oslo", "c"), "c")
    result = recorded.write(tmp_path, early, events("2024-11-22T13:30:00", 1, "Rome", "r"), "again")
    assert result.rows == 1 and result.removed == 4
    assert recorded.per_partition() == [(dt.date(2024, 11, 21), 3), (dt.date(2024, 11, 22), 1 + 2 + 3)]
    by_hour = rows(recorded.client, f"""SELECT EXTRACT(HOUR FROM time), JSON_VALUE(properties, '$."$city"'), COUNT(*)
                                        FROM {recorded.table} WHERE DATE(_PARTITIONTIME) = '2024-11-22'
                                        GROUP BY 1, 2 ORDER BY 1""")
    assert by_hour == [(4, "Oslo", 3), (13, "Rome", 1), (14, "Oslo", 2)]

    jobs = recorded.replaces()
    assert [j["destinationTable"]["tableId"] for j in jobs] == ["mp_master_event$20241121"] + [
        "mp_master_event$20241122"] * 4
    assert {(j["writeDisposition"], j["createDisposition"]) for j in jobs} == {("WRITE_TRUNCATE", "CREATE_NEVER")}
    # Each hour's job reads the rest of its day from the partition it replaces, in the same job.
    for job, window in zip(jobs[1:], [early, next_hour, late, early]):
        start, end = (f"TIMESTAMP '{t:%Y-%m-%d %H:%M:%S}.000000+00'" for t in (window.start, window.end))
        assert f"_PARTITIONTIME = TIMESTAMP '2024-11-22' AND (time < {start} OR time >= {end})" in job["query"]


def test_an_empty_day_empties_its_partition_only(recorded, tmp_path):
    recorded.write(tmp_path, window_of("2024-11-21"), events("2024-11-21T12:00:00", 3, "Oslo"), "a")
    recorded.write(tmp_path, window_of("2024-11-22"), events("2024-11-22T12:00:00", 2, "Oslo"), "b")
    result = recorded.destination.write_event_window([], window_of("2024-11-22"), "empty")
    assert result.rows == 0 and result.removed == 2
    assert recorded.per_partition() == [(dt.date(2024, 11, 21), 3)]


def test_the_documented_partitiontime_queries_count_each_day(recorded, tmp_path):
    """Both of Mixpanel's documented queries, unchanged but for the placeholders and dates. On
    BigQuery `_PARTITIONTIME` is the decorator's date (asserted on the requests above); here it is
    the emulator's simulation of it (the local date of `time`)."""
    days = {"2024-11-20": ("2024-11-20T18:00:00", 2), "2024-11-21": ("2024-11-21T12:00:00", 3),
            "2024-11-22": ("2024-11-23T07:00:00", 4)}  # 23:00 local on the 22nd: the 22nd's partition
    for day, (at, n) in days.items():
        lines = events(at, n, "San Francisco", f"sf{day}") + events(at, 1, "Oslo", f"os{day}")
        recorded.write(tmp_path, window_of(day), lines, day)
    outside = window_of("2024-10-31")  # before the queried range
    recorded.write(tmp_path, outside, events("2024-10-31T12:00:00", 5, "San Francisco", "oct"), "oct")

    got = rows(recorded.client, documented(EVENTS_PER_DAY, recorded.dataset))
    assert sorted(got) == [(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC), n + 1)
                           for day, (_, n) in days.items()]

    # The identity mappings as the exporter writes them: a table behind mp_identity_mappings_data_view.
    from google.cloud import bigquery

    mappings = {"sf2024-11-20-u0": "alice", "sf2024-11-21-u0": "alice", "sf2024-11-22-u1": "bob", "oct-u0": "carol"}
    stored = f"{PROJECT}.{recorded.dataset}.mp_identity_mappings_data_20241122T000000_abcdef"
    schema = [bigquery.SchemaField("distinct_id", "STRING"), bigquery.SchemaField("resolved_distinct_id", "STRING")]
    recorded.client.create_table(bigquery.Table(stored, schema=schema))
    lines = "".join(json.dumps({"distinct_id": d, "resolved_distinct_id": r}) + "\n" for d, r in mappings.items())
    recorded.client.load_table_from_file(io.BytesIO(lines.encode()), stored, job_config=bigquery.LoadJobConfig(
        source_format="NEWLINE_DELIMITED_JSON", schema=schema)).result(timeout=60)
    rows(recorded.client, f"CREATE VIEW `{PROJECT}.{recorded.dataset}.mp_identity_mappings_data_view` AS "
                          f"SELECT * FROM `{stored}`")
    # The emulator cannot run the second query as documented: DuckDB binds `GROUP BY resolved_distinct_id`
    # to the joined column mappings.resolved_distinct_id, where BigQuery's GROUP BY takes the SELECT
    # list's alias first. Asserted as it fails, then counted with the alias's position, which
    # BigQuery reads the same.
    from google.api_core.exceptions import BadRequest

    with pytest.raises(BadRequest, match='column "distinct_id" must appear in the GROUP BY clause'):
        rows(recorded.client, documented(EVENTS_PER_RESOLVED_USER, recorded.dataset))
    by_position = documented(EVENTS_PER_RESOLVED_USER, recorded.dataset).replace(
        "GROUP BY\n  resolved_distinct_id", "GROUP BY\n  1")
    # INNER JOIN, as documented: only mapped distinct_ids, San Francisco events of November only.
    assert sorted(rows(recorded.client, by_position)) == [("alice", 2), ("bob", 1)]


def test_a_table_of_an_earlier_version_is_refused_with_its_migration_which_works(bigquery_emulator, tmp_path):  # noqa: F811
    from google.cloud import bigquery

    client = bigquery_emulator.client()
    dataset = bigquery_emulator.new_dataset("old")
    ref = f"{PROJECT}.{dataset}.mp_master_event"
    old = bigquery.Table(ref, schema=[bigquery.SchemaField(n, t) for n, t in EVENT_COLUMNS + [("mp_date", "DATE")]])
    old.time_partitioning = bigquery.TimePartitioning(type_="DAY", field="mp_date")
    client.create_table(old)
    rows(client, f"""INSERT INTO `{ref}` (distinct_id, event_name, time, properties, mp_date) VALUES
                     ('u1', 'Old', TIMESTAMP '2024-11-21 12:00:00+00', JSON '{{"$city": "Oslo"}}', DATE '2024-11-21'),
                     ('u2', 'Old', TIMESTAMP '2024-11-22 07:00:00+00', JSON '{{"$city": "Oslo"}}', DATE '2024-11-21')""")
    destination = BigQueryDestination("bq_events", PROJECT_ID, bigquery_emulator.client(), dataset, timezone=TZ)
    window = window_of("2024-11-22")
    with pytest.raises(DestinationError) as refused:
        write_staged_window(destination, stage(tmp_path, "a", window, events("2024-11-22T12:00:00", 2, "Rome")),
                            tmp_path / "parts", window=window)
    message = str(refused.value)
    assert getattr(refused.value, "permanent", False)  # not retried: nothing changes by itself
    assert f"{ref} was made by an earlier version" in message and "partitioned on the column mp_date" in message
    assert "docs/destinations.md" in message and migration_sql(ref) in message
    assert rows(client, f"SELECT COUNT(*) FROM `{ref}`") == [(2,)]  # untouched

    rows(client, migration_sql(ref))  # what the message says to run
    migrated = client.get_table(ref)
    assert [(f.name, f.field_type) for f in migrated.schema] == EVENT_COLUMNS
    assert migrated.time_partitioning.type_ == "DAY" and migrated.time_partitioning.field is None
    assert rows(client, f"SELECT COUNT(*) FROM `{ref}_by_mp_date`") == [(2,)]  # the old table, kept

    destination = BigQueryDestination("bq_events", PROJECT_ID, bigquery_emulator.client(), dataset, timezone=TZ)
    write_staged_window(destination, stage(tmp_path, "b", window, events("2024-11-22T12:00:00", 2, "Rome")),
                        tmp_path / "parts", window=window)
    assert rows(client, f"SELECT event_name, COUNT(*) FROM `{ref}` GROUP BY 1 ORDER BY 1") == [("Old", 2), ("Signed Up", 2)]
    destination.close()
    client.close()


def test_the_docs_give_the_migration_script_the_error_gives():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "destinations.md").read_text()
    assert migration_sql("my-gcp-project.mixpanel.mp_master_event") in docs


def test_a_table_partitioned_otherwise_is_refused(bigquery_emulator, tmp_path):  # noqa: F811
    from google.cloud import bigquery

    client = bigquery_emulator.client()
    dataset = bigquery_emulator.new_dataset("unpartitioned")
    client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.mp_master_event",
                                       schema=[bigquery.SchemaField(n, t) for n, t in EVENT_COLUMNS]))
    destination = BigQueryDestination("bq_events", PROJECT_ID, client, dataset, timezone=TZ)
    window = window_of("2024-11-22")
    with pytest.raises(DestinationError, match=f"{PROJECT}.{dataset}.mp_master_event exists but is not ingestion-time"):
        write_staged_window(destination, staged_window(tmp_path, window, events("2024-11-22T12:00:00", 1, "Rome")),
                            tmp_path / "parts", window=window)
    destination.close()
