"""The compiled line -> row path (mixpanel_assets._fastrows) gives exactly what the Python path gives.

The Python loop of `block_worker.parse_block` is the reference. Every test here runs a block
through both paths and compares everything a worker returns: row bytes per window, dedup-key
digests, processing times, no-dedup row indexes, identity links (with their times' types), line,
outside-window, suppressed and bad-line counts, bad-line examples, the "terminated early" flag.
The compiled path never refuses a line itself: it either takes a line whole or hands it to
Python, so "same result" covers good, bad and blank lines alike. `accepts()` says which lines the
compiled path takes; the edge cases pin that down both ways, so the comparisons cannot pass by the
compiled path quietly handing everything to Python.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from array import array
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixpanel_assets import _fastrows  # CI builds the extension: a missing build fails here
from mixpanel_assets.staging.block_worker import (
    FAST_ROWS_ENV,
    BlockSpec,
    StagedInputChanged,
    filter_lines_fast,
    filter_lines_python,
    parse_block,
)
from mixpanel_assets.staging.stage import Fingerprint, _deduplicate, _KeyBuckets, stage_events
from mixpanel_assets.transform.records import LocalFile
from mixpanel_assets.windows import Window
from mixpanel_assets_tests.helpers import epoch

DAY = epoch("2024-11-22T00:00:00")
WHOLE_DAY = [Window(DAY, DAY + 86400)]
# Hours 0-5 and 8-23 (a gap at 6-8), plus a window with fractional bounds: bisect and ceil semantics.
HOURS_WITH_GAP = [Window(DAY + h * 3600, DAY + (h + 1) * 3600) for h in (*range(6), *range(8, 24))]
ODD_BOUNDS = [Window(DAY - 0.5, DAY + 10.25), Window(DAY + 10.25, DAY + 99.999)]
WINDOW_SETS = {"day": WHOLE_DAY, "hours": HOURS_WITH_GAP, "odd": ODD_BOUNDS}


def spec_for(windows, **overrides) -> BlockSpec:
    return BlockSpec(tuple(w.start for w in windows), tuple(w.end for w in windows), "unused", **overrides)


def both_paths(block: bytes, windows=WHOLE_DAY, **overrides) -> int:
    """Assert the compiled and the Python path agree on everything; return the lines the compiled path took."""
    spec = spec_for(windows, **overrides)
    fast_result, fast_rows, fast_links = parse_block(block, spec)
    slow_result, slow_rows, slow_links = parse_block(block, dataclasses.replace(spec, fast_rows=False))
    assert slow_result.fast_lines == 0
    taken = fast_result.fast_lines
    assert dataclasses.replace(fast_result, fast_lines=0) == slow_result, block[:300]
    assert [bytes(rows or b"") for rows in fast_rows] == [bytes(rows) for rows in slow_rows], block[:300]
    assert [_typed(links) for links in fast_links] == [_typed(links) for links in slow_links], block[:300]
    return taken


def _typed(links: dict) -> list:
    return sorted((link, value, type(value).__name__) for link, value in links.items())


def line(props: bytes | str, name: bytes | str = b"E") -> bytes:
    props = props.encode() if isinstance(props, str) else props
    name = name.encode() if isinstance(name, str) else name
    return b'{"event":"' + name + b'","properties":' + props + b"}"


T = DAY + 100
BASE = f'"time":{T},"distinct_id":"u1","$insert_id":"i1","$device_id":"d1","$user_id":"u1","mp_processing_time_ms":{T}123'

# (line, does the compiled path take it?)
EDGE_CASES = [
    (line("{" + BASE + "}"), True),
    (line("{" + BASE + ',"$city":"Berlin","nested":{"a":[1,2,{"b":null}]},"ok":true,"no":false}'), True),
    (line("{" + BASE + "}") + b"\r", True),  # CRLF line end
    (line("{" + BASE + "}") + b" \t\r", True),
    (line('{ "time" : %d , "distinct_id" :"u", "x": [ 1 , 2 ] }' % T), True),  # spaces inside properties
    (line("{" + BASE + "}", "Größe 東京 😀 \x7f"), True),
    (line("{" + BASE + "}", "$mp_web_page_view"), True),  # a $ event without identity links
    (line("{" + BASE + ',"v":"a\\"b\\\\c\\/\\b\\f\\n\\r\\t\\u00e9\\u4e2D"}'), True),  # escapes in other values
    (line('{"time":%d,"distinct_id":null,"$insert_id":null,"$device_id":null,"$user_id":null}' % T), True),
    (line('{"time":%d}' % T), True),
    (line('{"time":-5,"distinct_id":"u"}'), True),
    (line('{"time":0,"distinct_id":"u"}'), True),
    (line('{"time":123456789012345678,"distinct_id":"u"}'), True),
    (line('{"time":%d,"mp_processing_time_ms":1.5}' % T), True),
    (line('{"time":%d,"mp_processing_time_ms":-3}' % T), True),
    (line('{"time":%d,"mp_processing_time_ms":"123"}' % T), True),
    (line('{"time":%d,"mp_processing_time_ms":true}' % T), True),
    (line('{"time":%d,"mp_processing_time_ms":-0}' % T), True),
    (line('{"time":%d,"mp_processing_time_ms":{"a":1}}' % T), True),
    (line('{"time":%d,"mp_processing_time_ms":999999999999999999}' % T), True),
    (line('{"time":%d,"n":[1e5,-0.0,0,1E+99,1.5e-10,-12.75,0.1234567890123456789]}' % T), True),
    (line('{"time":%d,"x":"\xef\xbf\xbe\xf0\x9f\x98\x80","":1,"dup":1,"dup":2}' % T), True),  # noncharacter, empty key
    # the edges of well-formed UTF-8: U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF, U+10000, U+10FFFF
    *[(line(b'{"time":%d,"s":"a%sb"}' % (T, seq)), True)
      for seq in (b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf",
                  b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf")],
    (line('{"time":%d,"$distinct_id_before_identity":"$device:d","distinct_id":"u"}' % T), True),
    (line('{"time":%d,"deep":%s1%s}' % (T, "[" * 120, "]" * 120)), True),
    (line('{"time":%d,"big":"%s"}' % (T, "x" * 1_000_000)), True),  # a very long line
    # the shape
    (b'{"event": "E","properties":{"time":%d}}' % T, False),
    (b' {"event":"E","properties":{"time":%d}}' % T, False),
    (b'{"event":"E","properties":{"time":%d} }' % T, False),
    (b'{"properties":{"time":%d},"event":"E"}' % T, False),
    (b'{"event":"E","properties":{"time":%d},"x":1}' % T, False),
    (b'{"event":"E","properties":{"time":%d}}\x0c' % T, False),
    (b'{"event":"E","properties":{"time":%d}}}' % T, False),
    (b'{"event":"E","properties":{"time":%d}' % T, False),  # truncated
    (b'{"event":"E","properties":{"time":%d,}}' % T, False),  # trailing comma
    (b'{"event":"E","properties":[]}', False),
    (b'{"event":"E"}', False),
    (b"[1,2]", False),
    (b"export terminated early", False),
    (b"   \t", False),
    (b"\x00", False),
    (b"\xef\xbb\xbf" + line('{"time":%d}' % T), False),  # a byte-order mark
    # the event name
    (line('{"time":%d}' % T, ""), False),
    (line('{"time":%d}' % T, 'a\\"b'), False),
    (line('{"time":%d}' % T, "\\u0045"), False),
    (line('{"time":%d,"$anon_id":"a","$identified_id":"u"}' % T, "$identify"), False),
    (line('{"time":%d,"alias":"a","distinct_id":"u"}' % T, "$create_alias"), False),
    (line('{"time":%d,"$distinct_ids":["a","b"]}' % T, "$merge"), False),
    (line('{"time":%d}' % T, "a\tb"), False),  # a raw control character
    # ids we output: escaped or not strings
    *[(line('{"time":%d,"%s":"a\\u00e9"}' % (T, key)), False)
      for key in ("distinct_id", "$device_id", "$user_id", "$insert_id", "$distinct_id_before_identity")],
    *[(line('{"time":%d,"%s":%s}' % (T, key, value)), False)
      for key in ("distinct_id", "$device_id", "$user_id", "$insert_id", "$distinct_id_before_identity")
      for value in ("12345", "1.5", "true", "false", '{"a":1}', "[1]")],
    (line('{"time":%d,"distinct\\u005fid":"x","distinct_id":"u"}' % T), False),  # an escaped key
    # duplicate keys we read (orjson keeps the last one)
    *[(line('{"time":%d,%s,%s}' % (T, pair, pair)), False)
      for pair in ('"distinct_id":"a"', '"$device_id":"a"', '"$user_id":"a"', '"$insert_id":"a"',
                   '"mp_processing_time_ms":1', '"$distinct_id_before_identity":"a"')],
    (line('{"time":%d,"time":%d}' % (T, T + 1)), False),
    # time
    *[(line('{"time":%s,"distinct_id":"u"}' % value), False)
      for value in ("1.5", "%d.0" % T, "1e9", "1E9", "01", "-0", "1234567890123456789", '"%d"' % T, "null",
                    "true", "[1]", "+1", "-", "1.", ".5", "NaN", "Infinity")],
    (line('{"distinct_id":"u"}'), False),
    # numbers orjson might not take as we expect
    *[(line('{"time":%d,"n":%s}' % (T, value)), False)
      for value in ("1234567890123456789", "18446744073709551616", "1e400", "1e-400", "1e100", "1.5e+123",
                    "01", "1.", ".5", "+1", "-", "0x10", "1e", "--1", "NaN")],
    # strings and UTF-8
    (line(b'{"time":%d,"s":"\xc0\x80"}' % T), False),  # overlong
    *[(line(b'{"time":%d,"s":"a%sb"}' % (T, seq)), False)  # overlongs, surrogates, past U+10FFFF, bad leads
      for seq in (b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80",
                  b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80",
                  b"\xe2\x28\xa1", b"\xf0\x90\x28\xbc", b"\xc2")],
    (line(b'{"time":%d,"s":"\xed\xa0\x80"}' % T), False),  # an encoded surrogate
    (line(b'{"time":%d,"s":"\xf4\x90\x80\x80"}' % T), False),  # above U+10FFFF
    (line(b'{"time":%d,"s":"\xe6\x9d"}' % T), False),  # truncated sequence
    (line(b'{"time":%d,"s":"\x80"}' % T), False),  # a lone continuation byte
    (line(b'{"time":%d}' % T, b"\xff"), False),
    (line('{"time":%d,"s":"\\ud800"}' % T), False),
    (line('{"time":%d,"s":"\\ud83d\\ude00"}' % T), False),  # a valid pair: Python decides
    (line('{"time":%d,"s":"\\x41"}' % T), False),
    (line('{"time":%d,"s":"\\u12"}' % T), False),
    (line('{"time":%d,"s":"a\tb"}' % T), False),
    (line('{"time":%d,"s":"a\x00b"}' % T), False),
    (line('{"time":%d,"s":"abc}}' % T), False),  # unterminated
    (line('{"time":%d,"deep":%s1%s}' % (T, "[" * 200, "]" * 200)), False),
    (line('{"time":%d,"deep":%s1%s}' % (T, "[" * 1100, "]" * 1100)), False),  # past orjson's limit: bad
    (line('{"time":%d,"x":tru}' % T), False),
    (line('{"time":%d,"x":nul}' % T), False),
    (line('{"time":%d,"x" 1}' % T), False),
    (line('{"time":%d,"x":[1 2]}' % T), False),
    (line('{"time":%d,"x":{"a" 1}}' % T), False),
    (line('{"time":%d,"x":{1:2}}' % T), False),
]


@pytest.mark.parametrize("case, taken", EDGE_CASES, ids=[f"{i:03d}" for i in range(len(EDGE_CASES))])
def test_each_edge_case_is_taken_or_handed_to_python_as_designed_and_both_paths_agree(case, taken):
    assert _fastrows.accepts(case) is taken
    for windows in WINDOW_SETS.values():
        assert both_paths(case, windows) == (1 if taken else 0)


def test_a_block_mixing_every_edge_case_keeps_line_order_and_line_numbers():
    lines = [case for case, _ in EDGE_CASES]
    good = line("{" + BASE + "}")
    block = b"\n".join(x for case in lines for x in (case, good, b"", b"\r")) + b"\n" + good  # no final newline
    for windows in WINDOW_SETS.values():
        both_paths(block, windows)
    assert both_paths(block) > len(lines)
    crlf = block.replace(b"\n", b"\r\n")
    assert both_paths(crlf) > len(lines)


def test_window_edges_follow_half_open_bisect_semantics():
    times = [DAY - 1, DAY, DAY + 1, DAY + 10, DAY + 11, DAY + 99, DAY + 100, DAY + 6 * 3600 - 1, DAY + 6 * 3600,
             DAY + 8 * 3600 - 1, DAY + 8 * 3600, DAY + 86399, DAY + 86400, -5, 0]
    block = b"\n".join(line('{"time":%d,"distinct_id":"u","$insert_id":"i%d"}' % (t, t)) for t in times)
    for windows in WINDOW_SETS.values():
        assert both_paths(block, windows) == len(times)
    unbounded = [Window(float("-inf"), DAY), Window(DAY, float("inf"))]
    assert both_paths(block, unbounded) == 0  # bounds the compiled path cannot compare exactly: Python does all


def test_generated_days_take_the_compiled_path_and_match_python_with_every_option(generated_day):
    data = generated_day.read_bytes()
    names = sorted({orjson.loads(x)["event"] for x in data.splitlines()[:2000]})
    distinct_ids = sorted({orjson.loads(x)["properties"]["distinct_id"] for x in data.splitlines()[:500]})
    lines = data.count(b"\n")
    assert both_paths(data) > 0.98 * lines
    assert both_paths(data, HOURS_WITH_GAP) > 0.98 * lines
    assert both_paths(data, collect_links=False) > 0.98 * lines
    both_paths(data, events_filter=frozenset(names[::3]))
    both_paths(data, suppressed_distinct_ids=frozenset(distinct_ids[::2]))
    both_paths(data, suppressed_distinct_ids=frozenset([None, "x"]))
    assert both_paths(data, legacy_timezone="America/New_York") == 0  # the Python path converts times


def test_a_run_uses_the_python_path_when_the_environment_says_so(generated_day, tmp_path, monkeypatch):
    messages = []
    chunks = [generated_day.read_bytes()]
    staged = stage_events(chunks, WHOLE_DAY, ["d"], staging_root=tmp_path, block_bytes=1 << 20, progress=messages.append)
    fast_rows = list(staged.windows[0].iter_rows())
    assert staged.fast_lines > 0.98 * staged.lines and "compiled" in messages[0]
    staged.cleanup()
    monkeypatch.setenv(FAST_ROWS_ENV, "0")
    staged = stage_events(chunks, WHOLE_DAY, ["d"], staging_root=tmp_path, block_bytes=1 << 20, workers=2,
                          progress=messages.append)
    assert staged.fast_lines == 0 and "pure-Python" in messages[-1]
    assert list(staged.windows[0].iter_rows()) == fast_rows
    staged.cleanup()


def test_local_files_stage_references_whose_rows_equal_rows_staged_from_a_stream(generated_day, tmp_path):
    windows = [Window(DAY + h * 3600, DAY + (h + 1) * 3600) for h in range(24)]
    keys = [str(h) for h in range(24)]
    by_reference = stage_events([LocalFile(str(generated_day), generated_day.name)], windows, keys,
                                staging_root=tmp_path, workers=2, block_bytes=1 << 20)
    streamed = stage_events([generated_day.read_bytes()], windows, keys, staging_root=tmp_path, block_bytes=1 << 20)
    try:
        segments = [seg for w in by_reference.windows for seg in w.segments]
        assert segments and all(seg.path.suffix == ".ref" for seg in segments)
        assert all(seg.path.suffix == ".jsonl" for w in streamed.windows for seg in w.segments)
        for ours, theirs in zip(by_reference.windows, streamed.windows):
            assert list(ours.iter_rows()) == list(theirs.iter_rows())
            assert ours.fingerprint == theirs.fingerprint and ours.rows > 0
    finally:
        by_reference.cleanup()
        streamed.cleanup()


def test_an_input_file_changed_after_staging_fails_the_part_write_and_names_the_file(generated_day, tmp_path):
    source = tmp_path / "day.jsonl"
    source.write_bytes(generated_day.read_bytes())
    staged = stage_events([LocalFile(str(source), source.name)], WHOLE_DAY, ["d"], staging_root=tmp_path,
                          block_bytes=1 << 20)
    try:
        data = source.read_bytes()
        at = data.index(b'"mp_lib":"web"', 5_000_000)  # same length, another value: only the rows differ
        source.write_bytes(data[:at] + b'"mp_lib":"wob"' + data[at + 14:])
        with pytest.raises(StagedInputChanged, match=f"{source}.*changed while it was being exported"):
            staged.windows[0].write_parts(tmp_path / "out", workers=1)
    finally:
        staged.cleanup()


def test_the_python_path_stages_rows_not_references(generated_day, tmp_path, monkeypatch):
    monkeypatch.setenv(FAST_ROWS_ENV, "0")
    staged = stage_events([LocalFile(str(generated_day), generated_day.name)], WHOLE_DAY, ["d"],
                          staging_root=tmp_path, block_bytes=1 << 20)
    assert {seg.path.suffix for seg in staged.windows[0].segments} == {".jsonl"}
    staged.cleanup()


# ------------------------------------------------------------------ hypothesis: random values and lines

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)
id_values = st.text(max_size=10) | st.sampled_from(["u1", "$device:abc", "é", "😀", ""]) | json_scalars
times = (st.integers(min_value=DAY - 5, max_value=DAY + 86405) | st.integers(min_value=-(2**63), max_value=2**63)
         | st.floats(min_value=DAY - 5, max_value=DAY + 86405) | st.sampled_from(["x", None, True]))


@st.composite
def export_lines(draw) -> bytes:
    props = {"time": draw(times)}
    for key in ("distinct_id", "$device_id", "$user_id", "$insert_id", "$distinct_id_before_identity",
                "mp_processing_time_ms"):
        if draw(st.booleans()):
            props[key] = draw(id_values if key != "mp_processing_time_ms" else json_scalars)
    for i in range(draw(st.integers(0, 3))):
        props[draw(st.text(max_size=5) | st.just(f"p{i}"))] = draw(json_values)
    keys = draw(st.permutations(list(props)))
    ascii_only = draw(st.booleans())
    item_sep, key_sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " :\t")]))

    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=ascii_only)

    body = "{" + item_sep.join(dump(k) + key_sep + dump(props[k]) for k in keys) + "}"
    name = draw(st.text(max_size=8) | st.sampled_from(["E", "Viewed Page", "$identify", "$mp_web_page_view", "Größe"]))
    text = '{"event":' + dump(name) + ',"properties":' + body + "}"
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(export_lines(), min_size=1, max_size=6))
def test_random_lines_give_the_same_results_on_both_paths(lines):
    block = b"\n".join(lines)
    for windows in WINDOW_SETS.values():
        both_paths(block, windows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_embedded_in_a_real_line_gives_the_same_results(value):
    for ascii_only in (True, False):
        embedded = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        both_paths(line(b'{"time":%d,"distinct_id":"u","$insert_id":"i","v":%s,"w":1}' % (T, embedded)))


# ------------------------------------------------------------------ byte-level mutation fuzzing

INTERESTING = b'"\\{}[],:0-.eE+ \t\r\n\x00\x1f\x7f\x80\xbf\xc0\xed\xf4\xffu'


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        at = rng.randrange(len(out) + 1)
        byte = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.randrange(256)
        if op < 0.4 and at < len(out):
            out[at] = byte
        elif op < 0.7:
            out.insert(at, byte)
        elif op < 0.9 and at < len(out):
            del out[at:at + rng.randint(1, 4)]
        else:
            start = rng.randrange(len(out) + 1)
            out[at:at] = out[start:start + rng.randint(1, 12)]
    return bytes(out)


def test_mutated_real_lines_give_the_same_results_on_both_paths(generated_day):
    rng = random.Random(20241122)
    originals = generated_day.read_bytes().splitlines()
    originals = [originals[i] for i in sorted(rng.sample(range(len(originals)), 400))]
    mutants = [mutate(original, rng) for original in originals for _ in range(10)]
    taken = 0
    for mutant in mutants:
        taken += both_paths(mutant, HOURS_WITH_GAP)
    both_paths(b"\n".join(mutants))
    # Most single-byte changes inside a string keep the line valid; many others must not be taken.
    assert 0.1 * len(mutants) < taken < 0.9 * len(mutants)


# ------------------------------------------------------------------ dropping duplicate rows from a staged block

@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")), max_size=30), st.booleans(),
       st.lists(st.integers(min_value=-3, max_value=40), max_size=12))
def test_dropping_rows_in_c_gives_what_the_python_reference_gives(rows, unterminated, drop):
    data = b"".join(row + b"\n" for row in rows) + (b"tail" if unterminated else b"")
    expected = filter_lines_python(data, drop)
    assert filter_lines_fast(data, drop) == expected
    assert filter_lines_fast(data, None) == filter_lines_python(data, None) == (data, len(rows))
    as_array = array("I", sorted({d for d in drop if d >= 0}))
    assert filter_lines_fast(data, as_array) == filter_lines_python(data, as_array)


# ------------------------------------------------------------------ the coordinator's dedup against brute force

block_records = st.lists(  # (window, [(key, processing time, has $insert_id)]) per block; few keys: many duplicates
    st.tuples(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3), st.booleans()), max_size=12)),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(block_records)
def test_dedup_drops_and_fingerprints_equal_a_brute_force_of_mixpanels_rule(tmp_path_factory, blocks):
    import xxhash

    buckets = _KeyBuckets(tmp_path_factory.mktemp("keys"), 3)
    rows = []  # (window, block, row, digest, proc, dedupable)
    for block, (window, items) in enumerate(blocks):
        digests = [xxhash.xxh3_128_digest(b"%d-%d" % (window, key)) for key, _, _ in items]
        procs = array("Q", [proc for _, proc, _ in items])
        no_dedup = array("I", [i for i, (_, _, dedupable) in enumerate(items) if not dedupable])
        buckets.add(window, block, b"".join(digests), procs.tobytes(), no_dedup.tobytes())
        rows += [(window, block, i, d, item[1], item[2]) for i, (d, item) in enumerate(zip(digests, items))]
    drops, fingerprints, dup_counts = _deduplicate(buckets, 3)
    best: dict = {}
    for r in rows:  # the copy kept: latest processing time, then first in stream order
        if r[5] and (r[3] not in best or (r[4], -r[1], -r[2]) > (best[r[3]][4], -best[r[3]][1], -best[r[3]][2])):
            best[r[3]] = r
    expected_drops: dict = {}
    for r in rows:
        if r[5] and best[r[3]] is not r:
            expected_drops.setdefault((r[0], r[1]), []).append(r[2])
    assert {k: v.tolist() for k, v in drops.items()} == expected_drops
    for w in range(3):
        kept = [r for r in rows if r[0] == w and not (r[5] and best[r[3]] is not r)]
        key_sum = sum(int.from_bytes(r[3][8:], "big") for r in kept) % (1 << 64)
        assert fingerprints[w] == Fingerprint(len(kept), key_sum, max((r[4] for r in kept), default=0))
        assert dup_counts[w] == sum(len(v) for (win, _), v in expected_drops.items() if win == w)


# ------------------------------------------------------------------ without the extension

WITHOUT_EXTENSION = """
import sys
sys.modules["mixpanel_assets._fastrows"] = None  # as if it was never built: importing it fails
from mixpanel_assets.transform.records import LocalFile
from mixpanel_assets.windows import Window
from mixpanel_assets.staging.stage import stage_events
messages = []
staged = stage_events([LocalFile(sys.argv[1], "day")], [Window(float(sys.argv[2]), float(sys.argv[2]) + 86400)], ["d"],
                      staging_root=sys.argv[3], workers=2, block_bytes=1 << 20, progress=messages.append)
sys.stdout.buffer.write(b"\\n".join(staged.windows[0].iter_rows()))
assert staged.fast_lines == 0 and "not built" in messages[0], messages
staged.cleanup()
"""


def test_the_package_exports_the_same_rows_when_the_extension_is_missing(generated_day, tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSION, str(generated_day), str(DAY), str(tmp_path)],
                          capture_output=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    staged = stage_events([LocalFile(str(generated_day), "day")], WHOLE_DAY, ["d"], staging_root=tmp_path,
                          block_bytes=1 << 20)
    assert staged.fast_lines > 0 and done.stdout == b"\n".join(staged.windows[0].iter_rows())
    staged.cleanup()


# ------------------------------------------------------------------ the staging tests on the Python path

def test_staging_tests_also_pass_with_the_python_path_forced():
    tests = Path(__file__).parent
    env = dict(os.environ, **{FAST_ROWS_ENV: "0"})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests / "test_staging.py"),
         str(tests / "test_export_paths.py"), str(tests / "test_records.py")],
        env=env, capture_output=True, text=True, cwd=tests.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
