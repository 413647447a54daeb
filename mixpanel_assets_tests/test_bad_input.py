"""Bad input through the real asset code: each case ends in a clear error or a counted, reported skip.

Lines come from the local-files source (the same parser as the Export API's lines) and land in
the local folder and DuckDB destinations; pipelines.yaml mistakes go through build_definitions,
the code location's own load path.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import dagster as dg
import duckdb
import orjson
import pytest

from mixpanel_assets.config import ConfigError
from mixpanel_assets.defs.build import build_definitions
from mixpanel_assets.destinations.io_managers import ALLOW_SHRINK_TAG
from mixpanel_assets_tests.helpers import (
    TODAY,
    dedup_expected,
    epoch,
    event_line,
    local_project,
    read_folder_rows,
    run_partition,
    write_config,
)

PROJECT_ID = 777
DAY = "2024-11-22"
NOON = epoch(f"{DAY}T12:00:00")


def good_lines(n: int = 200) -> list[bytes]:
    return [event_line("Viewed Page", NOON + i, f"user_{i % 17}", f"ins-{i}", **{"$city": "Berlin"}) for i in range(n)]


def project(source: Path, **extra) -> dict:
    return local_project(PROJECT_ID, source, **extra)


RANGED = {"data_source": "events", "frequency": "daily", "from_date": "2024-11-20", "to_date": "2024-11-30",
          "created": "2024-11-20"}
PIPELINES = [
    {"name": "files", **RANGED, "destination": {"type": "local", "path": "bucket"}},
    {"name": "db", **RANGED, "destination": {"type": "duckdb", "path": "wh.duckdb"}},
]


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "mixpanel_files"
    folder.mkdir()
    return folder


def write_day(source: Path, lines: list[bytes], name: str = f"{DAY}.jsonl") -> None:
    (source / name).write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))


def defs_for(tmp_path: Path, source: Path, **project_extra) -> dg.Definitions:
    return build_definitions(write_config(tmp_path, project(source, **project_extra), PIPELINES), today=TODAY)


def folder_of(tmp_path: Path) -> Path:
    return tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / "2024" / "11" / "22"


def db_rows(tmp_path: Path, columns: str = "distinct_id, properties") -> list[tuple]:
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        return conn.execute(f"SELECT {columns} FROM mp_master_event ORDER BY time, insert_id").fetchall()


def materialization(result: dg.ExecuteInProcessResult) -> dict:
    (mat,) = [e.event_specific_data.materialization for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    return {k: v.value for k, v in mat.metadata.items()}


def run_messages(instance: dg.DagsterInstance, result) -> str:
    return "\n".join(r.user_message for r in instance.all_logs(result.run_id))


MALFORMED = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b'{"event": "No Properties"}', "missing 'properties' object"),
    (b'{"properties": {"time": 1732276800}}', "missing or non-string 'event'"),
    (b'{"event": 42, "properties": {"time": 1732276800}}', "missing or non-string 'event'"),
    (b'{"event": "No Time", "properties": {"distinct_id": "a"}}', "missing properties.time"),
    (b'{"event": "Text Time", "properties": {"time": "yesterday"}}', "properties.time is not a number"),
    (b'{"event": "Lone Surrogate", "properties": {"time": 1732276800, "x": "\\ud800"}}', "not valid JSON"),
]


def test_malformed_lines_are_skipped_counted_and_reported_with_their_file_and_line(tmp_path, source, instance):
    lines = good_lines()
    for i, (bad, _) in enumerate(MALFORMED):
        lines.insert(10 + 20 * i, bad)
    write_day(source, lines)
    result = run_partition(defs_for(tmp_path, source, bad_lines={"max_count": 10}), "files_job", instance, DAY)
    assert materialization(result)["bad_lines"] == len(MALFORMED)
    assert len(read_folder_rows(folder_of(tmp_path))) == 200
    messages = run_messages(instance, result)
    for i, (bad, reason) in enumerate(MALFORMED):
        line_no = lines.index(bad) + 1
        assert f"{DAY}.jsonl line {line_no}: {reason}" in messages


def test_more_bad_lines_than_the_policy_allows_fail_the_run_without_retry_and_leave_the_window(tmp_path, source, instance):
    write_day(source, good_lines())
    run_partition(defs_for(tmp_path, source), "files_job", instance, DAY)
    before = read_folder_rows(folder_of(tmp_path))
    write_day(source, good_lines(50) + [b"{broken"] * 3)
    result = run_partition(defs_for(tmp_path, source, bad_lines={"max_count": 2}), "files_job", instance, DAY,
                           raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "3 of 53 lines are not valid Mixpanel export events" in message and "max_count 2" in message
    assert "nothing was written" in message and f"{DAY}.jsonl line 51: not valid JSON" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # permanent: no retry
    assert read_folder_rows(folder_of(tmp_path)) == before


@pytest.mark.parametrize("job", ["files_job", "db_job"])
def test_a_20_mb_line_is_exported_whole(tmp_path, source, instance, job):
    blob = "x" * (20 << 20)
    write_day(source, good_lines(50) + [event_line("Huge", NOON + 500, "big_user", "huge-1", blob=blob)])
    result = run_partition(defs_for(tmp_path, source), job, instance, DAY)
    assert materialization(result)["dagster/partition_row_count"] == 51
    if job == "files_job":
        (huge,) = [r for r in read_folder_rows(folder_of(tmp_path)) if r["event_name"] == "Huge"]
        assert huge["properties"]["blob"] == blob
    else:
        (size,) = db_rows(tmp_path, "length(properties->>'$.blob')")[-1:]
        assert size == (len(blob),)


def test_a_20_mb_malformed_line_is_skipped_and_reported_in_a_few_bytes(tmp_path, source, instance):
    huge_broken = event_line("Huge", NOON, "big_user", "huge-1", blob="y" * (20 << 20))[:-5]
    write_day(source, good_lines(50) + [huge_broken])
    result = run_partition(defs_for(tmp_path, source, bad_lines={"max_count": 1}), "files_job", instance, DAY)
    assert materialization(result)["bad_lines"] == 1
    warning = [r.user_message for r in instance.all_logs(result.run_id) if "malformed lines skipped" in r.user_message]
    assert len(warning) == 1 and f"{DAY}.jsonl line 51: not valid JSON" in warning[0] and len(warning[0]) < 2000


AWKWARD = {
    "nul": "a\x00b", "controls": "".join(chr(c) for c in range(1, 32)), "del": "\x7f",
    "line_separators": "x\u2028y\u2029z", "emoji": "🎉👩🏽‍💻", "rtl": "שלום مرحبا", "combining": "e\u0301",
    "cjk": "東京", "quotes": "\"'\\/", "bom": "\ufeffstart", "nested": {"$city": "Zürich", "list": ["ä", None, 1.5]},
    "$weird key\n": "value", "": "empty key",
}


@pytest.mark.parametrize("job", ["files_job", "db_job"])
def test_unicode_and_control_characters_in_properties_round_trip_exactly(tmp_path, source, instance, job):
    line = orjson.dumps({"event": "Ünïcödé \u2603", "properties": {"time": NOON, "distinct_id": "ü\x01",
                                                                   "$insert_id": "i-1", **AWKWARD}})
    write_day(source, [line])
    run_partition(defs_for(tmp_path, source), job, instance, DAY)
    if job == "files_job":
        (row,) = read_folder_rows(folder_of(tmp_path))
        properties, distinct_id, name = row["properties"], row["distinct_id"], row["event_name"]
    else:
        ((distinct_id, raw, name),) = db_rows(tmp_path, "distinct_id, properties, event_name")
        properties = json.loads(raw)
    assert name == "Ünïcödé \u2603" and distinct_id == "ü\x01"
    assert properties == json.loads(line)["properties"]


def test_non_string_distinct_ids_are_exported_as_their_string_form(tmp_path, source, instance):
    ids = [123, 1.5, True, None, {"a": 1}, [1, 2], "plain"]
    lines = [orjson.dumps({"event": "E", "properties": {"time": NOON + i, "distinct_id": v, "$insert_id": f"i{i}"}})
             for i, v in enumerate(ids)]
    write_day(source, lines)
    defs = defs_for(tmp_path, source)
    run_partition(defs, "files_job", instance, DAY)
    run_partition(defs, "db_job", instance, DAY)
    expected = ["123", "1.5", "true", None, '{"a":1}', "[1,2]", "plain"]
    assert [r["distinct_id"] for r in sorted(read_folder_rows(folder_of(tmp_path)), key=lambda r: r["time"])] == expected
    assert [d for (d, _) in db_rows(tmp_path)] == expected


def test_an_integer_and_a_string_distinct_id_of_the_same_event_are_one_event(tmp_path, source, instance):
    same = [orjson.dumps({"event": "E", "properties": {"time": NOON, "distinct_id": v, "$insert_id": "dup"}})
            for v in (123, "123")]
    write_day(source, same)
    result = run_partition(defs_for(tmp_path, source), "files_job", instance, DAY)
    assert materialization(result)["duplicates_dropped"] == 1
    assert len(read_folder_rows(folder_of(tmp_path))) == 1


def test_events_far_in_the_future_or_outside_the_window_are_counted_not_written(tmp_path, source, instance):
    outside = [event_line("Future", epoch("2099-01-01T00:00:00"), "u", "f1"),
               event_line("Past", epoch("1971-01-01T00:00:00"), "u", "p1"),
               event_line("Day Before", epoch(f"{DAY}T00:00:00") - 1, "u", "b1"),
               event_line("Day After", epoch("2024-11-23T00:00:00"), "u", "a1")]
    write_day(source, good_lines(20) + outside)
    result = run_partition(defs_for(tmp_path, source), "files_job", instance, DAY)
    metadata = materialization(result)
    assert metadata["rows_outside_window"] == 4 and metadata["bad_lines"] == 0
    assert {r["event_name"] for r in read_folder_rows(folder_of(tmp_path))} == {"Viewed Page"}


@pytest.mark.parametrize("empty", ["no_file", "empty_file", "blank_lines"])
def test_an_empty_day_replaces_the_window_with_zero_rows_only_when_the_run_allows_the_shrink(
        tmp_path, source, instance, empty):
    write_day(source, good_lines(30))
    defs = defs_for(tmp_path, source)
    run_partition(defs, "files_job", instance, DAY)
    run_partition(defs, "db_job", instance, DAY)
    (source / f"{DAY}.jsonl").unlink()
    if empty == "empty_file":
        write_day(source, [])
    elif empty == "blank_lines":
        write_day(source, [b"", b"   ", b""])
    folder = folder_of(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # The shrink guard: emptying a window that held rows is what a source answering short looks like.
    refused = run_partition(defs, "files_job", instance, DAY, raise_on_error=False)
    assert not refused.success and {p.name: p.read_bytes() for p in folder.iterdir()} == before
    allow = {ALLOW_SHRINK_TAG: "true"}
    result = run_partition(defs, "files_job", instance, DAY, tags=allow)
    assert materialization(result)["dagster/partition_row_count"] == 0
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    assert manifest["rows"] == 0 and manifest["parts"] == [] and (folder / "complete").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith("part-")]
    run_partition(defs, "db_job", instance, DAY, tags=allow)
    assert db_rows(tmp_path) == []


def test_a_truncated_gzip_file_fails_the_run_naming_the_file(tmp_path, source, instance):
    data = gzip.compress(b"\n".join(good_lines(2000)) + b"\n")
    (source / f"{DAY}.jsonl.gz").write_bytes(data[: len(data) // 2])
    result = run_partition(defs_for(tmp_path, source), "files_job", instance, DAY, raise_on_error=False)
    assert not result.success
    failures = [e.event_specific_data.error.to_string() for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and f"{DAY}.jsonl.gz" in failures[0]
    assert not folder_of(tmp_path).exists()


def test_good_lines_around_the_bad_ones_are_deduplicated_like_mixpanel(tmp_path, source, instance):
    lines = good_lines(100)
    lines = lines + lines[:10] + [b"{oops"]  # ten redelivered events and one broken line
    write_day(source, lines)
    result = run_partition(defs_for(tmp_path, source, bad_lines={"max_count": 1}), "db_job", instance, DAY)
    metadata = materialization(result)
    assert metadata["duplicates_dropped"] == 10 and metadata["bad_lines"] == 1
    assert len(db_rows(tmp_path)) == dedup_expected(lines[:-1])["count"] == 100


# --- pipelines.yaml with every kind of mistake -------------------------------------------------------

GOOD_PIPELINE = {"name": "events_daily", "data_source": "events", "from_date": "2026-11-01", "created": "2026-11-01",
                 "destination": {"type": "local", "path": "export"}}
GOOD_PROJECT = {"id": 1, "source": {"type": "demo"}}


def _pipeline(**changes) -> dict:
    return {**GOOD_PIPELINE, **changes}


CONFIG_MISTAKES = [
    # (id, project, pipelines, raw text instead of a mapping, expected fragments of the message)
    ("typo_in_field", GOOD_PROJECT, [_pipeline(frequncy="hourly")], None,
     ["pipeline 'events_daily', field frequncy: unknown field"]),
    ("bad_enum", GOOD_PROJECT, [_pipeline(frequency="weekly")], None, ["pipeline 'events_daily', field frequency"]),
    ("wrong_type", GOOD_PROJECT, [_pipeline(from_date="last tuesday")], None, ["field from_date"]),
    ("missing_required", GOOD_PROJECT, [{k: v for k, v in GOOD_PIPELINE.items() if k != "from_date"}], None,
     ["from_date is required"]),
    ("missing_destination", GOOD_PROJECT, [{k: v for k, v in GOOD_PIPELINE.items() if k != "destination"}], None,
     ["field destination: required field is missing"]),
    ("unknown_destination", GOOD_PROJECT, [_pipeline(destination={"type": "ftp", "path": "x"})], None,
     ["field destination"]),
    ("destination_field", GOOD_PROJECT, [_pipeline(destination={"type": "local"})], None,
     ["field destination.path: required field is missing"]),
    ("bad_name", GOOD_PROJECT, [_pipeline(name="Events-Daily")], None, ["not a valid pipeline name"]),
    ("duplicate_names", GOOD_PROJECT, [_pipeline(), _pipeline(frequency="hourly")], None,
     ["pipeline 'events_daily', field name: used by more than one pipeline"]),
    ("dates_reversed", GOOD_PROJECT, [_pipeline(to_date="2026-10-01")], None, ["to_date 2026-10-01 is before from_date"]),
    ("bad_timezone", {**GOOD_PROJECT, "timezone": "Mars/Olympus"}, [_pipeline()], None,
     ["field project.timezone", "unknown timezone"]),
    ("bad_project_id", {**GOOD_PROJECT, "id": -5}, [_pipeline()], None, ["field project.id"]),
    ("zero_workers", {**GOOD_PROJECT, "export_workers": 0}, [_pipeline()], None, ["field project.export_workers"]),
    ("missing_source", {"id": 1}, [_pipeline()], None, ["field project.source: required field is missing"]),
    # Counted from `created` (without it, runs enforce the limit: test_backfill_limit.py).
    ("too_far_back", GOOD_PROJECT, [_pipeline(from_date="2020-01-01")], None,
     ["field from_date", "more than 6 months before created 2026-11-01", "enforce_mixpanel_limits"]),
    ("three_recurring", GOOD_PROJECT, [_pipeline(name=f"p{i}", frequency=f, destination={"type": "local", "path": f"e{i}"})
                                       for i, f in enumerate(["daily", "hourly", "daily"])], None,
     ["more than 2 recurring events pipelines"]),
    ("same_destination", GOOD_PROJECT, [_pipeline(name="a"), _pipeline(name="b", frequency="hourly")], None,
     ["pipelines 'a' and 'b', field destination", "overlapping dates"]),
    ("where_on_people", GOOD_PROJECT, [_pipeline(), {"name": "people", "data_source": "people", "where": "x",
                                                     "destination": {"type": "local", "path": "p"}}], None,
     ["pipeline 'people'", "where applies only to events pipelines"]),
    ("identity_alone", GOOD_PROJECT, [{"name": "ids", "data_source": "identity",
                                       "destination": {"type": "local", "path": "p"}}], None,
     ["identity pipelines compute mappings"]),
    ("no_pipelines", GOOD_PROJECT, [], None, ["field pipelines"]),
    ("pipeline_not_a_mapping", GOOD_PROJECT, ["events_daily"], None, ["pipeline #1"]),
    ("top_level_list", None, None, "- project\n- pipelines\n", ["expected a mapping with 'project' and 'pipelines'"]),
    ("empty_file", None, None, "", ["expected a mapping"]),
    ("yaml_syntax", None, None, "project: {id: 1\npipelines: [\n", ["not valid YAML"]),
    ("tab_indentation", None, None, "project:\n\tid: 1\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("project_, pipelines, raw, fragments", [c[1:] for c in CONFIG_MISTAKES],
                         ids=[c[0] for c in CONFIG_MISTAKES])
def test_every_kind_of_pipelines_yaml_mistake_is_a_clear_error_naming_file_pipeline_and_field(
        tmp_path, project_, pipelines, raw, fragments):
    if raw is None:
        path = write_config(tmp_path, project_, pipelines)
        if any(p.get("created", 1) is None for p in pipelines if isinstance(p, dict)):
            text = path.read_text().replace("  created: null\n", "")
            path.write_text(text)
    else:
        path = tmp_path / "pipelines.yaml"
        path.write_text(raw)
    with pytest.raises(ConfigError) as caught:
        build_definitions(path, today=TODAY)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
