"""S3, GCS and Azure Blob end to end: Dagster assets -> real client libraries -> local emulators.

Each test runs once per store (moto, gcp-storage-emulator, Azurite, started by the suite) and
reads results back with the store's own client, never through the code under test.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
from collections import defaultdict

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from mixpanel_assets_tests.emulators.fixtures import unique_name
from mixpanel_assets_tests.emulators.stores import store_for
from mixpanel_assets_tests.helpers import (
    dedup_expected,
    definitions,
    epoch,
    event_line,
    events_pipeline,
    local_project,
    run_partition,
)

PROJECT_ID = 4321
HOUR_13 = (epoch("2024-11-22T13:00:00"), epoch("2024-11-22T14:00:00"))
PART = re.compile(r"^part-[0-9a-f]{10}-\d{5}\.(json\.gz|json\.zst|json|parquet)$")


@pytest.fixture(params=["s3", "gcs", "azure"])
def store(request, monkeypatch):
    store = store_for(request.param, request)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    return store


def small_day() -> list[bytes]:
    """300 events from 12:00 to 13:40 UTC with exact and re-ingested duplicates and identity links."""
    lines = []
    for i in range(300):
        props = {"$device_id": f"dev{i % 11}", "mp_processing_time_ms": 1000 + i}
        if i % 3 == 0:
            props["$user_id"] = f"user{i % 17}"
        lines.append(event_line("Viewed Page" if i % 2 else "Purchase", epoch("2024-11-22T12:00:00") + i * 20,
                                f"user{i % 17}" if i % 3 == 0 else f"$device:dev{i % 11}", f"ins-{i}",
                                **props, **{"$city": "Zürich" if i % 5 else "Kyiv"}))
    lines += lines[200:210]  # byte-identical duplicates
    for i in range(250, 255):  # re-ingested copies: the later processing time wins
        event = orjson.loads(lines[i])
        event["properties"]["mp_processing_time_ms"] += 10_000
        event["properties"]["reingested"] = True
        lines.append(orjson.dumps(event))
    return lines


@pytest.fixture
def source_dir(tmp_path):
    folder = tmp_path / "mixpanel_files"
    folder.mkdir()
    (folder / "2024-11-22.jsonl").write_bytes(b"\n".join(small_day()) + b"\n")
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": f"user{i}", "$properties": {"$email": f"user{i}@example.com"}}) for i in range(17)
    ))
    return folder


def project(source_dir) -> dict:
    return local_project(PROJECT_ID, source_dir, profiles=True, timezone="UTC")


def folders(keys: list[str]) -> dict[str, list[str]]:
    grouped = defaultdict(list)
    for key in keys:
        folder, _, name = key.rpartition("/")
        grouped[folder].append(name)
    return {folder: sorted(names) for folder, names in grouped.items()}


def json_rows(store, bucket: str, folder: str) -> list[dict]:
    rows = []
    for key in store.keys(bucket, folder + "/"):
        name = key.rsplit("/", 1)[1]
        if name.startswith("part-") and key.rsplit("/", 1)[0] == folder:
            rows.extend(orjson.loads(line) for line in gzip.decompress(store.read(bucket, key)).splitlines())
    return rows


def manifest(store, bucket: str, folder: str) -> dict:
    return orjson.loads(store.read(bucket, f"{folder}/manifest.json"))


def assert_one_export(names: list[str], ext: str = ".json.gz") -> None:
    """A folder holds exactly its parts, the manifest and the complete marker."""
    parts = [n for n in names if n.startswith("part-")]
    assert sorted(set(names) - set(parts)) == ["complete", "manifest.json"], names
    assert parts and all(PART.match(p) and p.endswith(ext) for p in parts), parts


def test_partitions_people_and_identity_land_at_mixpanels_keys_and_a_rerun_replaces_them(
        store, tmp_path, source_dir, instance):
    bucket = unique_name("mp-export")
    store.create_bucket(bucket)
    defs = definitions(tmp_path, project(source_dir), [
        events_pipeline("hourly", "hourly", store.destination(bucket)),
        events_pipeline("daily", "daily", store.destination(bucket, prefix="daily/copy")),
        {"name": "people", "data_source": "people", "destination": store.destination(bucket)},
        {"name": "identity", "data_source": "identity", "destination": store.destination(bucket)},
    ])
    hourly = run_partition(defs, "hourly_job", instance, "2024-11-22-13:00")
    run_partition(defs, "daily_job", instance, "2024-11-22")
    run_partition(defs, "people_job", instance)
    run_partition(defs, "identity_job", instance)

    hour, day = f"{PROJECT_ID}/mp_master_event/2024/11/22/13", f"daily/copy/{PROJECT_ID}/mp_master_event/2024/11/22"
    people, identity = f"{PROJECT_ID}/mp_people_data", f"{PROJECT_ID}/mp_identity_mappings_data"
    layout = folders(store.keys(bucket))
    assert sorted(layout) == sorted([hour, day, people, identity])
    for names in layout.values():
        assert_one_export(names)

    lines = small_day()
    assert len(json_rows(store, bucket, hour)) == dedup_expected(lines, *HOUR_13)["count"] == 120
    assert len(json_rows(store, bucket, day)) == dedup_expected(lines)["count"] == 300
    assert len(json_rows(store, bucket, people)) == 17
    mappings = json_rows(store, bucket, identity)
    assert mappings and len(mappings) == manifest(store, bucket, identity)["rows"]
    assert all(m["distinct_id"].startswith("$device:") for m in mappings)
    (mat,) = hourly.asset_materializations_for_node("hourly__mp_master_event")
    part_key = f"{hour}/{layout[hour][-1]}"
    assert mat.metadata["output_uris"].value == [f"{store.scheme}://{bucket}/{part_key}"]
    assert mat.metadata["rows_written"].value == 120
    (spec,) = defs.resolve_assets_def(["hourly", "mp_master_event"]).specs
    assert spec.metadata["dagster/table_name"] == f"{store.scheme}://{bucket}/{PROJECT_ID}/mp_master_event"

    # Unchanged data: a rerun rewrites the same names, still one copy.
    run_partition(defs, "daily_job", instance, "2024-11-22")
    assert folders(store.keys(bucket, day + "/"))[day] == layout[day]

    # A late event arrives for 13:00; the rerun swaps the hour's part instead of adding one.
    late = event_line("Late Event", epoch("2024-11-22T13:59:59"), "late_user", "late-1")
    (source_dir / "2024-11-22-late.jsonl").write_bytes(late + b"\n")
    run_partition(defs, "hourly_job", instance, "2024-11-22-13:00")
    after = folders(store.keys(bucket, hour + "/"))[hour]
    assert_one_export(after)
    assert set(after).isdisjoint(set(layout[hour]) - {"complete", "manifest.json"})
    rows = json_rows(store, bucket, hour)
    assert len(rows) == 121 and [r["distinct_id"] for r in rows if r["event_name"] == "Late Event"] == ["late_user"]
    assert [p["name"] for p in manifest(store, bucket, hour)["parts"]] == [n for n in after if n.startswith("part-")]
    # Profiles are replaced whole the same way.
    with open(source_dir / "profiles.jsonl", "ab") as profiles:
        profiles.write(b"\n" + orjson.dumps({"$distinct_id": "newcomer", "$properties": {}}))
    run_partition(defs, "people_job", instance)
    assert_one_export(folders(store.keys(bucket, people + "/"))[people])
    assert len(json_rows(store, bucket, people)) == 18


def test_parquet_parts_read_back_with_pyarrow_and_duckdb_equal_the_sources_deduplicated_events(
        store, tmp_path, generated_day, instance):
    bucket = unique_name("mp-parquet")
    store.create_bucket(bucket)
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(generated_day, source / generated_day.name)
    defs = definitions(tmp_path, {"id": PROJECT_ID, "state": {"path": "state"},
                                  "source": {"type": "local", "path": str(source)}}, [
        events_pipeline("daily", "daily", store.destination(bucket, format="parquet", max_file_mb=5)),
    ])
    run_partition(defs, "daily_job", instance, "2024-11-22")

    folder = f"{PROJECT_ID}/mp_master_event/2024/11/22"
    names = folders(store.keys(bucket))[folder]
    assert_one_export(names, ".parquet")
    parts = [n for n in names if n.startswith("part-")]
    assert len(parts) > 1  # cut at max_file_mb
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    rows = []
    for name in parts:
        data = store.read(bucket, f"{folder}/{name}")
        (downloaded / name).write_bytes(data)
        table = pq.read_table(io.BytesIO(data))
        assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"
        assert pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).compression == "ZSTD"
        rows.extend(table.to_pylist())

    expected = dedup_expected(generated_day.read_bytes().splitlines())
    assert len(rows) == expected["count"] == manifest(store, bucket, folder)["rows"]
    got = sorted((r["event_name"], r["distinct_id"], r["time"].timestamp(), r["insert_id"],
                  orjson.dumps(orjson.loads(r["properties"]), option=orjson.OPT_SORT_KEYS)) for r in rows)
    kept = [*expected["kept"].values(), *expected["no_insert_id"]]
    want = sorted((e["event"], e["properties"].get("distinct_id"), float(e["properties"]["time"]),
                   e["properties"].get("$insert_id"), orjson.dumps(e["properties"], option=orjson.OPT_SORT_KEYS))
                  for e in kept)
    assert got == want  # the latest-processed copy of every duplicate, properties unchanged
    con = duckdb.connect()
    glob = str(downloaded / "*.parquet")
    assert con.execute(f"SELECT typeof(any_value(properties)), count(*), count(DISTINCT insert_id) "
                       f"FROM read_parquet('{glob}')").fetchone() == ("JSON", expected["count"], expected["count"])
