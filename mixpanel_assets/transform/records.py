"""Rows of Mixpanel's three pipeline tables: their columns, and profile and identity-mapping rows.

An export line's mp_master_event row is made in events.py (the hot path of every export). This
module is imported by the worker processes, so it imports nothing heavy: orjson only.

Row shapes (MIXPANEL_SPEC.md section 1.1), written as compact JSON lines in this key order:

  mp_master_event            device_id, distinct_id, event_name, insert_id, properties, time, user_id
  mp_people_data             distinct_id, properties
  mp_identity_mappings_data  distinct_id, resolved_distinct_id

`properties` is the whole properties object, as JSON.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import orjson

from mixpanel_assets.mixpanel.inputs import LocalFile, Origin  # noqa: F401  (the markers sources yield)

_loads = orjson.loads
_dumps = orjson.dumps

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
    # Identity links ((kind, a, b) -> earliest time) go to staging files, merged per window at the end.
    terminated_early: bool = False
    rejoined_lines: int = 0  # events whose line came split in two, joined again
    millisecond_times: int = 0  # rows whose time was in milliseconds (block_worker.MS_TIMES)
    far_outside: int = 0  # rows outside the run's reach (BlockSpec.reach), a part of outside_window
    far_examples: list[tuple[int, float]] = field(default_factory=list)  # (line index in the block, time as sent)
    # A bad first or last line that may be half of a line split across the block boundary; the
    # coordinator joins it with the neighbouring block's (staging/fragments.py). A hand-off, not
    # what the block holds: left out of comparisons.
    head_fragment: bytes | None = field(default=None, compare=False)
    tail_fragment: tuple[int, bytes] | None = field(default=None, compare=False)  # (line index in the block, bytes)


def id_str(value) -> str | None:
    """An id as the tables hold it: strings as-is, numbers and booleans as their string form,
    objects and arrays as their JSON, absent as None."""
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return _dumps(value).decode()


def profile_row(line: bytes) -> tuple[str, bytes]:
    """Engage result `{"$distinct_id": ..., "$properties": {...}}` -> mp_people_data row."""
    try:
        profile = _loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON ({exc})") from None
    if profile.__class__ is not dict:
        raise BadLine("not a JSON object")
    try:
        distinct_id = id_str(profile.get("$distinct_id"))
        if distinct_id is None:
            raise BadLine("profile without $distinct_id")
        props = profile.get("$properties")
        if props is None:
            props = {}
        if props.__class__ is not dict:
            raise BadLine("profile $properties is not an object")
        return distinct_id, b'{"distinct_id":' + _dumps(distinct_id) + b',"properties":' + _dumps(props) + b"}"
    except (TypeError, OverflowError, RecursionError) as exc:  # orjson writes 255 levels, reads 1,024
        raise BadLine(f"nested more than 255 levels deep, deeper than a row can be written ({exc})") from None


def identity_row(distinct_id: str, resolved: str) -> bytes:
    return b'{"distinct_id":' + _dumps(distinct_id) + b',"resolved_distinct_id":' + _dumps(resolved) + b"}"


def epoch_to_datetime(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC)
