"""Faults during an export: the destination holds the previous version of a window or the new one,
never a mix or two copies, and a retry converges to exactly the source's deduplicated rows.

Four faults, each through real parts: a Mixpanel stream cut mid-partition (the fake Export API
server), a destination failing in the middle of its write (a directory where a part file must go;
a DuckDB constraint that rejects the INSERT after the DELETE), the run process SIGKILLed at four
points inside the write, and the daemon killed and restarted during a backfill (PostgreSQL,
code server, webserver and daemon as separate processes, the backfill launched through GraphQL).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import duckdb
import orjson
import pytest

from mixpanel_assets.defs.build import build_definitions
from mixpanel_assets_tests.dagster_stack import REPO, wait_for
from mixpanel_assets_tests.fake_mixpanel import SECRET, USERNAME, cut_stream, terminated_early
from mixpanel_assets_tests.helpers import TODAY, dedup_expected, epoch, event_line, run_partition, write_config

PROJECT_ID = 777
DAY = "2024-11-22"


def expected_keys(lines: list[bytes]) -> list[tuple]:
    """Mixpanel's dedup key of every row the source should leave in the window, sorted."""
    kept = dedup_expected(lines)
    events = [*kept["kept"].values(), *kept["no_insert_id"]]
    return sorted(_key(e["event"], e["properties"]) for e in events)


def _key(name, props) -> tuple:
    return (name, str(props.get("distinct_id")), float(props["time"]), str(props.get("$insert_id")))


def row_keys(rows: list[dict]) -> list[tuple]:
    return sorted((r["event_name"], str(r["distinct_id"]), float(r["time"]), str(r["insert_id"])) for r in rows)


def read_parts(paths: list[Path]) -> list[dict]:
    from mixpanel_assets.staging.parts import iter_part_lines

    return [orjson.loads(line) for path in paths for line in iter_part_lines(path)]


def window_version(folder: Path) -> list[tuple]:
    """What a manifest-honouring reader sees; checks the folder's promises on the way."""
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    listed = [folder / p["name"] for p in manifest["parts"]]
    assert all(p.is_file() for p in listed), "manifest.json lists a part file that is not there"
    on_disk = sorted(p.name for p in folder.iterdir() if p.name.startswith("part-") and p.is_file())
    if (folder / "complete").exists():
        assert on_disk == sorted(p.name for p in listed), "'complete' is there but part-* files differ from the manifest"
    rows = read_parts(listed)
    assert manifest["rows"] == len(rows)
    return row_keys(rows)


def duckdb_version(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute("SELECT event_name, distinct_id, epoch(time), insert_id FROM mp_master_event").fetchall()
    return sorted((n, str(d), float(t), str(i)) for n, d, t, i in rows)


@pytest.fixture
def source(tmp_path, generated_day):
    folder = tmp_path / "mixpanel_files"
    folder.mkdir()
    shutil.copy(generated_day, folder / f"{DAY}.jsonl")
    return folder


def late_events() -> list[bytes]:
    """Late arrivals for the day: after them the source is 'version 2' of the window."""
    return [event_line("Late Event", epoch(f"{DAY}T13:30:00") + i, f"late_user_{i}", f"late-{i}") for i in range(25)]


def add_late_events(source: Path) -> None:
    (source / f"{DAY}-late.jsonl").write_bytes(b"\n".join(late_events()) + b"\n")


def pipelines_file(tmp_path: Path, source: Path) -> Path:
    project = {"id": PROJECT_ID, "state": {"path": "state"}, "source": {"type": "local", "path": str(source)}}
    ranged = {"data_source": "events", "frequency": "daily", "from_date": "2024-11-20", "to_date": "2024-11-30",
              "created": "2024-11-20"}
    return write_config(tmp_path, project, [
        {"name": "files", **ranged, "destination": {"type": "local", "path": "bucket", "max_file_mb": 1}},
        {"name": "probe", **ranged, "destination": {"type": "local", "path": "probe_bucket", "max_file_mb": 1}},
        {"name": "db", **ranged, "destination": {"type": "duckdb", "path": "wh.duckdb"}},
    ])


def window_folder(tmp_path: Path, bucket: str = "bucket") -> Path:
    return tmp_path / bucket / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"


class RunnerProcess:
    """One partition run in its own process group (partition_runner.py), so it can be killed whole."""

    def __init__(self, config: Path, job: str, home: Path, pause_at: str | None = None):
        self.marker = home / "paused"
        args = [str(config), job, DAY, str(home)] + ([pause_at, str(self.marker)] if pause_at else [])
        self.log = open(home / "runner.log", "wb")
        # The run's temp folder is this test's (private_tmp), so no other run on the machine sweeps it.
        env = {**os.environ, "TMPDIR": tempfile.gettempdir()}
        self.proc = subprocess.Popen([sys.executable, "-m", "mixpanel_assets_tests.partition_runner", *args],
                                     cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the run process ended (exit {self.proc.returncode}) before the fault:\n{self.output()}")
        return True

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture
def private_tmp(monkeypatch) -> Path:
    """A temp folder of this test's own, for its runs and their scratch folders: a run sweeps the
    scratch folders of dead processes from its temp folder (staging/scratch.py), so in a shared
    /tmp another run (a parallel test, another checkout's suite) would sweep a killed run's
    folders before this test looks at them. Short, right under /tmp: the run's worker pool puts
    its forkserver socket there, and a Unix socket path may not exceed 107 bytes. Not removed
    afterwards: the test process's forkserver, started here, keeps its socket in it (its own
    `pymp-*` folder in it goes when the process exits); the killed run's scratch is swept by the rerun."""
    folder = Path(tempfile.mkdtemp(prefix="mpf-"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def scratch_folders_of(pid: int) -> list[Path]:
    """The staging folders (mixpanel_assets.staging.scratch) a run process has made in the temp folder."""
    return sorted(Path(tempfile.gettempdir()).glob(f"mp-*~*~{pid}~*"))


def step_up_for_retry(home: Path) -> str | None:
    """The error of the first failed attempt, once the run has put its step up for retry."""
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        for run in instance.get_runs():
            for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
                error = record.dagster_event.event_specific_data.error
                return error.to_string() if error else "(no error info)"
    return None


@pytest.mark.parametrize("fault", [cut_stream(after_bytes=300_000), terminated_early(after_lines=5_000)],
                         ids=["connection_cut", "export_terminated_early"])
def test_a_stream_that_breaks_mid_partition_is_fetched_again_and_the_window_is_exact(
        tmp_path, fake_mixpanel, generated_day, instance, monkeypatch, fault):
    lines = generated_day.read_bytes().splitlines()
    fake_mixpanel.add_events(lines)
    fake_mixpanel.queue_fault(fault)
    monkeypatch.setenv("MIXPANEL_SERVICE_ACCOUNT_USERNAME", USERNAME)
    monkeypatch.setenv("MIXPANEL_SERVICE_ACCOUNT_SECRET", SECRET)
    project = {"id": fake_mixpanel.project_id, "state": {"path": "state"}, "source": fake_mixpanel.source_config()}
    defs = build_definitions(write_config(tmp_path, project, [
        {"name": "db", "data_source": "events", "from_date": "2024-11-20", "to_date": "2024-11-30",
         "created": "2024-11-20", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
    ]), today=TODAY)
    result = run_partition(defs, "db_job", instance, DAY)
    assert result.success
    assert len(fake_mixpanel.export_requests()) == 2  # the broken query, then the one that was loaded
    assert duckdb_version(tmp_path / "wh.duckdb") == expected_keys(lines)
    warnings = [r.user_message for r in instance.all_logs(result.run_id) if "exporting the span again" in r.user_message]
    assert len(warnings) == 1


def test_a_destination_failing_mid_upload_keeps_the_previous_version_and_the_retry_converges(tmp_path, source, instance):
    config = pipelines_file(tmp_path, source)
    defs = build_definitions(config, today=TODAY)
    run_partition(defs, "files_job", instance, DAY)
    v1 = window_version(window_folder(tmp_path))
    add_late_events(source)
    run_partition(defs, "probe_job", instance, DAY)  # the same export into another folder: v2's part names
    v2_parts = sorted(p.name for p in window_folder(tmp_path, "probe_bucket").iterdir() if p.name.startswith("part-"))
    v2 = window_version(window_folder(tmp_path, "probe_bucket"))
    assert len(v2_parts) >= 3 and len(v2) == len(v1) + 25
    obstacle = window_folder(tmp_path) / v2_parts[2]
    obstacle.mkdir()  # the third upload of v2 cannot replace a directory: the store fails mid-write

    home = tmp_path / "runner_home"
    home.mkdir()
    runner = RunnerProcess(config, "files_job", home)
    try:
        error = wait_for(lambda: runner.alive() and step_up_for_retry(home), 240, "the failed write")
        assert "pipeline 'files'" in error and "previous data there is unchanged" in error
        assert str(window_folder(tmp_path)) in error
        folder = window_folder(tmp_path)
        assert window_version(folder) == v1
        assert (folder / "complete").exists()  # the uploaded v2 parts were removed again: as it was
        assert not [p for p in folder.iterdir() if p.name in v2_parts and p.is_file()]
    finally:
        runner.kill()

    obstacle.rmdir()
    run_partition(defs, "files_job", instance, DAY)  # the retry, once the store works again
    assert window_version(window_folder(tmp_path)) == v2 == expected_keys(
        (source / f"{DAY}.jsonl").read_bytes().splitlines() + late_events())
    assert (window_folder(tmp_path) / "complete").exists()


def test_a_duckdb_load_failing_inside_its_transaction_keeps_the_previous_rows(tmp_path, source, instance):
    config = pipelines_file(tmp_path, source)
    defs = build_definitions(config, today=TODAY)
    run_partition(defs, "db_job", instance, DAY)
    db = tmp_path / "wh.duckdb"
    v1 = duckdb_version(db)
    _set_late_event_check(db, reject=True)  # the INSERT of v2 fails after its DELETE ran
    add_late_events(source)

    home = tmp_path / "runner_home"
    home.mkdir()
    runner = RunnerProcess(config, "db_job", home)
    try:
        error = wait_for(lambda: runner.alive() and step_up_for_retry(home), 240, "the failed load")
        assert "pipeline 'db'" in error and "rolled back" in error and DAY in error
        assert duckdb_version(db) == v1
    finally:
        runner.kill()

    _set_late_event_check(db, reject=False)
    run_partition(defs, "db_job", instance, DAY)
    assert duckdb_version(db) == expected_keys((source / f"{DAY}.jsonl").read_bytes().splitlines() + late_events())


def _set_late_event_check(db: Path, reject: bool) -> None:
    """Rebuild mp_master_event with (or without) a CHECK that refuses the late events."""
    check = ", CHECK (event_name <> 'Late Event')" if reject else ""
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE TABLE rebuilt AS SELECT * FROM mp_master_event")
        conn.execute("DROP VIEW IF EXISTS mp_master_event_resolved")
        conn.execute("DROP TABLE mp_master_event")
        conn.execute(f"""CREATE TABLE mp_master_event (device_id VARCHAR, distinct_id VARCHAR, event_name VARCHAR,
            insert_id VARCHAR, properties JSON, time TIMESTAMP, user_id VARCHAR{check})""")
        conn.execute("INSERT INTO mp_master_event SELECT * FROM rebuilt")
        conn.execute("DROP TABLE rebuilt")


@pytest.mark.parametrize("pause_at, job, sees", [
    ("before_manifest", "files_job", "v1"),
    ("before_stale_delete", "files_job", "v2"),
    ("before_complete", "files_job", "v2"),
    ("before_commit", "db_job", "v1"),
])
def test_a_run_killed_inside_the_destination_write_leaves_one_whole_version_and_a_rerun_is_exact(
        tmp_path, source, instance, pause_at, job, sees, private_tmp):
    config = pipelines_file(tmp_path, source)
    defs = build_definitions(config, today=TODAY)
    read = (lambda: duckdb_version(tmp_path / "wh.duckdb")) if job == "db_job" else (
        lambda: window_version(window_folder(tmp_path)))
    run_partition(defs, job, instance, DAY)
    versions = {"v1": read()}
    add_late_events(source)
    versions["v2"] = expected_keys((source / f"{DAY}.jsonl").read_bytes().splitlines() + late_events())
    assert versions["v1"] == expected_keys((source / f"{DAY}.jsonl").read_bytes().splitlines())

    home = tmp_path / "runner_home"
    home.mkdir()
    runner = RunnerProcess(config, job, home, pause_at)
    try:
        wait_for(lambda: runner.alive() and runner.marker.exists(), 240, f"the run to reach {pause_at}")
        left_behind = scratch_folders_of(runner.proc.pid)
    finally:
        runner.kill()  # SIGKILL to the run's whole process group, its worker processes included

    assert read() == versions[sees]
    if job == "files_job":
        assert not (window_folder(tmp_path) / "complete").exists()  # readers of part-* know to wait
    assert left_behind and all(folder.exists() for folder in left_behind)  # the killed run could not clean up
    run_partition(defs, job, instance, DAY)
    assert read() == versions["v2"]
    assert not any(folder.exists() for folder in left_behind)  # the next run swept them
    if job == "files_job":
        assert (window_folder(tmp_path) / "complete").exists()


@pytest.mark.browser
def test_a_backfill_completes_exactly_when_the_daemon_is_killed_and_restarted_mid_way(dagster_stack):
    stack = dagster_stack
    backfill = stack.launch_backfill(["restart_daily", "mp_master_event"], stack.days)
    runs = wait_for(lambda: stack.backfill_runs(backfill), 300, "the backfill's first runs")
    assert any(r["status"] not in ("SUCCESS", "FAILURE") for r in runs)  # mid-way: some runs still queued
    stack.restart_daemon()  # SIGKILL, then a new daemon on the same Postgres instance

    assert stack.wait_for_backfill(backfill) == "COMPLETED_SUCCESS"
    runs = stack.backfill_runs(backfill)
    assert sorted(r["status"] for r in runs) == ["SUCCESS"] * len(stack.days)
    for day in stack.days:
        folder = stack.work / "bucket_restart" / str(stack.project_id) / "mp_master_event" / Path(*day.split("-"))
        assert window_version(folder) == expected_keys(stack.source_lines(day))
        assert (folder / "complete").exists()
    # One Mixpanel step per project at a time, backfill runs included (they carry no job tags).
    # Only the export step is in the project's pool: a run's checks read the destination, not
    # Mixpanel, and may overlap the next run's export.
    steps = sorted(stack.step_interval(r["runId"], "restart_daily__mp_master_event") for r in runs)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(steps, steps[1:]))
