"""A fake Mixpanel that speaks the Raw Event Export API and the Engage API over real HTTP.

Modules beside it: fake_where.py (segmentation expressions, the `where` of both APIs) and
fake_queries.py (the Query API reads schema-discovering tools make: top event properties,
profile properties, cohorts).

Why it exists: the client, the assets and the data-sync sensor must be proven against the wire
protocol (Basic auth, chunked gzip streams, paging, error bodies, cut connections), not against
mocks of our own code. It follows MIXPANEL_SPEC.md sections 4 and 5 and binds to 127.0.0.1 on a
free port, in a thread of the test process.

    from mixpanel_assets_tests.fake_mixpanel import FakeMixpanel, cut_stream, rate_limited

    with FakeMixpanel() as mp:                      # or the `fake_mixpanel` pytest fixture
        mp.add_events(lines_or_dicts)                 # export-format events of the project
        mp.add_events(late, ingested_at_ms=...)       # late arrival / back-dated /import
        mp.delete_distinct_ids(["u1"])                # a GDPR deletion (events and profile)
        mp.add_profiles([{"$distinct_id": "u1", "$properties": {...}}])
        mp.add_cohort(7, "Pro users", where='user["plan"] == "pro"')
        mp.queue_fault(rate_limited(retry_after=2))   # the next export request gets a 429
        mp.queue_fault(cut_stream(), times=2)         # ...and the two after it are cut mid-body
        mp.queue_fault(api="engage")                  # no faults: the next Engage request is clean
        client = MixpanelClient(PROJECT_ID, USERNAME, SECRET, export_url=mp.url, engage_url=mp.url)
        ...
        [r.params for r in mp.export_requests()]      # the request log: params, user, status, faults
        pipelines_yaml_project["source"] = mp.source_config("USER_ENV", "SECRET_ENV")

Behaviour worth knowing:
- Auth (every API): Basic with the service account plus `project_id`, or with the project secret
  (`project_secret_of(pid)`, default PROJECT_SECRET) as username, empty password, no `project_id`
  needed, as Mixpanel accepts until 2027-03-03. The request log shows "(project secret)" for it.
- Export: `GET /api/2.0/export`; dates are UTC days of each event's `time` (for legacy projects
  store the shifted local epoch, as Mixpanel does); `event` (JSON array), `where` (fake_where.py;
  a malformed one is a 400), `limit`, `time_in_ms`; lines in time order, duplicates included,
  each event exactly as stored; chunked, gzip when asked for and the body is over 1400 bytes.
- Engage: `POST /api/query/engage` (and the older `/api/2.0/engage`), form fields `page`,
  `session_id`, `page_size` (capped by `engage_page_size`), `where`, `distinct_id(s)`,
  `output_properties`, `filter_by_cohort`; a session keeps the page-0 snapshot so paging is
  stable under changes. Engage faults besides status and cut: `engage_error_object` (200 with
  `{"error": ...}`), `null_results` (`"results": null` or none), `short_page` (fewer than `total`).
- Query API reads (fake_queries.py): `/api/2.0/events/properties/top`, `/api/2.0/engage/properties`,
  `/api/2.0/cohorts/list`, also under `/api/query/`; they share Engage's rate budget.
- Faults are queued per API and consumed one per request in arrival order, whatever the request
  (a request that fails auth still consumes one). Several faults queued together apply to the same
  request: the first status fault wins; body faults (cut, terminated early, malformed, split) combine.
  `cut_mid_line` stops the content mid-line behind clean framing (close-delimited, or chunked with a
  complete gzip member); `html_page` and `json_error_body` answer 200 with what is not JSON lines.
- `gzip_member_bytes` makes a gzip body several concatenated members, as streaming servers emit.
- `time_in_ms` answers every export in milliseconds, as an export made with `time_in_ms=true` reads.
- `today` (default: the date now in the project's timezone, `set_timezone`, default UTC; `now`
  can be replaced) bounds `to_date`; `enforce_rate_limits` turns on 429s at
  3 queries/second and 60/hour per project (Engage: 60/hour), off by default, timed by `clock`.
- Settings changed on the instance last until `reset()` (the fixture resets between tests).
- The request log's `status` is set before the first response byte, so it is there for a test
  that reads the log as soon as its client has the answer.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import math
import random
import re
import socket
import string
import threading
import time
import zlib
import zoneinfo
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import orjson

from mixpanel_assets_tests.fake_queries import (
    COHORTS_PATHS,
    PROFILE_PROPERTIES_PATHS,
    QUERY_PATHS,
    TOP_PROPERTIES_PATHS,
    Cohort,
    QueryError,
    cohorts_list,
    profile_properties,
    top_event_properties,
)
from mixpanel_assets_tests.fake_where import Node, WhereError, parse_where, selects

PROJECT_ID = 4242
USERNAME = "fake-sa.1a2b3c.mp-service-account"
SECRET = "fake-secret-do-not-log-7f3e9c"
PROJECT_SECRET = "fake-project-secret-0d9e8f7a6b5c"  # the project's API secret (retired 2027-03-03)
PROJECT_SECRET_USER = "(project secret)"  # what the request log shows instead of a project secret

EXPORT_PATH = "/api/2.0/export"
ENGAGE_PATHS = ("/api/query/engage", "/api/2.0/engage")
GZIP_MIN_BYTES = 1400  # Mixpanel compresses only bodies above this size
WIRE_CHUNK = 64 << 10
MAX_LIMIT = 100_000
TERMINATED_LINE = b"export terminated early\n"
DAY = 86400

INVALID_CREDENTIALS = {"error": "Invalid credentials", "status": "error"}
UNABLE_TO_AUTHENTICATE = {"error": "Unable to authenticate request", "status": "error"}
DEFAULT_ERROR_BODIES: dict[int, object] = {
    400: {"error": "Bad request", "status": "error"},
    402: {"error": "Your plan does not include API access. Upgrade your plan to use this endpoint.", "status": "error"},
    403: {"error": "Permission denied: the service account has no access to this project.", "status": "error"},
    404: {"error": "Not found", "status": "error"},
    500: "Internal Server Error",
    502: "<html><body><h1>502 Bad Gateway</h1></body></html>",
    503: "Service Unavailable: back-end server is at capacity",
}


# --- faults ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour; build them with the functions below, not by hand."""

    kind: str  # "status" | "cut" | "cut_line" | "terminated" | "malformed" | "split" | Engage: "short_page" | "null_results"
    status: int = 200
    body: object = None
    headers: tuple[tuple[str, str], ...] = ()
    after: int | None = None  # cut: wire-body bytes sent; terminated, cut_line: event lines sent (None = half)
    lines: tuple[bytes, ...] = ()
    index: int = 0


def http_error(status: int, body: object = None, headers: dict[str, str] | None = None) -> Fault:
    """Answer with `status` and a Mixpanel-like body (a dict is sent as JSON, a str as text)."""
    return Fault("status", status, DEFAULT_ERROR_BODIES.get(status, "") if body is None else body,
                 tuple((headers or {}).items()))


def rate_limited(retry_after: float | str | None = 1, project_id: int = PROJECT_ID) -> Fault:
    """429 with Mixpanel's 'Query rate limit exceeded' text and (unless None) a Retry-After header."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return http_error(429, _rate_limit_body(project_id, 60), headers)


def server_error(status: int = 500) -> Fault:
    """500/502/503 with the kind of body a load balancer or the API sends."""
    return http_error(status)


def unable_to_authenticate() -> Fault:
    """The 400 Mixpanel sends instead of 401 for some bad or expired credentials."""
    return http_error(400, UNABLE_TO_AUTHENTICATE)


def cut_stream(after_bytes: int | None = None) -> Fault:
    """Send `after_bytes` of the (possibly gzip) body, default half, then drop the connection.

    The chunk in flight promises more bytes than arrive, as when a proxy or the API dies.
    Works for Engage too (the JSON body is cut short of its Content-Length).
    """
    return Fault("cut", after=after_bytes)


def terminated_early(after_lines: int | None = None) -> Fault:
    """A 200 stream that stops after `after_lines` events (default half) with 'export terminated early'."""
    return Fault("terminated", after=after_lines)


def malformed_lines(lines: Iterable[bytes | str] = (b'{"event": "Broken", "properties": {"time": 1',),
                    at: int = 0) -> Fault:
    """Insert raw lines (no trailing newline needed) before the event with index `at`."""
    raw = tuple((line.encode() if isinstance(line, str) else line).rstrip(b"\n") for line in lines)
    return Fault("malformed", lines=raw, index=at)


def split_line(index: int = 0) -> Fault:
    """Split the line of event `index` in two at its middle (Mixpanel occasionally does this)."""
    return Fault("split", index=index)


def engage_error_object(message: str = "request for page in uncached query for params") -> Fault:
    """An Engage page answered 200 with Mixpanel's error object instead of a page."""
    return http_error(200, {"error": message})


def null_results(drop: bool = False) -> Fault:
    """An Engage page answered 200 with `"results": null` (or, with `drop`, no `results` at all)."""
    return Fault("null_results", index=int(drop))


def short_page(missing: int = 1) -> Fault:
    """An Engage page that leaves out its last `missing` profiles while `total` still counts them."""
    return Fault("short_page", after=missing)


def cut_mid_line(after_lines: int | None = None, framing: str = "close") -> Fault:
    """A 200 body whose content stops in the middle of line `after_lines` (default half) while its
    HTTP framing is clean, so only the missing final newline tells: with `framing` "close" the body
    has no Content-Length and ends when the server closes the connection (RFC 9112 6.3); with
    "chunked" the chunked body ends with its terminator. When gzip is used the gzip member is
    complete (its content is what stops mid-line), so no decoder error gives the cut away."""
    if framing not in ("close", "chunked"):
        raise ValueError(f"framing must be 'close' or 'chunked', not {framing!r}")
    return Fault("cut_line", after=after_lines, body=framing)


HTML_PAGE = ("<!DOCTYPE html>\n<html><head><title>Maintenance</title></head>\n"
             "<body><h1>We'll be right back</h1><p>Mixpanel is down for maintenance.</p></body></html>\n")


def html_page(content_type: str = "text/html; charset=utf-8", body: str = HTML_PAGE) -> Fault:
    """A 200 answer that is a web page, not JSON lines (a proxy, captive portal or maintenance page)."""
    return http_error(200, body, {"Content-Type": content_type})


def json_error_body(message: str = "Unable to process the export, please retry later") -> Fault:
    """A 200 answer that is one JSON error object (application/json), as some gateways send."""
    return http_error(200, {"error": message, "status": "error"})


# --- the store --------------------------------------------------------------------------------


@dataclass
class _Project:
    secret: str  # the project secret: Basic username, empty password, no project_id
    timezone: str = "UTC"  # judges "to_date later than today"
    events: list[tuple[float, int, dict]] = field(default_factory=list)  # (time, seq, event)
    profiles: dict[str, dict] = field(default_factory=dict)  # distinct_id -> $properties
    sessions: dict[str, list[dict]] = field(default_factory=dict)
    spent: dict[str, deque] = field(default_factory=dict)  # api -> monotonic stamps (rate limits)
    cohorts: dict[int, Cohort] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    """One request as the fake saw it; `status` is set before the first response byte is written."""

    api: str  # "export" | "engage" | "query" (fake_queries.py) | "other"
    method: str
    path: str
    params: dict[str, str]
    form: dict[str, str]
    user: str | None  # the Basic username (a service account, or a project secret)
    at: float  # wall clock, epoch seconds
    headers: dict[str, str] = field(default_factory=dict)  # request headers, Authorization left out
    status: int | None = None
    content_encoding: str | None = None  # of the response body ("gzip" or None)
    faults: tuple[str, ...] = ()


def _as_event(item: dict | bytes | str) -> dict:
    if isinstance(item, (bytes, str)):
        return orjson.loads(item)
    return copy.deepcopy(item)


def _event_time(event: dict) -> float:
    try:
        value = event["properties"]["time"]
    except (KeyError, TypeError):
        raise ValueError(f"an export event needs properties.time: {event!r}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"properties.time must be epoch seconds, got {value!r}")
    return float(value)


class FakeMixpanel:
    """The fake server plus its in-memory data; see the module docstring for the whole API."""

    def __init__(self, project_id: int = PROJECT_ID, username: str = USERNAME, secret: str = SECRET, *,
                 project_secret: str = PROJECT_SECRET, timezone: str = "UTC", today: dt.date | None = None,
                 engage_page_size: int = 1000, enforce_rate_limits: bool = False):
        self.project_id = project_id
        self.username = username
        self.secret = secret
        self.project_secret = project_secret
        self.timezone = str(zoneinfo.ZoneInfo(timezone))
        self._defaults = dict(today=today, engage_page_size=engage_page_size, enforce_rate_limits=enforce_rate_limits)
        self._lock = threading.RLock()
        self._seq = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # lifecycle

    def reset(self) -> None:
        """Forget data, faults, sessions and the request log; restore the constructor's settings."""
        with self._lock:
            self._projects: dict[int, _Project] = {self.project_id: _Project(self.project_secret, self.timezone)}
            self._faults: dict[str, deque[tuple[Fault, ...]]] = {"export": deque(), "engage": deque()}
            self._requests: list[RecordedRequest] = []
            self.today: dt.date | None = self._defaults["today"]
            self.engage_page_size: int = self._defaults["engage_page_size"]
            self.enforce_rate_limits: bool = self._defaults["enforce_rate_limits"]
            self.export_limits = (3, 60)  # per second, per hour (Raw Export API)
            self.engage_limits = (5, 60)  # Query API: 60/hour; 5 is its concurrency cap, used per second here
            self.auth_failure_status = 401  # set 400 to answer bad credentials like "Unable to authenticate"
            self.clock: Callable[[], float] = time.monotonic  # of the rate limits; freeze it for exact tests
            self.now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)  # of "today"
            self.gzip_member_bytes: int | None = None  # start a new gzip member every N body bytes
            self.time_in_ms: bool = False  # answer in milliseconds whatever `time_in_ms` the request sends

    def start(self) -> "FakeMixpanel":
        if self._server is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.block_on_close = False  # idle keep-alive connections must not hold up stop()
            server.fake = self  # type: ignore[attr-defined]
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-mixpanel",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> "FakeMixpanel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake Mixpanel server is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for both `export_url` and `engage_url` (the client appends the API paths)."""
        return f"http://127.0.0.1:{self.port}"

    def source_config(self, username_env: str = "MIXPANEL_SERVICE_ACCOUNT_USERNAME",
                      secret_env: str = "MIXPANEL_SERVICE_ACCOUNT_SECRET") -> dict:
        """The `project.source` block of a pipelines.yaml pointing at this server."""
        return {"type": "mixpanel", "export_url": self.url, "engage_url": self.url,
                "credentials": {"username_env": username_env, "secret_env": secret_env}}

    # data

    def add_project(self, project_id: int, secret: str | None = None, timezone: str = "UTC") -> None:
        """Another project (same service account); its project secret defaults to one of its own."""
        zoneinfo.ZoneInfo(timezone)
        with self._lock:
            self._projects.setdefault(project_id, _Project(secret or f"fake-project-secret-{project_id}", timezone))

    def set_timezone(self, timezone: str, project_id: int | None = None) -> None:
        """The project's timezone (until reset): Mixpanel judges to_date against today there."""
        zoneinfo.ZoneInfo(timezone)
        with self._lock:
            self._project(project_id).timezone = timezone

    def project_secret_of(self, project_id: int | None = None) -> str:
        return self._project(project_id).secret

    def add_cohort(self, cohort_id: int, name: str, where: str | None = None, distinct_ids: Iterable[str] | None = None,
                   description: str = "", created: str = "2024-01-01 00:00:00", is_visible: bool = True,
                   project_id: int | None = None) -> None:
        """A saved cohort: the profiles `where` selects (and, if given, only those ids), counted live."""
        node = parse_where(where) if where else None
        ids = frozenset(str(i) for i in distinct_ids) if distinct_ids is not None else None
        with self._lock:
            self._project(project_id).cohorts[cohort_id] = Cohort(
                cohort_id, name, where, node, ids, description, created, is_visible)

    def _project(self, project_id: int | None) -> _Project:
        pid = self.project_id if project_id is None else project_id
        if pid not in self._projects:
            raise KeyError(f"the fake has no project {pid}; call add_project({pid}) first")
        return self._projects[pid]

    def add_events(self, events: Iterable[dict | bytes | str], ingested_at_ms: int | None = None,
                   project_id: int | None = None) -> int:
        """Store events (dicts or JSON lines); returns how many. They are served exactly as stored.

        `ingested_at_ms` sets `mp_processing_time_ms` on every event: that is how a test models a
        late arrival or a back-dated /import into a day already exported. Without it an event
        keeps what it has, none included (older exports and imports carry none). Events are copied.
        """
        stored = []
        for item in events:
            event = _as_event(item)
            seconds = _event_time(event)
            props = event["properties"]
            if ingested_at_ms is not None:
                props["mp_processing_time_ms"] = int(ingested_at_ms)
            stored.append((seconds, event))
        with self._lock:
            project = self._project(project_id)
            for seconds, event in stored:
                self._seq += 1
                project.events.append((seconds, self._seq, event))
        return len(stored)

    def delete_events(self, predicate: Callable[[dict], bool], project_id: int | None = None) -> int:
        """Remove every event for which `predicate(event)` is true; returns how many."""
        with self._lock:
            project = self._project(project_id)
            before = len(project.events)
            project.events = [entry for entry in project.events if not predicate(entry[2])]
            return before - len(project.events)

    def delete_distinct_ids(self, distinct_ids: Iterable[str], project_id: int | None = None) -> int:
        """A GDPR-style deletion: the users' events and profiles go; returns the events removed."""
        ids = set(distinct_ids)
        removed = self.delete_events(lambda e: e["properties"].get("distinct_id") in ids, project_id)
        self.delete_profiles(ids, project_id)
        return removed

    def events(self, project_id: int | None = None) -> list[dict]:
        """Copies of all stored events in export order (time, then arrival)."""
        with self._lock:
            entries = sorted(self._project(project_id).events, key=lambda e: (e[0], e[1]))
            return [copy.deepcopy(e[2]) for e in entries]

    def add_profiles(self, profiles: Iterable[dict | bytes | str], project_id: int | None = None) -> int:
        """Upsert Engage-format profiles ({"$distinct_id", "$properties"}); properties are replaced."""
        count = 0
        with self._lock:
            project = self._project(project_id)
            for item in profiles:
                profile = _as_event(item)
                project.profiles[str(profile["$distinct_id"])] = dict(profile.get("$properties") or {})
                count += 1
        return count

    def delete_profiles(self, distinct_ids: Iterable[str], project_id: int | None = None) -> int:
        with self._lock:
            project = self._project(project_id)
            return sum(project.profiles.pop(str(i), None) is not None for i in distinct_ids)

    def profiles(self, project_id: int | None = None) -> list[dict]:
        with self._lock:
            return [{"$distinct_id": k, "$properties": copy.deepcopy(v)}
                    for k, v in self._project(project_id).profiles.items()]

    # faults and the request log

    def queue_fault(self, *faults: Fault, api: str = "export", times: int = 1) -> None:
        """The next `times` requests to `api` ("export" or "engage") each get all of `faults`."""
        if api not in ("export", "engage"):
            raise ValueError(f"api must be 'export' or 'engage', not {api!r}")
        with self._lock:
            for _ in range(times):
                self._faults[api].append(tuple(faults))

    def pending_faults(self, api: str = "export") -> int:
        with self._lock:
            return len(self._faults[api])

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def export_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.api == "export"]

    def engage_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.api == "engage"]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # used by the handler

    def _record(self, request: RecordedRequest, faults: tuple[Fault, ...] = ()) -> RecordedRequest:
        with self._lock:
            request.faults = tuple(f.kind for f in faults)
            self._requests.append(request)
        return request

    def _next_faults(self, api: str) -> tuple[Fault, ...]:
        with self._lock:
            queue = self._faults.get(api)
            return queue.popleft() if queue else ()

    def _today(self, project_id: int | None = None) -> dt.date:
        """Today in the project's timezone, as Mixpanel judges "to_date cannot be later than today"."""
        zone = zoneinfo.ZoneInfo(self._project(project_id).timezone)
        return self.today or self.now().astimezone(zone).date()

    def _check_rate(self, api: str, project_id: int) -> float | None:
        """Seconds until the next query is allowed, or None when it fits (and is then counted)."""
        if not self.enforce_rate_limits:
            return None
        per_second, per_hour = self.export_limits if api == "export" else self.engage_limits
        with self._lock:
            stamps = self._projects[project_id].spent.setdefault(api, deque())
            now = self.clock()
            while stamps and now - stamps[0] >= 3600:
                stamps.popleft()
            if len(stamps) >= per_hour:
                return stamps[-per_hour] + 3600 - now
            recent = [t for t in stamps if now - t < 1.0]
            if len(recent) >= per_second:
                return recent[-per_second] + 1.0 - now
            stamps.append(now)
            return None

    def _select_events(self, project_id: int, from_day: int, to_day: int, names: set[str] | None,
                       where: Node | None, limit: int | None) -> list[dict]:
        with self._lock:
            entries = [e for e in self._projects[project_id].events if from_day <= math.floor(e[0] / DAY) <= to_day]
        entries.sort(key=lambda e: (e[0], e[1]))
        selected = []
        for seconds, _, event in entries:
            if names is not None and event.get("event") not in names:
                continue
            if where is not None and not selects(where, (event["properties"], seconds)):
                continue
            selected.append(event)
            if limit is not None and len(selected) >= limit:
                break
        return selected

    def _query(self, project_id: int, path: str, fields: dict[str, str]) -> object:
        """The body of a Query API read (fake_queries.py), from a snapshot of the stored data."""
        with self._lock:
            project = self._projects[project_id]
            if path in TOP_PROPERTIES_PATHS:
                events = [entry[2] for entry in project.events]
                return top_event_properties(events, fields)
            if path in PROFILE_PROPERTIES_PATHS:
                return profile_properties(project.profiles, fields)
            assert path in COHORTS_PATHS
            return cohorts_list(project.cohorts, project.profiles, project_id)

    def _engage_snapshot(self, project_id: int, where: Node | None, ids: set[str] | None,
                         cohort_id: int | None = None) -> list[dict]:
        with self._lock:
            project = self._projects[project_id]
            items = [(k, copy.deepcopy(v)) for k, v in project.profiles.items()]
            if cohort_id is not None:
                if cohort_id not in project.cohorts:
                    raise _BadRequest(f"filter_by_cohort: project {project_id} has no cohort {cohort_id}")
                members = set(project.cohorts[cohort_id].members(project.profiles))
                ids = members if ids is None else ids & members
        return [
            {"$distinct_id": k, "$properties": v} for k, v in items
            if (ids is None or k in ids) and (where is None or selects(where, (v, None)))
        ]


def _rate_limit_body(project_id: int, per_hour: int) -> dict:
    return {"request": EXPORT_PATH, "error": (
        f"Query rate limit exceeded for project_id: {project_id}. 1/100 queries running concurrently and "
        f"{per_hour + 1}/{per_hour} queries running in the last hour. Please try again later.")}


class _BadRequest(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- HTTP -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked responses and keep-alive, like the real API
    server_version = "fake-mixpanel"
    timeout = 30  # idle keep-alive connections end on their own
    disable_nagle_algorithm = True  # small writes (headers, chunk, terminator) must not wait 40 ms for ACKs

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    @property
    def fake(self) -> FakeMixpanel:
        return self.server.fake  # type: ignore[attr-defined]

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        form = {}
        if raw and "json" not in (self.headers.get("Content-Type") or ""):
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        user, password = self._basic_auth()
        path = url.path.rstrip("/") or "/"
        api = ("export" if path == EXPORT_PATH else "engage" if path in ENGAGE_PATHS
               else "query" if path in QUERY_PATHS else "other")
        faults = self.fake._next_faults(api) if api in ("export", "engage") else ()
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        logged_user = PROJECT_SECRET_USER if user and not password else user  # a project secret stays out of the log
        record = self.fake._record(
            RecordedRequest(api, self.command, url.path, params, form, logged_user, time.time(), headers), faults)
        try:
            if api == "other":
                return self._send(record, 404, {"error": f"unknown path {url.path}", "status": "error"})
            if api == "export" and self.command != "GET":
                return self._send(record, 405, {"error": "use GET for /api/2.0/export", "status": "error"})
            status_fault = next((f for f in faults if f.kind == "status"), None)
            if status_fault is not None:
                return self._send(record, status_fault.status, status_fault.body, dict(status_fault.headers))
            fields = {**params, **form}
            project_id = self._authorised_project(user, password, fields.get("project_id"))
            if project_id is None:
                body = UNABLE_TO_AUTHENTICATE if self.fake.auth_failure_status == 400 else INVALID_CREDENTIALS
                return self._send(record, self.fake.auth_failure_status, body)
            wait = self.fake._check_rate("engage" if api == "query" else api, project_id)  # one Query API budget
            if wait is not None:
                per_hour = (self.fake.export_limits if api == "export" else self.fake.engage_limits)[1]
                return self._send(record, 429, _rate_limit_body(project_id, per_hour),
                                  {"Retry-After": str(max(1, math.ceil(wait)))})
            if api == "export":
                self._export(record, project_id, params, faults)
            elif api == "engage":
                self._engage(record, project_id, fields, faults)
            else:
                self._send(record, 200, self.fake._query(project_id, path, fields))
        except _BadRequest as exc:
            self._send(record, 400, {"error": exc.message, "status": "error"})
        except (WhereError, QueryError) as exc:
            self._send(record, 400, {"request": self.path, "error": str(exc), "status": "error"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _basic_auth(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization") or ""
        if not header.lower().startswith("basic "):
            return None, None
        value = header[6:].strip()
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = value  # Mixpanel also takes the plain "user:secret" text
        user, _, password = decoded.partition(":")
        return user, password

    def _authorised_project(self, user: str | None, password: str | None, project_id: str | None) -> int | None:
        """The project a request may read: a service account names it with `project_id`; a project
        secret (Basic username, empty password) is its own project, `project_id` optional."""
        fake = self.fake
        if user and not password:
            with fake._lock:
                owner = next((pid for pid, p in fake._projects.items() if p.secret == user), None)
            if owner is None or (project_id and project_id != str(owner)):
                return None
            return owner
        if user != fake.username or password != fake.secret:
            return None
        try:
            pid = int(project_id or "")
        except ValueError:
            return None
        return pid if pid in fake._projects else None

    # export

    def _export(self, record: RecordedRequest, project_id: int, params: dict[str, str],
                faults: tuple[Fault, ...]) -> None:
        from_date = _date_param(params, "from_date")
        to_date = _date_param(params, "to_date")
        if from_date > to_date:
            raise _BadRequest(f"from_date {from_date} is after to_date {to_date}")
        if to_date > self.fake._today(project_id):
            raise _BadRequest("to_date cannot be later than today")
        names = None
        if params.get("event"):
            try:
                names = json.loads(params["event"])
            except ValueError:
                raise _BadRequest(f"event must be a JSON array of event names, got {params['event']!r}") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _BadRequest(f"event must be a JSON array of event names, got {params['event']!r}")
            names = set(names)
        where = parse_where(params["where"]) if params.get("where") else None  # WhereError: 400
        limit = None
        if params.get("limit"):
            try:
                limit = int(params["limit"])
            except ValueError:
                raise _BadRequest(f"limit must be an integer, got {params['limit']!r}") from None
            if not 0 < limit <= MAX_LIMIT:
                raise _BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
        in_ms = params.get("time_in_ms", "").lower() == "true" or self.fake.time_in_ms
        day = lambda d: (d - dt.date(1970, 1, 1)).days  # noqa: E731
        events = self.fake._select_events(project_id, day(from_date), day(to_date), names, where, limit)
        lines = _export_lines(events, in_ms, faults)
        gzip_ok = "gzip" in (self.headers.get("Accept-Encoding") or "").lower()
        cut = next((f for f in faults if f.kind == "cut"), None)
        cut_line = next((f for f in faults if f.kind == "cut_line"), None)
        if cut_line is not None:
            return self._stream_cut_mid_line(record, list(lines), gzip_ok, cut_line)
        self._stream(record, lines, gzip_ok, cut)

    def _stream_cut_mid_line(self, record: RecordedRequest, lines: list[bytes], gzip_ok: bool, fault: Fault) -> None:
        """See `cut_mid_line`: the content stops mid-line, the framing (and any gzip member) is whole."""
        stop = min(len(lines) // 2 if fault.after is None else fault.after, max(len(lines) - 1, 0))
        content = b"".join(lines[:stop])
        if lines:
            content += lines[stop][: max(len(lines[stop]) // 2, 1)]
        use_gzip = gzip_ok and len(content) > GZIP_MIN_BYTES
        if use_gzip:
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
            content = compressor.compress(content) + compressor.flush()
        record.status, record.content_encoding = 200, "gzip" if use_gzip else None  # before the first byte
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        if use_gzip:
            self.send_header("Content-Encoding", "gzip")
        if fault.body == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(content)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        self.send_header("Connection", "close")  # no length, no chunks: the body ends when we close
        self.end_headers()
        self.wfile.write(content)
        self._hang_up()

    def _stream(self, record: RecordedRequest, lines: Iterator[bytes], gzip_ok: bool, cut: Fault | None) -> None:
        head: list[bytes] = []
        size = 0
        for line in lines:
            head.append(line)
            size += len(line)
            if size > GZIP_MIN_BYTES:
                break
        use_gzip = gzip_ok and size > GZIP_MIN_BYTES
        record.status, record.content_encoding = 200, "gzip" if use_gzip else None  # before the first byte
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        if use_gzip:
            self.send_header("Content-Encoding", "gzip")
        if cut is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        pieces = _wire_pieces(head, lines, use_gzip, self.fake.gzip_member_bytes)
        if cut is None:
            for piece in pieces:
                self._chunk(piece)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        body = b"".join(pieces)
        sent = len(body) // 2 if cut.after is None else min(cut.after, max(len(body) - 1, 0))
        if sent:
            self._chunk(body[:sent])
        rest = body[sent:]
        if rest:  # promise the rest, deliver a little of it, then hang up
            self.wfile.write(f"{len(rest):x}\r\n".encode() + rest[: len(rest) // 4])
        self._hang_up()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # engage

    def _engage(self, record: RecordedRequest, project_id: int, fields: dict[str, str],
                faults: tuple[Fault, ...]) -> None:
        fake = self.fake
        try:
            page = int(fields.get("page") or 0)
            page_size = int(fields.get("page_size") or 1000)
        except ValueError:
            raise _BadRequest("page and page_size must be integers") from None
        if page < 0 or page_size < 1:
            raise _BadRequest("page must be >= 0 and page_size >= 1")
        page_size = min(page_size, fake.engage_page_size)
        session_id = fields.get("session_id") or None
        if page > 0 and not session_id:
            raise _BadRequest("session_id is required when page > 0 (pass the session_id of the first page)")
        project = fake._projects[project_id]
        if session_id:
            with fake._lock:
                results = project.sessions.get(session_id)
            if results is None:
                raise _BadRequest("request for page in uncached query for params: unknown or expired session_id")
        else:
            where = parse_where(fields["where"]) if fields.get("where") else None  # WhereError: 400
            ids = None
            if fields.get("distinct_ids"):
                try:
                    ids = {str(i) for i in json.loads(fields["distinct_ids"])}
                except (ValueError, TypeError):
                    raise _BadRequest("distinct_ids must be a JSON array") from None
            elif fields.get("distinct_id"):
                ids = {fields["distinct_id"]}
            results = fake._engage_snapshot(project_id, where, ids, _cohort_id(fields.get("filter_by_cohort")))
            session_id = f"{int(time.time())}-{''.join(random.choices(string.ascii_uppercase, k=6))}"
            with fake._lock:
                project.sessions[session_id] = results
        selected = results[page * page_size:(page + 1) * page_size]
        if fields.get("output_properties"):
            keep = set(json.loads(fields["output_properties"]))
            selected = [{"$distinct_id": p["$distinct_id"],
                         "$properties": {k: v for k, v in p["$properties"].items() if k in keep}} for p in selected]
        body = {"page": page, "page_size": page_size, "session_id": session_id, "status": "ok",
                "total": len(results), "results": selected}
        for fault in faults:
            if fault.kind == "short_page":
                body["results"] = selected[:max(len(selected) - (fault.after or 0), 0)]
            elif fault.kind == "null_results":
                body["results"] = None
                if fault.index:
                    del body["results"]
        cut = next((f for f in faults if f.kind == "cut"), None)
        if cut is None:
            return self._send(record, 200, body)
        data = orjson.dumps(body)
        record.status = 200  # before the first byte
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data[: len(data) // 2 if cut.after is None else min(cut.after, len(data) - 1)])
        self._hang_up()

    # plain responses

    def _send(self, record: RecordedRequest, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, (dict, list)):
            try:
                data = orjson.dumps(body)
            except TypeError:  # nested past orjson's 255 levels: a profile Mixpanel could still hold
                data = json.dumps(body).encode()
            ctype = "application/json"
        else:
            data, ctype = str(body or "").encode(), "text/plain; charset=utf-8"
        headers = dict(headers or {})
        ctype = headers.pop("Content-Type", ctype)  # a fault may say what the body claims to be
        record.status = status  # before the first byte: a client that has its answer finds the log complete
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _cohort_id(raw: str | None) -> int | None:
    """Engage's `filter_by_cohort={"id": 12345}` (MIXPANEL_SPEC.md section 5)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
        return int(value["id"])
    except (ValueError, TypeError, KeyError):
        raise _BadRequest(f'filter_by_cohort must be a JSON object like {{"id": 12345}}, got {raw!r}') from None


def _date_param(params: dict[str, str], name: str) -> dt.date:
    value = params.get(name)
    if not value:
        raise _BadRequest(f"{name} is a required parameter (yyyy-mm-dd)")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise _BadRequest(f"{name} {value!r} is not a date in the format yyyy-mm-dd")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _BadRequest(f"{name} {value!r} is not a valid date") from None


def _export_lines(events: list[dict], in_ms: bool, faults: tuple[Fault, ...]) -> Iterator[bytes]:
    """The body's lines, with the scripted body faults (insertions, splits, early end) applied."""
    inserts: dict[int, list[bytes]] = {}
    splits = set()
    stop = None
    for fault in faults:
        if fault.kind == "malformed":
            inserts.setdefault(fault.index, []).extend(fault.lines)
        elif fault.kind == "split":
            splits.add(fault.index)
        elif fault.kind == "terminated":
            stop = len(events) // 2 if fault.after is None else fault.after
    for i, event in enumerate(events):
        if stop is not None and i >= stop:
            break
        for raw in inserts.get(i, ()):
            yield raw + b"\n"
        if in_ms:
            props = event["properties"]
            event = {**event, "properties": {**props, "time": int(round(props["time"] * 1000))}}
        line = orjson.dumps(event)
        if i in splits:
            middle = len(line) // 2
            yield line[:middle] + b"\n"
            yield line[middle:] + b"\n"
        else:
            yield line + b"\n"
    for index in sorted(k for k in inserts if k >= len(events)):
        for raw in inserts[index]:
            yield raw + b"\n"
    if stop is not None:
        yield TERMINATED_LINE


def _wire_pieces(head: list[bytes], rest: Iterator[bytes], use_gzip: bool,
                 member_bytes: int | None = None) -> Iterator[bytes]:
    """The body as it goes on the wire, in pieces of about WIRE_CHUNK bytes.

    With `member_bytes`, the gzip body is a concatenation of members, as streaming servers emit.
    """
    # level 1: the fake must not be what limits a test's throughput
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31) if use_gzip else None
    buffer = bytearray()
    in_member = 0
    for line in _chain(head, rest):
        buffer += compressor.compress(line) if compressor else line
        in_member += len(line)
        if compressor and member_bytes and in_member >= member_bytes:
            buffer += compressor.flush()
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
            in_member = 0
        if len(buffer) >= WIRE_CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if compressor:
        buffer += compressor.flush()
    if buffer:
        yield bytes(buffer)


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


def main(argv: list[str] | None = None) -> None:
    """Serve the fake by hand: `python -m mixpanel_assets_tests.fake_mixpanel --events day.jsonl`."""
    import argparse
    import gzip as gzip_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", action="append", default=[], help="export-format JSONL (.gz ok)")
    parser.add_argument("--profiles", help="Engage-format JSONL")
    args = parser.parse_args(argv)
    fake = FakeMixpanel()
    for path in args.events:
        opener = gzip_module.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            fake.add_events(line for line in handle if line.strip())
    if args.profiles:
        with open(args.profiles, "rb") as handle:
            fake.add_profiles(line for line in handle if line.strip())
    with fake:
        print(f"fake Mixpanel on {fake.url}: project {fake.project_id}, username {fake.username!r}, "
              f"secret {fake.secret!r}; Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
