"""One hostile line inside a good export never blocks a partition (issue 12).

Each case is one line the transform used to raise on (nesting orjson cannot write, a `$merge` with
a null id, a legacy-timezone time no date has), served by the fake Mixpanel among good events and
run through the real assets into a local folder and DuckDB: the run succeeds, the line is a bad line
named by its line number (or, for a `$merge` with nulls, a row whose nulls link nothing), and every
good row is there. A time in the last half microsecond of a day lands in exactly one window in the
folder and in DuckDB (windows.window_tail). A hypothesis test throws random values into every field
a row is made of and checks that parse_block only ever counts, never raises.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import dagster as dg
import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixpanel_assets.staging.block_worker import BlockSpec, parse_block
from mixpanel_assets.staging.links import write_block_links
from mixpanel_assets.transform.records import BadLine, profile_row
from mixpanel_assets.windows import epoch_micros, window_tail
from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, SECRET, USERNAME, malformed_lines
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, events_pipeline, read_folder_rows, run_partition

USER_ENV = "HOSTILE_MIXPANEL_USERNAME"
SECRET_ENV = "HOSTILE_MIXPANEL_SECRET"
DAY = "2024-11-22"
NOON = epoch(f"{DAY}T12:00:00")
DAY_END = epoch("2024-11-23T00:00:00")
GOOD = 300
AT = 137  # the hostile line goes before this event: it is line AT + 1 of the response

FILES = events_pipeline("files", "daily", {"type": "local", "path": "bucket"}, to_date="2024-11-30")
DB = events_pipeline("db", "daily", {"type": "duckdb", "path": "wh.duckdb"}, to_date="2024-11-30")


@pytest.fixture
def mixpanel(fake_mixpanel, monkeypatch):
    monkeypatch.setenv(USER_ENV, USERNAME)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return fake_mixpanel


def good_events(time0: int = NOON) -> list[bytes]:
    return [event_line("Viewed Page", time0 + i, f"user_{i % 17}", f"ins-{i}", **{"$city": "Berlin"})
            for i in range(GOOD)]


def project(fake, timezone: str = "UTC", **extra) -> dict:
    return {"id": PROJECT_ID, "timezone": timezone, "state": {"path": "state"}, "bad_lines": {"max_count": 5},
            "source": fake.source_config(username_env=USER_ENV, secret_env=SECRET_ENV), **extra}


def deep(n: int, leaf: str = "1") -> str:
    return "[" * n + leaf + "]" * n


def hostile(props: str, event: str = "Hostile") -> bytes:
    """Mixpanel's compact shape, which the typed reader takes first."""
    return f'{{"event":"{event}","properties":{{"time":{NOON + 7},{props}}}}}'.encode()


def spaced(props: str, event: str = "Hostile") -> bytes:
    """Another spacing than Mixpanel's: the general reader writes the properties again."""
    return f'{{"event": "{event}", "properties": {{"time": {NOON + 7}, {props}}}}}'.encode()


BAD = "bad"
ROW = "row"
DEEP = "nested more than 255 levels deep"
# (line, outcome, reason in the run's log)
CASES = {
    "deep property, spaced line": (spaced(f'"x": {deep(300)}'), BAD, DEEP),
    "deep property at 1,000": (spaced(f'"x": {deep(1000)}'), BAD, DEEP),
    "deep distinct_id": (hostile(f'"distinct_id":{deep(300)}'), BAD, DEEP),
    "deep $insert_id": (hostile(f'"$insert_id":{deep(256)}'), BAD, DEEP),
    "deep $device_id": (hostile(f'"$device_id":{deep(700)},"$user_id":"u"'), BAD, DEEP),
    "deep $user_id": (hostile(f'"$device_id":"d","$user_id":{deep(300)}'), BAD, DEEP),
    "deep $anon_id": (hostile(f'"$anon_id":{deep(1000)},"$identified_id":"u"', "$identify"), BAD, DEEP),
    "deep id in $distinct_ids": (hostile(f'"$distinct_ids":["a",{deep(300)}]', "$merge"), BAD, DEEP),
    "deep $distinct_id_before_identity": (hostile(f'"distinct_id":"u","$distinct_id_before_identity":{deep(300)}'),
                                          BAD, DEEP),
    "$merge with a null first": (hostile('"distinct_id":"a","$distinct_ids":[null,"a"]', "$merge"), ROW, None),
    "$merge with a null last": (hostile('"distinct_id":"a","$distinct_ids":["a",null]', "$merge"), ROW, None),
    "$merge with a number, an object and a null": (
        hostile('"distinct_id":"a","$distinct_ids":[7,{"k":[1]},null,"b"]', "$merge"), ROW, None),
}


def materialized(result: dg.ExecuteInProcessResult) -> dict:
    (mat,) = [e.event_specific_data.materialization for e in result.all_events
              if e.event_type_value == "ASSET_MATERIALIZATION"]
    return {k: v.value for k, v in mat.metadata.items()}


def logs(instance: dg.DagsterInstance, result) -> str:
    return "\n".join(r.user_message for r in instance.all_logs(result.run_id))


def db_query(tmp_path, sql: str, params=()):
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        return conn.execute(sql, params).fetchall()


def folder(tmp_path, day: str = DAY):
    return tmp_path / "bucket" / str(PROJECT_ID) / "mp_master_event" / day.replace("-", "/")


def _run_and_check(tmp_path, instance, mixpanel, project_block: dict, line: bytes, outcome: str, reason: str | None):
    mixpanel.queue_fault(malformed_lines([line], at=AT), times=2)  # one Export query per job
    defs = definitions(tmp_path, project_block, [FILES, DB])
    for job in ("files_job", "db_job"):
        result = run_partition(defs, job, instance, DAY)
        assert result.success
        metadata = materialized(result)
        if outcome == BAD:
            assert metadata["bad_lines"] == 1
            assert f"line {AT + 1}: {reason}" in logs(instance, result)
        else:
            assert metadata["bad_lines"] == 0
    rows = GOOD + (outcome == ROW)
    assert len(read_folder_rows(folder(tmp_path))) == rows
    assert db_query(tmp_path, "SELECT count(*) FROM mp_master_event")[0][0] == rows
    assert len(mixpanel.export_requests()) == 2  # no step retry spent an Export query on the line


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_line_is_a_bad_line_of_its_partition_or_a_row_never_a_failed_run(
        name, tmp_path, mixpanel, instance):
    line, outcome, reason = CASES[name]
    mixpanel.add_events(good_events())
    _run_and_check(tmp_path, instance, mixpanel, project(mixpanel), line, outcome, reason)


LEGACY_TIMES = {
    "far past": "-99999999999",
    "huge positive": "1000000000000000000000000000000",
    "largest unsigned 64-bit": str((1 << 64) - 1),
    "largest double": "1.7976931348623157e308",
    # A time above 1e11 is read as milliseconds (block_worker.MS_TIMES), so year 10000 in seconds
    # would be a 1978 time: in milliseconds it is year 10000 again.
    "year 10000": "253402300800000",
}


@pytest.mark.parametrize("name", list(LEGACY_TIMES))
def test_a_time_no_date_has_in_a_legacy_timezone_project_is_a_bad_line(name, tmp_path, mixpanel, instance):
    """Legacy projects export project-local epochs; the fake stores them as Mixpanel does."""
    mixpanel.set_timezone("America/Los_Angeles")
    mixpanel.add_events(good_events())
    line = f'{{"event":"Odd Time","properties":{{"time":{LEGACY_TIMES[name]},"distinct_id":"x"}}}}'.encode()
    block = project(mixpanel, "America/Los_Angeles", legacy_project_timezone_dates=True)
    _run_and_check(tmp_path, instance, mixpanel, block, line, BAD, "properties.time")


@pytest.mark.parametrize("last", [1732319999.9999995, 1732319999.9999998])
def test_a_time_in_the_last_half_microsecond_of_a_day_is_in_that_day_in_the_folder_and_in_duckdb(
        last, tmp_path, mixpanel, instance):
    """Mixpanel's query for the 22nd returns it, so the 22nd holds it, stored as its last microsecond."""
    assert NOON < last < DAY_END and epoch_micros(last) == DAY_END * 10**6  # inside the 22nd, rounds to the 23rd
    mixpanel.add_events(good_events() + [event_line("Last", last, "late", "ins-last")])
    defs = definitions(tmp_path, project(mixpanel), [FILES, DB])
    for job in ("files_job", "db_job"):
        assert run_partition(defs, job, instance, range_=(DAY, "2024-11-23")).success
    day, next_day = read_folder_rows(folder(tmp_path)), read_folder_rows(folder(tmp_path, "2024-11-23"))
    assert len(day) == GOOD + 1 and next_day == []
    (row,) = [r for r in day if r["event_name"] == "Last"]
    assert epoch_micros(row["time"]) == DAY_END * 10**6 - 1
    windows = db_query(tmp_path, "SELECT CAST(time AS DATE), count(*) FROM mp_master_event GROUP BY 1 ORDER BY 1")
    assert windows == [(dt.date(2024, 11, 22), GOOD + 1)]
    assert db_query(tmp_path, "SELECT time FROM mp_master_event WHERE event_name = 'Last'")[0][0] == \
        dt.datetime(2024, 11, 22, 23, 59, 59, 999999)


def test_the_tail_of_a_window_is_what_rounding_would_move_into_the_next_one():
    for end in (0.0, 1.0, float(NOON), float(DAY_END), 4102444800.0, -3600.0):
        first, last = window_tail(end)
        assert epoch_micros(first) == epoch_micros(end) and epoch_micros(last) == epoch_micros(end) - 1
        assert epoch_micros(math.nextafter(first, -math.inf)) < epoch_micros(end) and first <= end


def test_the_rounding_rule_is_duckdbs():
    values = []
    for edge in (float(DAY_END), 1.0, -3600.0):
        x = y = edge
        for _ in range(30):
            x, y = math.nextafter(x, -math.inf), math.nextafter(y, math.inf)
            values += [x, y]
    values += [(k + 0.5) / 1e6 for k in range(DAY_END * 10**6 - 300, DAY_END * 10**6, 7)]
    with duckdb.connect() as conn:
        got = conn.execute("SELECT x, CAST(round(x * 1000000) AS BIGINT) FROM unnest(?::DOUBLE[]) t(x)",
                           [values]).fetchall()
    assert [m for _, m in got] == [epoch_micros(x) for x, _ in got]


# --- profiles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [
    b'{"$distinct_id":' + deep(300).encode() + b',"$properties":{}}',
    b'{"$distinct_id":"a","$properties":{"x":' + deep(300).encode() + b'}}',
    b'{"$distinct_id":"a","$properties":{"x":' + deep(1000).encode() + b'}}',
])
def test_a_profile_nested_deeper_than_a_row_can_be_written_is_a_bad_profile(profile):
    with pytest.raises(BadLine, match="nested more than 255 levels deep"):
        profile_row(profile)


def test_a_deep_profile_from_engage_is_counted_and_the_others_are_loaded(tmp_path, mixpanel, instance):
    profiles = [{"$distinct_id": f"user-{i}", "$properties": {"$city": "Zürich"}} for i in range(50)]
    deep_value: object = 1
    for _ in range(300):
        deep_value = [deep_value]
    profiles[17]["$properties"]["nested"] = deep_value
    mixpanel.add_profiles(profiles)
    people = {"name": "people_db", "data_source": "people", "destination": {"type": "duckdb", "path": "wh.duckdb"}}
    block = project(mixpanel, bad_lines={"max_fraction": 0.05})
    result = run_partition(definitions(tmp_path, block, [people]), "people_db_job", instance)
    assert result.success
    assert materialized(result)["bad_profiles"] == 1
    assert db_query(tmp_path, "SELECT count(*) FROM mp_people_data")[0][0] == 49
    assert "profile 18: nested more than 255 levels deep" in logs(instance, result)


# --- any value anywhere: counted, never raised ----------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                     st.sampled_from(["\ud800", "a\udfff", "\x00"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                       max_leaves=12)
_FIELDS = ("time", "distinct_id", "$device_id", "$insert_id", "$user_id", "mp_processing_time_ms",
           "$distinct_id_before_identity", "$anon_id", "$identified_id", "alias", "$distinct_ids")
_NAMES = ("Viewed", "$identify", "$create_alias", "$merge", "", "$")


@st.composite
def _hostile_lines(draw) -> bytes:
    props = {"time": NOON + draw(st.integers(0, 100))}
    for key in draw(st.lists(st.sampled_from(_FIELDS), max_size=4, unique=True)):
        props[key] = draw(_values)
    depth = draw(st.sampled_from([0, 0, 256, 400, 1100]))
    key = draw(st.sampled_from(_FIELDS))
    # The stdlib writes what orjson refuses to: integers past 64 bits, lone surrogates (escaped).
    body = json.dumps({"event": draw(st.sampled_from(_NAMES)), "properties": props}, sort_keys=draw(st.booleans()),
                      separators=(",", ":") if draw(st.booleans()) else None).encode()
    if depth:
        body = body[:-2] + f',"{key}":{deep(depth)}}}}}'.encode()
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_hostile_lines(), min_size=1, max_size=6), legacy=st.sampled_from([None, "America/Los_Angeles"]))
def test_parse_block_counts_any_line_and_never_raises(lines, legacy, tmp_path_factory):
    spec = BlockSpec((float(NOON - 86400),), (float(NOON + 86400),), str(tmp_path_factory.getbasetemp()),
                     legacy_timezone=legacy, write_rows=False)
    result, _, links = parse_block(b"\n".join(lines) + b"\n", spec)
    assert result.lines == len(lines)
    assert sum(result.rows_per_window) + result.bad_lines + result.outside_window == len(lines)
    for link in links[0]:
        assert all(part.__class__ is str for part in link)
    write_block_links(spec.staging_dir, 0, 0, links[0])  # hashes and stores them: raised on a null id
