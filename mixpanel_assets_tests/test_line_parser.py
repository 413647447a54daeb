"""One export line -> one mp_master_event row: transform/events.py, checked against an independent reading.

`reference_block` below is today's rule written out plainly with orjson (one `orjson.loads` a line,
the row joined from its pieces): the expected results are computed by it, never by the code under
test. Every test runs a block through `block_worker.parse_block` (which reads lines with
`events.read_event`) and compares everything a worker returns: row bytes per window, dedup-key
digests, processing times, no-dedup row indexes, identity links (with their times' types), line,
outside-window, suppressed, bad-line, rejoined-line and millisecond-time counts, bad-line examples,
the "terminated early" flag.
events.py reads a line with its typed reader (msgspec) when it can give exactly the reference's
result, and with its general reader otherwise; `read_typed` says which lines the typed reader
takes, and the edge cases pin that down both ways, so the comparisons cannot pass by the typed
reader quietly handing everything to the general one.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import struct
from array import array

import orjson
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixpanel_assets.staging.block_worker import (
    BlockSpec,
    FileRange,
    InputFileChanged,
    _legacy_converter,
    parse_block,
    process_block,
)
from mixpanel_assets.staging.blocks import split_blocks
from mixpanel_assets.staging.dedup import Fingerprint, _deduplicate, _KeyBuckets
from mixpanel_assets.staging.rows_files import filter_lines
from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.transform.events import read_typed
from mixpanel_assets.transform.records import BlockResult, LocalFile
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


# ------------------------------------------------------------------ the reference: today's rule, plainly

def _ref_id(value):
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


class Refused(Exception):
    """A line the reference does not take as an event; the message is the reason."""


def _ref_event(line: bytes):
    """(name, time, props, properties JSON) of a line, or Refused with the reason it is refused."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise Refused(f"not valid JSON ({exc})") from None
    if not isinstance(event, dict):
        raise Refused("not a JSON object")
    name, props = event.get("event"), event.get("properties")
    if not isinstance(name, str) or not name:
        raise Refused("missing or non-string 'event'")
    if not isinstance(props, dict):
        raise Refused("missing 'properties' object")
    time = props.get("time")
    if time is None:
        raise Refused("missing properties.time")
    if type(time) not in (int, float):
        raise Refused(f"properties.time is not a number: {str(time)[:40]!r}")
    prefix = b'{"event":' + orjson.dumps(name) + b',"properties":'
    body = line.rstrip()
    if len(event) == 2 and line.startswith(prefix) and body.endswith(b"}"):
        properties = body[len(prefix):-1]  # Mixpanel's compact shape: the bytes as sent
    else:
        properties = orjson.dumps(props)
    return name, time, props, properties


def _ref_links(name: str, props: dict) -> list:
    links = []
    if props.get("$device_id") is not None and props.get("$user_id") is not None:
        links.append(("device_user", "$device:" + _ref_id(props["$device_id"]), _ref_id(props["$user_id"])))
    if props.get("$distinct_id_before_identity") is not None and props.get("distinct_id") is not None:
        links.append(("rekey", _ref_id(props["$distinct_id_before_identity"]), _ref_id(props["distinct_id"])))
    if name == "$identify" and props.get("$anon_id") is not None and props.get("$identified_id") is not None:
        links.append(("identify", _ref_id(props["$anon_id"]), _ref_id(props["$identified_id"])))
    if name == "$create_alias" and props.get("alias") is not None and props.get("distinct_id") is not None:
        links.append(("alias", _ref_id(props["alias"]), _ref_id(props["distinct_id"])))
    ids = props.get("$distinct_ids")
    if name == "$merge" and isinstance(ids, list):
        ids = [i for i in ids if i is not None]  # a null links nothing (it used to fail the block: issue 12)
        if len(ids) >= 2:
            links += [("merge", _ref_id(ids[0]), _ref_id(other)) for other in ids[1:]]
    return links


def _ref_seconds(ms):
    return ms // 1000 if type(ms) is int and ms % 1000 == 0 else ms / 1000


def _ref_window(spec: BlockSpec, time) -> int | None:
    w = bisect.bisect_right(spec.window_starts, time) - 1
    return None if w < 0 or time >= spec.window_ends[w] else w


def reference_block(block: bytes, spec: BlockSpec):
    """What parse_block must return for a block, computed line by line from `_ref_event`."""
    n = len(spec.window_starts)
    rows, hashes, procs, no_dedup = ([bytearray() for _ in range(n)] for _ in range(4))
    links: list[dict] = [{} for _ in range(n)]
    result = BlockResult(rows_per_window=[0] * n, bytes_per_window=[0] * n)
    convert = _legacy_converter(spec.legacy_timezone) if spec.legacy_timezone else None
    parts = block.split(b"\n")
    for index, line in enumerate(parts):
        if not line or line.isspace():
            continue
        try:
            name, time, props, properties = _ref_event(line)
        except Refused as exc:
            if line.strip() == b"export terminated early":
                result.terminated_early = True
                continue
            following = parts[index + 1] if index + 1 < len(parts) else b""
            try:  # a line split in two: with the next line it makes one event
                if not following:
                    raise Refused("no next line") from None
                name, time, props, properties = _ref_event(line + following)
                parts[index + 1] = b""
                result.rejoined_lines += 1
            except Refused:
                result.lines += 1
                result.bad_lines += 1
                if len(result.bad_examples) < 20:
                    result.bad_examples.append((index, f"{exc}: {line[:80]!r}"))
                continue
        result.lines += 1
        if convert is not None:
            if time > 1e11:  # milliseconds
                time, result.millisecond_times = _ref_seconds(time), result.millisecond_times + 1
            time = convert(time)
        if spec.events_filter is not None and name not in spec.events_filter:
            result.outside_window += 1
            continue
        w = _ref_window(spec, time)
        if w is None and convert is None and time > 1e11 and _ref_window(spec, _ref_seconds(time)) is not None:
            time, result.millisecond_times = _ref_seconds(time), result.millisecond_times + 1
            w = _ref_window(spec, time)
        if w is None:
            result.outside_window += 1
            continue
        ids = [_ref_id(props.get(k)) for k in ("$device_id", "distinct_id", "$insert_id", "$user_id")]
        if spec.suppressed_distinct_ids is not None and ids[1] in spec.suppressed_distinct_ids:
            result.suppressed += 1
            continue
        if ids[2] is None:
            no_dedup[w] += struct.pack("=I", len(hashes[w]) // 16)
        columns = [json.dumps(x, ensure_ascii=False).encode("utf-8", "surrogatepass") for x in (*ids, name)]
        rows[w] += b"".join([
            b'{"device_id":', columns[0], b',"distinct_id":', columns[1], b',"event_name":', columns[4],
            b',"insert_id":', columns[2], b',"properties":', properties, b',"time":', orjson.dumps(time),
            b',"user_id":', columns[3], b"}\n"])
        hashes[w] += xxhash.xxh3_128_digest(orjson.dumps([name, ids[1], time, ids[2]]))
        proc = props.get("mp_processing_time_ms")
        procs[w] += struct.pack("=Q", proc if type(proc) is int and 0 <= proc < 1 << 64 else 0)
        if spec.collect_links:
            for link in _ref_links(name, props):
                if link not in links[w] or time < links[w][link]:
                    links[w][link] = time
    result.line_count = len(block.split(b"\n")) - (1 if block.endswith(b"\n") or not block else 0)
    result.rows_per_window = [len(h) // 16 for h in hashes]
    result.bytes_per_window = [len(r) if spec.write_rows else 0 for r in rows]
    result.hashes_per_window = [bytes(h) for h in hashes]
    result.procs_per_window = [bytes(p) for p in procs]
    result.no_dedup_per_window = [bytes(r) for r in no_dedup]
    return result, rows, links


def check_block(block: bytes, windows=WHOLE_DAY, **overrides) -> int:
    """Assert parse_block gives the reference's results; return how many lines the typed reader takes."""
    spec = spec_for(windows, **overrides)
    result, rows, links = parse_block(block, spec)
    expected_result, expected_rows, expected_links = reference_block(block, spec)
    assert result == expected_result, block[:300]
    assert [bytes(r) for r in rows] == [bytes(r) for r in expected_rows], block[:300]
    assert [_typed(x) for x in links] == [_typed(x) for x in expected_links], block[:300]
    return sum(read_typed(x) is not None for x in block.split(b"\n") if x)


def _typed(links: dict) -> list:
    return sorted(((link, value, type(value).__name__) for link, value in links.items()), key=repr)


def line(props: bytes | str, name: bytes | str = b"E") -> bytes:
    props = props.encode() if isinstance(props, str) else props
    name = name.encode() if isinstance(name, str) else name
    return b'{"event":"' + name + b'","properties":' + props + b"}"


T = DAY + 100
BASE = f'"time":{T},"distinct_id":"u1","$insert_id":"i1","$device_id":"d1","$user_id":"u1","mp_processing_time_ms":{T}123'

# (line, does the typed reader take it? Otherwise the general reader does, or refuses it)
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
    (line('{"time":%d,"mp_processing_time_ms":{"a":1}}' % T), False),  # an object: the general reader
    (line('{"time":%d,"mp_processing_time_ms":[%s]}' % (T, "9" * 400)), False),  # refused, as before
    (line('{"time":%d,"mp_processing_time_ms":%s}' % (T, "9" * 30)), False),  # past 64 bits: orjson's float
    (line('{"time":%d,"mp_processing_time_ms":999999999999999999}' % T), True),
    (line('{"time":%d,"n":[1e5,-0.0,0,1E+99,1.5e-10,-12.75,0.1234567890123456789]}' % T), True),
    (line('{"time":%d,"n":[1e100,1e-100]}' % T), True),
    (line('{"time":%d,"id":"7d1fb4e023a-ff00e12345"}' % T), True),  # hex with "e" and digits is no number
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
    (line('{"time":%d}' % T, 'a\\"b'), True),  # escaped as orjson escapes it
    (line('{"time":%d}' % T, "\\u0045"), False),  # escaped otherwise: the line is not in orjson's shape
    (line('{"time":%d,"$anon_id":"a","$identified_id":"u"}' % T, "$identify"), True),
    (line('{"time":%d,"alias":"a","distinct_id":"u"}' % T, "$create_alias"), True),
    (line('{"time":%d,"$distinct_ids":["a","b"]}' % T, "$merge"), True),
    (line('{"time":%d,"$distinct_ids":["a",null,"c"]}' % T, "$merge"), True),
    (line('{"time":%d,"$distinct_ids":["a",2]}' % T, "$merge"), False),
    (line('{"time":%d,"$distinct_ids":"a"}' % T, "$merge"), False),
    (line('{"time":%d,"$anon_id":5,"$identified_id":"u"}' % T, "$identify"), False),
    (line('{"time":%d}' % T, "a\tb"), False),  # a raw control character
    # a name holding the sequence the typed reader cuts at: never cut there
    (line('{"time":%d}' % T, 'a\\",\\"properties\\":{'), True),
    (line('{"time":%d}' % T, 'a\\\\'), True),  # an escaped backslash ends the name
    (b'{"event":"a\\","properties":{","properties":{"time":%d}}' % T, False),  # not JSON: the name never ends
    (line('{"time":%d},"event":"F"' % T), False),  # a key after the properties
    (line('{"time":%d},"properties":{"time":5}' % T), False),  # a repeated properties key
    # ids we output: escaped or not strings
    *[(line('{"time":%d,"%s":"a\\u00e9"}' % (T, key)), True)
      for key in ("distinct_id", "$device_id", "$user_id", "$insert_id", "$distinct_id_before_identity")],
    *[(line('{"time":%d,"%s":%s}' % (T, key, value)), False)
      for key in ("distinct_id", "$device_id", "$user_id", "$insert_id", "$distinct_id_before_identity")
      for value in ("12345", "1.5", "true", "false", '{"a":1}', "[1]")],
    (line('{"time":%d,"distinct\\u005fid":"x","distinct_id":"u"}' % T), True),  # an escaped key
    (line('{"time":%d,"distinct_id":"u","distinct\\u005fid":"x"}' % T), True),
    # duplicate keys we read (orjson keeps the last one)
    *[(line('{"time":%d,%s,%s}' % (T, pair, pair)), True)
      for pair in ('"distinct_id":"a"', '"$device_id":"a"', '"$user_id":"a"', '"$insert_id":"a"',
                   '"mp_processing_time_ms":1', '"$distinct_id_before_identity":"a"')],
    (line('{"time":%d,"time":%d}' % (T, T + 1)), True),
    # time
    *[(line('{"time":%s,"distinct_id":"u"}' % value), True)
      for value in ("1.5", "%d.0" % T, "1e9", "1E9", "-0", "1234567890123456789", "-9223372036854775808",
                    "18446744073709551615")],
    *[(line('{"time":%s,"distinct_id":"u"}' % value), False)  # past 64 bits orjson reads a float: it decides
      for value in ("18446744073709551616", "-9223372036854775809", "1e400")],
    *[(line('{"time":%s,"distinct_id":"u"}' % value), False)
      for value in ("01", '"%d"' % T, "null", "true", "[1]", "+1", "-", "1.", ".5", "NaN", "Infinity")],
    (line('{"distinct_id":"u"}'), False),
    # numbers orjson might not take as we expect
    *[(line('{"time":%d,"n":%s}' % (T, value)), True)
      for value in ("1234567890123456789", "18446744073709551616", "1e99", "1.5E+99", "-1e-99", "1e-400", "1e100",
                    "1.5e+123", "9" * 300)],
    # (numbers beyond a double in a property no column reads: INFINITE_NUMBERS below)
    *[(line('{"time":%d,"n":%s}' % (T, value)), False)
      for value in ("01", "1.", ".5", "+1", "-", "0x10", "1e", "--1", "NaN")],
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
    (line('{"time":%d,"s":"\\ud83d\\ude00"}' % T), True),  # a valid pair
    (line('{"time":%d,"s":"\\x41"}' % T), False),
    (line('{"time":%d,"s":"\\u12"}' % T), False),
    (line('{"time":%d,"s":"a\tb"}' % T), False),
    (line('{"time":%d,"s":"a\x00b"}' % T), False),
    (line('{"time":%d,"s":"abc}}' % T), False),  # unterminated
    (line('{"time":%d,"deep":%s1%s}' % (T, "[" * 200, "]" * 200)), True),
    (line('{"time":%d,"deep":%s1%s}' % (T, "[" * 1100, "]" * 1100)), False),  # past orjson's limit: bad
    (line('{"time":%d,"x":tru}' % T), False),
    (line('{"time":%d,"x":nul}' % T), False),
    (line('{"time":%d,"x" 1}' % T), False),
    (line('{"time":%d,"x":[1 2]}' % T), False),
    (line('{"time":%d,"x":{"a" 1}}' % T), False),
    (line('{"time":%d,"x":{1:2}}' % T), False),
]


# Numbers beyond a double: orjson refuses the line, msgspec does not look at them where it skips.
INFINITE_NUMBERS = ["1e400", "-1E+400", "1e0400", "1.5e+309", "9" * 400]


@pytest.mark.parametrize("number", INFINITE_NUMBERS)
def test_a_number_beyond_a_double_in_a_property_no_column_reads_is_kept_as_written(number):
    """The one deliberate difference from the reference (events.py says why): the line was refused
    as not valid JSON; now its row keeps the number's text in `properties`."""
    case = line('{"time":%d,"distinct_id":"u","n":%s}' % (T, number))
    expected, _, _ = reference_block(case, spec_for(WHOLE_DAY))
    assert expected.bad_lines == 1 and "not valid JSON" in expected.bad_examples[0][1]
    result, rows, _ = parse_block(case, spec_for(WHOLE_DAY))
    assert result.bad_lines == 0 and result.rows_per_window == [1]
    assert bytes(rows[0]) == (b'{"device_id":null,"distinct_id":"u","event_name":"E","insert_id":null,"properties":'
                              b'{"time":%d,"distinct_id":"u","n":%s},"time":%d,"user_id":null}\n'
                              % (T, number.encode(), T))
    for read in ('"time":%s,"distinct_id":"u"', '"time":%d,"distinct_id":%s', '"time":%d,"mp_processing_time_ms":%s'):
        refused = line("{" + (read % number if read.startswith('"time":%s') else read % (T, number)) + "}")
        assert check_block(refused) == 0  # where a column or the key reads it: refused, as before


@pytest.mark.parametrize("case, taken", EDGE_CASES, ids=[f"{i:03d}" for i in range(len(EDGE_CASES))])
def test_each_edge_case_is_taken_by_the_typed_reader_or_not_as_designed_and_rows_equal_the_reference(case, taken):
    assert (read_typed(case) is not None) is taken
    for windows in WINDOW_SETS.values():
        assert check_block(case, windows) == (1 if taken else 0)


def test_a_block_mixing_every_edge_case_keeps_line_order_and_line_numbers():
    lines = [case for case, _ in EDGE_CASES]
    good = line("{" + BASE + "}")
    block = b"\n".join(x for case in lines for x in (case, good, b"", b"\r")) + b"\n" + good  # no final newline
    for windows in WINDOW_SETS.values():
        check_block(block, windows)
    assert check_block(block) > len(lines)
    crlf = block.replace(b"\n", b"\r\n")
    assert check_block(crlf) > len(lines)


def test_window_edges_follow_half_open_bisect_semantics():
    times = [DAY - 1, DAY, DAY + 1, DAY + 10, DAY + 11, DAY + 99, DAY + 100, DAY + 6 * 3600 - 1, DAY + 6 * 3600,
             DAY + 8 * 3600 - 1, DAY + 8 * 3600, DAY + 86399, DAY + 86400, -5, 0]
    block = b"\n".join(line('{"time":%d,"distinct_id":"u","$insert_id":"i%d"}' % (t, t)) for t in times)
    for windows in WINDOW_SETS.values():
        assert check_block(block, windows) == len(times)
    unbounded = [Window(float("-inf"), DAY), Window(DAY, float("inf"))]
    assert check_block(block, unbounded) == len(times)


def test_generated_days_take_the_typed_reader_and_match_the_reference_with_every_option(generated_day):
    data = generated_day.read_bytes()
    names = sorted({orjson.loads(x)["event"] for x in data.splitlines()[:2000]})
    distinct_ids = sorted({orjson.loads(x)["properties"]["distinct_id"] for x in data.splitlines()[:500]})
    lines = data.count(b"\n")
    assert check_block(data) > 0.98 * lines
    assert check_block(data, HOURS_WITH_GAP) > 0.98 * lines
    assert check_block(data, collect_links=False) > 0.98 * lines
    check_block(data, events_filter=frozenset(names[::3]))
    check_block(data, suppressed_distinct_ids=frozenset(distinct_ids[::2]))
    check_block(data, suppressed_distinct_ids=frozenset([None, "x"]))
    check_block(data, legacy_timezone="America/New_York")


def test_local_files_stage_rows_equal_to_rows_staged_from_a_stream(generated_day, tmp_path):
    windows = [Window(DAY + h * 3600, DAY + (h + 1) * 3600) for h in range(24)]
    keys = [str(h) for h in range(24)]
    local = stage_events([LocalFile(str(generated_day), generated_day.name)], windows, keys,
                         staging_root=tmp_path, workers=2, block_bytes=1 << 20)
    streamed = stage_events([generated_day.read_bytes()], windows, keys, staging_root=tmp_path, block_bytes=1 << 20)
    try:
        segments = [seg for w in local.windows for seg in w.segments]
        assert segments and all(seg.path.suffix == ".jsonl" for seg in segments)  # rows, staged once
        assert all(seg.path.suffix == ".jsonl" for w in streamed.windows for seg in w.segments)
        for ours, theirs in zip(local.windows, streamed.windows):
            assert list(ours.iter_rows()) == list(theirs.iter_rows())
            assert ours.fingerprint == theirs.fingerprint and ours.rows > 0
    finally:
        local.cleanup()
        streamed.cleanup()


def test_parts_are_written_from_the_staged_rows_not_from_the_input_again(generated_day, tmp_path):
    source = tmp_path / "day.jsonl"
    source.write_bytes(generated_day.read_bytes())
    staged = stage_events([LocalFile(str(source), source.name)], WHOLE_DAY, ["d"], staging_root=tmp_path,
                          block_bytes=1 << 20)
    try:
        rows = list(staged.windows[0].iter_rows())
        data = source.read_bytes()
        at = data.index(b'"mp_lib":"web"', 5_000_000)  # same length, another value: only the rows would differ
        source.write_bytes(data[:at] + b'"mp_lib":"wob"' + data[at + 14:])
        parts = staged.windows[0].write_parts(tmp_path / "out", fmt="json", compression="none", workers=1)
        assert b"".join(part.path.read_bytes() for part in parts).splitlines() == rows
    finally:
        staged.cleanup()


def test_a_local_file_that_shrinks_while_exported_fails_naming_the_file(generated_day, tmp_path):
    source = tmp_path / "day.jsonl"
    source.write_bytes(generated_day.read_bytes())
    spec = BlockSpec((DAY,), (DAY + 86400,), str(tmp_path / "staging"))
    blocks = list(split_blocks([LocalFile(str(source), source.name)], block_bytes=1 << 20))
    assert len(blocks) > 3
    process_block(blocks[0][3], 0, spec)
    with open(source, "r+b") as f:
        f.truncate(blocks[2][3].start + 100)  # cut in the middle of the third block
    with pytest.raises(InputFileChanged, match=str(source)):
        process_block(blocks[2][3], 2, spec)
    with pytest.raises(InputFileChanged, match=str(source)):
        process_block(blocks[3][3], 3, spec)
    beyond = FileRange(str(source), 0, os.path.getsize(source) + 1)
    with pytest.raises(InputFileChanged, match=f"{source} is {os.path.getsize(source):,} bytes now"):
        process_block(beyond, 9, spec)


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
def test_random_lines_give_the_same_results_on_check_block(lines):
    block = b"\n".join(lines)
    for windows in WINDOW_SETS.values():
        check_block(block, windows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_embedded_in_a_real_line_gives_the_same_results(value):
    for ascii_only in (True, False):
        embedded = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        check_block(line(b'{"time":%d,"distinct_id":"u","$insert_id":"i","v":%s,"w":1}' % (T, embedded)))


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


def test_mutated_real_lines_give_the_same_results_on_check_block(generated_day):
    rng = random.Random(20241122)
    originals = generated_day.read_bytes().splitlines()
    originals = [originals[i] for i in sorted(rng.sample(range(len(originals)), 400))]
    mutants = [mutate(original, rng) for original in originals for _ in range(10)]
    taken = 0
    for mutant in mutants:
        taken += check_block(mutant, HOURS_WITH_GAP)
    check_block(b"\n".join(mutants))
    # Most single-byte changes inside a string keep the line valid; many others must not be taken.
    assert 0.1 * len(mutants) < taken < 0.9 * len(mutants)


# ------------------------------------------------------------------ dropping duplicate rows from a staged block

@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")), max_size=30), st.booleans(),
       st.lists(st.integers(min_value=-3, max_value=40), max_size=12))
def test_dropping_rows_gives_the_rows_not_listed(rows, unterminated, drop):
    data = b"".join(row + b"\n" for row in rows) + (b"tail" if unterminated else b"")

    def expected(listed) -> tuple[bytes, int]:
        if len(listed) == 0:
            return data, len(rows)
        kept = [row for i, row in enumerate(rows) if i not in set(listed)]
        if not kept:
            return b"", 0
        return b"".join(row + b"\n" for row in kept) + (b"tail" if unterminated else b""), len(kept)

    assert filter_lines(data, drop) == expected(drop)
    assert filter_lines(data, None) == (data, len(rows))
    as_array = array("I", sorted({d for d in drop if d >= 0}))
    assert filter_lines(data, as_array) == expected(as_array)


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
