"""`format: parquet` part files: the same rows as the JSON parts, typed columns, bounded row groups."""

from __future__ import annotations

import datetime as dt

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from mixpanel_assets.staging import parquet_parts
from mixpanel_assets.staging.stage import stage_events, stage_table
from mixpanel_assets.transform.records import identity_row, profile_row
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.helpers import epoch, event_line

DAY = Window(epoch("2024-11-22T00:00:00"), epoch("2024-11-23T00:00:00"))


def staged_day(lines: list[bytes], tmp_path, block_bytes: int = 4 << 20):
    staged = stage_events([b"\n".join(lines) + b"\n"], [DAY], ["2024-11-22"], staging_root=tmp_path,
                          block_bytes=block_bytes)
    return staged, staged.windows[0]


def test_event_columns_match_the_json_rows_even_with_keys_hidden_inside_values(tmp_path):
    """Column boundaries are found by byte search, so ids that *contain* the separators must not fool it."""
    tricky = [
        event_line("Sign Up", DAY.start + 1.25, 'has ,"properties": inside', "i-1",
                   **{"$user_id": 'ends ,"time":1}', "$device_id": "dév", "note": 'x ,"time": y'}),
        event_line("Ünïcode \"quoted\"", DAY.start + 7, None, "i-2", nested={"time": 5, "properties": {"a": [1, 2]}}),
        event_line("No Insert Id", DAY.start + 3600.000001, 12345, None, **{"$device_id": 678}),
        event_line("Dup", DAY.start + 60, "u", "i-3", mp_processing_time_ms=1),
        event_line("Dup", DAY.start + 60, "u", "i-3", mp_processing_time_ms=2, kept=True),
    ]
    staged, window = staged_day(tricky, tmp_path)
    try:
        (part,) = window.write_parts(tmp_path / "out", fmt="parquet", compression="zstd")
        json_rows = [orjson.loads(line) for line in window.iter_rows()]
    finally:
        staged.cleanup()
    assert part.name.endswith(".parquet") and part.rows == 4
    table = pq.read_table(part.path)
    assert table.column_names == ["device_id", "distinct_id", "event_name", "insert_id", "properties", "time", "user_id"]
    got = table.to_pylist()
    assert len(got) == len(json_rows) == 4
    assert orjson.loads(got[3]["properties"])["kept"] is True  # the later-processed duplicate
    for parquet_row, json_row in zip(got, json_rows):
        assert orjson.loads(parquet_row.pop("properties")) == json_row.pop("properties")
        time = parquet_row.pop("time")
        assert time.tzinfo is not None and time == dt.datetime.fromtimestamp(json_row.pop("time"), dt.timezone.utc)
        assert parquet_row == json_row
    assert [r["distinct_id"] for r in got] == ['has ,"properties": inside', None, "12345", "u"]
    assert got[0]["user_id"] == 'ends ,"time":1}'


def test_people_and_identity_tables_become_parquet_with_json_properties(tmp_path):
    people = stage_table([profile_row(orjson.dumps({"$distinct_id": f"u{i}", "$properties": {"$city": "Köln", "n": i}}))[1]
                          for i in range(20)], "mp_people_data", staging_root=tmp_path)
    identity = stage_table([identity_row(f"$device:d{i}", f"u{i}") for i in range(7)], "mp_identity_mappings_data",
                           staging_root=tmp_path)
    try:
        (people_part,) = people.write_parts(tmp_path / "p", fmt="parquet", compression="gzip", table="mp_people_data")
        (identity_part,) = identity.write_parts(tmp_path / "i", fmt="parquet", compression="none",
                                                table="mp_identity_mappings_data")
    finally:
        people.cleanup()
        identity.cleanup()
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*), typeof(any_value(properties)), max(properties->>'$.n') "
                           f"FROM read_parquet('{people_part.path}')").fetchone() == (20, "JSON", "9")
        assert con.execute(f"SELECT properties->>'$.\"$city\"' FROM read_parquet('{people_part.path}') "
                           "WHERE distinct_id = 'u3'").fetchone() == ("Köln",)
        assert con.execute(f"SELECT * FROM read_parquet('{identity_part.path}') ORDER BY 1 LIMIT 1").fetchone() == (
            "$device:d0", "u0")
    assert pq.ParquetFile(people_part.path).metadata.row_group(0).column(0).compression == "GZIP"
    assert pq.ParquetFile(identity_part.path).metadata.row_group(0).column(0).compression == "UNCOMPRESSED"


def test_row_groups_are_cut_by_size_so_a_worker_never_holds_a_whole_part(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_parts, "ROW_GROUP_BYTES", 32 << 10)
    lines = [event_line("E", DAY.start + i, f"u{i}", f"i{i}", pad="p" * 300) for i in range(2000)]
    staged, window = staged_day(lines, tmp_path, block_bytes=16 << 10)
    try:
        (part,) = window.write_parts(tmp_path / "out", fmt="parquet", compression="zstd")
    finally:
        staged.cleanup()
    meta = pq.ParquetFile(part.path).metadata
    assert meta.num_rows == part.rows == 2000
    assert meta.num_row_groups > 10
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) < 200


def test_a_window_whose_rows_are_all_duplicates_of_nothing_writes_no_file(tmp_path):
    staged, window = staged_day([], tmp_path)
    try:
        assert window.write_parts(tmp_path / "out", fmt="parquet", compression="zstd") == []
    finally:
        staged.cleanup()


@pytest.mark.parametrize("compression", ["snappy", "brotli"])
def test_unknown_compressions_are_refused(tmp_path, compression):
    with pytest.raises(ValueError, match="unknown Parquet compression"):
        parquet_parts._writer_options(compression)
