"""The data-sync sensor: a changed past day is re-exported, an unchanged one never is, ticks are free.

The source is changed the ways Mixpanel's data changes after an export: late events and a
back-dated import land in a past day, events are deleted. Local files model that by editing the
day's files; the fake Mixpanel server does it over the real Export API, where its request log
counts the queries a tick (none) and a probe (one) cost.

Ticks run `sensors.evaluate_sync` with a clock moved forward (the sync window waits 24 h after an
export, probes every 6 h), and the real sensor definition where the real clock suffices. The runs
the sensor requests are executed in process on the same instance, as the daemon would launch them.
"""

import datetime as dt
import json
import time

import dagster as dg
import duckdb
import orjson
import pytest

from mixpanel_assets.config import SyncWindow, load_pipelines_file
from mixpanel_assets.defs.sensors import evaluate_sync, sync_target
from mixpanel_assets.defs.sync import SYNC_REASON_TAG, SYNC_TAG, Change, candidate_days, day_windows
from mixpanel_assets.staging.dedup import Fingerprint
from mixpanel_assets_tests.helpers import (
    dedup_expected,
    definitions,
    event_line,
    events_pipeline,
    local_project,
    read_folder_rows,
    write_config,
)

UTC = dt.timezone.utc
TODAY = dt.datetime.now(UTC).date()
FIRST = TODAY - dt.timedelta(days=6)
D1, D2, D3 = (TODAY - dt.timedelta(days=n) for n in (3, 2, 1))
HOUR = 3600
LATER = 25 * HOUR  # past the default 24 h minimum age of an export
PROBE_AGAIN = 7 * HOUR  # past the default 6 h probe interval
PROJECT_ID = 31337


def at(day: dt.date, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp())


def day_lines(day: dt.date, users: int = 12, per_hour: int = 6, tag: str = "e") -> list[bytes]:
    """A small day of events: every hour, a few users, one duplicate copy and one event without $insert_id."""
    lines = []
    for hour in range(24):
        for i in range(per_hour):
            t = at(day, hour, i * 7)
            lines.append(event_line("Viewed", t, f"u{(hour + i) % users}", f"{tag}-{day}-{hour}-{i}",
                                    mp_processing_time_ms=t * 1000 + 500))
        lines.append(lines[-1])  # a duplicate Mixpanel must drop
        lines.append(event_line("Ping", at(day, hour, 59), f"u{hour % users}", None, mp_processing_time_ms=t * 1000))
    return lines


def late_lines(day: dt.date, count: int = 3, tag: str = "late") -> list[bytes]:
    t0 = at(day, 13, 30)
    arrived = int(time.time() * 1000)
    return [event_line("Purchase", t0 + i, "late_user", f"{tag}-{day}-{i}", mp_processing_time_ms=arrived)
            for i in range(count)]


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    for day in (D1, D2, D3):
        (folder / f"{day}.jsonl").write_bytes(b"\n".join(day_lines(day)) + b"\n")
    return folder


def project(folder) -> dict:
    return local_project(PROJECT_ID, folder, export_workers=1)


def events(name: str, frequency: str, destination: dict, **extra) -> dict:
    return events_pipeline(name, frequency, destination, str(FIRST), **extra)


DAILY_DB = events("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
HOURLY_FILES = events("hourly_files", "hourly", {"type": "local", "path": "bucket"})


class Sync:
    """One pipeline's sensor, ticked by hand, and the runs it asks for, launched in process."""

    def __init__(self, tmp_path, project: dict, pipelines: list[dict], name: str, instance):
        self.defs = definitions(tmp_path, project, pipelines)
        config = load_pipelines_file(write_config(tmp_path, project, pipelines))
        self.target = sync_target(config.pipeline(name), config)
        self.instance = instance
        self.cursor = None
        self.name = name

    def tick(self, now: float) -> list[dg.RunRequest]:
        result = evaluate_sync(self.instance, self.target, self.cursor, now)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        tags = {k: v for k, v in request.tags.items() if k != "dagster/partition"}
        result = self.defs.resolve_job_def(request.job_name).execute_in_process(
            instance=self.instance, partition_key=request.partition_key, run_config=request.run_config, tags=tags)
        assert result.success
        return result

    def export(self, partition_key: str | None = None, range_: tuple[str, str] | None = None):
        tags = {}
        if range_:
            tags = {"dagster/asset_partition_range_start": range_[0], "dagster/asset_partition_range_end": range_[1]}
        return self.defs.resolve_job_def(f"{self.name}_job").execute_in_process(
            instance=self.instance, partition_key=partition_key, tags=tags)

    def probe_then_tick(self, now: float) -> list[dg.RunRequest]:
        """A tick that asks for a probe, the probe run, and the tick after it."""
        (probe,) = self.tick(now)
        assert probe.job_name == f"{self.name}_sync_probe_job"
        self.launch(probe)
        return self.tick(now)


def db_rows(db, day: dt.date) -> int:
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM mp_master_event WHERE CAST(time AS DATE) = ?", [day]).fetchone()[0]


def source_count(folder, day: dt.date) -> int:
    lines = [line for f in sorted(folder.iterdir()) for line in f.read_bytes().splitlines() if line]
    return dedup_expected(lines, at(day, 0), at(day + dt.timedelta(days=1), 0))["count"]


def test_late_events_in_a_past_day_re_export_exactly_that_day_and_the_destination_then_matches(tmp_path, source, instance):
    sync = Sync(tmp_path, project(source), [DAILY_DB], "daily_db", instance)
    for day in (D1, D2, D3):
        sync.export(str(day))
    db = tmp_path / "wh.duckdb"
    now = time.time() + LATER

    (probe,) = sync.tick(now)
    assert probe.run_config["ops"]["daily_db_sync_probe"]["config"] == {"first_day": str(D1), "last_day": str(D3)}
    sync.launch(probe)
    assert sync.tick(now) == []  # nothing changed since the export

    (source / f"{D2}-late.jsonl").write_bytes(b"\n".join(late_lines(D2)) + b"\n")
    now += PROBE_AGAIN
    (request,) = sync.probe_then_tick(now)
    assert request.partition_key == str(D2) and request.job_name == "daily_db_job"
    assert request.tags[SYNC_TAG] == "true"
    assert request.tags[SYNC_REASON_TAG] == "3 more events in Mixpanel (late or back-dated events)"
    before = {day: db_rows(db, day) for day in (D1, D3)}
    sync.launch(request)

    assert db_rows(db, D2) == source_count(source, D2) == source_count(source, D1) + 3
    assert {day: db_rows(db, day) for day in (D1, D3)} == before
    assert sync.tick(now) == []  # the re-export is newer than the probe that asked for it
    now += LATER
    assert sync.probe_then_tick(now) == []  # and the next probe finds every day unchanged


def test_a_deletion_and_a_back_dated_import_are_detected_with_their_reasons(tmp_path, source, instance):
    sync = Sync(tmp_path, project(source), [DAILY_DB], "daily_db", instance)
    for day in (D1, D3):
        sync.export(str(day))
    lines = (source / f"{D1}.jsonl").read_bytes().splitlines()
    (source / f"{D1}.jsonl").write_bytes(b"\n".join(line for line in lines if b'"u3"' not in line) + b"\n")
    (source / f"{D3}-import.jsonl").write_bytes(b"\n".join(late_lines(D3, 5, "import")) + b"\n")

    requests = sync.probe_then_tick(time.time() + LATER)
    reasons = {r.partition_key: r.tags[SYNC_REASON_TAG] for r in requests}
    deleted = dedup_expected(lines, at(D1, 0), at(D2, 0))["count"] - source_count(source, D1)
    assert reasons == {str(D1): f"{deleted} fewer events in Mixpanel (deleted events)",
                       str(D3): "5 more events in Mixpanel (late or back-dated events)"}
    for request in requests:
        sync.launch(request)
    assert db_rows(tmp_path / "wh.duckdb", D1) == source_count(source, D1)
    assert db_rows(tmp_path / "wh.duckdb", D3) == source_count(source, D3)


def test_an_hourly_day_is_re_exported_as_one_run_over_its_hours(tmp_path, source, instance):
    sync = Sync(tmp_path, project(source), [HOURLY_FILES], "hourly_files", instance)
    hours = (f"{D2}-00:00", f"{D2}-23:00")
    sync.export(range_=hours)
    sync.export(f"{D3}-05:00")  # a day with missing hours is left to backfills, not synced
    (source / f"{D2}-late.jsonl").write_bytes(b"\n".join(late_lines(D2)) + b"\n")

    (request,) = sync.probe_then_tick(time.time() + LATER)
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == hours
    assert request.partition_key is None
    sync.launch(request)
    hour13 = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / f"{D2:%Y/%m/%d}" / "13"
    assert sorted(r["insert_id"] for r in read_folder_rows(hour13) if r["distinct_id"] == "late_user") == [
        f"late-{D2}-{i}" for i in range(3)]


def test_the_cursor_keeps_a_restarted_sensor_from_requesting_again(tmp_path, source, instance):
    config = {"sync_window": {"min_age_hours": 0, "max_age_days": None}}
    pipelines = [{**DAILY_DB, **config}]
    defs = definitions(tmp_path, project(source), pipelines)
    sensor = defs.resolve_sensor_def("daily_db_sync_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED

    def tick(cursor):
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        return list(data.run_requests or []), data.cursor

    sync = Sync(tmp_path, project(source), pipelines, "daily_db", instance)
    for day in (D1, D2):
        sync.export(str(day))
    (source / f"{D2}-late.jsonl").write_bytes(b"\n".join(late_lines(D2)) + b"\n")  # arrives before the probe

    (probe,), cursor = tick(None)
    assert tick(cursor) == ([], cursor)  # restarted with its cursor: the probe is not asked for twice
    sync.launch(probe)
    (request,), cursor = tick(cursor)
    assert request.partition_key == str(D2)
    assert tick(cursor)[0] == []  # ... nor the re-export
    (again,), _ = tick(None)  # a lost cursor asks again, with the same run key: the daemon runs it once
    assert again.run_key == request.run_key
    assert json.loads(cursor)["requested"] == {str(D2): request.run_key}


def test_days_outside_the_sync_window_are_neither_probed_nor_synced(tmp_path, source, instance):
    pipelines = [{**DAILY_DB, "sync_window": {"max_age_days": 3, "min_age_hours": 24}}]
    sync = Sync(tmp_path, project(source), pipelines, "daily_db", instance)
    for day in (D1, D3):
        sync.export(str(day))
    assert sync.tick(time.time() + HOUR) == []  # exported less than 24 h ago: not yet due
    now = time.time() + LATER
    (probe,) = sync.tick(now)
    # 25 h on, the tick's date is one or two days after TODAY (depending on the hour): D1 is then four
    # or five days old, outside the three-day window, and D3 two or three days old, inside it.
    assert probe.run_config["ops"]["daily_db_sync_probe"]["config"] == {"first_day": str(D3), "last_day": str(D3)}


def test_the_sync_window_config_accepts_any_age_and_rejects_nonsense(tmp_path, source):
    any_age = {**DAILY_DB, "sync_window": {"max_age_days": None}}
    config = load_pipelines_file(write_config(tmp_path, project(source), [any_age]))
    assert config.pipeline("daily_db").effective_sync_window.max_age_days is None
    assert candidate_days([FIRST, D1, TODAY], TODAY, SyncWindow(max_age_days=None)) == [FIRST, D1]
    for bad, message in [({**DAILY_DB, "sync": False, "sync_window": {}}, "sync_window applies only when sync is true"),
                         ({**DAILY_DB, "sync_window": {"max_age_days": 0}}, "field sync_window.max_age_days"),
                         ({"name": "people", "data_source": "people", "sync_window": {},
                           "destination": {"type": "duckdb", "path": "wh.duckdb"}}, "sync_window applies only to events")]:
        with pytest.raises(Exception, match=message):
            load_pipelines_file(write_config(tmp_path, project(source), [bad]))


def test_a_pipeline_without_sync_has_no_sensor(tmp_path, source):
    defs = definitions(tmp_path, project(source), [{**DAILY_DB, "sync": False}, HOURLY_FILES])
    assert [s.name for s in defs.sensors if s.name.endswith("_sync_sensor")] == ["hourly_files_sync_sensor"]


def test_fingerprint_changes_name_what_changed():
    base = Fingerprint(10, 1234, 5000)
    assert Change(D1, base, Fingerprint(10, 999, 5000)).reason == "same number of events but different ones (events replaced)"
    assert Change(D1, base, Fingerprint(10, 1234, 6000)).reason.startswith("events re-ingested")
    windows = day_windows(D1, D3, dt.timezone.utc)
    assert [w.partition_key for w in windows] == [str(D1), str(D2), str(D3)]


# --- over the Export API: what a tick and a probe cost ---------------------------------------------

USER_ENV = "SYNC_MIXPANEL_USERNAME"
SECRET_ENV = "SYNC_MIXPANEL_SECRET"


@pytest.fixture
def mixpanel(fake_mixpanel, monkeypatch):
    from mixpanel_assets_tests.fake_mixpanel import SECRET, USERNAME

    for day in (D1, D2, D3):
        fake_mixpanel.add_events(day_lines(day))
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


def api_project(fake) -> dict:
    from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID as FAKE_PROJECT

    return {"id": FAKE_PROJECT, "state": {"path": "state"}, "export_workers": 1,
            "source": fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}


def test_ticks_cost_no_export_query_and_a_probe_one_while_late_data_and_deletions_are_caught(tmp_path, mixpanel, instance):
    sync = Sync(tmp_path, api_project(mixpanel), [DAILY_DB], "daily_db", instance)
    for day in (D1, D2, D3):
        sync.export(str(day))
    assert len(mixpanel.export_requests()) == 3
    mixpanel.clear_requests()
    now = time.time() + LATER

    (probe,) = sync.tick(now)
    assert mixpanel.export_requests() == []
    sync.launch(probe)
    (request,) = mixpanel.export_requests()
    assert (request.params["from_date"], request.params["to_date"]) == (str(D1), str(D3))
    for _ in range(3):
        assert sync.tick(now) == []
    assert len(mixpanel.export_requests()) == 1

    late_arrival = int((time.time() + 3600) * 1000)
    mixpanel.add_events(late_lines(D2, 4), ingested_at_ms=late_arrival)  # late arrival / back-dated import
    mixpanel.delete_events(lambda e: e["properties"].get("distinct_id") == "u5"
                           and at(D3, 0) <= e["properties"]["time"] < at(TODAY, 0))
    mixpanel.clear_requests()
    now += PROBE_AGAIN
    requests = sync.probe_then_tick(now)
    assert len(mixpanel.export_requests()) == 1
    assert sorted(r.partition_key for r in requests) == [str(D2), str(D3)]
    for request in requests:
        sync.launch(request)
    assert len(mixpanel.export_requests()) == 3  # one query per re-exported day
    fake_lines = [orjson.dumps(e) for e in mixpanel.events()]
    for day in (D1, D2, D3):
        expected = dedup_expected(fake_lines, at(day, 0), at(day + dt.timedelta(days=1), 0))["count"]
        assert db_rows(tmp_path / "wh.duckdb", day) == expected
    assert sync.tick(now) == []

