"""What stands between a run and a window it would damage: one writer at a time, the shrink guard,
a full disk, and a row bigger than a reader's default buffer.

Writers are real: threads and processes against a local folder, a DuckDB file and moto's S3. The
only wrapper (`Slowed`) delays a real store's part uploads, as a slow link does, so two writers
overlap every time instead of by luck.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from mixpanel_assets.destinations.base import DestinationError
from mixpanel_assets.destinations.io_managers import ALLOW_SHRINK_TAG, write_staged_table, write_staged_window
from mixpanel_assets.destinations.objects.local import LocalBucket
from mixpanel_assets.destinations.objects.store import Bucket, ObjectStoreDestination
from mixpanel_assets.destinations.warehouses.duckdb import DuckDBDestination
from mixpanel_assets.staging.stage import stage_events, stage_table
from mixpanel_assets.transform.records import profile_row
from mixpanel_assets.windows import PartitionWindow, Window
from mixpanel_assets_tests.emulators.fixtures import unique_name
from mixpanel_assets_tests.emulators.stores import DelegatingBucket, store_for
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, events_pipeline, local_project

PROJECT_ID = 77
START, END = epoch("2024-11-22T00:00:00"), epoch("2024-11-23T00:00:00")
FOLDER = f"{PROJECT_ID}/mp_master_event/2024/11/22/"


def window() -> PartitionWindow:
    start = dt.datetime(2024, 11, 22, tzinfo=dt.UTC)
    return PartitionWindow("2024-11-22", start, start + dt.timedelta(days=1), start, "daily")


def day_lines(version: int, n: int = 3000, pad: int = 200) -> list[bytes]:
    return [event_line("Viewed", START + i * 20, f"u{i % 50}", f"v{version}-{i}", version=version, pad="x" * pad)
            for i in range(n)]


def staged(tmp_path: Path, lines: list[bytes]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return stage_events([b"\n".join(lines) + b"\n"], [Window(START, END)], ["2024-11-22"],
                        staging_root=tmp_path, block_bytes=64 << 10, workers=1)


class Slowed(DelegatingBucket):
    """A real store whose part uploads take `delay` seconds longer, as over a slow link."""

    def __init__(self, real: Bucket, delay: float):
        super().__init__(real)
        self.delay = delay

    def upload_file(self, key, path, md5=None):
        time.sleep(self.delay)
        self.real.upload_file(key, path, md5=md5)


def object_destination(bucket: Bucket, run_id: str, wait: float = 120.0) -> ObjectStoreDestination:
    destination = ObjectStoreDestination("guarded", PROJECT_ID, bucket, max_file_mb=1)
    destination.max_bytes = 96 << 10  # many parts from a small window: many steps to interleave
    destination.run_id = run_id
    destination.lease_wait = wait
    return destination


def write_versions_at_once(make_bucket, tmp_path: Path) -> list[BaseException]:
    """Two runs (threads) replace the same window with different versions at the same moment."""
    errors: list[BaseException] = []
    versions = {v: staged(tmp_path / f"stage{v}", day_lines(v)) for v in (1, 2)}
    barrier = threading.Barrier(2)

    def run(version: int) -> None:
        destination = object_destination(Slowed(make_bucket(), 0.05), f"run-{version}")
        barrier.wait()
        try:
            write_staged_window(destination, versions[version].windows[0], tmp_path / f"parts{version}", window=window())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for version in versions.values():
        version.cleanup()
    return errors


def assert_one_whole_version(names: list[str], read) -> None:
    """The manifest names only parts that exist, every part there is in it, and together they hold
    exactly one writer's version, whole."""
    manifest = json.loads(read(FOLDER + "manifest.json"))
    named = [FOLDER + p["name"] for p in manifest["parts"]]
    parts = [n for n in names if n.rsplit("/", 1)[-1].startswith("part-")]
    assert sorted(named) == sorted(parts), (named, parts)
    rows = [orjson.loads(line) for key in named for line in gzip.decompress(read(key)).splitlines()]
    versions = {r["properties"]["version"] for r in rows}
    assert len(versions) == 1 and len(rows) == manifest["rows"] == 3000
    assert not [n for n in names if ".lease" in n], names


def test_two_writers_of_one_window_in_a_local_folder_take_turns(tmp_path):
    root = tmp_path / "bucket"
    errors = write_versions_at_once(lambda: LocalBucket(root), tmp_path)
    assert not errors, errors
    folder = root / FOLDER
    assert_one_whole_version([FOLDER + p.name for p in folder.iterdir()], lambda key: (root / key).read_bytes())


def test_two_writers_of_one_window_in_s3_take_turns(request, monkeypatch, tmp_path):
    store = store_for("s3", request)
    bucket = unique_name("mp-lease")
    store.create_bucket(bucket)
    errors = write_versions_at_once(lambda: store.adapter(bucket), tmp_path)
    assert not errors, errors
    assert_one_whole_version(store.keys(bucket, FOLDER), lambda key: store.read(bucket, key))


@pytest.mark.parametrize("kind", ["s3", pytest.param("gcs", marks=pytest.mark.xfail(
    strict=True, reason="gcp-storage-emulator ignores ifGenerationMatch (its source never reads it); real GCS "
    "honours it, answering 412")), "azure"])
def test_each_store_creates_a_lease_only_once(request, kind):
    """The emulators honour the conditional create (S3 and Azure `If-None-Match: *`, GCS
    `ifGenerationMatch=0`): the lease's atomicity is the store's, not ours."""
    store = store_for(kind, request)
    bucket = unique_name("mp-lease")
    store.create_bucket(bucket)
    adapter = store.adapter(bucket)
    assert adapter.create_if_absent("f/.lease", b"first") is True
    assert adapter.create_if_absent("f/.lease", b"second") is False
    assert store.read(bucket, "f/.lease") == b"first"


def test_a_second_writer_that_waits_too_long_fails_naming_the_window_and_the_holder(tmp_path):
    root = tmp_path / "bucket"
    first = staged(tmp_path / "a", day_lines(1))
    second = staged(tmp_path / "b", day_lines(2))
    holder = threading.Thread(target=write_staged_window, args=(
        object_destination(Slowed(LocalBucket(root), 0.3), "run-holder"), first.windows[0], tmp_path / "pa"),
        kwargs={"window": window()})
    holder.start()
    deadline = time.monotonic() + 10
    while not (root / FOLDER / ".lease").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(DestinationError) as refused:
        write_staged_window(object_destination(LocalBucket(root), "run-late", wait=0.5), second.windows[0],
                            tmp_path / "pb", window=window())
    holder.join()
    message = str(refused.value)
    assert "partition 2024-11-22" in message and str(root / FOLDER) in message and "run run-holder" in message
    assert "waited" in message
    assert_one_whole_version([FOLDER + p.name for p in (root / FOLDER).iterdir()],
                             lambda key: (root / key).read_bytes())


KILLED_HOLDER = """
import os, sys
from mixpanel_assets.destinations.objects.lease import FolderLease
from mixpanel_assets.destinations.objects.local import LocalBucket
lease = FolderLease(LocalBucket(sys.argv[1]), sys.argv[2], pipeline="guarded", what="partition 2024-11-22",
                    holder="run-killed", ttl=3)
lease.__enter__()
os.kill(os.getpid(), 9)
"""


def test_a_lease_left_by_a_killed_writer_expires(tmp_path):
    root = tmp_path / "bucket"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", KILLED_HOLDER, str(root), FOLDER], env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert json.loads((root / FOLDER / ".lease").read_bytes())["run_id"] == "run-killed"
    version = staged(tmp_path / "a", day_lines(1))
    began = time.monotonic()
    write_staged_window(object_destination(LocalBucket(root), "run-next", wait=30), version.windows[0],
                        tmp_path / "pa", window=window())
    assert time.monotonic() - began < 15
    assert_one_whole_version([FOLDER + p.name for p in (root / FOLDER).iterdir()],
                             lambda key: (root / key).read_bytes())


# --- DuckDB: one writing process per file ------------------------------------------------------

HOLD_DUCKDB_OPEN = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
print("open", flush=True)
time.sleep(float(sys.argv[2]))
"""

HOLD_WRITERS_LOCK = """
import sys, time
from mixpanel_assets.destinations.warehouses.duckdb import DuckDBDestination
destination = DuckDBDestination("guarded", 77, sys.argv[1])
destination.run_id = "run-holder"
with destination._writer("a test holding the writers' lock"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(script: str, db: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script, str(db), str(seconds)], stdout=subprocess.PIPE, env=env)
    assert process.stdout.readline().strip() in (b"open", b"held")
    return process


def test_duckdb_waits_for_another_process_holding_the_file_then_loads(tmp_path):
    db = tmp_path / "wh.duckdb"
    duckdb.connect(str(db)).close()
    holder = hold(HOLD_DUCKDB_OPEN, db, 3)
    destination = DuckDBDestination("guarded", PROJECT_ID, db)
    destination.lock_wait = 30
    version = staged(tmp_path / "a", day_lines(1, n=50))
    write_staged_window(destination, version.windows[0], tmp_path / "pa", window=window())
    holder.wait(timeout=30)
    assert destination.read_event_window(window()).rows == 50


def test_duckdb_second_writer_fails_naming_the_window_and_the_holding_run(tmp_path):
    db = tmp_path / "wh.duckdb"
    holder = hold(HOLD_WRITERS_LOCK, db, 6)
    destination = DuckDBDestination("guarded", PROJECT_ID, db)
    destination.lock_wait = 1
    version = staged(tmp_path / "a", day_lines(1, n=50))
    try:
        with pytest.raises(DestinationError) as refused:
            write_staged_window(destination, version.windows[0], tmp_path / "pa", window=window(), allow_shrink=True)
    finally:
        holder.kill()
        holder.wait()
    message = str(refused.value)
    assert "partition 2024-11-22" in message and str(db) in message and "run run-holder" in message
    assert "nothing was changed" in message


# --- the shrink guard ----------------------------------------------------------------------------


def local_destination(root: Path) -> ObjectStoreDestination:
    return object_destination(LocalBucket(root), "run-shrink")


def manifest_rows(root: Path) -> int:
    return json.loads((root / FOLDER / "manifest.json").read_bytes())["rows"]


def test_a_window_that_would_lose_most_of_its_rows_is_not_replaced(tmp_path):
    root = tmp_path / "bucket"
    write_staged_window(local_destination(root), staged(tmp_path / "a", day_lines(1)).windows[0], tmp_path / "p",
                        window=window())
    for n, max_shrink in ((1000, 0.5), (0, 0.99)):
        smaller = staged(tmp_path / f"s{n}", day_lines(2, n=n) if n else [])
        with pytest.raises(DestinationError) as refused:
            write_staged_window(local_destination(root), smaller.windows[0], tmp_path / "p", window=window(),
                                max_shrink=max_shrink)
        message = str(refused.value)
        assert "3,000 rows" in message and f"has {n:,}" in message and ALLOW_SHRINK_TAG in message
        assert "max_shrink" in message and "partition 2024-11-22" in message
        assert manifest_rows(root) == 3000


@pytest.mark.parametrize("how", ["setting", "tag"])
def test_a_shrink_passes_when_the_pipeline_or_the_run_allows_it(tmp_path, how):
    root = tmp_path / "bucket"
    write_staged_window(local_destination(root), staged(tmp_path / "a", day_lines(1)).windows[0], tmp_path / "p",
                        window=window())
    allow = {"max_shrink": 0.7} if how == "setting" else {"allow_shrink": True}
    write_staged_window(local_destination(root), staged(tmp_path / "b", day_lines(2, n=1000)).windows[0],
                        tmp_path / "p", window=window(), **allow)
    assert manifest_rows(root) == 1000


def test_a_small_drop_passes_by_default(tmp_path):
    root = tmp_path / "bucket"
    write_staged_window(local_destination(root), staged(tmp_path / "a", day_lines(1)).windows[0], tmp_path / "p",
                        window=window())
    write_staged_window(local_destination(root), staged(tmp_path / "b", day_lines(2, n=2000)).windows[0],
                        tmp_path / "p", window=window())
    assert manifest_rows(root) == 2000


def profiles(n: int, root: Path):
    root.mkdir(parents=True, exist_ok=True)
    return stage_table([profile_row(orjson.dumps({"$distinct_id": f"u{i}", "$properties": {"n": i}}))[1]
                        for i in range(n)], "mp_people_data", staging_root=root)


def test_the_people_table_is_guarded_in_duckdb(tmp_path):
    db = tmp_path / "wh.duckdb"
    destination = DuckDBDestination("guarded", PROJECT_ID, db)
    write_staged_table(destination, profiles(2500, tmp_path / "a"), tmp_path / "p")
    with pytest.raises(DestinationError, match=r"2,500 rows and the new version has 0"):
        write_staged_table(destination, profiles(0, tmp_path / "b"), tmp_path / "p")
    assert destination.read_table("mp_people_data").rows == 2500
    write_staged_table(destination, profiles(0, tmp_path / "c"), tmp_path / "p", allow_shrink=True)
    assert destination.read_table("mp_people_data").rows == 0


def test_a_gdpr_deletion_may_empty_a_window_and_the_next_export_agrees(tmp_path):
    """GDPR deletions go through Destination.delete_event_rows, outside the guard; afterwards the
    window holds what the source holds, so re-exporting it shrinks nothing."""
    root = tmp_path / "bucket"
    lines = [event_line("Viewed", START + i, "gone", f"g{i}") for i in range(100)]
    write_staged_window(local_destination(root), staged(tmp_path / "a", lines).windows[0], tmp_path / "p",
                        window=window())
    removals = local_destination(root).delete_event_rows(frozenset({"gone"}), [window()], tmp_path / "gdpr")
    assert sum(r.rows for r in removals) == 100 and manifest_rows(root) == 0
    write_staged_window(local_destination(root), staged(tmp_path / "b", []).windows[0], tmp_path / "p",
                        window=window())


def test_the_run_tag_lifts_the_guard_for_one_dagster_run(tmp_path, instance):
    source = tmp_path / "source"
    source.mkdir()
    day = source / "2024-11-22.jsonl"
    day.write_bytes(b"\n".join(day_lines(1, n=300, pad=10)) + b"\n")
    defs = definitions(tmp_path, local_project(PROJECT_ID, source, timezone="UTC"),
                       [events_pipeline("guarded", "daily", {"type": "local", "path": "bucket"})])
    job = defs.resolve_job_def("guarded_job")
    job.execute_in_process(partition_key="2024-11-22", instance=instance)
    day.write_bytes(b"\n".join(day_lines(2, n=100, pad=10)) + b"\n")
    refused = job.execute_in_process(partition_key="2024-11-22", instance=instance, raise_on_error=False)
    assert not refused.success
    failures = [e.event_specific_data.error.to_string() for e in refused.all_events if e.is_step_failure]
    assert any("300 rows and the new version has 100" in f for f in failures), failures
    assert manifest_rows(tmp_path / "bucket") == 300
    job.execute_in_process(partition_key="2024-11-22", instance=instance, tags={ALLOW_SHRINK_TAG: "true"})
    assert manifest_rows(tmp_path / "bucket") == 100


# --- a full disk at the destination ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_destination_disk_names_the_path_and_leaves_nothing_behind(tmp_path, small_disk):
    destination = object_destination(LocalBucket(small_disk), "run-full")
    # Random padding does not compress: ~4 MB of parts for a 2 MB disk.
    lines = [event_line("Viewed", START + i, f"u{i}", f"r{i}", pad=os.urandom(400).hex()) for i in range(5000)]
    version = staged(tmp_path / "a", lines)
    for attempt in range(2):  # the retry fails the same clear way
        with pytest.raises(DestinationError) as full:
            write_staged_window(destination, version.windows[0], tmp_path / f"p{attempt}", window=window())
        message = str(full.value)
        assert "no space left" in message and str(small_disk / FOLDER) in message and "needs" in message
        assert "Errno" not in message
        assert getattr(full.value.__cause__, "permanent", False)
        left = [p.name for p in (small_disk / FOLDER).iterdir()] if (small_disk / FOLDER).exists() else []
        assert left == [], left
    assert shutil.disk_usage(small_disk).used < 64 << 10


# --- one very large event ----------------------------------------------------------------------


def test_a_50_mb_event_loads_into_duckdb(tmp_path):
    lines = [event_line("Huge", START + 1, "u1", "big", blob="y" * (50 << 20)), event_line("Small", START + 2, "u2", "s")]
    destination = DuckDBDestination("guarded", PROJECT_ID, tmp_path / "wh.duckdb")
    write_staged_window(destination, staged(tmp_path / "a", lines).windows[0], tmp_path / "p", window=window())
    conn = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    sizes = conn.execute("SELECT event_name, length(CAST(properties AS VARCHAR)) FROM mp_master_event ORDER BY 1").fetchall()
    conn.close()
    assert sizes[0][0] == "Huge" and sizes[0][1] > 50 << 20 and sizes[1][0] == "Small"
