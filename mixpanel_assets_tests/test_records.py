"""Export line -> mp_master_event row: the shape of the row, and the reasons a line is refused."""

import orjson
import pytest

from mixpanel_assets.transform.records import (
    LINK_ALIAS,
    LINK_DEVICE_USER,
    LINK_IDENTIFY,
    LINK_MERGE,
    LINK_REKEY,
    BadLine,
    dedup_key_hash,
    identity_links,
    parse_event,
    profile_row,
)


def row_of(line: bytes) -> dict:
    return orjson.loads(parse_event(line)[1])


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
        parse_event(line)


def test_dedup_key_is_event_distinct_id_time_and_insert_id_only():
    a, _ = dedup_key_hash("E", {"distinct_id": "u", "$insert_id": "i", "x": 1}, 10)
    b, _ = dedup_key_hash("E", {"distinct_id": "u", "$insert_id": "i", "x": 2, "mp_processing_time_ms": 5}, 10)
    c, _ = dedup_key_hash("E", {"distinct_id": "u", "$insert_id": "i"}, 11)
    assert a == b != c


def test_events_without_insert_id_are_not_dedupable():
    assert dedup_key_hash("E", {"distinct_id": "u"}, 10)[1] is False


def test_identity_links_of_both_merge_systems():
    assert identity_links("E", {"$device_id": "d", "$user_id": "u"}) == [(LINK_DEVICE_USER, "$device:d", "u")]
    assert identity_links("E", {"distinct_id": "u", "$distinct_id_before_identity": "$device:d"}) == [
        (LINK_REKEY, "$device:d", "u")]
    assert identity_links("$identify", {"$anon_id": "a", "$identified_id": "u"}) == [(LINK_IDENTIFY, "a", "u")]
    assert identity_links("$create_alias", {"alias": "al", "distinct_id": "u"}) == [(LINK_ALIAS, "al", "u")]
    assert identity_links("$merge", {"$distinct_ids": ["a", "b", "c"]}) == [(LINK_MERGE, "a", "b"), (LINK_MERGE, "a", "c")]
    assert identity_links("E", {"$device_id": "d"}) == []


def test_profile_row_keeps_distinct_id_and_properties():
    distinct_id, row = profile_row(b'{"$distinct_id":"u1","$properties":{"$email":"a@b.c"}}')
    assert distinct_id == "u1"
    assert orjson.loads(row) == {"distinct_id": "u1", "properties": {"$email": "a@b.c"}}
    with pytest.raises(BadLine, match="without \\$distinct_id"):
        profile_row(b'{"$properties":{}}')
