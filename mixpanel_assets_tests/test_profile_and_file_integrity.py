"""Never replace good data with less: Engage answers, profile bad lines and local JSON arrays.

Through the real people and events assets, against the fake Mixpanel (Engage over HTTP) or a
folder of source files, into DuckDB and a local folder:
- an Engage page that is an error object, has `results: null` or no `results`, or is short of
  `total`, fails the run and leaves the 2,500 profiles already in DuckDB as they were (a short page
  is read again once, since it is likely a hiccup; one that lasts fails the run);
- `bad_lines.max_count` decides for profiles as it does for events;
- a local file holding one JSON array (as mixpanel-utils writes by default), one-line or
  pretty-printed, plain, gzip or zstd, gives the rows its JSON-lines twin gives, for events and
  for profiles; a file that is neither fails naming the file, line and column.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import orjson
import pytest
import zstandard

from mixpanel_assets_tests.fake_mixpanel import (
    PROJECT_ID,
    SECRET,
    USERNAME,
    engage_error_object,
    http_error,
    null_results,
    short_page,
)
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, read_folder_rows, run_partition

USER_ENV = "INTEGRITY_MIXPANEL_USERNAME"
SECRET_ENV = "INTEGRITY_MIXPANEL_SECRET"
PROFILES = 2500
PEOPLE_DB = {"name": "people_db", "data_source": "people", "destination": {"type": "duckdb", "path": "wh.duckdb"}}
DAY = "2024-11-22"


def query(db: Path, sql: str):
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def profile(i: int) -> dict:
    return {"$distinct_id": f"user-{i:05d}", "$properties": {"$email": f"u{i}@example.com", "$city": "Zürich"}}


def the_failure(instance: dg.DagsterInstance, result) -> str:
    assert not result.success
    events = [e.dagster_event for e in instance.all_logs(result.run_id) if e.dagster_event]
    (failure,) = [e for e in events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_failure_data.error.message


# --- Engage: every page checked, and the pages add up to `total` --------------------------------


@pytest.fixture
def engage(fake_mixpanel, monkeypatch):
    """The fake holding 2,500 profiles (pages of 1,000), and the credential env vars set."""
    fake_mixpanel.add_profiles(profile(i) for i in range(PROFILES))
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


@pytest.fixture
def exported(tmp_path, engage, instance):
    """The people pipeline's definitions, after one good run put 2,500 rows in DuckDB."""
    project = {"id": PROJECT_ID, "state": {"path": "state"},
               "source": engage.source_config(username_env=USER_ENV, secret_env=SECRET_ENV)}
    defs = definitions(tmp_path, project, [PEOPLE_DB])
    run_partition(defs, "people_db_job", instance)
    assert people_rows(tmp_path) == PROFILES
    engage.clear_requests()
    return defs


def people_rows(tmp_path: Path) -> int:
    return query(tmp_path / "wh.duckdb", "SELECT count(*) FROM mp_people_data")[0][0]


@pytest.mark.parametrize("page, fault, words", [
    (0, engage_error_object("Internal error, please retry"), "Internal error, please retry"),
    (1, engage_error_object("request for page in uncached query for params"), "uncached query"),
    (1, null_results(), "no results"),
    (2, null_results(drop=True), "no results"),
], ids=["error-object-on-page-0", "error-object-on-page-1", "results-null", "results-missing"])
def test_an_engage_page_that_is_an_error_or_has_no_results_fails_the_run_and_keeps_the_2500_rows(
        tmp_path, engage, exported, instance, page, fault, words):
    for _ in range(page):
        engage.queue_fault(api="engage")  # the pages before it are fine
    engage.queue_fault(fault, api="engage")
    result = run_partition(exported, "people_db_job", instance, raise_on_error=False)
    message = the_failure(instance, result)
    assert words in message and f"project {PROJECT_ID}" in message and f"page {page}" in message
    assert people_rows(tmp_path) == PROFILES


def test_a_short_engage_page_fails_the_run_naming_both_counts_and_keeps_the_2500_rows(
        tmp_path, engage, exported, instance):
    for _ in range(2):  # the first read and its one retry both get 999 profiles on page 1
        engage.queue_fault(api="engage")
        engage.queue_fault(short_page(1), api="engage")
    result = run_partition(exported, "people_db_job", instance, raise_on_error=False)
    message = the_failure(instance, result)
    assert f"project {PROJECT_ID}" in message and "page 1" in message
    assert "1999" in message.replace(",", "") and "2500" in message.replace(",", "")
    assert [r.form["page"] for r in engage.engage_requests()] == ["0", "1"] * 2  # read again once, not 7 times
    assert people_rows(tmp_path) == PROFILES


def test_a_short_engage_page_once_is_read_again_and_the_run_loads_every_profile(
        tmp_path, engage, exported, instance):
    engage.queue_fault(api="engage")
    engage.queue_fault(short_page(1), api="engage")
    run_partition(exported, "people_db_job", instance)
    assert [r.form["page"] for r in engage.engage_requests()] == ["0", "1", "0", "1", "2"]
    assert people_rows(tmp_path) == PROFILES
    assert query(tmp_path / "wh.duckdb", "SELECT count(DISTINCT distinct_id) FROM mp_people_data")[0][0] == PROFILES


def test_an_engage_page_failing_every_time_costs_seven_queries_not_seven_per_read_and_keeps_the_rows(
        tmp_path, engage, exported, instance):
    """The page's own retries are spent once: the whole-read retry is only for a short read."""
    engage.queue_fault(api="engage")
    engage.queue_fault(http_error(503, headers={"Retry-After": "0"}), api="engage", times=20)
    result = run_partition(exported, "people_db_job", instance, raise_on_error=False)
    message = the_failure(instance, result)
    assert "HTTP 503" in message and "gave up after 7 attempts" in message
    assert [r.form["page"] for r in engage.engage_requests()] == ["0"] + ["1"] * 7
    assert people_rows(tmp_path) == PROFILES


# --- bad profile lines: the same policy as events -------------------------------------------------


def write_profiles(folder: Path, good: int, bad: int) -> None:
    lines = [orjson.dumps(profile(i)) for i in range(good)] + [b'{"$distinct_id": "cut-off', b"[1, 2]", b"42"][:bad]
    (folder / "profiles.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def local_people_project(folder: Path, profiles_name: str = "profiles.jsonl", **settings) -> dict:
    return {"id": PROJECT_ID, "state": {"path": "state"}, **settings,
            "source": {"type": "local", "path": str(folder), "profiles_path": str(folder / profiles_name)}}


def test_profiles_honour_bad_lines_max_count_like_events(tmp_path, instance):
    """max_count replaces the fraction, for profiles as for events: 3 bad of 53 pass under
    max_count 3 (the default fraction would refuse them) and fail under max_count 2."""
    folder = tmp_path / "src"
    folder.mkdir()
    write_profiles(folder, good=50, bad=3)
    allowed = definitions(tmp_path, local_people_project(folder, bad_lines={"max_count": 3}), [PEOPLE_DB])
    result = run_partition(allowed, "people_db_job", instance)
    assert people_rows(tmp_path) == 50
    (mat,) = result.asset_materializations_for_node("people_db__mp_people_data")
    assert mat.metadata["bad_profiles"].value == 3

    refused = definitions(tmp_path, local_people_project(folder, bad_lines={"max_count": 2}), [PEOPLE_DB])
    message = the_failure(instance, run_partition(refused, "people_db_job", instance, raise_on_error=False))
    assert "3 of 53" in message and "max_count 2" in message and "profiles.jsonl line 51" in message
    assert people_rows(tmp_path) == 50


# --- local files holding one JSON array ---------------------------------------------------------------

NOON = epoch(f"{DAY}T12:00:00")
EVENTS_DB = {"name": "daily_db", "data_source": "events", "frequency": "daily", "from_date": "2024-11-20",
             "created": "2024-11-20", "destination": {"type": "duckdb", "path": "wh.duckdb"}}
PEOPLE_FILES = {"name": "people_files", "data_source": "people", "destination": {"type": "local", "path": "bucket"}}


def events() -> list[bytes]:
    """Events with what a re-encoding could change: non-ASCII, escapes, big and float numbers, nesting."""
    lines = [event_line("Viewed Page", NOON + i * 7.25, f"user_{i % 37}", f"ins-{i}",
                        **{"$city": "Zürich" if i % 2 else "東京", "note": 'say "hi"\\n\t', "n": 10 ** 19 + i,
                           "price": i / 3, "items": [{"sku": i, "tags": ["a", None, True]}]})
             for i in range(3000)]
    return lines + [lines[1]]  # a duplicate, dropped by the dedup key


def write_source(folder: Path, name: str, items: list[dict], layout: str) -> None:
    if layout == "lines":
        data = b"".join(orjson.dumps(item) + b"\n" for item in items)
    elif layout == "one-line":
        data = json.dumps(items).encode()  # mixpanel-utils' export_events: json.dump of a list
    else:
        data = json.dumps(items, indent=2, ensure_ascii=False).encode() + b"\n"
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def export_folder(tmp_path: Path, instance, name: str, layout: str, profiles_name: str) -> tuple[list, list]:
    """Export the day and the profiles from files written in `layout`; the rows DuckDB and the folder got."""
    folder = tmp_path / "src"
    write_source(folder, name, [orjson.loads(line) for line in events()], layout)
    write_source(folder, profiles_name, [profile(i) for i in range(120)], layout)
    defs = definitions(tmp_path, local_people_project(folder, profiles_name), [EVENTS_DB, PEOPLE_FILES])
    run_partition(defs, "daily_db_job", instance, DAY)
    run_partition(defs, "people_files_job", instance)
    rows = query(tmp_path / "wh.duckdb", "SELECT event_name, distinct_id, insert_id, time, properties::VARCHAR "
                                         "FROM mp_master_event ORDER BY insert_id, time")
    rows = [(*row[:4], orjson.loads(row[4])) for row in rows]
    people = sorted(read_folder_rows(tmp_path / "bucket" / str(PROJECT_ID) / "mp_people_data"),
                    key=lambda r: r["distinct_id"])
    return rows, people


@pytest.fixture(scope="module")
def from_json_lines(tmp_path_factory):
    """What the JSON-lines files give: the rows every array layout must give too."""
    with dg.instance_for_test() as instance:
        return export_folder(tmp_path_factory.mktemp("lines"), instance, f"{DAY}.jsonl", "lines", "profiles.jsonl")


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
@pytest.mark.parametrize("layout", ["one-line", "pretty"])
def test_a_json_array_file_gives_the_rows_of_its_json_lines_twin(tmp_path, instance, from_json_lines,
                                                                 layout, compression):
    rows, people = export_folder(tmp_path, instance, f"{DAY}.json{compression}", layout,
                                 f"profiles.json{compression}")
    expected_rows, expected_people = from_json_lines
    assert len(expected_rows) == 3000 and len(expected_people) == 120
    assert rows == expected_rows
    assert people == expected_people


@pytest.mark.parametrize("text, where", [
    (b'[\n  {"event": "A", "properties": {"time": 1732276800}},\n  {"event": "B" "properties": {}}\n]\n', "line 3"),
    (b'[{"event": "A", "properties": {"time": 1732276800}}, {"event": "B", "properties": {"time": 17', "line 1"),
    (b'[{"event": "A", "properties": {"time": 1732276800}}] {"event": "B"}', "line 1, column 54"),
], ids=["missing-comma", "cut-short", "data-after-the-array"])
def test_a_file_that_is_neither_json_lines_nor_a_json_array_fails_naming_the_file_and_position(
        tmp_path, instance, text, where):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / f"{DAY}.json").write_bytes(text)
    defs = definitions(tmp_path, local_people_project(folder), [EVENTS_DB])
    message = the_failure(instance, run_partition(defs, "daily_db_job", instance, DAY, raise_on_error=False))
    assert f"{DAY}.json" in message and where in message and "JSON array" in message
    assert not (tmp_path / "wh.duckdb").exists() or not query(
        tmp_path / "wh.duckdb", "SELECT * FROM information_schema.tables WHERE table_name = 'mp_master_event'")


def test_a_json_array_with_a_bad_item_counts_it_as_a_bad_line_with_its_item_number(tmp_path, instance):
    folder = tmp_path / "src"
    items = [orjson.loads(line) for line in events()[:50]]
    items.insert(10, {"event": "No properties"})
    write_source(folder, f"{DAY}.json", items, "pretty")
    defs = definitions(tmp_path, local_people_project(folder, bad_lines={"max_count": 1}), [EVENTS_DB])
    result = run_partition(defs, "daily_db_job", instance, DAY)
    assert query(tmp_path / "wh.duckdb", "SELECT count(*) FROM mp_master_event")[0][0] == 50
    warnings = [e.message for e in instance.all_logs(result.run_id) if "malformed lines skipped" in (e.message or "")]
    assert warnings and f"{DAY}.json (a JSON array" in warnings[0] and "line 11" in warnings[0]


def test_json_lines_files_are_still_read_by_byte_range(tmp_path, instance, generated_day):
    """The array support must not route plain JSON-lines files through the coordinating process."""
    from mixpanel_assets.mixpanel.inputs import LocalFile
    from mixpanel_assets.mixpanel.sources import LocalFilesSource, Span

    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(generated_day, folder / generated_day.name)
    write_source(folder, "2024-11-22-array.json", [orjson.loads(line) for line in events()[:5]], "one-line")
    span = Span(dt.datetime(2024, 11, 22, tzinfo=dt.UTC), dt.datetime(2024, 11, 23, tzinfo=dt.UTC))
    items = list(LocalFilesSource(folder).event_inputs(span))
    assert [i for i in items if isinstance(i, LocalFile)] == [LocalFile(str(folder / generated_day.name),
                                                                         generated_day.name)]
    lines = b"".join(i for i in items if isinstance(i, bytes)).splitlines()
    assert [orjson.loads(line) for line in lines] == [orjson.loads(line) for line in events()[:5]]
