"""Snowflake: Mixpanel's tables in one schema, loaded from the staged part files by PUT + COPY INTO.

    MP_MASTER_EVENT_RAW         DATA VARIANT: one exported row per record, `time` as epoch seconds;
                                clustered by its project-timezone date, as Mixpanel does
    MP_MASTER_EVENT             view: Mixpanel's columns (schema.py), upper-cased, in Snowflake's
                                types (schema.SNOWFLAKE: STRING, VARIANT, TIMESTAMP_NTZ holding UTC)
    MP_PEOPLE_DATA              Mixpanel's columns, likewise
    MP_IDENTITY_MAPPINGS_DATA   Mixpanel's columns, likewise
    MP_MASTER_EVENT_RESOLVED    view: events + RESOLVED_DISTINCT_ID (COALESCE through the mappings)
    MP_EXPORT_LOG               one row per export: table, partition, window, rows, fingerprint, time

Every write goes through files, never row inserts: the part files (gzip JSON lines) are PUT into a
temporary stage and copied with COPY INTO into a temporary single-VARIANT load table (the COPY
that fails on a bad file fails here, before the target is touched). The load table is checked
(row count, every row inside the window), then one transaction replaces the target's rows:

    BEGIN; DELETE <window or table>; INSERT ... SELECT FROM <load table>; INSERT <log row>; COMMIT;

Temporary stages and tables vanish with the session, so a killed run leaves nothing behind. The
connection comes from dagster-snowflake's SnowflakeResource; out-of-band telemetry is switched off.

Over ~400 lines because the destination is one module: its config model and the code that opens
it sit here with the implementation (docs/destinations.md); the read-back and GDPR half can move
out as BigQuery's did (bigquery_admin.py) when it grows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    IDENTITY_TABLE,
    PEOPLE_TABLE,
    Destination,
    DestinationError,
    WriteResult,
)
from mixpanel_assets.destinations.configs import SQL_NAME, DestinationConfigBase, Int, Text, env_secret, env_var_name
from mixpanel_assets.schema import (
    DEDUP_KEY,
    EVENT_COLUMNS,
    INSERT_ID,
    JSON,
    SNOWFLAKE,
    TABLES,
    TIMESTAMP,
    USER_COLUMNS,
    columns,
    names,
    typed,
)
from mixpanel_assets.staging.parts import PartFile
from mixpanel_assets.windows import PartitionWindow


class SnowflakeDestinationConfig(DestinationConfigBase):
    """A Snowflake schema, through dagster-snowflake's SnowflakeResource. Give one secret: the
    password or the private key (PEM text), each as the *name* of its env var."""

    type: Literal["snowflake"]
    account: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # account identifier, e.g. myorg-myaccount
    user: Text
    database: str = Field(pattern=SQL_NAME)
    schema_name: str = Field(alias="schema", pattern=SQL_NAME)
    warehouse: str | None = Field(None, pattern=SQL_NAME)
    role: str | None = Field(None, pattern=SQL_NAME)
    password_env: str | None = None
    private_key_env: str | None = None
    private_key_password_env: str | None = None
    # Emulators and private endpoints: where the connector connects instead of <account>.snowflakecomputing.com.
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+$")
    port: Int | None = Field(None, ge=1, le=65535)
    protocol: Literal["https", "http"] = "https"
    network_timeout_seconds: Int | None = Field(None, ge=1, le=86_400)
    login_timeout_seconds: Int | None = Field(None, ge=1, le=86_400)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _check_env = field_validator("password_env", "private_key_env", "private_key_password_env")(env_var_name)

    @model_validator(mode="after")
    def _one_secret(self) -> SnowflakeDestinationConfig:
        if bool(self.password_env) == bool(self.private_key_env):
            raise ValueError("give exactly one of password_env and private_key_env")
        if self.private_key_password_env and not self.private_key_env:
            raise ValueError("private_key_password_env goes with private_key_env")
        return self

    def location_key(self) -> tuple:
        return ("snowflake", self.host or self.account.lower(), self.database.upper(), self.schema_name.upper())

    def describe(self) -> str:
        return f"Snowflake {self.database}.{self.schema_name} (account {self.account})"


def open_destination(config: SnowflakeDestinationConfig, context) -> SnowflakeDestination:
    """The secrets are read from their env vars here, when a run opens the destination."""
    pipeline = context.pipeline
    resource = snowflake_resource(
        account=config.account, user=config.user, database=config.database, schema=config.schema_name,
        warehouse=config.warehouse, role=config.role, password=env_secret(pipeline, "password_env", config.password_env),
        private_key=env_secret(pipeline, "private_key_env", config.private_key_env),
        private_key_password=env_secret(pipeline, "private_key_password_env", config.private_key_password_env),
        host=config.host, port=config.port, protocol=config.protocol,
        network_timeout=config.network_timeout_seconds, login_timeout=config.login_timeout_seconds,
    )
    return SnowflakeDestination(pipeline, context.project_id, resource, config.database, config.schema_name,
                                timezone=context.timezone, log=context.log)


def table_location(config: SnowflakeDestinationConfig, project_id: int, table: str) -> str:
    """The events view readers query, and the people / identity tables."""
    return f"{config.database}.{config.schema_name}.{NAMES[table]}".upper()

RAW = "MP_MASTER_EVENT_RAW"
NAMES = {table: table.upper() for table in TABLES}
RESOLVED = "MP_MASTER_EVENT_RESOLVED"
LOG = "MP_EXPORT_LOG"

_EPOCH = "DATA:time::FLOAT"  # the same double the export compared with the window bounds
# information_schema's names for schema.SNOWFLAKE's types (it reports STRING as TEXT)
_LOGICAL = {"TEXT": "STRING", "VARIANT": "JSON", "TIMESTAMP_NTZ": "TIMESTAMP"}


def _from_data(name: str, kind: str) -> str:
    """A column of a loaded row (one VARIANT, DATA) in the table's type. `time` may carry fractions
    of a second: it is scaled to integer microseconds rather than trusting TO_TIMESTAMP's handling
    of decimals."""
    if kind == TIMESTAMP:
        return f"TO_TIMESTAMP_NTZ((DATA:{name}::NUMBER(38, 6) * 1000000)::NUMBER(38, 0), 6)"
    return f"DATA:{name}" if kind == JSON else f"DATA:{name}::{SNOWFLAKE[kind]}"


def _raw_key(name: str) -> str:
    """A dedup key column of MP_MASTER_EVENT_RAW as the export compared it (`time`: its epoch double)."""
    kind = dict(EVENT_COLUMNS)[name]
    return _EPOCH if kind == TIMESTAMP else _from_data(name, kind)


def _create_table(table: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {{q}}.{NAMES[table]} ("
            + ", ".join(f"{n.upper()} {t}" for n, t in typed(table, SNOWFLAKE)) + ")")


_DDL = (
    ("CREATE TABLE IF NOT EXISTS {q}.MP_MASTER_EVENT_RAW (DATA VARIANT) "
     "CLUSTER BY (TO_DATE(CONVERT_TIMEZONE('UTC', '{tz}', TO_TIMESTAMP_NTZ(DATA:time::NUMBER))))"),
    (f"CREATE VIEW IF NOT EXISTS {{q}}.{NAMES[EVENTS_TABLE]} AS SELECT "
     + ", ".join(f"{_from_data(n, kind)} AS {n.upper()}" for n, kind in EVENT_COLUMNS)
     + " FROM {q}.MP_MASTER_EVENT_RAW"),
    _create_table(PEOPLE_TABLE),
    _create_table(IDENTITY_TABLE),
    ("CREATE VIEW IF NOT EXISTS {q}.MP_MASTER_EVENT_RESOLVED AS SELECT e.*, "
     "COALESCE(m.RESOLVED_DISTINCT_ID, e.DISTINCT_ID) AS RESOLVED_DISTINCT_ID FROM {q}.MP_MASTER_EVENT e "
     "LEFT JOIN {q}.MP_IDENTITY_MAPPINGS_DATA m ON e.DISTINCT_ID = m.DISTINCT_ID"),
    ("CREATE TABLE IF NOT EXISTS {q}.MP_EXPORT_LOG (EXPORTED_AT TIMESTAMP_NTZ, PIPELINE STRING, TABLE_NAME STRING, "
     "PARTITION_KEY STRING, PARTITION_DATE DATE, WINDOW_START TIMESTAMP_NTZ, WINDOW_END TIMESTAMP_NTZ, "
     "ROW_COUNT NUMBER, FINGERPRINT STRING)"),
)
_FROM_LOAD = {  # (the table's columns, the same from a loaded row)
    table: (", ".join(n.upper() for n in names(table)), ", ".join(_from_data(n, kind) for n, kind in columns(table)))
    for table in (PEOPLE_TABLE, IDENTITY_TABLE)
}


def snowflake_resource(*, account: str, user: str, database: str, schema: str, warehouse: str | None = None,
                       role: str | None = None, password: str | None = None, private_key: str | None = None,
                       private_key_password: str | None = None, host: str | None = None, port: int | None = None,
                       protocol: str = "https", network_timeout: int | None = None,
                       login_timeout: int | None = None):
    """dagster-snowflake's resource; `host`/`port`/`protocol` reach emulators and private endpoints."""
    from dagster_snowflake import SnowflakeResource

    extra: dict = {"session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False}}
    if host:
        extra.update(host=host, protocol=protocol)
    if port:
        extra["port"] = port
    return SnowflakeResource(
        account=account, user=user, password=password, private_key=private_key,
        private_key_password=private_key_password, database=database, schema=schema, warehouse=warehouse,
        role=role, network_timeout=network_timeout, login_timeout=login_timeout, autocommit=True,
        additional_snowflake_connection_args=extra,
    )


# Errors retrying cannot fix: rejected user/password, key pair or role (the connector's errno).
_AUTH_ERRNOS = {390100, 390101, 390102, 390144, 390186, 390189, 390190, 394304}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


class SnowflakeDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, resource, database: str, schema: str, *,
                 timezone: str = "UTC", log=None):
        super().__init__(pipeline, project_id, log)
        self.resource = resource
        self.database = database.upper()
        self.schema = schema.upper()
        self.timezone = timezone

    @property
    def q(self) -> str:
        return f"{self.database}.{self.schema}"

    def describe(self) -> str:
        return f"Snowflake {self.q}"

    def location(self, name: str) -> str:
        return f"snowflake://{self.q}.{name}"

    # --- events ------------------------------------------------------------------------------

    def write_event_window(self, parts: list[PartFile], window: PartitionWindow, fingerprint: str) -> WriteResult:
        what = f"partition {window.partition_key} of {self.q}.{RAW}"
        start, end = window.start.timestamp(), window.end.timestamp()
        in_window = f"{_EPOCH} >= {start!r} AND {_EPOCH} < {end!r}"
        rows = sum(p.rows for p in parts)
        try:
            with self._cursor() as cur:
                load = self._load(cur, parts, EVENTS_TABLE)
                if load:
                    self._check_load(cur, load, rows, f"NOT ({in_window}) OR {_EPOCH} IS NULL")
                insert = f"INSERT INTO {self.q}.{RAW} (DATA) SELECT DATA FROM {load}" if load else None
                removed = self._replace(cur, f"DELETE FROM {self.q}.{RAW} WHERE {in_window}", insert, rows,
                                        (EVENTS_TABLE, window.partition_key, window.local_date,
                                         _naive_utc(window.start), _naive_utc(window.end), rows, fingerprint))
        except Exception as exc:
            raise self._fail(what, exc) from exc
        return WriteResult(location=self.location(RAW), rows=rows, removed=removed,
                           bytes=sum(p.size for p in parts))

    # --- people and identity mappings --------------------------------------------------------

    def write_table(self, parts: list[PartFile], table: str, digest: str,
                    duplicate_ids: int | None = None) -> WriteResult:
        name = NAMES[table]
        columns, select = _FROM_LOAD[table]
        rows = sum(p.rows for p in parts)
        try:
            with self._cursor() as cur:
                load = self._load(cur, parts, table)
                if load:
                    self._check_load(cur, load, rows, None)
                insert = f"INSERT INTO {self.q}.{name} ({columns}) SELECT {select} FROM {load}" if load else None
                removed = self._replace(cur, f"DELETE FROM {self.q}.{name}", insert, rows,
                                        (table, None, None, None, None, rows, digest))
        except Exception as exc:
            raise self._fail(f"{self.q}.{name}", exc) from exc
        return WriteResult(location=self.location(name), rows=rows, removed=removed,
                           bytes=sum(p.size for p in parts))

    # --- reading back (asset checks) -----------------------------------------------------------

    def read_event_window(self, window: PartitionWindow):
        from mixpanel_assets.destinations.base import EventWindowReadback

        location = self.location(NAMES[EVENTS_TABLE])
        start, end = window.start.timestamp(), window.end.timestamp()
        in_window = f"{_EPOCH} >= {start!r} AND {_EPOCH} < {end!r}"
        with self._cursor(ensure=False) as cur:
            columns = self._columns(cur, NAMES[EVENTS_TABLE])
            if not columns:
                return EventWindowReadback(location, 0, 0, 0, [], [f"no view {self.q}.{NAMES[EVENTS_TABLE]}"])
            rows = cur.execute(f"SELECT COUNT(*) FROM {self.q}.{RAW} WHERE {in_window}").fetchone()[0]
            keys, extra = cur.execute(
                f"SELECT COUNT(*), COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM {self.q}.{RAW} "
                f"WHERE {in_window} AND {_raw_key(INSERT_ID)} IS NOT NULL "
                f"GROUP BY {', '.join(_raw_key(c) for c in DEDUP_KEY)} "
                "HAVING COUNT(*) > 1)").fetchone()
        return EventWindowReadback(location, int(rows), int(keys), int(extra), columns)

    def read_table(self, table: str):
        from mixpanel_assets.destinations.base import TableReadback

        name = NAMES[table]
        with self._cursor(ensure=False) as cur:
            columns = self._columns(cur, name)
            if not columns:
                return TableReadback(self.location(name), 0, 0, [], [f"no table {self.q}.{name}"])
            rows = cur.execute(f"SELECT COUNT(*) FROM {self.q}.{name}").fetchone()[0]
            duplicates = cur.execute(f"SELECT COUNT(*) FROM (SELECT DISTINCT_ID FROM {self.q}.{name} "
                                     "GROUP BY DISTINCT_ID HAVING COUNT(*) > 1)").fetchone()[0]
        return TableReadback(self.location(name), int(rows), int(duplicates), columns)

    def _columns(self, cur, name: str) -> list[tuple[str, str]]:
        found = cur.execute(
            f"SELECT column_name, data_type FROM {self.database}.information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (self.schema, name)).fetchall()
        return [(column.lower(), _LOGICAL.get(kind, kind)) for column, kind in found]

    # --- deleting users (GDPR) -----------------------------------------------------------------
    # The distinct_ids go in as the exports' rows do: a file PUT into a temporary stage and copied
    # into a temporary table, joined on. They are never part of SQL text (nothing to escape, no
    # statement-size limit, nothing in the query history) and vanish with the session.

    def delete_event_rows(self, distinct_ids, windows, work_dir, dry_run=False):
        """Rows are matched by DATA:distinct_id and attributed to the windows by DATA:time through one
        grouped count (window_counts.py); then one transaction deletes them from all the windows,
        each window all-or-nothing, as one DML statement rather than one per partition."""
        from mixpanel_assets.destinations.warehouses.window_counts import bucket_seconds, removals_by_window

        if not windows or not distinct_ids:
            return []
        start, end = windows[0].start.timestamp(), windows[-1].end.timestamp()
        bucket = bucket_seconds(windows)
        try:
            with self._cursor(ensure=False) as cur:
                if not self._columns(cur, RAW):
                    return []  # never written: nothing to delete
                ids = self._load_ids(cur, distinct_ids, Path(work_dir))
                match = (f"DATA:distinct_id::STRING IN (SELECT DATA:distinct_id::STRING FROM {ids}) "
                         f"AND {_EPOCH} >= {start!r} AND {_EPOCH} < {end!r}")
                counts = cur.execute(f"SELECT FLOOR({_EPOCH} / {bucket}), COUNT(*) FROM {self.q}.{RAW} "
                                     f"WHERE {match} GROUP BY 1").fetchall()
                removals = removals_by_window(windows, counts, bucket, self.location(RAW))
                if removals and not dry_run:
                    self._delete(cur, f"{self.q}.{RAW}", match, sum(r.rows for r in removals))
        except Exception as exc:
            raise self._delete_failed(f"the events of {len(windows)} partitions of {self.q}.{RAW}", exc) from exc
        return removals

    def delete_table_rows(self, table, distinct_ids, work_dir, dry_run=False):
        from mixpanel_assets.destinations.base import Removal

        name = NAMES[table]
        if not distinct_ids:
            return Removal(table, None, 0, self.location(name))
        try:
            with self._cursor(ensure=False) as cur:
                if not self._columns(cur, name):
                    return Removal(table, None, 0, self.location(name))
                among = f"(SELECT DATA:distinct_id::STRING FROM {self._load_ids(cur, distinct_ids, Path(work_dir))})"
                match = "(" + " OR ".join(f"{column.upper()} IN {among}" for column in USER_COLUMNS[table]) + ")"
                rows = cur.execute(f"SELECT COUNT(*) FROM {self.q}.{name} WHERE {match}").fetchone()[0]
                if rows and not dry_run:
                    self._delete(cur, f"{self.q}.{name}", match, rows)
        except Exception as exc:
            raise self._delete_failed(f"{self.q}.{name}", exc) from exc
        return Removal(table, None, int(rows), self.location(name))

    def _load_ids(self, cur, distinct_ids, work_dir: Path) -> str:
        """A temporary table of the ids (DATA:distinct_id), through the exports' PUT + COPY; its name."""
        import gzip

        import orjson

        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"gdpr-ids-{uuid.uuid4().hex[:12]}.json.gz"
        raw = b"".join(orjson.dumps({"distinct_id": i}) + b"\n" for i in sorted(distinct_ids))
        path.write_bytes(gzip.compress(raw, compresslevel=1))
        try:
            load = self._load(cur, [PartFile(path, len(distinct_ids), len(raw), path.stat().st_size)], "gdpr ids")
            self._check_load(cur, load, len(distinct_ids), None)
        finally:
            path.unlink(missing_ok=True)
        return load

    def _delete(self, cur, target: str, match: str, expected: int) -> None:
        """DELETE in a transaction that commits only if it removed exactly the counted rows and
        none are left."""
        cur.execute("BEGIN")
        try:
            removed = cur.execute(f"DELETE FROM {target} WHERE {match}").rowcount
            if removed != expected:
                raise DestinationError(f"{removed} rows matched when deleting, {expected} when they were counted "
                                       "(an export wrote them meanwhile?)")
            left = cur.execute(f"SELECT COUNT(*) FROM {target} WHERE {match}").fetchone()[0]
            if left:
                raise DestinationError(f"{left} rows of the deleted users were left after the DELETE")
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise

    def _delete_failed(self, what: str, exc: Exception) -> DestinationError:
        return DestinationError(
            f"pipeline {self.pipeline!r}: removing deleted users' rows from {what} in {self.describe()} failed: "
            f"{type(exc).__name__}: {_first_line(exc)}; the transaction was rolled back, so those rows are all "
            "still there (rerun the deletion)"
        )

    # --- building blocks ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _cursor(self, ensure: bool = True):
        """A cursor on a fresh session, the tables and views in place unless `ensure` is false."""
        with contextlib.ExitStack() as stack:
            try:
                conn = stack.enter_context(self.resource.get_connection())
            except Exception as exc:
                error = DestinationError(
                    f"cannot connect to Snowflake account {self.resource.account!r} as user {self.resource.user!r}: "
                    f"{_first_line(exc)}")
                error.permanent = getattr(exc, "errno", None) in _AUTH_ERRNOS
                raise error from exc
            stack.callback(conn.close)  # get_connection closes only when its block succeeds
            cur = conn.cursor()
            for statement in _DDL if ensure else ():
                cur.execute(statement.format(q=self.q, tz=self.timezone))
            yield cur

    def _load(self, cur, parts: list[PartFile], table: str) -> str | None:
        """PUT the parts into a temporary stage and COPY them into a temporary load table; its name."""
        if not parts:
            return None
        # Unqualified: temporary objects live in the session's schema (ours), and some SQL engines
        # that speak Snowflake refuse a database-qualified temporary table.
        suffix = uuid.uuid4().hex[:12].upper()
        stage, load = f"MP_STAGE_{suffix}", f"MP_LOAD_{suffix}"
        cur.execute(f"CREATE TEMPORARY STAGE {stage}")
        for part in parts:
            cur.execute(f"PUT 'file://{_quoted_path(part.path)}' @{stage} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
        cur.execute(f"CREATE TEMPORARY TABLE {load} (DATA VARIANT)")
        cur.execute(f"COPY INTO {load} FROM @{stage} FILE_FORMAT = (TYPE = JSON) ON_ERROR = ABORT_STATEMENT")
        return load

    def _check_load(self, cur, load: str, expected: int, outside: str | None) -> None:
        wrong = f"COUNT_IF({outside})" if outside else "0"
        rows, misplaced = cur.execute(f"SELECT COUNT(*), {wrong} FROM {load}").fetchone()
        if rows != expected or misplaced:
            raise DestinationError(
                f"the load table holds {rows} rows ({misplaced} outside the window), expected {expected} inside it")

    def _replace(self, cur, delete: str, insert: str | None, expected: int, log_row: tuple) -> int:
        """DELETE + INSERT + log row in one transaction; returns the rows deleted."""
        cur.execute("BEGIN")
        try:
            removed = cur.execute(delete).rowcount or 0
            if insert:
                inserted = cur.execute(insert).rowcount
                if inserted != expected:
                    raise DestinationError(f"{inserted} rows inserted, expected {expected}")
            cur.execute(
                f"INSERT INTO {self.q}.{LOG} (EXPORTED_AT, PIPELINE, TABLE_NAME, PARTITION_KEY, PARTITION_DATE, "
                "WINDOW_START, WINDOW_END, ROW_COUNT, FINGERPRINT) "
                "VALUES (SYSDATE(), %s, %s, %s, %s, %s, %s, %s, %s)",
                (self.pipeline, *log_row),
            )
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise
        return int(removed)

    def _fail(self, what: str, exc: Exception) -> DestinationError:
        error = DestinationError(
            f"pipeline {self.pipeline!r}: loading {what} into {self.describe()} failed: {type(exc).__name__}: "
            f"{_first_line(exc)}; the previous rows are unchanged"
        )
        error.permanent = getattr(exc, "permanent", False)  # the IO manager does not retry those
        return error


def _naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _quoted_path(path: Path) -> str:
    return str(Path(path).absolute()).replace("\\", "/").replace("'", "\\'")
