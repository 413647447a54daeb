"""Raw Mixpanel export lines -> rows of Mixpanel's three pipeline tables.

This module is the hot path of every export (millions of lines a day) and is imported by the
worker processes, so it imports nothing heavy: orjson and xxhash only.

Row shapes (MIXPANEL_SPEC.md section 1.1), written as compact JSON lines in this key order:

  mp_master_event            device_id, distinct_id, event_name, insert_id, properties, time, user_id
  mp_people_data             distinct_id, properties
  mp_identity_mappings_data  distinct_id, resolved_distinct_id

`properties` is the event's whole properties object. When the raw line has Mixpanel's compact
`{"event":...,"properties":{...}}` shape, the object's bytes are sliced from the line instead of
re-serialised: it is the largest part of every row, and copying it is an order of magnitude
cheaper than encoding it again (and keeps it byte-identical to what Mixpanel sent).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import orjson
import xxhash

from mixpanel_assets.mixpanel.inputs import LocalFile, Origin  # noqa: F401  (the markers sources yield)

_loads = orjson.loads
_dumps = orjson.dumps
_key_hash = xxhash.xxh3_128_intdigest

TERMINATED_EARLY = b"export terminated early"

# Identity link kinds, see identity.py for the rules that consume them.
LINK_DEVICE_USER = "device_user"  # Simplified ID Merge: $device_id + $user_id on one event
LINK_IDENTIFY = "identify"  # Original: $identify ($anon_id -> $identified_id)
LINK_ALIAS = "alias"  # Original: $create_alias (alias -> distinct_id)
LINK_MERGE = "merge"  # Original: $merge ($distinct_ids)
LINK_REKEY = "rekey"  # a re-keyed export row: $distinct_id_before_identity -> distinct_id

MAX_REPORTED_BAD_LINES = 20


class BadLine(ValueError):
    """A line that is not a Mixpanel export event; carries a reason a user can act on."""


@dataclass
class BlockResult:
    """What one worker learned from one block of lines (returned to the coordinating process)."""

    lines: int = 0  # events read (not counting blank lines)
    line_count: int = 0  # lines in the block, blank ones included: line numbers of the next block
    rows_per_window: list[int] = field(default_factory=list)
    bytes_per_window: list[int] = field(default_factory=list)
    # Per window, in row order (see staging.py): the 16-byte xxh3-128 digest of each row's dedup key,
    # its mp_processing_time_ms (uint64), and the indexes (uint32) of rows without $insert_id.
    hashes_per_window: list[bytes] = field(default_factory=list)
    procs_per_window: list[bytes] = field(default_factory=list)
    no_dedup_per_window: list[bytes] = field(default_factory=list)
    outside_window: int = 0
    suppressed: int = 0  # rows of users deleted by a GDPR deletion (gdpr.py), dropped
    bad_lines: int = 0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)  # (line index in the block, why)
    fast_lines: int = 0  # of `lines`, those the compiled path (_fastrows) parsed; the rest took Python's
    rows_by_reference: bool = False  # rows staged as a reference to the input lines (block_worker.process_block)
    # Identity links ((kind, a, b) -> earliest time) go to staging files, merged per window at the end.
    terminated_early: bool = False


def _json_str(value) -> bytes:
    """Encode an id column: strings as-is, other scalars as their string form, absent as null."""
    if value is None:
        return b"null"
    if value.__class__ is str:
        return _dumps(value)
    if isinstance(value, bool):
        return b'"true"' if value else b'"false"'
    if isinstance(value, (int, float)):
        return _dumps(str(value))
    return _dumps(_dumps(value).decode())


def _id_str(value) -> str | None:
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return _dumps(value).decode()


def parse_event(line: bytes, legacy_utc_offset=None) -> tuple[dict, bytes, str, float]:
    """Parse one export line and build its mp_master_event row; raise BadLine with the reason.

    Returns (properties, row bytes without newline, event name, UTC epoch time). `legacy_utc_offset`, for projects created
    before 2023 whose `time` is a project-local epoch, maps that local epoch to a UTC epoch.
    """
    try:
        event = _loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON ({exc})") from None
    if event.__class__ is not dict:
        raise BadLine("not a JSON object")
    name = event.get("event")
    props = event.get("properties")
    if name.__class__ is not str or not name:
        raise BadLine("missing or non-string 'event'")
    if props.__class__ is not dict:
        raise BadLine("missing 'properties' object")
    time = props.get("time")
    if time is None:
        raise BadLine("missing properties.time")
    if time.__class__ is not int and time.__class__ is not float:
        raise BadLine(f"properties.time is not a number: {str(time)[:40]!r}")
    if legacy_utc_offset is not None:
        time = legacy_utc_offset(time)
    name_json = _dumps(name)
    props_json = None
    if len(event) == 2:
        prefix = b'{"event":' + name_json + b',"properties":'
        if line.startswith(prefix):
            body = line.rstrip()
            if body.endswith(b"}"):
                props_json = body[len(prefix) : -1]
    if props_json is None:
        props_json = _dumps(props)
    row = b"".join(
        (
            b'{"device_id":',
            _json_str(props.get("$device_id")),
            b',"distinct_id":',
            _json_str(props.get("distinct_id")),
            b',"event_name":',
            name_json,
            b',"insert_id":',
            _json_str(props.get("$insert_id")),
            b',"properties":',
            props_json,
            b',"time":',
            _dumps(time),
            b',"user_id":',
            _json_str(props.get("$user_id")),
            b"}",
        )
    )
    return props, row, name, time


def dedup_key_hash(name: str, props: dict, time) -> tuple[int, bool]:
    """128-bit hash of Mixpanel's dedup key (event name, distinct_id, time, $insert_id).

    Returns (hash, dedupable). Events without $insert_id get a unique id generated at ingestion,
    so Mixpanel never deduplicates them; their hash still feeds the day's fingerprint.
    """
    insert_id = props.get("$insert_id")
    key = (name, _id_str(props.get("distinct_id")), time, _id_str(insert_id))
    return _key_hash(_dumps(key)), insert_id is not None


def identity_links(name: str, props: dict) -> list[tuple[str, str, str]]:
    """The identity links an event carries (both merge systems; identity.py picks the rules)."""
    links = []
    device = props.get("$device_id")
    user = props.get("$user_id")
    if device is not None and user is not None:
        links.append((LINK_DEVICE_USER, "$device:" + _id_str(device), _id_str(user)))
    before = props.get("$distinct_id_before_identity")
    if before is not None and props.get("distinct_id") is not None:
        links.append((LINK_REKEY, _id_str(before), _id_str(props["distinct_id"])))
    if name[0] == "$":
        if name == "$identify":
            anon, identified = props.get("$anon_id"), props.get("$identified_id")
            if anon is not None and identified is not None:
                links.append((LINK_IDENTIFY, _id_str(anon), _id_str(identified)))
        elif name == "$create_alias":
            alias, target = props.get("alias"), props.get("distinct_id")
            if alias is not None and target is not None:
                links.append((LINK_ALIAS, _id_str(alias), _id_str(target)))
        elif name == "$merge":
            ids = props.get("$distinct_ids")
            if isinstance(ids, list) and len(ids) >= 2:
                first = _id_str(ids[0])
                for other in ids[1:]:
                    links.append((LINK_MERGE, first, _id_str(other)))
    return links


def profile_row(line: bytes) -> tuple[str, bytes]:
    """Engage result `{"$distinct_id": ..., "$properties": {...}}` -> mp_people_data row."""
    try:
        profile = _loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON ({exc})") from None
    if profile.__class__ is not dict:
        raise BadLine("not a JSON object")
    distinct_id = _id_str(profile.get("$distinct_id"))
    if distinct_id is None:
        raise BadLine("profile without $distinct_id")
    props = profile.get("$properties")
    if props is None:
        props = {}
    if props.__class__ is not dict:
        raise BadLine("profile $properties is not an object")
    return distinct_id, b'{"distinct_id":' + _dumps(distinct_id) + b',"properties":' + _dumps(props) + b"}"


def identity_row(distinct_id: str, resolved: str) -> bytes:
    return b'{"distinct_id":' + _dumps(distinct_id) + b',"resolved_distinct_id":' + _dumps(resolved) + b"}"


def epoch_to_datetime(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC)
