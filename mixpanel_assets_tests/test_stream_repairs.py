"""Streams that are whole but not as expected: lines split in two, times in milliseconds, rows far
outside the run's windows, and a staging disk that fills up.

Each case ran the export to a successful end with rows missing (or, for the full disk, left
workers writing after the failure); here each is repaired, or stopped loudly, through the real
asset or the real staging with its worker pool.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time

import duckdb
import orjson
import pytest

from mixpanel_assets.mixpanel.client import ExportQuery, MixpanelClient
from mixpanel_assets.staging.blocks import split_blocks
from mixpanel_assets.staging.stage import BadInputError, stage_events
from mixpanel_assets.transform.records import LocalFile, Origin
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, SECRET, USERNAME, split_line
from mixpanel_assets_tests.helpers import (
    definitions,
    epoch,
    event_line,
    events_pipeline,
    local_project,
    read_folder_rows,
    run_partition,
)

DAY = "2024-11-22"
DAY_START = epoch(f"{DAY}T00:00:00")
WHOLE_DAY = [Window(DAY_START, DAY_START + 86400)]
ROWS = 2976  # the day of the report: one split line left 2,975
USER_ENV = "REPAIRS_MIXPANEL_USERNAME"
SECRET_ENV = "REPAIRS_MIXPANEL_SECRET"
DB = events_pipeline("daily_db", "daily", {"type": "duckdb", "path": "wh.duckdb"})
FILES = events_pipeline("daily_files", "daily", {"type": "local", "path": "bucket"})


def day_lines(n: int = ROWS, day_start: int = DAY_START) -> list[bytes]:
    """`n` distinct events spread over the day (every one kept by dedup), some with identity links."""
    step = 86400 / n
    return [event_line("Viewed Page" if i % 5 else "Signed Up", day_start + int(i * step), f"user-{i % 97}",
                       f"ins-{day_start}-{i}", mp_processing_time_ms=(day_start + i) * 1000,
                       **({"$device_id": f"dev-{i % 31}", "$user_id": f"user-{i % 97}"} if i % 7 == 0 else {}))
            for i in range(n)]


@pytest.fixture
def mixpanel(fake_mixpanel, monkeypatch):
    fake_mixpanel.add_events(day_lines())
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


def api_project(fake) -> dict:
    return {"id": PROJECT_ID, "timezone": "UTC", "state": {"path": "state"},
            "source": fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}


def db_count(tmp_path) -> int:
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        return conn.execute("SELECT count(DISTINCT insert_id) FROM mp_master_event").fetchall()[0][0]


def output_metadata(result, node: str) -> dict:
    (output,) = [e for e in result.events_for_node(node) if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def failure_message(instance, result) -> str:
    (failure,) = [e for e in instance.all_logs(result.run_id)
                  if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    return failure.dagster_event.step_failure_data.error.message


# --- a line split in two -------------------------------------------------------------------------


@pytest.mark.parametrize("splits", [1, 3])
def test_a_line_split_in_two_is_rejoined_and_every_row_arrives(tmp_path, mixpanel, instance, splits):
    # One split was two bad lines under the default policy (a row lost, the run green); three failed it.
    mixpanel.queue_fault(*[split_line(index) for index in (17, 1500, 2900)[:splits]])
    defs = definitions(tmp_path, api_project(mixpanel), [DB])
    result = run_partition(defs, "daily_db_job", instance, DAY)
    assert [r.faults for r in mixpanel.export_requests()] == [("split",) * splits]
    assert db_count(tmp_path) == ROWS
    metadata = output_metadata(result, "daily_db__mp_master_event")
    assert (metadata["rejoined_lines"], metadata["bad_lines"], metadata["lines_read"]) == (splits, 0, ROWS)


def test_a_bad_line_followed_by_a_good_one_stays_one_bad_line(tmp_path):
    lines = day_lines(50)
    lines.insert(10, b'{"event": "Broken", "properties": {"time": 1')  # a line cut short, not split
    staged = stage_events([b"\n".join(lines) + b"\n"], WHOLE_DAY, ["d"], staging_root=tmp_path,
                          max_bad_count=1)
    try:
        assert (staged.rows, staged.bad_lines, staged.rejoined_lines) == (50, 1, 0)
        assert staged.bad_examples[0][0] == "line 11"
    finally:
        staged.cleanup()


def _split_body(mixpanel, index: int) -> tuple[list[bytes], int]:
    """The fake's answer for the day with event `index` split, as the real client reads it, and the
    block size that makes staging cut the stream right after the first fragment."""
    mixpanel.queue_fault(split_line(index))
    client = MixpanelClient(PROJECT_ID, USERNAME, SECRET, export_url=mixpanel.url, engage_url=mixpanel.url)
    try:
        chunks = list(client.export_chunks(ExportQuery(dt.date(2024, 11, 22), dt.date(2024, 11, 22))))
    finally:
        client.close()
    body = b"".join(chunks)
    lines = body.split(b"\n")
    broken = next(i for i, line in enumerate(lines) if line and not _is_json(line))
    first_fragment_end = sum(len(line) + 1 for line in lines[:broken]) + len(lines[broken])
    return chunks, first_fragment_end + 1


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
        return True
    except orjson.JSONDecodeError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("source", ["stream", "local file"])
def test_a_line_split_exactly_on_a_block_boundary_is_rejoined(tmp_path, mixpanel, workers, source):
    chunks, block_bytes = _split_body(mixpanel, 1234)
    if source == "stream":
        inputs = [Origin("Export API query for 2024-11-22"), *chunks]
    else:
        path = tmp_path / f"{DAY}.jsonl"
        path.write_bytes(b"".join(chunks))
        inputs = [LocalFile(str(path), path.name)]
    # The first block ends with the first fragment, the second starts with the other one.
    first = next(block for _, _, _, block in split_blocks(chunks, block_bytes))
    assert first.endswith(b"\n") and not _is_json(first.splitlines()[-1])
    (tmp_path / "staging").mkdir()
    staged = stage_events(inputs, WHOLE_DAY, ["d"], staging_root=tmp_path / "staging", workers=workers,
                          block_bytes=block_bytes)
    try:
        assert (staged.rows, staged.bad_lines, staged.rejoined_lines, staged.lines) == (ROWS, 0, 1, ROWS)
        rows = [orjson.loads(r) for r in staged.windows[0].iter_rows()]
        assert [r["insert_id"] for r in rows] == [f"ins-{DAY_START}-{i}" for i in range(ROWS)]  # in stream order
        assert len(staged.windows[0].links) == len(_links_of(day_lines()))
    finally:
        staged.cleanup()


def _links_of(lines: list[bytes]) -> set:
    links = set()
    for line in lines:
        props = orjson.loads(line)["properties"]
        if "$device_id" in props:
            links.add((props["$device_id"], props["$user_id"]))
    return links


def test_fragments_of_two_different_inputs_are_never_joined(tmp_path):
    line, good = day_lines(2)
    head, tail = line[:40], line[40:]
    # A good line in a third input: an input of bad lines only fails whatever the policy (input_checks.py).
    staged = stage_events([Origin("a.jsonl"), head + b"\n", Origin("b.jsonl"), tail + b"\n", Origin("c.jsonl"),
                           good + b"\n"], WHOLE_DAY, ["d"], staging_root=tmp_path, max_bad_count=2)
    try:
        assert (staged.rows, staged.bad_lines, staged.rejoined_lines) == (1, 2, 0)
    finally:
        staged.cleanup()


# --- times in milliseconds -----------------------------------------------------------------------


def in_ms(lines: list[bytes]) -> list[bytes]:
    out = []
    for line in lines:
        event = orjson.loads(line)
        event["properties"]["time"] = event["properties"]["time"] * 1000 + 250 * (len(out) % 2)
        out.append(orjson.dumps(event))
    return out


def test_millisecond_times_in_a_local_file_are_read_as_milliseconds(tmp_path, instance):
    source = tmp_path / "files"
    source.mkdir()
    (source / f"{DAY}.jsonl").write_bytes(b"\n".join(in_ms(day_lines())) + b"\n")
    defs = definitions(tmp_path, local_project(PROJECT_ID, source), [FILES])
    result = run_partition(defs, "daily_files_job", instance, DAY)
    rows = read_folder_rows(tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22")
    assert len(rows) == ROWS
    times = {r["insert_id"]: r["time"] for r in rows}
    assert times[f"ins-{DAY_START}-0"] == DAY_START  # whole seconds stay integers ...
    assert times[f"ins-{DAY_START}-1"] == pytest.approx(DAY_START + 29.25)  # ... the rest keep their milliseconds
    metadata = output_metadata(result, "daily_files__mp_master_event")
    assert (metadata["rows_outside_window"], metadata["millisecond_times"]) == (0, ROWS)


def test_an_export_answered_with_time_in_ms_loads_the_whole_day(tmp_path, mixpanel, instance):
    mixpanel.time_in_ms = True  # as an export made with time_in_ms=true (a proxy, a replay) answers
    defs = definitions(tmp_path, api_project(mixpanel), [DB])
    result = run_partition(defs, "daily_db_job", instance, DAY)
    assert db_count(tmp_path) == ROWS
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT epoch(min(time))::BIGINT, epoch(max(time))::BIGINT FROM mp_master_event").fetchall()[0] == (
            DAY_START, DAY_START + int((ROWS - 1) * 86400 / ROWS))
    assert output_metadata(result, "daily_db__mp_master_event")["millisecond_times"] == ROWS


# --- rows far outside the run's windows ----------------------------------------------------------


def test_a_day_of_rows_far_outside_the_window_fails_the_run_and_leaves_the_destination_alone(tmp_path, instance):
    source = tmp_path / "files"
    source.mkdir()
    good = day_lines()
    (source / f"{DAY}.jsonl").write_bytes(b"\n".join(good) + b"\n")
    defs = definitions(tmp_path, local_project(PROJECT_ID, source), [FILES])
    run_partition(defs, "daily_files_job", instance, DAY)
    folder = tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # The same day re-written with times in microseconds: no unit we recognise, every row misdated.
    micro = [orjson.dumps({**e, "properties": {**e["properties"], "time": e["properties"]["time"] * 1_000_000}})
             for e in map(orjson.loads, good)]
    (source / f"{DAY}.jsonl").write_bytes(b"\n".join(micro) + b"\n")
    result = run_partition(defs, "daily_files_job", instance, DAY, raise_on_error=False)
    assert not result.success
    message = failure_message(instance, result)
    assert f"partitions {DAY}" in message and f"{ROWS:,} of {ROWS:,} rows" in message
    assert f"{DAY}.jsonl line 1: time {DAY_START * 1_000_000}" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_few_stray_times_and_the_neighbouring_days_of_a_file_are_only_counted(tmp_path, instance):
    source = tmp_path / "files"
    source.mkdir()
    stray = [event_line("Clock", epoch("2099-01-01T00:00:00") + i, "u", f"s{i}") for i in range(5)]
    around = day_lines(300, DAY_START - 86400) + day_lines(300) + day_lines(300, DAY_START + 86400)
    (source / f"{DAY}.jsonl").write_bytes(b"\n".join(around + stray) + b"\n")
    defs = definitions(tmp_path, local_project(PROJECT_ID, source), [FILES])
    result = run_partition(defs, "daily_files_job", instance, DAY)
    assert output_metadata(result, "daily_files__mp_master_event")["rows_outside_window"] == 605


def test_an_undated_file_holding_many_days_exports_each_day(tmp_path, instance):
    # Files without a date in their name are read for every partition: rows of any time are expected.
    source = tmp_path / "files"
    source.mkdir()
    days = [day_lines(100, DAY_START + d * 86400) for d in range(-10, 10)]
    (source / "everything.jsonl").write_bytes(b"\n".join(line for day in days for line in day) + b"\n")
    defs = definitions(tmp_path, local_project(PROJECT_ID, source), [FILES])
    result = run_partition(defs, "daily_files_job", instance, DAY)
    assert output_metadata(result, "daily_files__mp_master_event")["rows_outside_window"] == 1900


def test_stage_events_counts_rows_outside_the_reach_only_against_the_threshold(tmp_path):
    lines = day_lines(2000) + [event_line("Old", 1_000_000 + i, "u", f"o{i}") for i in range(20)]
    staged = stage_events([b"\n".join(lines) + b"\n"], WHOLE_DAY, ["d"], staging_root=tmp_path)
    assert (staged.rows, staged.outside_window) == (2000, 20)  # 20 of 2,020: under 1%
    staged.cleanup()
    with pytest.raises(BadInputError, match=r"21 of 2,021 rows .* more than 2 days outside") as failure:
        stage_events([b"\n".join(lines + [event_line("Old", 5, "u", "o-last")]) + b"\n"], WHOLE_DAY, ["d"],
                     staging_root=tmp_path, describe_source="the test export")
    assert "line 2001: time 1000000" in str(failure.value)
    assert os.listdir(tmp_path) == []


# --- a full staging disk -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a disk that fills up during staging."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs to fill (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_staging_disk_stops_the_workers_leaves_nothing_and_names_the_path(tmp_path, small_disk):
    body = b"\n".join(day_lines(30_000)) + b"\n"  # ~5 MB of rows to stage on a 2 MB disk
    chunks = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]
    with pytest.raises(OSError) as failure:
        stage_events(chunks, WHOLE_DAY, ["d"], staging_root=small_disk, workers=2, block_bytes=200_000)
    message = str(failure.value)
    assert "no space left" in message.lower() and str(small_disk) in message
    assert "bytes free" in message and "bytes to write" in message
    time.sleep(1.5)  # a worker still running would write its block in this time
    assert os.listdir(small_disk) == []
    assert shutil.disk_usage(small_disk).used < 64 << 10
