"""One export line -> its mp_master_event row, dedup-key digest, processing time and identity links.

The one place that reads an event; the block worker (staging/block_worker.py) calls it for every
line of every export. Two readers give one result:

* The typed reader (msgspec) takes Mixpanel's usual compact line `{"event":<name>,"properties":{...}}`:
  the name and the properties bytes are cut out of the line by that shape, and the properties are
  decoded as a struct of only the fields a row needs (`_Fields`; every other property is skipped,
  not built into Python objects). On generated days that decode takes 2.7-3.0 us a line against 6.3 us for
  a full `orjson.loads` on a quiet machine, 5.0 against 7.3 us on a loaded one; checking UTF-8
  (below) costs ~1 us of that back on non-ASCII lines.
* The general reader (orjson) takes every other line: another key order or spacing, ids that are
  numbers or objects, times orjson reads differently from msgspec (integers past 64 bits), bytes
  the typed reader cannot vouch for (below). It is also what refuses a line (`BadLine`) and says why.

The typed reader only takes a line when it can give exactly what the general reader would, so the
rows are the same bytes whichever took the line (test_line_parser.py checks it against an
independent orjson reading, on edge cases, random values and mutated real lines). msgspec checks
the syntax of the values it skips but not all of what orjson refuses in them: invalid UTF-8 is
checked here (a non-ASCII line is decoded once), numbers beyond a double are not. So one
difference is deliberate: a number such as `1e400` in a property no column is made of is kept as
written, where orjson refused the whole line as bad. Finding one in every line costs more than the
typed reader saves (a translate and a few searches: ~5-9 us a line measured, against ~3 saved).

`properties` is the event's whole properties object. When the line has the compact shape, its bytes
are sliced from the line instead of re-serialised: it is the largest part of every row, and copying
it is an order of magnitude cheaper than encoding it again (and keeps it byte-identical to what
Mixpanel sent). Otherwise it is the object serialised again by orjson.
"""

from __future__ import annotations

import msgspec
import orjson
import xxhash

from mixpanel_assets.transform.records import (
    LINK_ALIAS,
    LINK_DEVICE_USER,
    LINK_IDENTIFY,
    LINK_MERGE,
    LINK_REKEY,
    BadLine,
    id_str,
)

_dumps = orjson.dumps
_fragment = orjson.Fragment
_digest = xxhash.xxh3_128_digest
_U64 = 1 << 64
_I64_MIN = -(1 << 63)
_CLOSE_BRACE = ord("}")
_MAX_DEPTH = 255  # orjson writes no deeper (it reads up to 1,024)


class _Fields(msgspec.Struct, gc=False):
    """The properties an mp_master_event row, its dedup key and its identity links are made of.

    Ids are strings or None: the typed reader refuses any other type (the line then goes to the
    general reader), and the general reader stores ids already converted as `records.id_str` converts them.
    """

    time: int | float | None = None
    distinct_id: str | None = None
    device_id: str | None = msgspec.field(name="$device_id", default=None)
    insert_id: str | None = msgspec.field(name="$insert_id", default=None)
    user_id: str | None = msgspec.field(name="$user_id", default=None)
    # Not an array or object: their numbers would be read by msgspec, not as orjson reads them.
    processing_time: int | float | str | bool | None = msgspec.field(name="mp_processing_time_ms", default=None)
    before_identity: str | None = msgspec.field(name="$distinct_id_before_identity", default=None)
    anon_id: str | None = msgspec.field(name="$anon_id", default=None)
    identified_id: str | None = msgspec.field(name="$identified_id", default=None)
    alias: str | None = None
    distinct_ids: list[str | None] | None = msgspec.field(name="$distinct_ids", default=None)


_read_fields = msgspec.json.Decoder(_Fields).decode
_TYPED_FAILED = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)
_HEAD = b'{"event":"'  # the compact shape: {"event":"<name>","properties":{...}}
_PROPS = b'","properties":{'
_PROPS_AT = len(_PROPS) - 1  # from the name's end to the properties' opening brace
_names: dict[bytes, str] = {}  # the name's bytes in the line -> the name ("" when the typed reader cannot take it)
_MAX_NAMES = 4096


def _name(data: bytes) -> str:
    """The event name whose JSON string body is `data`, or "" when the typed reader does not take it:
    empty, not a valid JSON string, or not written as orjson writes it (the row is written by orjson,
    so only then are the line's bytes and the row's the same). Once per distinct name (cached)."""
    quoted = b'"' + data + b'"'
    try:
        name = orjson.loads(quoted)
    except orjson.JSONDecodeError:
        return ""
    return name if name.__class__ is str and name and _dumps(name) == quoted else ""


def read_event(line: bytes) -> tuple[str, int | float, _Fields, bytes]:
    """(event name, time as in the line, the fields rows are made of, the properties JSON); raises
    BadLine with the reason a line is not a Mixpanel export event, and nothing else."""
    return read_typed(line) or _read_general(line)


def refusal(exc: Exception) -> str:
    """Why a line that raised `exc` while becoming a row is a bad line (parse_block counts it as one:
    one line never fails a partition). Only called on that rare path, so good lines pay nothing."""
    if isinstance(exc, BadLine):
        return str(exc)
    text = str(exc)
    if isinstance(exc, RecursionError) or "Recursion limit" in text:
        return f"nested more than {_MAX_DEPTH} levels deep, deeper than a row can be written"
    if isinstance(exc, OverflowError):
        return f"a value is out of range ({text})"
    return f"cannot be made into a row ({type(exc).__name__}: {text})"


def read_typed(line: bytes) -> tuple[str, int | float, _Fields, bytes] | None:
    """What read_event returns, for the lines the typed reader takes exactly; None for the others.

    The line is taken apart by its fixed shape, not decoded: the name runs from `{"event":"` to the
    first `","properties":{` (a name that holds that sequence has an escaped quote before it, so its
    cut-off body is not a whole JSON string and `_name` refuses it), and the
    properties from that brace to the line's last `}`. Decoding the properties alone then proves the
    rest: msgspec refuses trailing bytes, so anything after the properties object (a repeated key,
    a third key) sends the line to the general reader. One msgspec pass over the properties, where
    decoding the line and then its properties took two.
    """
    if not line.startswith(_HEAD):
        return None
    cut = line.find(_PROPS, 10)
    if cut < 0:
        return None
    key = line[10:cut]
    name = _names.get(key)
    if name is None:
        if len(_names) >= _MAX_NAMES:
            _names.clear()
        name = _names[key] = _name(key)
    if not name:
        return None
    close = len(line) - 1
    if line[close] != _CLOSE_BRACE:
        close = len(line.rstrip(b" \t\r")) - 1  # JSON's whitespace after the object
        if close < 0 or line[close] != _CLOSE_BRACE:
            return None
    if line[close - 1] != _CLOSE_BRACE:  # space between the two closing braces: not the compact shape
        return None
    if not (line.isascii() or _utf8(line)):  # msgspec does not check UTF-8 in values it skips
        return None
    raw = line[cut + _PROPS_AT:close]
    try:
        fields = _read_fields(raw)
    except _TYPED_FAILED:
        return None
    time, proc = fields.time, fields.processing_time
    if ((time.__class__ is float or (time.__class__ is int and _I64_MIN <= time < _U64))
            and (proc.__class__ is not int or _I64_MIN <= proc < _U64)):  # orjson: floats past 64 bits
        return name, time, fields, raw
    return None


def _utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


def _read_general(line: bytes) -> tuple[str, int | float, _Fields, bytes]:
    """The general reader: orjson, any key order and spacing, ids of any type; the reasons for refusing."""
    try:
        event = orjson.loads(line)
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
    try:
        return _general_fields(line, event, name, props, time)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # an id or the properties too deep to write
        raise BadLine(refusal(exc)) from None


def _general_fields(line: bytes, event: dict, name: str, props: dict, time) -> tuple[str, int | float, _Fields, bytes]:
    properties = None
    if len(event) == 2:
        prefix = b'{"event":' + _dumps(name) + b',"properties":'
        if line.startswith(prefix):
            body = line if line[-1] == _CLOSE_BRACE else line.rstrip()
            if body[-1] == _CLOSE_BRACE:
                properties = body[len(prefix):-1]
    if properties is None:
        properties = _dumps(props)
    ids = props.get("$distinct_ids")
    fields = _Fields(
        time=time,
        distinct_id=id_str(props.get("distinct_id")),
        device_id=id_str(props.get("$device_id")),
        insert_id=id_str(props.get("$insert_id")),
        user_id=id_str(props.get("$user_id")),
        processing_time=props.get("mp_processing_time_ms"),
        before_identity=id_str(props.get("$distinct_id_before_identity")),
        anon_id=id_str(props.get("$anon_id")),
        identified_id=id_str(props.get("$identified_id")),
        alias=id_str(props.get("alias")),
        distinct_ids=[id_str(x) for x in ids] if ids.__class__ is list else None,
    )
    return name, time, fields, properties


def event_row(name: str, time: float, fields: _Fields, properties: bytes) -> bytes:
    """The mp_master_event row as compact JSON (no newline), in Mixpanel's column order;
    `time` is the UTC epoch (legacy projects convert the line's time first)."""
    return _dumps({"device_id": fields.device_id, "distinct_id": fields.distinct_id, "event_name": name,
                   "insert_id": fields.insert_id, "properties": _fragment(properties), "time": time,
                   "user_id": fields.user_id})


def key_digest(name: str, time: float, fields: _Fields) -> bytes:
    """The 16-byte xxh3-128 digest of Mixpanel's dedup key (event name, distinct_id, time, $insert_id).

    Events without $insert_id get a unique id at ingestion, so Mixpanel never deduplicates them
    (`fields.insert_id is None`); their digest still feeds the window's fingerprint.
    """
    return _digest(_dumps((name, fields.distinct_id, time, fields.insert_id)))


def processing_time(fields: _Fields) -> int:
    """mp_processing_time_ms as an unsigned 64-bit integer; 0 when absent or not such an integer."""
    proc = fields.processing_time
    return proc if proc.__class__ is int and 0 <= proc < _U64 else 0


def identity_links(name: str, fields: _Fields) -> list[tuple[str, str, str]]:
    """The identity links an event carries (both merge systems; identity.py picks the rules)."""
    links = []
    device, user, distinct = fields.device_id, fields.user_id, fields.distinct_id
    if device is not None and user is not None:
        links.append((LINK_DEVICE_USER, "$device:" + device, user))
    if fields.before_identity is not None and distinct is not None:
        links.append((LINK_REKEY, fields.before_identity, distinct))
    if name[0] == "$":
        if name == "$identify":
            if fields.anon_id is not None and fields.identified_id is not None:
                links.append((LINK_IDENTIFY, fields.anon_id, fields.identified_id))
        elif name == "$create_alias":
            if fields.alias is not None and distinct is not None:
                links.append((LINK_ALIAS, fields.alias, distinct))
        elif name == "$merge":
            ids = fields.distinct_ids
            if ids is not None and None in ids:  # a null says nothing about who merged
                ids = [i for i in ids if i is not None]
            if ids is not None and len(ids) >= 2:
                first = ids[0]
                for other in ids[1:]:
                    links.append((LINK_MERGE, first, other))
    return links
