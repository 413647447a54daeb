"""BigQuery: Mixpanel's dataset layout, loaded from the staged part files with load jobs.

    mp_master_event                      Mixpanel's columns (schema.py: STRING, JSON, TIMESTAMP holding UTC),
                                         then mp_date DATE (partitioning column, schema.ADDED_COLUMNS)
    mp_people_data_<suffix>              Mixpanel's columns, behind the view mp_people_data_view
    mp_identity_mappings_data_<suffix>   Mixpanel's columns, behind mp_identity_mappings_data_view
    mp_master_event_resolved             view: events + resolved_distinct_id (COALESCE through the mappings view)
    mp_nessie_export_log                 one row per export: table, partition, window, rows, fingerprint, time

Why `mp_date`: Mixpanel's table is ingestion-time partitioned, with `_PARTITIONTIME` set to the
event's date in the project timezone. Only a load into a partition decorator (`table$YYYYMMDD`) can
set that, and a decorator load cannot delete exactly one hour of a day, nor share a transaction
with the export log. So the table is partitioned on a DATE column holding the project-timezone
date of `time`, and a window is replaced by DML inside one multi-statement transaction:

1. load the window's part files (newline-delimited JSON, gzip) into a staging table, one load job
   per part, streamed from disk by resumable upload (`time` is loaded as FLOAT64 epoch seconds:
   BigQuery's JSON loader reads TIMESTAMP only from date-time strings),
2. check the staging table: exactly the staged row count, nothing outside the window,
3. `BEGIN TRANSACTION; DELETE window; INSERT from staging; INSERT log row; COMMIT TRANSACTION;`,
4. drop the staging table (it also expires on its own after a day, should the drop fail).

A failure in 1-3 leaves `mp_master_event` as it was. People and identity mappings are loaded into
a new table, checked, then the view is pointed at it (`CREATE OR REPLACE VIEW`, atomic for
readers) and the previous tables are dropped, as Mixpanel does.

The client is google-cloud-bigquery itself rather than dagster-gcp's BigQueryResource: that
resource can neither point at another endpoint (the emulator in tests) nor take a key without
writing it to a temporary file named by a process-wide environment variable.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    IDENTITY_TABLE,
    PEOPLE_TABLE,
    Destination,
    DestinationError,
    WriteResult,
)
from mixpanel_assets.schema import (
    BIGQUERY,
    DEDUP_KEY,
    EVENT_COLUMNS,
    INSERT_ID,
    TIMESTAMP,
    USER_COLUMNS,
    dialect_columns,
    typed,
)
from mixpanel_assets.staging.parts import PartFile
from mixpanel_assets.staging.stage import StagedRows, StagedTable, StagedWindow
from mixpanel_assets.windows import PartitionWindow

EXPORT_LOG = "mp_nessie_export_log"
RESOLVED_VIEW = "mp_master_event_resolved"
STAGING_EXPIRY = dt.timedelta(days=1)
BIGQUERY_SCOPE = "https://www.googleapis.com/auth/bigquery"

# (name, type) of what readers see, and of what the part files load into.
EVENT_SCHEMA = dialect_columns("bigquery", EVENTS_TABLE)  # Mixpanel's columns, then mp_date
EVENT_LOAD_SCHEMA = typed(EVENTS_TABLE, {**BIGQUERY, TIMESTAMP: "FLOAT64"})  # the part files: `time` in epoch seconds
TABLE_SCHEMAS = {table: dialect_columns("bigquery", table) for table in (PEOPLE_TABLE, IDENTITY_TABLE)}
LOG_SCHEMA = (
    ("exported_at", "TIMESTAMP"), ("pipeline", "STRING"), ("table_name", "STRING"), ("target_table", "STRING"),
    ("partition_key", "STRING"), ("partition_date", "DATE"), ("window_start", "TIMESTAMP"),
    ("window_end", "TIMESTAMP"), ("row_count", "INT64"), ("fingerprint", "STRING"),
)
_SUFFIXED = re.compile(r"^(?P<base>mp_people_data|mp_identity_mappings_data)_\d{8}T\d{6}_[0-9a-f]{6}$")
_EPOCH_MICROS = "TIMESTAMP_MICROS(CAST(ROUND(time * 1000000) AS INT64))"


def make_client(project: str, *, location: str | None = None, credentials: str | None = None,
                credentials_env: str | None = None, api_endpoint: str | None = None):
    """A BigQuery client; `credentials` is a service-account key as JSON text or a key file path."""
    from google.cloud import bigquery

    options = None
    if api_endpoint:
        from google.api_core.client_options import ClientOptions

        options = ClientOptions(api_endpoint=api_endpoint)
    return bigquery.Client(project=project, location=location, client_options=options,
                           credentials=_credentials(credentials, credentials_env, api_endpoint))


def _credentials(value: str | None, env_name: str | None, api_endpoint: str | None):
    if value:
        from google.oauth2 import service_account

        where = f"env var {env_name}" if env_name else "the configured credentials"
        try:
            if value.lstrip().startswith("{"):
                return service_account.Credentials.from_service_account_info(json.loads(value), scopes=[BIGQUERY_SCOPE])
            return service_account.Credentials.from_service_account_file(value, scopes=[BIGQUERY_SCOPE])
        except (ValueError, OSError, KeyError) as exc:
            # Never echo the value: it is a private key, or a path that may name one.
            raise permanent(DestinationError(
                f"{where} does not hold a usable service-account key (its JSON, or the path to the key file): "
                f"{type(exc).__name__}")) from None
    if api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return None  # Application Default Credentials


def _schema(fields):
    from google.cloud import bigquery

    return [bigquery.SchemaField(name, kind) for name, kind in fields]


def _ts(value: dt.datetime) -> str:
    return "TIMESTAMP '" + value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "+00'"


def _date(value: dt.date) -> str:
    return f"DATE '{value.isoformat()}'"


def _str(value: str | None) -> str:
    """A string literal for SQL we compose from our own values (names, keys, fingerprints)."""
    if value is None:
        return "NULL"
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def permanent(error: DestinationError) -> DestinationError:
    """Mark an error retrying cannot fix (missing dataset, foreign schema, rejected credentials):
    the IO manager then fails the step at once instead of waiting out the retry policy."""
    error.permanent = True
    return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


class BigQueryDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, client, dataset: str, *, timezone: str = "UTC",
                 load_compression: str = "gzip", job_timeout: float = 1800.0, workers: int = 1, log=None):
        super().__init__(pipeline, project_id, log)
        self.client = client
        self.project = client.project
        self.dataset = dataset
        self.timezone = timezone
        self.load_compression = load_compression
        self.job_timeout = job_timeout
        self.workers = workers
        self._checked: set[str] = set()

    def describe(self) -> str:
        return f"BigQuery dataset {self.project}.{self.dataset}"

    def ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def sql_ref(self, table: str) -> str:
        return f"`{self.ref(table)}`"

    def location(self, table: str) -> str:
        return f"bigquery://{self.ref(table)}"

    def close(self) -> None:
        self.client.close()

    # --- events ------------------------------------------------------------------------------

    def write_event_window(self, staged: StagedWindow, window: PartitionWindow, work_dir: Path) -> WriteResult:
        what = f"partition {window.partition_key} of {self.ref(EVENTS_TABLE)}"
        staging = None
        parts = []
        try:
            self._ensure_dataset()
            self._ensure_table(EVENTS_TABLE, EVENT_SCHEMA, partition_field="mp_date")
            self._ensure_table(EXPORT_LOG, LOG_SCHEMA)
            parts = self._parts(staged, work_dir, EVENTS_TABLE)
            if parts:
                staging = f"_mp_load_{EVENTS_TABLE}_{uuid.uuid4().hex[:12]}"
                self._create_table(staging, EVENT_LOAD_SCHEMA, expires=True)
                for part in parts:
                    self._load(part.path, staging, EVENT_LOAD_SCHEMA)
                self._check_staging(staging, staged.rows, window)
            removed = self._count(f"SELECT COUNT(*) FROM {self.sql_ref(EVENTS_TABLE)} WHERE {self._in_window(window)}")
            self._run(self._replace_window_sql(staging, window, staged), "replace the window")
        except Exception as exc:
            raise self._fail(what, exc, "the previous rows of the window are unchanged") from exc
        finally:
            self._drop_quietly(staging)
            for part in parts:
                part.path.unlink(missing_ok=True)
        return WriteResult(location=self.location(EVENTS_TABLE), rows=staged.rows, removed=removed,
                           bytes=sum(p.size for p in parts))

    def _in_window(self, window: PartitionWindow) -> str:
        """The window's rows. `time` decides; the mp_date bounds only let BigQuery prune partitions,
        a day wide on each side so rows dated under an earlier timezone setting are found too."""
        tz = window.local_start.tzinfo
        first = window.start.astimezone(tz).date() - dt.timedelta(days=1)
        last = (window.end - dt.timedelta(microseconds=1)).astimezone(tz).date() + dt.timedelta(days=1)
        return (f"mp_date BETWEEN {_date(first)} AND {_date(last)} "
                f"AND time >= {_ts(window.start)} AND time < {_ts(window.end)}")

    def _replace_window_sql(self, staging: str | None, window: PartitionWindow, staged: StagedWindow) -> str:
        table = self.sql_ref(EVENTS_TABLE)
        statements = [f"DELETE FROM {table} WHERE {self._in_window(window)};"]
        if staging is not None:
            columns = ", ".join(n for n, _ in EVENT_SCHEMA)
            values = ", ".join("t" if kind == TIMESTAMP else n for n, kind in EVENT_COLUMNS)
            statements.append(
                f"INSERT INTO {table} ({columns}) "
                f"SELECT {values}, DATE(t, {_str(self.timezone)}) "
                f"FROM (SELECT *, {_EPOCH_MICROS} AS t FROM {self.sql_ref(staging)});"
            )
        statements.append(self._log_sql(EVENTS_TABLE, EVENTS_TABLE, window.partition_key, window.local_date,
                                        window.start, window.end, staged.rows, staged.fingerprint.token()))
        return "BEGIN TRANSACTION;\n" + "\n".join(statements) + "\nCOMMIT TRANSACTION;"

    def _check_staging(self, staging: str, expected: int, window: PartitionWindow) -> None:
        start, end = window.start.timestamp(), window.end.timestamp()
        row = self._row(
            f"SELECT COUNT(*) AS n, COUNTIF(time IS NULL OR time < {start!r} OR time >= {end!r}) AS outside "
            f"FROM {self.sql_ref(staging)}"
        )
        if row["n"] != expected or row["outside"]:
            raise DestinationError(
                f"the staging table {staging} holds {row['n']} rows ({row['outside']} outside the window), "
                f"expected {expected} inside it"
            )

    # --- people and identity mappings --------------------------------------------------------

    def write_table(self, staged: StagedTable, work_dir: Path) -> WriteResult:
        table = staged.table
        view = f"{table}_view"
        new = f"{table}_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
        what = f"{self.ref(view)} (new table {new})"
        parts = []
        swapped = False
        try:
            self._ensure_dataset()
            self._ensure_table(EXPORT_LOG, LOG_SCHEMA)
            self._create_table(new, TABLE_SCHEMAS[table])
            parts = self._parts(staged, work_dir, table)
            for part in parts:
                self._load(part.path, new, TABLE_SCHEMAS[table])
            loaded = self._count(f"SELECT COUNT(*) FROM {self.sql_ref(new)}")
            if loaded != staged.rows:
                raise DestinationError(f"{new} holds {loaded} rows after loading, expected {staged.rows}")
            self._run(f"CREATE OR REPLACE VIEW {self.sql_ref(view)} AS SELECT * FROM {self.sql_ref(new)}",
                      f"point {view} at {new}")
            swapped = True
            self._run(self._log_sql(table, new, None, None, None, None, loaded, staged.digest), "log the export")
            if table == IDENTITY_TABLE:
                self.ensure_resolved_view()
        except Exception as exc:
            if not swapped:
                self._drop_quietly(new)
            state = (f"{view} already shows the new rows; the export log and the resolved view were not updated"
                     if swapped else f"{view} still shows the previous table")
            raise self._fail(what, exc, state) from exc
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)
        removed = self._drop_previous(table, keep=new)
        return WriteResult(location=self.location(new), rows=staged.rows, removed=removed,
                           bytes=sum(p.size for p in parts))

    def ensure_resolved_view(self) -> None:
        """Events with resolved_distinct_id: Mixpanel's documented LEFT JOIN through the mappings view."""
        self._ensure_table(EVENTS_TABLE, EVENT_SCHEMA, partition_field="mp_date")
        self._run(
            f"CREATE OR REPLACE VIEW {self.sql_ref(RESOLVED_VIEW)} AS "
            f"SELECT e.*, COALESCE(m.resolved_distinct_id, e.distinct_id) AS resolved_distinct_id "
            f"FROM {self.sql_ref(EVENTS_TABLE)} e "
            f"LEFT JOIN {self.sql_ref(IDENTITY_TABLE + '_view')} m ON e.distinct_id = m.distinct_id",
            f"create {RESOLVED_VIEW}",
        )

    def _drop_previous(self, table: str, keep: str) -> int:
        """Drop the tables the view pointed at before; a failure here only leaves garbage behind."""
        dropped = 0
        for item in self.client.list_tables(f"{self.project}.{self.dataset}"):
            match = _SUFFIXED.match(item.table_id)
            if match and match["base"] == table and item.table_id != keep:
                try:
                    self.client.delete_table(self.ref(item.table_id), not_found_ok=True)
                    dropped += 1
                except Exception as exc:  # noqa: BLE001 - only leaves an unused table behind
                    self.log.warning(f"pipeline {self.pipeline!r}: could not drop the previous table "
                                     f"{self.ref(item.table_id)}: {_first_line(exc)}")
        return dropped

    # --- reading back (asset checks) -----------------------------------------------------------

    def read_event_window(self, window: PartitionWindow):
        """The window as readers see it; mp_date, our partitioning column, is left out of the columns
        (reported as a problem only where it disagrees with the local date of `time`)."""
        from google.api_core.exceptions import NotFound

        from mixpanel_assets.destinations.base import EventWindowReadback

        location = self.location(EVENTS_TABLE)
        try:
            schema = self.client.get_table(self.ref(EVENTS_TABLE)).schema
        except NotFound:
            return EventWindowReadback(location, 0, 0, 0, [], [f"no table {self.ref(EVENTS_TABLE)}"])
        table, where = self.sql_ref(EVENTS_TABLE), self._in_window(window)
        counts = self._row(f"SELECT COUNT(*) AS n, COUNTIF(mp_date != DATE(time, {_str(self.timezone)})) AS misdated "
                           f"FROM {table} WHERE {where}")
        duplicates = self._row(
            f"SELECT COUNT(*) AS k, IFNULL(SUM(n - 1), 0) AS extra FROM (SELECT COUNT(*) AS n FROM {table} "
            f"WHERE {where} AND {INSERT_ID} IS NOT NULL GROUP BY {', '.join(DEDUP_KEY)} "
            "HAVING COUNT(*) > 1)")
        problems = [f"{counts['misdated']} rows whose mp_date is not the {self.timezone} date of their time"
                    ] if counts["misdated"] else []
        columns = [(f.name, _LOGICAL.get(f.field_type, f.field_type)) for f in schema if f.name != "mp_date"]
        return EventWindowReadback(location, int(counts["n"]), int(duplicates["k"]), int(duplicates["extra"]),
                                   columns, problems)

    def read_table(self, table: str):
        """mp_people_data / mp_identity_mappings_data through their view, as readers query them."""
        from google.api_core.exceptions import NotFound

        from mixpanel_assets.destinations.base import TableReadback

        view = self.sql_ref(f"{table}_view")
        location = self.location(f"{table}_view")
        try:
            schema = self.client.query(f"SELECT * FROM {view} LIMIT 0", timeout=120).result(timeout=self.job_timeout).schema
        except NotFound:
            return TableReadback(location, 0, 0, [], [f"no view {self.ref(table + '_view')}"])
        rows = self._count(f"SELECT COUNT(*) FROM {view}")
        duplicates = self._count(f"SELECT COUNT(*) FROM (SELECT distinct_id FROM {view} GROUP BY distinct_id "
                                 "HAVING COUNT(*) > 1)")
        columns = [(f.name, _LOGICAL.get(f.field_type, f.field_type)) for f in schema]
        return TableReadback(location, rows, duplicates, columns)

    # --- deleting users (GDPR) -----------------------------------------------------------------
    # The distinct_ids are user data. Rather than composing them into SQL text (bqemulator takes no
    # query parameters inside scripts), they are loaded from a file into a table of their own,
    # which expires like a staging table, and joined on: nothing to escape, no query-length limit
    # for thousands of ids, and the ids never appear in the project's query history.

    def delete_event_rows(self, distinct_ids, windows, work_dir, dry_run=False):
        """One grouped count attributes the users' rows to the windows (window_counts.py), then one
        transaction deletes them from all the windows at once: each window is all-or-nothing, and it
        is one DML job instead of one per partition (BigQuery takes seconds per DML job and limits
        their rate per table, and an hourly pipeline has thousands of partitions)."""
        import dataclasses

        from mixpanel_assets.destinations.warehouses.window_counts import bucket_seconds, removals_by_window

        if not windows or not distinct_ids or not self._exists(EVENTS_TABLE):
            return []
        table = self.sql_ref(EVENTS_TABLE)
        span = dataclasses.replace(windows[0], end=windows[-1].end)
        bucket = bucket_seconds(windows)
        ids = None
        try:
            ids = self._load_ids(distinct_ids, Path(work_dir))
            match = f"distinct_id IN (SELECT distinct_id FROM {self.sql_ref(ids)}) AND {self._in_window(span)}"
            counts = self._rows(f"SELECT DIV(UNIX_SECONDS(time), {bucket}) AS b, COUNT(*) AS n FROM {table} "
                                f"WHERE {match} GROUP BY b")
            removals = removals_by_window(windows, counts, bucket, self.location(EVENTS_TABLE))
            if removals and not dry_run:
                self._run(self._delete_sql(table, match, sum(r.rows for r in removals)), "delete the rows")
        except Exception as exc:
            raise self._delete_failed(f"the events of {len(windows)} partitions of {self.ref(EVENTS_TABLE)}",
                                      exc) from exc
        finally:
            self._drop_quietly(ids)
        return removals

    def delete_table_rows(self, table, distinct_ids, work_dir, dry_run=False):
        """Deletes in place from the table the view points at now, rather than copying the other
        rows into a new table and swapping the view as an export does: one DML job instead of a
        copy of every profile, the export log still names the table readers see, and an export
        swapping the view meanwhile is never undone (ours would bring back its predecessor)."""
        from mixpanel_assets.destinations.base import Removal

        current = ids = None
        try:
            current = self._view_target(table) if distinct_ids else None
            if current is None:
                return Removal(table, None, 0, self.location(f"{table}_view"))
            target = self.sql_ref(current)
            ids = self._load_ids(distinct_ids, Path(work_dir))
            among = f"(SELECT distinct_id FROM {self.sql_ref(ids)})"
            match = "(" + " OR ".join(f"{column} IN {among}" for column in USER_COLUMNS[table]) + ")"
            rows = self._count(f"SELECT COUNT(*) FROM {target} WHERE {match}")
            if rows and not dry_run:
                self._run(self._delete_sql(target, match, rows), "delete the rows")
        except Exception as exc:
            raise self._delete_failed(f"{self.ref(current) if current else table} (behind {table}_view)", exc) from exc
        finally:
            self._drop_quietly(ids)
        return Removal(table, None, rows, self.location(current))

    def _exists(self, table: str) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            self.client.get_table(self.ref(table))
        except NotFound:
            return False
        return True

    def _view_target(self, table: str) -> str | None:
        """The suffixed table `<table>_view` reads, None without a view (nothing exported yet).
        INFORMATION_SCHEMA rather than Table.view_query, which bqemulator leaves empty."""
        from google.api_core.exceptions import NotFound

        view = f"{table}_view"
        try:
            found = self._rows(f"SELECT view_definition FROM `{self.project}.{self.dataset}.INFORMATION_SCHEMA.VIEWS` "
                               f"WHERE table_name = {_str(view)}")
        except NotFound:
            return None
        if not found:
            return None
        names = {m["name"] for m in re.finditer(rf"\b(?P<name>{table}_\d{{8}}T\d{{6}}_[0-9a-f]{{6}})\b", found[0][0])}
        if len(names) != 1:
            raise DestinationError(f"{self.ref(view)} does not read one {table}_<time> table written by this "
                                   "exporter (was it changed by hand?)")
        return names.pop()

    def _load_ids(self, distinct_ids, work_dir: Path) -> str:
        """An expiring table holding the ids, loaded from a JSON-lines file; its name."""
        import orjson

        name = f"_mp_gdpr_ids_{uuid.uuid4().hex[:12]}"
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"{name}.json"
        path.write_bytes(b"".join(orjson.dumps({"distinct_id": i}) + b"\n" for i in sorted(distinct_ids)))
        try:
            self._create_table(name, _IDS_SCHEMA, expires=True)
            self._load(path, name, _IDS_SCHEMA)
            loaded = self._count(f"SELECT COUNT(*) FROM {self.sql_ref(name)}")
            if loaded != len(distinct_ids):
                raise DestinationError(f"{name} holds {loaded} distinct_ids after loading, expected {len(distinct_ids)}")
        except BaseException:
            self._drop_quietly(name)
            raise
        finally:
            path.unlink(missing_ok=True)
        return name

    @staticmethod
    def _delete_sql(target: str, match: str, expected: int) -> str:
        """Delete in a transaction that fails (and so rolls back) unless exactly the counted rows
        match when it starts and none are left at its end. ERROR() in a SELECT, not ASSERT, which
        bqemulator does not parse."""
        left = f"(SELECT COUNT(*) FROM {target} WHERE {match})"
        return ("BEGIN TRANSACTION;\n"
                f"SELECT IF({left} != {int(expected)}, ERROR('the rows to delete changed after they were counted "
                "(an export wrote them meanwhile?)'), 0);\n"
                f"DELETE FROM {target} WHERE {match};\n"
                f"SELECT IF({left} != 0, ERROR('rows of the deleted users were left after the DELETE'), 0);\n"
                "COMMIT TRANSACTION;")

    def _delete_failed(self, what: str, exc: Exception) -> DestinationError:
        return DestinationError(
            f"pipeline {self.pipeline!r}: removing deleted users' rows from {what} failed: {type(exc).__name__}: "
            f"{_first_line(exc)}; it is one transaction, so those rows are all still there (rerun the deletion)"
        )

    # --- building blocks ---------------------------------------------------------------------

    def _parts(self, staged: StagedRows, work_dir: Path, table: str) -> list[PartFile]:
        return staged.write_parts(work_dir, fmt="json", compression=self.load_compression, workers=self.workers,
                                  table=table)

    def _ensure_dataset(self) -> None:
        if "dataset" in self._checked:
            return
        from google.api_core.exceptions import NotFound

        try:
            self.client.get_dataset(f"{self.project}.{self.dataset}")
        except NotFound:
            raise permanent(DestinationError(
                f"dataset {self.project}.{self.dataset} does not exist; create it (e.g. `bq mk --dataset "
                f"{self.project}:{self.dataset}`) and grant the export's identity BigQuery Data Owner on it"
            )) from None
        self._checked.add("dataset")

    def _ensure_table(self, table: str, fields, partition_field: str | None = None) -> None:
        """Create the table if missing; refuse one whose columns differ (readers' queries would break)."""
        if table in self._checked:
            return
        from google.api_core.exceptions import NotFound

        try:
            existing = self.client.get_table(self.ref(table))
        except NotFound:
            self._create_table(table, fields, partition_field)
        else:
            found = [(f.name, f.field_type) for f in existing.schema]
            wanted = [(n, _LEGACY_TYPES.get(t, t)) for n, t in fields]
            if [(n, _LEGACY_TYPES.get(t, t)) for n, t in found] != wanted:
                raise permanent(DestinationError(
                    f"{self.ref(table)} exists with columns {found}, not {list(fields)}; it was not created by "
                    "this exporter (or was altered): rename it, or point the pipeline at another dataset"
                ))
        self._checked.add(table)

    def _create_table(self, table: str, fields, partition_field: str | None = None, expires: bool = False) -> None:
        from google.api_core.exceptions import Conflict
        from google.cloud import bigquery

        spec = bigquery.Table(self.ref(table), schema=_schema(fields))
        if partition_field:
            spec.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                                               field=partition_field)
        if expires:
            spec.expires = dt.datetime.now(dt.UTC) + STAGING_EXPIRY
        try:
            self.client.create_table(spec, timeout=60)
        except Conflict:
            if not partition_field:
                raise
            # Another run created it between our check and now: fine.

    def _load(self, path: Path, table: str, fields) -> None:
        """One load job from one part file: a resumable upload read from disk in chunks (no `size=`,
        which would switch to a multipart upload holding the file in memory)."""
        from google.cloud import bigquery

        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON, schema=_schema(fields),
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
        )
        with open(path, "rb") as stream:
            job = self.client.load_table_from_file(stream, self.ref(table), job_config=config, rewind=True,
                                                   timeout=self.job_timeout)
        job.result(timeout=self.job_timeout)

    def _run(self, sql: str, purpose: str):
        job = self.client.query(sql, timeout=120, job_retry=None)
        try:
            return job.result(timeout=self.job_timeout)
        except Exception as exc:
            raise DestinationError(f"could not {purpose}: {_first_line(exc)}") from exc

    def _row(self, sql: str) -> dict:
        rows = list(self.client.query(sql, timeout=120).result(timeout=self.job_timeout))
        return dict(rows[0].items()) if rows else {}

    def _rows(self, sql: str) -> list[tuple]:
        return [tuple(r.values()) for r in self.client.query(sql, timeout=120).result(timeout=self.job_timeout)]

    def _count(self, sql: str) -> int:
        return int(next(iter(self._row(sql).values()), 0) or 0)

    def _log_sql(self, table: str, target: str, partition_key: str | None, partition_date: dt.date | None,
                 start: dt.datetime | None, end: dt.datetime | None, rows: int, fingerprint: str | None) -> str:
        values = [
            "CURRENT_TIMESTAMP()", _str(self.pipeline), _str(table), _str(self.ref(target)), _str(partition_key),
            _date(partition_date) if partition_date else "NULL", _ts(start) if start else "NULL",
            _ts(end) if end else "NULL", str(int(rows)), _str(fingerprint),
        ]
        columns = ", ".join(n for n, _ in LOG_SCHEMA)
        return f"INSERT INTO {self.sql_ref(EXPORT_LOG)} ({columns}) VALUES ({', '.join(values)});"

    def _drop_quietly(self, table: str | None) -> None:
        if table is None:
            return
        try:
            self.client.delete_table(self.ref(table), not_found_ok=True)
        except Exception as exc:  # noqa: BLE001 - the staging table expires by itself
            self.log.warning(f"pipeline {self.pipeline!r}: could not drop {self.ref(table)} "
                             f"(it expires by itself): {_first_line(exc)}")

    def _fail(self, what: str, exc: Exception, state: str) -> DestinationError:
        from google.api_core.exceptions import Forbidden, Unauthorized

        error = DestinationError(
            f"pipeline {self.pipeline!r}: loading {what} failed: {type(exc).__name__}: {_first_line(exc)}; {state}"
        )
        if getattr(exc, "permanent", False) or isinstance(exc, (Forbidden, Unauthorized)):
            permanent(error)
        return error


_LEGACY_TYPES = {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL"}
_LOGICAL = {declared: logical for logical, declared in BIGQUERY.items()}
_IDS_SCHEMA = (("distinct_id", "STRING"),)  # the ids a GDPR deletion removes
