"""DuckDB: the embedded default warehouse, with Mixpanel's three tables.

    mp_master_event            device_id, distinct_id, event_name, insert_id VARCHAR,
                               properties JSON, time TIMESTAMP (UTC), user_id VARCHAR
    mp_people_data             distinct_id VARCHAR, properties JSON
    mp_identity_mappings_data  distinct_id VARCHAR, resolved_distinct_id VARCHAR
    mp_master_event_resolved   view: events + resolved_distinct_id (COALESCE through the mapping)
    mp_export_log              one row per export: table, partition, window, rows, fingerprint, time

A window is replaced by DELETE + INSERT in one transaction, loading the staged part files with
DuckDB's own (parallel, C++) JSON reader. DuckDB allows one writing process per file, so writers
take a file lock for the few seconds a load lasts; concurrent runs queue instead of failing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from filelock import FileLock

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    IDENTITY_TABLE,
    PEOPLE_TABLE,
    Destination,
    DestinationError,
    WriteResult,
)
from mixpanel_assets.partitions import PartitionWindow
from mixpanel_assets.staging import StagedTable, StagedWindow

LOCK_TIMEOUT_S = 1800

DDL = {
    EVENTS_TABLE: """CREATE TABLE IF NOT EXISTS {s}.mp_master_event (
        device_id VARCHAR, distinct_id VARCHAR, event_name VARCHAR, insert_id VARCHAR,
        properties JSON, time TIMESTAMP, user_id VARCHAR)""",
    PEOPLE_TABLE: "CREATE TABLE IF NOT EXISTS {s}.mp_people_data (distinct_id VARCHAR, properties JSON)",
    IDENTITY_TABLE: "CREATE TABLE IF NOT EXISTS {s}.mp_identity_mappings_data (distinct_id VARCHAR, resolved_distinct_id VARCHAR)",
    "log": """CREATE TABLE IF NOT EXISTS {s}.mp_export_log (
        table_name VARCHAR, pipeline VARCHAR, partition_key VARCHAR, window_start TIMESTAMP,
        window_end TIMESTAMP, rows BIGINT, fingerprint VARCHAR, exported_at TIMESTAMP)""",
    "view": """CREATE OR REPLACE VIEW {s}.mp_master_event_resolved AS
        SELECT e.*, COALESCE(m.resolved_distinct_id, e.distinct_id) AS resolved_distinct_id
        FROM {s}.mp_master_event e
        LEFT JOIN {s}.mp_identity_mappings_data m ON e.distinct_id = m.distinct_id""",
}

_EVENT_COLUMNS = (
    "{'device_id': 'VARCHAR', 'distinct_id': 'VARCHAR', 'event_name': 'VARCHAR', 'insert_id': 'VARCHAR', "
    "'properties': 'JSON', 'time': 'DOUBLE', 'user_id': 'VARCHAR'}"
)
_SELECT_EVENTS = (
    "SELECT device_id, distinct_id, event_name, insert_id, properties, "
    "make_timestamp(CAST(round(time * 1000000) AS BIGINT)) AS time, user_id"
)
_TABLE_COLUMNS = {
    PEOPLE_TABLE: ("{'distinct_id': 'VARCHAR', 'properties': 'JSON'}", "distinct_id, properties"),
    IDENTITY_TABLE: ("{'distinct_id': 'VARCHAR', 'resolved_distinct_id': 'VARCHAR'}", "distinct_id, resolved_distinct_id"),
}


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
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


class DuckDBDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, path: str | Path, schema: str = "main", workers: int = 1, log=None):
        super().__init__(pipeline, project_id, log)
        self.path = Path(path)
        self.schema = schema
        self.workers = workers

    def describe(self) -> str:
        return f"DuckDB {self.path} ({self.schema})"

    def _parts(self, staged, work_dir: Path, table: str) -> list[str]:
        parts = staged.write_parts(work_dir, fmt="json", compression="gzip", workers=self.workers, table=table)
        return [str(p.path) for p in parts]

    def _fail(self, what: str, exc: Exception) -> DestinationError:
        return DestinationError(
            f"pipeline {self.pipeline!r}: loading {what} into {self.describe()} failed: {type(exc).__name__}: {exc}; "
            "the transaction was rolled back and the previous rows are unchanged"
        )

    def write_event_window(self, staged: StagedWindow, window: PartitionWindow, work_dir: Path) -> WriteResult:
        files = self._parts(staged, work_dir, EVENTS_TABLE)
        table = f"{self.schema}.{EVENTS_TABLE}"
        start, end = _naive_utc(window.start), _naive_utc(window.end)
        try:
            with writer_lock(self.path):
                conn = connect(self.path)
                try:
                    ensure_schema(conn, self.schema)
                    conn.execute("BEGIN TRANSACTION")
                    removed = conn.execute(
                        f"DELETE FROM {table} WHERE time >= ? AND time < ?", [start, end]
                    ).fetchone()[0]
                    if files:
                        conn.execute(
                            f"INSERT INTO {table} {_SELECT_EVENTS} FROM read_json(?, format='newline_delimited', "
                            f"columns={_EVENT_COLUMNS}, compression='gzip')",
                            [files],
                        )
                    loaded = conn.execute(
                        f"SELECT count(*) FROM {table} WHERE time >= ? AND time < ?", [start, end]
                    ).fetchone()[0]
                    if loaded != staged.rows:
                        raise DestinationError(
                            f"{loaded} rows in the window after loading, expected {staged.rows} "
                            "(events outside the window in the staged files?)"
                        )
                    self._log(conn, EVENTS_TABLE, window.partition_key, start, end, loaded, staged.fingerprint.token())
                    conn.execute("COMMIT")
                except Exception:
                    _rollback_quietly(conn)
                    raise
                finally:
                    conn.close()
        except Exception as exc:
            raise self._fail(f"partition {window.partition_key} of {table}", exc) from exc
        finally:
            for f in files:
                Path(f).unlink(missing_ok=True)
        return WriteResult(location=f"duckdb://{self.path}/{table}", rows=loaded, removed=int(removed))

    def write_table(self, staged: StagedTable, work_dir: Path) -> WriteResult:
        files = self._parts(staged, work_dir, staged.table)
        table = f"{self.schema}.{staged.table}"
        columns, names = _TABLE_COLUMNS[staged.table]
        try:
            with writer_lock(self.path):
                conn = connect(self.path)
                try:
                    ensure_schema(conn, self.schema)
                    conn.execute("BEGIN TRANSACTION")
                    removed = conn.execute(f"DELETE FROM {table}").fetchone()[0]
                    if files:
                        conn.execute(
                            f"INSERT INTO {table} SELECT {names} FROM read_json(?, format='newline_delimited', "
                            f"columns={columns}, compression='gzip')",
                            [files],
                        )
                    loaded = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    if loaded != staged.rows:
                        raise DestinationError(f"{loaded} rows after loading, expected {staged.rows}")
                    self._log(conn, staged.table, None, None, None, loaded, staged.digest)
                    conn.execute("COMMIT")
                except Exception:
                    _rollback_quietly(conn)
                    raise
                finally:
                    conn.close()
        except Exception as exc:
            raise self._fail(table, exc) from exc
        finally:
            for f in files:
                Path(f).unlink(missing_ok=True)
        return WriteResult(location=f"duckdb://{self.path}/{table}", rows=loaded, removed=int(removed))

    def _log(self, conn, table, partition_key, start, end, rows, fingerprint) -> None:
        conn.execute(
            f"INSERT INTO {self.schema}.mp_export_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [table, self.pipeline, partition_key, start, end, rows, fingerprint,
             dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)],
        )


def _rollback_quietly(conn) -> None:
    """Roll back if a transaction is open; DuckDB raises when there is none, which is fine here."""
    try:
        conn.execute("ROLLBACK")
    except Exception:
        pass
