"""Where events and profiles come from: the Mixpanel APIs, a folder of files, or demo data.

Every source answers the same two questions, so the assets never care which one is configured:
`event_chunks(span)` yields raw Export-API-format JSON lines (as byte chunks) covering a UTC
span, and `profile_lines()` yields Engage-format profiles as JSON lines. Rows outside the run's
windows are filtered (and counted) later, in staging, so sources may return more than asked.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from mixpanel_assets.mixpanel.client import ExportQuery, MixpanelClient
from mixpanel_assets.mixpanel.errors import BadInputError
from mixpanel_assets.mixpanel.inputs import LocalFile, Origin, open_compressed
from mixpanel_assets.mixpanel.json_arrays import array_lines, origin_of_array, starts_as_array
from mixpanel_assets.mixpanel.retry import NO_RETRIES, SourceRetries

UTC = dt.UTC


@dataclass(frozen=True)
class Span:
    """A UTC interval [start, end) to fetch with one query."""

    start: dt.datetime
    end: dt.datetime


class EventSource:
    description = "source"
    queries = 0
    retries: SourceRetries = NO_RETRIES  # how a read of this source is retried (retry.py)

    def event_chunks(self, span: Span, events: tuple[str, ...] | None = None, where: str | None = None) -> Iterator[bytes]:
        raise NotImplementedError

    def event_inputs(self, span: Span, events: tuple[str, ...] | None = None, where: str | None = None) -> Iterator:
        """What staging reads for `span`: event_chunks, unless the source can hand over whole local
        files (`inputs.LocalFile`) that the parse workers read themselves."""
        return self.event_chunks(span, events, where)

    def profile_lines(self) -> Iterator[bytes]:
        """Engage-format profiles, one JSON line each; an empty line stands for a skipped line."""
        raise NotImplementedError

    profiles_origin = "profile"  # how a bad profile is named in reports: "<profiles_origin> <number>"

    def bounds_event_times(self) -> bool:
        """Whether every event this source gives for a span lies within a couple of days of it
        (staging fails a run with many rows beyond that: input_checks.REACH_SECONDS)."""
        return True

    def filters_events_server_side(self) -> bool:
        """True when `events` is applied by the source itself (the Export API's `event` param)."""
        return False

    def close(self) -> None:
        pass


class MixpanelApiSource(EventSource):
    """The real project: one Export API query per span, Engage pages for profiles."""

    profiles_origin = "Engage API profile"

    def __init__(self, client: MixpanelClient, timezone: str = "UTC", legacy_project_timezone_dates: bool = False):
        self.client = client
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.legacy = legacy_project_timezone_dates
        self.description = f"Mixpanel project {client.project_id}"

    @property
    def queries(self) -> int:  # type: ignore[override]
        return self.client.queries

    @property
    def retries(self) -> SourceRetries:  # type: ignore[override]
        return self.client.retries

    def export_query(self, span: Span, events=None, where=None) -> ExportQuery:
        """Map a UTC span to the Export API's inclusive from_date/to_date (+ a time filter).

        from_date/to_date are UTC days for projects created since 2023 and project-timezone days
        for older ones. When the span is not whole days in that zone, a `where` filter on
        `$time` keeps the response to the span, so an hourly partition does not download a day.
        """
        zone = self.tz if self.legacy else UTC
        start_local = span.start.astimezone(zone)
        end_local = span.end.astimezone(zone)
        last = end_local - dt.timedelta(microseconds=1)
        from_date, to_date = start_local.date(), last.date()
        aligned = start_local.timetz().replace(tzinfo=None) == dt.time(0) and end_local.timetz().replace(tzinfo=None) == dt.time(0)
        clauses = []
        if where:
            clauses.append(f"({where})")
        if not aligned and not self.legacy:
            clauses.append(
                f'properties["$time"] >= datetime({int(span.start.timestamp())}) and '
                f'properties["$time"] < datetime({int(span.end.timestamp())})'
            )
        return ExportQuery(from_date, to_date, tuple(events) if events else None, " and ".join(clauses) or None)

    def event_chunks(self, span, events=None, where=None):
        query = self.export_query(span, events, where)
        yield Origin(query.describe())
        yield from self.client.export_chunks(query)

    def filters_events_server_side(self) -> bool:
        return True

    def profile_lines(self):
        for profile in self.client.profiles():
            try:
                yield orjson.dumps(profile)
            except TypeError:  # nested past orjson's 255 levels: written as text, refused by profile_row
                yield _deep_profile_line(profile)

    def close(self) -> None:
        self.client.close()


def _deep_profile_line(profile) -> bytes:
    """A profile orjson cannot write, as a line profile_row reads and refuses with its reason: one
    profile must never fail the whole table (the stdlib writer goes deeper; past its own limit, the
    line says why it is not the profile)."""
    import json

    try:
        return json.dumps(profile, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError, TypeError):
        return b"<a profile nested too deep to write: more than 255 levels>"


_DATE_IN_NAME = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


class LocalFilesSource(EventSource):
    """A folder of export-format files (.jsonl/.json/.ndjson, optionally .gz or .zst), each JSON
    lines or one JSON array of events (mixpanel-utils' default), and the same for profiles.

    Files whose names start with a date (e.g. `2024-11-22.jsonl.gz`) are read only for spans
    that can contain that day (±1 day for time zones); other files are read for every span.
    """

    SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst", ".json.zst")

    def __init__(self, path: str | Path, profiles_path: str | Path | None = None):
        self.path = Path(path)
        self.profiles_path = Path(profiles_path) if profiles_path else None
        self.description = f"local files in {self.path}"
        if self.profiles_path is not None:
            self.profiles_origin = f"{self.profiles_path.name} line"

    def files(self) -> list[Path]:
        if not self.path.is_dir():
            raise FileNotFoundError(f"local source folder {self.path} does not exist (project.source.path in pipelines.yaml)")
        profiles = self.profiles_path.resolve() if self.profiles_path else None
        return sorted(
            p for p in self.path.rglob("*")
            if p.is_file() and p.name.endswith(self.SUFFIXES) and p.resolve() != profiles
        )

    def files_for_span(self, span: Span) -> list[Path]:
        first = span.start.date() - dt.timedelta(days=1)
        last = span.end.date() + dt.timedelta(days=1)
        selected = []
        for path in self.files():
            match = _DATE_IN_NAME.match(path.name)
            if match:
                try:
                    day = dt.date(*map(int, match.groups()))
                except ValueError:
                    day = None
                if day is not None and not (first <= day <= last):
                    continue
            selected.append(path)
        return selected

    def bounds_event_times(self) -> bool:
        """A file without a date in its name is read for every span, whatever days it holds."""
        try:
            return all(_DATE_IN_NAME.match(path.name) for path in self.files())
        except FileNotFoundError:
            return True  # reading the events says so, naming the folder

    def event_chunks(self, span, events=None, where=None):
        for path in self.files_for_span(span):
            yield from self._file_input(path, whole_file=False)

    def event_inputs(self, span, events=None, where=None):
        for path in self.files_for_span(span):
            yield from self._file_input(path, whole_file=True)

    def _file_input(self, path: Path, whole_file: bool) -> Iterator:
        """One file as staging reads it: a JSON array's items as lines (json_arrays.py), a plain
        JSON-lines file as a `LocalFile` for the workers to read by byte range (`whole_file`),
        anything else as its decompressed chunks."""
        name = str(path.relative_to(self.path))
        if is_json_array_file(path):
            yield Origin(origin_of_array(name))
            yield from array_lines(read_file_chunks(path), str(path))
        elif whole_file and not path.name.endswith((".gz", ".zst")):
            yield LocalFile(str(path), name)
        else:
            yield Origin(name)
            yield from read_file_chunks(path)

    def profile_lines(self):
        """Every line of the profiles file (a JSON array's items), blank ones included so the
        reader's line numbers are the file's."""
        if self.profiles_path is None:
            return
        chunks = read_file_chunks(self.profiles_path)
        if is_json_array_file(self.profiles_path):
            self.profiles_origin = f"{origin_of_array(self.profiles_path.name)} line"
            chunks = array_lines(chunks, str(self.profiles_path))
        yield from _lines(chunks)


def is_json_array_file(path: Path) -> bool:
    """Whether the (decompressed) file starts, after whitespace, with '[': one JSON array, not JSON lines."""
    for head in read_file_chunks(path, 64 << 10):
        opens = starts_as_array(head)
        if opens is not None:
            return opens
    return False


def read_file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open_compressed(path) as stream:
        while True:
            try:
                chunk = stream.read(size)
            except (EOFError, OSError, ValueError) as exc:  # truncated or corrupt gzip/zstd, unreadable file
                # Permanent: the same file fails the same way on every retry, so say which file and why.
                raise BadInputError(f"local source file {path} cannot be read: {type(exc).__name__}: {exc} "
                                    "(a truncated or corrupt compressed file?); nothing was written") from None
            if not chunk:
                return
            yield chunk


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
