"""Parquet columns cut from the staged rows' bytes (parquet_columns.py) equal the orjson reading of them.

The byte cutter locates values by the rows' layout instead of parsing them, so it is checked on
what could fool it: ids holding quotes, backslashes, control characters, the very keys it looks
for, unicode, nulls, ids longer than its search windows, and times of every shape orjson writes.
A row group it cannot vouch for must fall back to orjson, never come out different.
"""

from __future__ import annotations

import random
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixpanel_assets.schema import EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE, parquet_schema
from mixpanel_assets.staging import parquet_columns, parquet_parts
from mixpanel_assets.staging.parquet_columns import Irregular, cut_columns, layout
from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.transform.events import event_row, read_event
from mixpanel_assets.transform.records import identity_row, profile_row
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.helpers import epoch, event_line

DAY = Window(epoch("2024-11-22T00:00:00"), epoch("2024-11-23T00:00:00"))
CLEAN = ["u", "", "dév", "中文", "😀 emoji", "a" * 47, "b" * 48, "c" * 49, "d" * 200, "e" * 5000, "$device:" + "f" * 64,
         'has ,properties: inside', "null", "None", "12345", ' spaces ', "/slash/", "}{][:,"]
HOSTILE = ['quote " inside', "back\\slash", 'ends with backslash \\', "line\nbreak", "tab\there", "nul\x00byte",
           "\x1f", 'has ,"properties": inside', 'ends ,"time":1}', '\\"', '"', '","user_id":"x']
TIMES = [DAY.start, DAY.start + 0.5, DAY.start + 1.25, DAY.start + 3600.000001, 1732233600.1234567, 1e9, 0, -1.5,
         2**53 + 1, 2**63 - 1, 2**64 - 1, 1.7976931348623157e308, 5e-324, 123456789.000001]
ROW_TIMES = [t for t in TIMES if abs(t) < 9e12]  # whole microseconds within int64


def staged_event_row(name: str, time, distinct: str | None, insert: str | None, props: dict) -> bytes:
    """The row the block worker stages for an export line (events.event_row), whatever its time."""
    line = event_line(name, DAY.start, distinct, insert, **props)
    parsed_name, _, fields, properties = read_event(line)
    return event_row(parsed_name, time, fields, properties)


def random_rows(rng: random.Random, values: list, count: int) -> list[bytes]:
    def pick():
        return rng.choice(values + [None])

    rows = []
    for _ in range(count):
        props = {"nested": {"properties": {"time": 1}, "time": pick()}, "list": [pick(), 1.5, None],
                 "$device_id": pick(), "$user_id": pick(), "u": "é" * rng.randint(0, 3), "time_note": pick()}
        props = {k: v for k, v in props.items() if v is not None}
        name = rng.choice([v for v in values if v]) or "E"
        rows.append(staged_event_row(name, rng.choice(ROW_TIMES), pick(), pick(), props))
    return rows


def reference_columns(rows: list[bytes], table: str) -> pa.RecordBatch:
    """What the orjson path (the implementation before the byte cutter) makes of the rows."""
    return parquet_parts._COLUMNS[table](rows, parquet_schema(table))


def batch_of(rows: list[bytes], table: str) -> pa.RecordBatch:
    return parquet_parts._batch(b"\n".join(rows) + b"\n", table, parquet_schema(table))


def assert_same_as_orjson(rows: list[bytes], table: str = EVENTS_TABLE) -> None:
    got, expected = batch_of(rows, table), reference_columns(rows, table)
    assert got.schema == expected.schema == parquet_schema(table)
    for name in got.schema.names:
        assert got.column(name).equals(expected.column(name)), name
    # ... and what a plain orjson reading of each whole row says, so the reference is checked too.
    for row, cut in zip(rows, got.to_pylist()):
        decoded = orjson.loads(row)
        for name, value in cut.items():
            if name == "properties":
                assert orjson.loads(value) == decoded[name]
                assert value.encode() in row  # the bytes as staged, not re-encoded
            elif name != "time":
                assert value == decoded[name], name


@pytest.mark.parametrize("seed", range(6))
def test_clean_rows_are_cut_by_the_byte_path_and_equal_orjsons_columns(seed):
    rows = random_rows(random.Random(seed), CLEAN, 300)
    cut_columns(b"\n".join(rows) + b"\n", layout(EVENTS_TABLE))  # no Irregular: the byte path took them
    assert_same_as_orjson(rows)


@pytest.mark.parametrize("seed", range(6))
def test_hostile_ids_fall_back_to_orjson_and_still_give_the_same_columns(seed):
    rows = random_rows(random.Random(seed), CLEAN + HOSTILE, 300)
    with pytest.raises(Irregular):
        cut_columns(b"\n".join(rows) + b"\n", layout(EVENTS_TABLE))
    assert_same_as_orjson(rows)


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("column", ["device", "distinct", "name", "insert", "user"])
def test_one_escaped_id_in_any_column_is_noticed(value, column):
    ids = dict.fromkeys(["device", "distinct", "name", "insert", "user"], "plain")
    ids[column] = value
    row = staged_event_row(ids["name"], DAY.start + 1, ids["distinct"], ids["insert"],
                           {"$device_id": ids["device"], "$user_id": ids["user"]})
    rows = [staged_event_row("E", DAY.start, "a", "b", {})] * 3 + [row]
    with pytest.raises(Irregular):
        cut_columns(b"\n".join(rows) + b"\n", layout(EVENTS_TABLE))
    assert_same_as_orjson(rows)


def test_times_of_every_shape_become_the_same_microseconds():
    rows = [staged_event_row("E", t, "u", f"i{i}", {}) for i, t in enumerate(TIMES)]
    cut = cut_columns(b"\n".join(rows) + b"\n", layout(EVENTS_TABLE))
    assert cut["time"].to_pylist() == [float(orjson.loads(r)["time"]) for r in rows]
    assert_same_as_orjson([r for r, t in zip(rows, TIMES) if t in ROW_TIMES])


def test_rows_without_the_layout_are_refused_not_misread():
    good = staged_event_row("E", DAY.start, "u", "i", {})
    others = [
        b'{"distinct_id":"u","device_id":null,"event_name":"E","insert_id":"i","properties":{},"time":1,"user_id":null}',
        b'{"device_id":null,"distinct_id":"u","event_name":"E","insert_id":"i","properties":{},"time":1}',
        b'{"device_id":null,"distinct_id":"u","event_name":"E","insert_id":"i","properties":{},"time":"1","user_id":null}',
        b'{"device_id":nul,"distinct_id":"u","event_name":"E","insert_id":"i","properties":{},"time":1,"user_id":null}',
        b'{"device_id":null,"distinct_id":"u","event_name":"E","insert_id":"i","properties":{},"time":1,"user_id":5}',
        b'{"device_id":null,"distinct_id":"u","event_name":"E","insert_id":"i","properties":,"time":1,"user_id":null}',
        b'{"device_id":null,"distinct_id":"u","event_name":"E","insert_id":"i","properties":{},"time":abc,"user_id":null}',
        b'["device_id"]',
    ]
    for other in others:
        with pytest.raises(Irregular):
            cut_columns(good + b"\n" + other + b"\n" + good + b"\n", layout(EVENTS_TABLE))
    with pytest.raises(Irregular):
        cut_columns(good, layout(EVENTS_TABLE))  # not newline-terminated


def test_people_and_identity_rows_are_cut_like_orjson_reads_them():
    rng = random.Random(7)
    people = [profile_row(orjson.dumps({"$distinct_id": v, "$properties": {"$city": "Köln", "n": i, "k": rng.choice(CLEAN)}}))[1]
              for i, v in enumerate(CLEAN)]
    identity = [identity_row(a, b) for a, b in zip(CLEAN, reversed(CLEAN))]
    for table, rows in ((PEOPLE_TABLE, people), (IDENTITY_TABLE, identity)):
        cut_columns(b"\n".join(rows) + b"\n", layout(table))
        assert_same_as_orjson(rows, table)
        hostile = rows + ([profile_row(orjson.dumps({"$distinct_id": 'q"', "$properties": {}}))[1]]
                          if table == PEOPLE_TABLE else [identity_row('q"', "x\\y")])
        with pytest.raises(Irregular):
            cut_columns(b"\n".join(hostile) + b"\n", layout(table))
        assert_same_as_orjson(hostile, table)


def test_ids_longer_than_the_search_windows_are_found_row_by_row():
    long_ids = ["x" * n for n in (parquet_columns.WINDOW * k + d for k in range(1, 6) for d in (-1, 0, 1))]
    rows = [staged_event_row(v, DAY.start, v, v, {"$device_id": v, "$user_id": v}) for v in long_ids]
    cut_columns(b"\n".join(rows) + b"\n", layout(EVENTS_TABLE))
    assert_same_as_orjson(rows)


def test_row_groups_do_not_depend_on_where_staging_cut_its_blocks(tmp_path, monkeypatch):
    """A part must be byte-identical whichever run wrote it: a range run stages other blocks."""
    monkeypatch.setattr(parquet_parts, "ROW_GROUP_BYTES", 40 << 10)
    lines = [event_line("E", DAY.start + i, f"u{i % 37}", f"i{i}", pad="p" * (i % 500)) for i in range(3000)]
    data = b"\n".join(lines) + b"\n"
    outputs = []
    for n, block_bytes in enumerate((16 << 10, 100 << 10, 4 << 20)):
        staged = stage_events([data], [DAY], ["d"], staging_root=tmp_path, block_bytes=block_bytes)
        try:
            (part,) = staged.windows[0].write_parts(tmp_path / f"out{n}", fmt="parquet", compression="zstd")
            outputs.append((part.name, part.path.read_bytes()))
        finally:
            staged.cleanup()
    assert outputs[0] == outputs[1] == outputs[2]
    meta = pq.ParquetFile(tmp_path / "out0" / outputs[0][0]).metadata
    assert meta.num_row_groups > 10
    assert meta.num_rows == 3000


def test_writing_and_reading_back_a_part_never_imports_pandas(tmp_path):
    """pyarrow imports pandas for `pa.array` (and timestamp to_pylist): +50 MB in every such process."""
    probe = f"""
import sys
from pathlib import Path
from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.destinations.objects.read_back import Readback, read_part
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.helpers import event_line
day = Window({DAY.start}, {DAY.end})
lines = [event_line("E", day.start + i, f"u{{i}}", f"i{{i}}") for i in range(50)] + [event_line("E", day.start, 'q"', None)]
staged = stage_events([b"\\n".join(lines) + b"\\n"], [day], ["d"], staging_root=Path({str(tmp_path)!r}))
(part,) = staged.windows[0].write_parts(Path({str(tmp_path)!r}) / "out", fmt="parquet", compression="zstd")
rb = Readback("mp_master_event")
read_part(part.path, rb)
assert rb.rows == 51, rb.rows
print("pandas" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
