"""Export line -> mp_master_event row: the shape of the row, and the reasons a line is refused.

(The byte-level agreement of the typed and general readers is test_line_parser.py's subject.)"""

import orjson
import pytest

from mixpanel_assets.transform.events import event_row, identity_links, key_digest, read_event
from mixpanel_assets.transform.records import (
    LINK_ALIAS,
    LINK_DEVICE_USER,
    LINK_IDENTIFY,
    LINK_MERGE,
    LINK_REKEY,
    BadLine,
    profile_row,
)


def row_of(line: bytes) -> dict:
    return orjson.loads(event_row(*read_event(line)))


def event(name: str, props: dict) -> bytes:
    return orjson.dumps({"event": name, "properties": {"time": 10, **props}})


def key_of(name: str, props: dict, time) -> tuple[bytes, bool]:
    """The dedup-key digest of an event, and whether Mixpanel deduplicates it."""
    name, _, fields, _ = read_event(event(name, props))
    return key_digest(name, time, fields), fields.insert_id is not None


def links_of(name: str, props: dict) -> list:
    name, _, fields, _ = read_event(event(name, props))
    return identity_links(name, fields)


def test_row_has_mixpanels_seven_columns_in_order_with_the_whole_properties_object():
    line = b'{"event":"Signed Up","properties":{"time":1700000000,"distinct_id":"u1","$insert_id":"i1","$device_id":"d1","$user_id":"u1","$city":"Berlin","nested":{"a":[1,2]}}}'
    row = row_of(line)
    assert list(row) == ["device_id", "distinct_id", "event_name", "insert_id", "properties", "time", "user_id"]
    assert row == {
        "device_id": "d1", "distinct_id": "u1", "event_name": "Signed Up", "insert_id": "i1",
        "properties": orjson.loads(line)["properties"], "time": 1700000000, "user_id": "u1",
    }


def test_properties_sliced_from_the_line_equal_properties_serialised_again():
    compact = b'{"event":"E","properties":{"time":1.5,"distinct_id":"x","caf\xc3\xa9":"\xe6\x9d\xb1","$insert_id":"a"}}'
    spaced = b'{ "event": "E", "properties": {"time": 1.5, "distinct_id": "x", "caf\\u00e9": "\\u6771", "$insert_id": "a"} }'
    assert row_of(compact) == row_of(spaced)


def test_absent_ids_are_null_and_non_string_ids_become_strings():
    row = row_of(b'{"event":"E","properties":{"time":1,"distinct_id":12345,"$user_id":true}}')
    assert row["distinct_id"] == "12345" and row["user_id"] == "true"
    assert row["device_id"] is None and row["insert_id"] is None


def test_key_order_other_than_mixpanels_still_gives_the_full_properties():
    line = b'{"properties":{"time":1,"distinct_id":"a"},"event":"E"}'
    assert row_of(line)["properties"] == {"time": 1, "distinct_id": "a"}


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"event":"E","properties":{"time":1', "not valid JSON"),
        (b'[1,2]', "not a JSON object"),
        (b'{"properties":{"time":1}}', "missing or non-string 'event'"),
        (b'{"event":"E"}', "missing 'properties' object"),
        (b'{"event":"E","properties":{"distinct_id":"a"}}', "missing properties.time"),
        (b'{"event":"E","properties":{"time":"yesterday"}}', "properties.time is not a number"),
    ],
)
def test_malformed_lines_are_refused_with_a_reason(line, reason):
    with pytest.raises(BadLine, match=reason):
        read_event(line)


def test_dedup_key_is_event_distinct_id_time_and_insert_id_only():
    a, _ = key_of("E", {"distinct_id": "u", "$insert_id": "i", "x": 1}, 10)
    b, _ = key_of("E", {"distinct_id": "u", "$insert_id": "i", "x": 2, "mp_processing_time_ms": 5}, 10)
    c, _ = key_of("E", {"distinct_id": "u", "$insert_id": "i"}, 11)
    assert a == b != c
    assert len(a) == 16


def test_events_without_insert_id_are_not_dedupable():
    assert key_of("E", {"distinct_id": "u"}, 10)[1] is False


def test_identity_links_of_both_merge_systems():
    assert links_of("E", {"$device_id": "d", "$user_id": "u"}) == [(LINK_DEVICE_USER, "$device:d", "u")]
    assert links_of("E", {"distinct_id": "u", "$distinct_id_before_identity": "$device:d"}) == [
        (LINK_REKEY, "$device:d", "u")]
    assert links_of("$identify", {"$anon_id": "a", "$identified_id": "u"}) == [(LINK_IDENTIFY, "a", "u")]
    assert links_of("$create_alias", {"alias": "al", "distinct_id": "u"}) == [(LINK_ALIAS, "al", "u")]
    assert links_of("$merge", {"$distinct_ids": ["a", "b", "c"]}) == [(LINK_MERGE, "a", "b"), (LINK_MERGE, "a", "c")]
    assert links_of("E", {"$device_id": "d"}) == []


def test_profile_row_keeps_distinct_id_and_properties():
    distinct_id, row = profile_row(b'{"$distinct_id":"u1","$properties":{"$email":"a@b.c"}}')
    assert distinct_id == "u1"
    assert orjson.loads(row) == {"distinct_id": "u1", "properties": {"$email": "a@b.c"}}
    with pytest.raises(BadLine, match="without \\$distinct_id"):
        profile_row(b'{"$properties":{}}')
