"""GDPR deletion: a user's whole identity cluster leaves every destination, everyone else stays.

One project exports the same events to a local folder (JSON, hourly), a local folder (Parquet,
daily) and DuckDB (daily), and profiles and identity mappings to a folder and DuckDB; then
`gdpr_deletion_job` deletes one device id. Its cluster (the user it was merged into and their other
device) must vanish from all of them, in every partition, while every other row stays byte for
byte; the audit record must say what went where; the row-count checks must still pass; and later
exports must not bring the user back. The cloud object stores run the same deletion through their
emulators, since they share the object-store code path with the local folder.
"""

import datetime as dt
import gzip
import json

import dagster as dg
import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from mixpanel_assets.config import load_pipelines_file
from mixpanel_assets.defs.checks import ROW_COUNT
from mixpanel_assets.defs.gdpr import delete_everywhere
from mixpanel_assets.defs.gdpr_register import register_path
from mixpanel_assets.destinations.base import Destination
from mixpanel_assets.destinations.objects.local import LocalBucket
from mixpanel_assets.destinations.objects.store import ObjectStoreDestination
from mixpanel_assets.windows import PartitionWindow
from mixpanel_assets_tests.helpers import (
    definitions,
    event_line,
    events_pipeline,
    local_project,
    read_folder_rows,
    write_config,
)

UTC = dt.timezone.utc
DAY = "2024-11-22"
PROJECT_ID = 9090
ALICE = {"alice", "$device:da1", "$device:da2"}  # one identity cluster: a user and two devices


def at(hour: int, minute: int) -> int:
    return int(dt.datetime(2024, 11, 22, hour, minute, tzinfo=UTC).timestamp())


def day_lines() -> list[bytes]:
    """Anonymous then identified events of alice (two devices), bob (one device) and carol."""
    lines = []
    for hour in range(9, 16):
        for device, user in (("da1", "alice"), ("da2", "alice"), ("db1", "bob")):
            lines.append(event_line("Viewed", at(hour, 5), f"$device:{device}", f"anon-{device}-{hour}",
                                    **{"$device_id": device}))
            lines.append(event_line("Purchase", at(hour, 35), user, f"known-{device}-{hour}",
                                    **{"$device_id": device, "$user_id": user, "$email": f"{user}@example.com"}))
        lines.append(event_line("Ping", at(hour, 50), "carol", None))
    return lines


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / f"{DAY}.jsonl").write_bytes(b"\n".join(day_lines()) + b"\n")
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": u, "$properties": {"$email": f"{u}@example.com"}}) for u in ("alice", "bob", "carol")))
    return folder


def project(folder) -> dict:
    return local_project(PROJECT_ID, folder, profiles=True, export_workers=1,
                         limits={"enforce_mixpanel_limits": False})  # two daily events pipelines side by side


def events(name, frequency, destination):
    return events_pipeline(name, frequency, destination, sync=False)


PIPELINES = [
    events("hourly_files", "hourly", {"type": "local", "path": "bucket"}),
    events("daily_parquet", "daily", {"type": "local", "path": "bucket", "prefix": "pq", "format": "parquet"}),
    events("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"}),
    {"name": "people_files", "data_source": "people", "destination": {"type": "local", "path": "bucket"}},
    {"name": "people_db", "data_source": "people", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
    {"name": "identity_db", "data_source": "identity", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
]


def export_all(defs, instance):
    hours = {"dagster/asset_partition_range_start": f"{DAY}-00:00", "dagster/asset_partition_range_end": f"{DAY}-23:00"}
    defs.resolve_job_def("hourly_files_job").execute_in_process(instance=instance, tags=hours)
    for name in ("daily_parquet", "daily_db"):
        defs.resolve_job_def(f"{name}_job").execute_in_process(instance=instance, partition_key=DAY)
    for name in ("people_files", "people_db", "identity_db"):
        defs.resolve_job_def(f"{name}_job").execute_in_process(instance=instance)


def snapshot(tmp_path) -> dict[str, list]:
    """Every row of every destination, per table, as sorted JSON (a row's exact content)."""
    bucket = tmp_path / "bucket" / str(PROJECT_ID)
    hours = sorted((bucket / "mp_master_event" / "2024" / "11" / "22").iterdir())
    parquet_day = tmp_path / "bucket" / "pq" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    parquet_rows = [row for part in sorted(parquet_day.glob("part-*")) for row in pq.read_table(part).to_pylist()]
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        def table(sql):
            cursor = conn.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

        db = {name: table(f"SELECT * FROM {name}") for name in ("mp_master_event", "mp_people_data", "mp_identity_mappings_data")}
    found = {
        "folder events": [row for hour in hours for row in read_folder_rows(hour)],
        "parquet events": parquet_rows,
        "folder people": read_folder_rows(bucket / "mp_people_data"),
        **{f"duckdb {name}": rows for name, rows in db.items()},
    }
    return {name: sorted(orjson.dumps(row, default=str).decode() for row in rows) for name, rows in found.items()}


def of_cluster(row: str, cluster=ALICE) -> bool:
    data = json.loads(row)
    return data["distinct_id"] in cluster or data.get("resolved_distinct_id") in cluster


def run_gdpr(defs, instance, **config):
    return defs.resolve_job_def("gdpr_deletion_job").execute_in_process(
        instance=instance, run_config={"ops": {"gdpr_delete_users": {"config": config}}})


def test_deleting_a_device_removes_its_whole_cluster_everywhere_and_leaves_everyone_else(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), PIPELINES)
    export_all(defs, instance)
    before = snapshot(tmp_path)
    assert all(any(of_cluster(r) for r in rows) for rows in before.values())  # alice is everywhere at first

    (tmp_path / "delete.txt").write_text("# GDPR request 2024-0042\n$device:da1\n")
    result = run_gdpr(defs, instance, ids_file="delete.txt")

    after = snapshot(tmp_path)
    for name, rows in before.items():
        assert after[name] == [r for r in rows if not of_cluster(r)], name
    audit_path = next((tmp_path / "state" / "gdpr_audit").glob("*.json"))
    audit = json.loads(audit_path.read_text())
    assert audit["requested_distinct_ids"] == ["$device:da1"] and set(audit["deleted_distinct_ids"]) == ALICE
    removed = {}
    for entry in audit["removed"]:
        removed.setdefault(entry["pipeline"], {})[entry["partition"]] = entry["rows"]
    assert removed["hourly_files"] == {f"{DAY}-{h:02d}:00": 4 for h in range(9, 16)}  # 2 devices x (anon + known)
    assert removed["daily_parquet"] == removed["daily_db"] == {DAY: 28}
    assert removed["people_files"] == removed["people_db"] == {None: 1}
    assert removed["identity_db"] == {None: 2}  # $device:da1 and $device:da2 -> alice
    metadata = next(e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT").step_output_data.metadata
    assert metadata["rows_removed"].value["daily_db/mp_master_event"] == 28
    assert metadata["distinct_ids_deleted"].value == 3

    # The row-count check subtracts the removed rows recorded on each partition.
    check_job = dg.define_asset_job("hourly_checks", selection=dg.AssetSelection.checks(
        dg.AssetCheckKey(dg.AssetKey(["hourly_files", "mp_master_event"]), ROW_COUNT)))
    checked = dg.Definitions.merge(defs, dg.Definitions(jobs=[check_job])).resolve_job_def("hourly_checks").execute_in_process(
        instance=instance, tags={"dagster/partition": f"{DAY}-12:00"})
    (evaluation,) = checked.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["gdpr_rows_removed"].value == 4
    assert evaluation.metadata["method"].value == "manifest"  # the rewritten parts carry checksums too

    # Later exports (a sync re-export, the next profiles and mappings) leave the deleted users out.
    defs.resolve_job_def("daily_db_job").execute_in_process(instance=instance, partition_key=DAY)
    for name in ("people_db", "identity_db"):
        defs.resolve_job_def(f"{name}_job").execute_in_process(instance=instance)
    assert snapshot(tmp_path) == after


def test_a_dry_run_counts_without_changing_anything(tmp_path, source, instance):
    pipelines = [PIPELINES[0], PIPELINES[2], PIPELINES[4]]
    defs = definitions(tmp_path, project(source), pipelines)
    defs.resolve_job_def("hourly_files_job").execute_in_process(instance=instance, partition_key=f"{DAY}-12:00")
    defs.resolve_job_def("daily_db_job").execute_in_process(instance=instance, partition_key=DAY)
    folder = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    files_before = sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())

    run_gdpr(defs, instance, distinct_ids=["bob"], dry_run=True, scan_all_partitions=True)
    audit = json.loads(next((tmp_path / "state" / "gdpr_audit").glob("*.json")).read_text())
    assert audit["dry_run"] and sum(e["rows"] for e in audit["removed"] if e["pipeline"] == "daily_db") == 14
    assert sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()) == files_before
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM mp_master_event WHERE distinct_id = 'bob'").fetchone()[0] == 7
    assert not register_path(tmp_path / "state").exists()


class _WriteOnly(Destination):
    def describe(self):
        return "a warehouse in the making"

    def write_event_window(self, parts, window, fingerprint):
        raise AssertionError("not used")

    def write_table(self, parts, table, digest):
        raise AssertionError("not used")


def test_a_destination_that_cannot_delete_stops_the_job_before_anything_is_deleted(tmp_path, source, instance):
    defs = definitions(tmp_path, project(source), PIPELINES[:1])
    defs.resolve_job_def("hourly_files_job").execute_in_process(instance=instance, partition_key=f"{DAY}-12:00")
    config = load_pipelines_file(write_config(tmp_path, project(source), [PIPELINES[0], PIPELINES[2]]))
    folder_destination = ObjectStoreDestination("hourly_files", PROJECT_ID, LocalBucket(tmp_path / "bucket"))
    destinations = {"hourly_files": folder_destination, "daily_db": _WriteOnly("daily_db", PROJECT_ID)}
    before = snapshot_folder(tmp_path)
    with pytest.raises(dg.Failure, match=r"daily_db \(_WriteOnly, a warehouse in the making\).*nothing was deleted"):
        delete_everywhere(config, destinations, {"alice"}, {"hourly_files": [f"{DAY}-12:00"]}, tmp_path / "work",
                          False, _NullLog())
    assert snapshot_folder(tmp_path) == before


def snapshot_folder(tmp_path):
    root = tmp_path / "bucket"
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file())


class _NullLog:
    def info(self, message):
        pass


@pytest.mark.emulator
@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_cloud_object_stores_delete_through_the_same_protocol(kind, request, tmp_path, source, instance, monkeypatch):
    from mixpanel_assets_tests.emulators.fixtures import unique_name
    from mixpanel_assets_tests.emulators.stores import store_for

    store = store_for(kind, request)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    bucket = unique_name("mp-gdpr")
    store.create_bucket(bucket)
    defs = definitions(tmp_path, project(source), [events("hourly_cloud", "hourly", store.destination(bucket))])
    hours = {"dagster/asset_partition_range_start": f"{DAY}-12:00", "dagster/asset_partition_range_end": f"{DAY}-13:00"}
    defs.resolve_job_def("hourly_cloud_job").execute_in_process(instance=instance, tags=hours)

    def rows():
        found = {}
        for key in store.keys(bucket, f"{PROJECT_ID}/mp_master_event/"):
            if key.rsplit("/", 1)[1].startswith("part-"):
                found[key] = sorted(gzip.decompress(store.read(bucket, key)).splitlines())
        return sorted(line for lines in found.values() for line in lines)

    before = rows()
    run_gdpr(defs, instance, distinct_ids=["bob"])
    after = rows()
    assert after == [line for line in before if json.loads(line)["distinct_id"] not in {"bob", "$device:db1"}]
    assert len(before) - len(after) == 4  # two hours of bob: anonymous and identified
    # The rewritten parts were verified against the store's listing and are proved at rest, cheaply.
    destination = ObjectStoreDestination("hourly_cloud", PROJECT_ID, store.adapter(bucket))
    for hour in (12, 13):
        start = dt.datetime.fromisoformat(f"{DAY}T{hour}:00:00+00:00")
        proof = destination.check_event_window(PartitionWindow(f"{DAY}-{hour}:00", start, start + dt.timedelta(hours=1),
                                                               start, "hourly"))
        assert (proof.method, proof.problems, proof.rows > 0) == ("manifest", [], True)
