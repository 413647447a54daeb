"""DuckDB: the embedded default warehouse, with Mixpanel's three tables.

    mp_master_event            Mixpanel's columns (schema.py), in DuckDB's types (schema.DUCKDB:
    mp_people_data             VARCHAR, JSON, TIMESTAMP holding UTC)
    mp_identity_mappings_data
    mp_master_event_resolved   view: events + resolved_distinct_id (COALESCE through the mapping)
    mp_export_log              one row per export: table, partition, window, rows, fingerprint, time

A window is replaced by DELETE + INSERT in one transaction, loading the staged part files with
DuckDB's own (parallel, C++) JSON reader. DuckDB allows one writing process per file, so writers
take a file lock (`<file>.lock`, flock: the kernel releases it the moment its holder dies, even
under kill -9) and record who holds it in `<file>.lock.holder`; concurrent runs queue for up to
LOCK_TIMEOUT_S, then fail naming the holder's run. A process outside this project holding the
file open (the DuckDB CLI, a notebook) is waited for the same way, then named by its PID.
One row (one JSON line) may be up to MAX_ROW_BYTES: read_json's default limit is 16 MB.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import ConfigDict, Field

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    IDENTITY_TABLE,
    PEOPLE_TABLE,
    Destination,
    DestinationError,
    WriteResult,
)
from mixpanel_assets.destinations.configs import DestinationConfigBase, Text, path_segments, resolve_under
from mixpanel_assets.schema import (
    DEDUP_KEY,
    DUCKDB,
    INSERT_ID,
    TABLES,
    TIMESTAMP,
    USER_COLUMNS,
    columns,
    typed,
)
from mixpanel_assets.staging.parts import PartFile
from mixpanel_assets.windows import PartitionWindow


class DuckDBDestinationConfig(DestinationConfigBase):
    """An embedded DuckDB database file holding the three tables."""

    type: Literal["duckdb"]
    path: Text
    schema_name: str = Field("main", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def location_key(self) -> tuple:
        return ("duckdb", path_segments(self.path), self.schema_name.lower())

    def describe(self) -> str:
        return f"DuckDB {self.path} schema {self.schema_name}"

    def resolved(self, base_dir: Path) -> DuckDBDestinationConfig:
        return self.model_copy(update={"path": resolve_under(base_dir, self.path)})


def open_destination(config: DuckDBDestinationConfig, context) -> DuckDBDestination:
    return DuckDBDestination(context.pipeline, context.project_id, config.path, config.schema_name, log=context.log)


def table_location(config: DuckDBDestinationConfig, project_id: int, table: str) -> str:
    return f"{Path(config.path).stem}.{config.schema_name}.{table}"

LOCK_TIMEOUT_S = 1800
MAX_ROW_BYTES = 512 << 20  # read_json's maximum_object_size (the buffer for one line); docs/destinations.md


class WriterBusy(DestinationError):
    """Another writer held the DuckDB file for longer than the wait allowed."""

DDL = {
    **{table: f"CREATE TABLE IF NOT EXISTS {{s}}.{table} ({', '.join(f'{n} {t}' for n, t in typed(table, DUCKDB))})"
       for table in TABLES},
    "log": """CREATE TABLE IF NOT EXISTS {s}.mp_export_log (
        table_name VARCHAR, pipeline VARCHAR, partition_key VARCHAR, window_start TIMESTAMP,
        window_end TIMESTAMP, rows BIGINT, fingerprint VARCHAR, exported_at TIMESTAMP)""",
    "view": """CREATE OR REPLACE VIEW {s}.mp_master_event_resolved AS
        SELECT e.*, COALESCE(m.resolved_distinct_id, e.distinct_id) AS resolved_distinct_id
        FROM {s}.mp_master_event e
        LEFT JOIN {s}.mp_identity_mappings_data m ON e.distinct_id = m.distinct_id""",
}

_PART_TYPES = {**DUCKDB, TIMESTAMP: "DOUBLE"}  # the part files hold `time` as epoch seconds


def _read_json_columns(table: str) -> str:
    """read_json's `columns` struct: each column as the part files hold it."""
    return "{" + ", ".join(f"'{n}': '{t}'" for n, t in typed(table, _PART_TYPES)) + "}"


def _select_list(table: str) -> str:
    """The part files' columns as the table's, in its order: epoch seconds become whole microseconds."""
    return ", ".join(f"make_timestamp(CAST(round({n} * 1000000) AS BIGINT)) AS {n}" if kind == TIMESTAMP else n
                     for n, kind in columns(table))


_EVENT_COLUMNS = _read_json_columns(EVENTS_TABLE)
_SELECT_EVENTS = "SELECT " + _select_list(EVENTS_TABLE)
_TABLE_COLUMNS = {table: (_read_json_columns(table), _select_list(table)) for table in (PEOPLE_TABLE, IDENTITY_TABLE)}


def connect(path: str | Path, read_only: bool = False):
    import duckdb

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(path), read_only=read_only)


def writer_lock(path: str | Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def ensure_schema(conn, schema: str) -> None:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for statement in DDL.values():
        conn.execute(statement.format(s=schema))


def _naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


class DuckDBDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, path: str | Path, schema: str = "main", log=None):
        super().__init__(pipeline, project_id, log)
        self.path = Path(path)
        self.schema = schema
        self.lock_wait = LOCK_TIMEOUT_S

    def describe(self) -> str:
        return f"DuckDB {self.path} ({self.schema})"

    @contextlib.contextmanager
    def _transaction(self, failure: str, unchanged: str = "the previous rows are unchanged", create: bool = True):
        """The writers' lock, a connection and one transaction: committed if the block succeeds,
        rolled back otherwise, and then a DestinationError saying what failed (`failure`)."""
        try:
            with self._writer(failure):
                conn = self._connect(failure)
                try:
                    if create:
                        ensure_schema(conn, self.schema)
                    conn.execute("BEGIN TRANSACTION")
                    yield conn
                    conn.execute("COMMIT")
                except Exception:
                    _rollback_quietly(conn)
                    raise
                finally:
                    conn.close()
        except WriterBusy:
            raise
        except Exception as exc:
            raise DestinationError(
                f"pipeline {self.pipeline!r}: {failure} in {self.describe()} failed: {type(exc).__name__}: {exc}; "
                f"the transaction was rolled back and {unchanged}"
            ) from exc

    @contextlib.contextmanager
    def _writer(self, what: str):
        """The writers' file lock, with this run recorded as its holder while it is held."""
        import filelock

        lock, holder = FileLock(str(self.path) + ".lock", timeout=self.lock_wait), Path(str(self.path) + ".lock.holder")
        try:
            lock.acquire()
        except filelock.Timeout:
            try:
                held_by = holder.read_text()
            except OSError:
                held_by = "(not recorded)"
            raise WriterBusy(
                f"pipeline {self.pipeline!r}: {what} in {self.describe()} waited {self.lock_wait:.0f}s for the "
                f"writers' lock {lock.lock_file}, held by {held_by}; nothing was changed. Rerun when that run has "
                "finished (the lock is released as soon as its process ends, even if killed)") from None
        try:
            holder.write_text(f"run {self.run_id or '(no run id)'} (host {socket.gethostname()}, pid {os.getpid()}, "
                              f"since {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ})")
            yield
        finally:
            holder.unlink(missing_ok=True)
            lock.release()

    def _connect(self, what: str, read_only: bool = False):
        """Connect, waiting up to lock_wait for a process outside this project to let go of the file."""
        import duckdb

        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                return connect(self.path, read_only=read_only)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise WriterBusy(
                        f"pipeline {self.pipeline!r}: {what} in {self.describe()}: another process keeps the file "
                        f"open ({str(exc).splitlines()[0]}); waited {self.lock_wait:.0f}s and changed nothing. Close "
                        "that process (a DuckDB CLI or notebook?) and rerun") from None
                time.sleep(1)

    def current_rows(self, window: PartitionWindow | None = None, table: str = EVENTS_TABLE) -> int | None:
        """COUNT(*) of the window (or table) as readers see it now, for the shrink guard."""
        readback = self.read_event_window(window) if window is not None else self.read_table(table)
        return readback.rows

    @contextlib.contextmanager
    def _reading(self):
        with self._writer("reading"):
            conn = self._connect("reading", read_only=True)
            try:
                yield conn
            finally:
                conn.close()

    def write_event_window(self, parts: list[PartFile], window: PartitionWindow, fingerprint: str) -> WriteResult:
        files, rows = [str(p.path) for p in parts], sum(p.rows for p in parts)
        table = f"{self.schema}.{EVENTS_TABLE}"
        start, end = _naive_utc(window.start), _naive_utc(window.end)
        with self._transaction(f"loading partition {window.partition_key} of {table}") as conn:
            removed = conn.execute(f"DELETE FROM {table} WHERE time >= ? AND time < ?", [start, end]).fetchone()[0]
            if files:
                conn.execute(
                    f"INSERT INTO {table} {_SELECT_EVENTS} FROM read_json(?, format='newline_delimited', "
                    f"columns={_EVENT_COLUMNS}, compression='gzip', maximum_object_size={MAX_ROW_BYTES})",
                    [files],
                )
            loaded = conn.execute(f"SELECT count(*) FROM {table} WHERE time >= ? AND time < ?", [start, end]).fetchone()[0]
            if loaded != rows:
                raise DestinationError(
                    f"{loaded} rows in the window after loading, expected {rows} "
                    "(events outside the window in the staged files?)"
                )
            self._log(conn, EVENTS_TABLE, window.partition_key, start, end, loaded, fingerprint)
        return WriteResult(location=f"duckdb://{self.path}/{table}", rows=loaded, removed=int(removed))

    def write_table(self, parts: list[PartFile], table: str, digest: str,
                    duplicate_ids: int | None = None) -> WriteResult:
        files, rows = [str(p.path) for p in parts], sum(p.rows for p in parts)
        target = f"{self.schema}.{table}"
        columns, names = _TABLE_COLUMNS[table]
        with self._transaction(f"loading {target}") as conn:
            removed = conn.execute(f"DELETE FROM {target}").fetchone()[0]
            if files:
                conn.execute(
                    f"INSERT INTO {target} SELECT {names} FROM read_json(?, format='newline_delimited', "
                    f"columns={columns}, compression='gzip', maximum_object_size={MAX_ROW_BYTES})",
                    [files],
                )
            loaded = conn.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
            if loaded != rows:
                raise DestinationError(f"{loaded} rows after loading, expected {rows}")
            self._log(conn, table, None, None, None, loaded, digest)
        return WriteResult(location=f"duckdb://{self.path}/{target}", rows=loaded, removed=int(removed))

    def _log(self, conn, table, partition_key, start, end, rows, fingerprint) -> None:
        conn.execute(
            f"INSERT INTO {self.schema}.mp_export_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [table, self.pipeline, partition_key, start, end, rows, fingerprint,
             dt.datetime.now(dt.UTC).replace(tzinfo=None)],
        )

    # --- reading back (asset checks) and deleting users (GDPR) -------------------------------
    # Readers take the writers' file lock too: DuckDB refuses a second process, even a read-only
    # one, while another holds the file open for writing.

    def _location(self, table: str) -> str:
        return f"duckdb://{self.path}/{self.schema}.{table}"

    def _columns(self, conn, table: str) -> list[tuple[str, str]]:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [self.schema, table],
        ).fetchall()
        return [(name, _LOGICAL_TYPES.get(kind, kind)) for name, kind in rows]

    def read_event_window(self, window: PartitionWindow):
        from mixpanel_assets.destinations.base import EventWindowReadback

        table = f"{self.schema}.{EVENTS_TABLE}"
        start, end = _naive_utc(window.start), _naive_utc(window.end)
        if not self.path.exists():
            return EventWindowReadback(self._location(EVENTS_TABLE), 0, 0, 0, [], [f"{self.path} does not exist"])
        with self._reading() as conn:
            columns = self._columns(conn, EVENTS_TABLE)
            if not columns:
                return EventWindowReadback(self._location(EVENTS_TABLE), 0, 0, 0, [], [f"no table {table}"])
            rows = conn.execute(f"SELECT count(*) FROM {table} WHERE time >= ? AND time < ?", [start, end]).fetchone()[0]
            keys, extra = conn.execute(
                f"SELECT count(*), coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {table} "
                f"WHERE time >= ? AND time < ? AND {INSERT_ID} IS NOT NULL "
                f"GROUP BY {', '.join(DEDUP_KEY)} HAVING count(*) > 1)",
                [start, end],
            ).fetchone()
        return EventWindowReadback(self._location(EVENTS_TABLE), int(rows), int(keys), int(extra), columns)

    def read_table(self, table: str):
        from mixpanel_assets.destinations.base import TableReadback

        qualified = f"{self.schema}.{table}"
        if not self.path.exists():
            return TableReadback(self._location(table), 0, 0, [], [f"{self.path} does not exist"])
        with self._reading() as conn:
            columns = self._columns(conn, table)
            if not columns:
                return TableReadback(self._location(table), 0, 0, [], [f"no table {qualified}"])
            rows = conn.execute(f"SELECT count(*) FROM {qualified}").fetchone()[0]
            duplicates = conn.execute(
                f"SELECT count(*) FROM (SELECT distinct_id FROM {qualified} GROUP BY distinct_id HAVING count(*) > 1)"
            ).fetchone()[0]
        return TableReadback(self._location(table), int(rows), int(duplicates), columns)

    def delete_event_rows(self, distinct_ids, windows, work_dir, dry_run=False):
        """One transaction for all windows; rows are attributed to windows by their time."""
        import bisect

        from mixpanel_assets.destinations.base import Removal

        if not windows or not distinct_ids or not self.path.exists():
            return []
        table = f"{self.schema}.{EVENTS_TABLE}"
        start, end = _naive_utc(windows[0].start), _naive_utc(windows[-1].end)
        where = "distinct_id IN (SELECT distinct_id FROM gdpr_ids) AND time >= ? AND time < ?"
        times = self._delete(table, distinct_ids, where, [start, end], f"SELECT epoch_us(time) FROM {table} WHERE {where}",
                             dry_run, f"events of {len(windows)} partitions of {table}")
        starts = [int(w.start.timestamp() * 1_000_000) for w in windows]
        counts: dict[int, int] = {}
        for (micros,) in times:
            i = bisect.bisect_right(starts, micros) - 1
            inside = i >= 0 and micros < int(windows[i].end.timestamp() * 1_000_000)
            counts[i if inside else -1] = counts.get(i if inside else -1, 0) + 1
        return [Removal(EVENTS_TABLE, windows[i].partition_key if i >= 0 else None, n, self._location(EVENTS_TABLE))
                for i, n in sorted(counts.items())]

    def delete_table_rows(self, table, distinct_ids, work_dir, dry_run=False):
        from mixpanel_assets.destinations.base import Removal

        if not distinct_ids or not self.path.exists():
            return Removal(table, None, 0, self._location(table))
        qualified = f"{self.schema}.{table}"
        where = " OR ".join(f"{column} IN (SELECT distinct_id FROM gdpr_ids)" for column in USER_COLUMNS[table])
        rows = self._delete(qualified, distinct_ids, where, [], f"SELECT 1 FROM {qualified} WHERE {where}", dry_run,
                            qualified)
        return Removal(table, None, len(rows), self._location(table))

    def _delete(self, table: str, distinct_ids, where: str, params: list, select: str, dry_run: bool, what: str):
        """Select the rows to remove, then delete them, in one transaction; returns the selected rows."""
        with self._transaction(f"removing deleted users' rows from {what}", "the rows are unchanged", create=False) as conn:
            if not self._columns(conn, table.split(".", 1)[1]):
                return []  # never written: nothing to delete
            conn.execute("CREATE TEMP TABLE gdpr_ids AS SELECT unnest(?::VARCHAR[]) AS distinct_id",
                         [sorted(distinct_ids)])
            rows = conn.execute(select, params).fetchall()
            if rows and not dry_run:
                conn.execute(f"DELETE FROM {table} WHERE {where}", params)
        return rows


_LOGICAL_TYPES = {declared: logical for logical, declared in DUCKDB.items()}


def _rollback_quietly(conn) -> None:
    """Roll back if a transaction is open; DuckDB raises when there is none, which is fine here."""
    import duckdb

    with contextlib.suppress(duckdb.Error):
        conn.execute("ROLLBACK")
