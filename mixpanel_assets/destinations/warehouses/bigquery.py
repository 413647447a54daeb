"""BigQuery: Mixpanel's dataset layout, loaded from the staged part files with load jobs.

    mp_master_event                      Mixpanel's seven columns (schema.py: STRING, JSON, TIMESTAMP holding UTC),
                                         ingestion-time partitioned by day, as Mixpanel's table is
    mp_people_data_<suffix>              Mixpanel's columns, behind the view mp_people_data_view
    mp_identity_mappings_data_<suffix>   Mixpanel's columns, behind mp_identity_mappings_data_view
    mp_master_event_resolved             view: events + resolved_distinct_id (COALESCE through the mappings view)
    mp_nessie_export_log                 one row per export: table, partition, window, rows, fingerprint, time

Partitions as Mixpanel's: `_PARTITIONTIME` is the event's date in the project timezone, so
Mixpanel's documented queries (`WHERE DATE(_PARTITIONTIME) >= ...`) run unchanged; they fail on a
column-partitioned table. A window is replaced through its day's partition decorator
(`mp_master_event$YYYYMMDD`), the only way to put rows into a chosen ingestion-time partition
short of DML, and one job that replaces the day atomically without a DELETE scanning it:

1. load the window's part files (newline-delimited JSON, gzip) into a staging table, one load job
   per part, streamed from disk by resumable upload (`time` is loaded as FLOAT64 epoch seconds:
   BigQuery's JSON loader reads TIMESTAMP only from date-time strings),
2. check the staging table: exactly the staged row count, nothing outside the window,
3. one query job, destination `mp_master_event$YYYYMMDD`, WRITE_TRUNCATE: the staged rows with
   `time` made a TIMESTAMP, and for an hour (any window short of the whole day) the day's other
   rows read from the partition itself, so the other hours are kept. A query job rather than a
   load straight into the decorator: one load job takes one file (a window has several parts,
   and a truncate followed by appends would not be atomic), the load cannot turn epoch seconds
   into TIMESTAMP, and the checks of step 2 must pass before the partition is touched. So two
   hours of one day written at once would each rewrite the day without the other's hour: a
   writer's exclusion must cover the day's partition, not only the window,
4. the export log row (a job of its own: a decorator write cannot share a transaction),
5. drop the staging table (it also expires on its own after a day, should the drop fail).

A failure in 1-3 leaves `mp_master_event` as it was. A table made by an earlier version
(partitioned on an `mp_date` column) is refused with the script that migrates it (MIGRATION_SQL).

People and identity mappings are loaded into a new table, checked, then the view is pointed at it
(`CREATE OR REPLACE VIEW`, atomic for readers) and the previous tables are dropped, as Mixpanel does.

The client is google-cloud-bigquery itself rather than dagster-gcp's BigQueryResource: that
resource can neither point at another endpoint (the emulator in tests) nor take a key without
writing it to a temporary file named by a process-wide environment variable.

Over ~400 lines because the destination is one module: its config model, the client and the
export path stay together (docs/destinations.md); reading back and GDPR deletion are in
bigquery_admin.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    IDENTITY_TABLE,
    PEOPLE_TABLE,
    Destination,
    DestinationError,
    PartsFormat,
    WriteResult,
    permanent,
)
from mixpanel_assets.destinations.configs import HTTP_URL, DestinationConfigBase, Float, Text, env_secret, env_var_name
from mixpanel_assets.destinations.warehouses.bigquery_admin import BigQueryAdmin, _first_line, _str
from mixpanel_assets.schema import (
    BIGQUERY,
    EVENT_COLUMNS,
    TIMESTAMP,
    dialect_columns,
    typed,
)
from mixpanel_assets.staging.parts import PartFile
from mixpanel_assets.windows import PartitionWindow


class BigQueryDestinationConfig(DestinationConfigBase):
    """A BigQuery dataset you created (as with Mixpanel). Credentials: the service-account key in
    `credentials_env` (its JSON, or the path to the key file), else Application Default Credentials;
    anonymous when `api_endpoint` (an emulator) is set without `credentials_env`."""

    type: Literal["bigquery"]
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9.:-]{2,126}$")
    dataset: str = Field(pattern=r"^[A-Za-z0-9_]{1,1024}$")
    location: Text | None = None  # where jobs run, e.g. US, EU, europe-west3 (the dataset's location)
    credentials_env: str | None = None
    api_endpoint: str | None = Field(None, pattern=HTTP_URL)
    load_compression: Literal["gzip", "none"] = "gzip"  # bytes uploaded per load job
    job_timeout_seconds: Float = Field(1800.0, gt=0, le=86_400)

    _check_env = field_validator("credentials_env")(env_var_name)

    def location_key(self) -> tuple:
        return ("bigquery", self.api_endpoint, self.project, self.dataset)

    def describe(self) -> str:
        return f"BigQuery dataset {self.project}.{self.dataset}"


def open_destination(config: BigQueryDestinationConfig, context) -> BigQueryDestination:
    credentials = env_secret(context.pipeline, "credentials_env", config.credentials_env)
    client = make_client(config.project, location=config.location, credentials=credentials,
                         credentials_env=config.credentials_env, api_endpoint=config.api_endpoint)
    return BigQueryDestination(context.pipeline, context.project_id, client, config.dataset,
                               timezone=context.timezone, load_compression=config.load_compression,
                               job_timeout=config.job_timeout_seconds, log=context.log)


def table_location(config: BigQueryDestinationConfig, project_id: int, table: str) -> str:
    """What readers query: the events table, the people / identity views."""
    name = table if table == EVENTS_TABLE else f"{table}_view"
    return f"{config.project}.{config.dataset}.{name}"

EXPORT_LOG = "mp_nessie_export_log"
RESOLVED_VIEW = "mp_master_event_resolved"
STAGING_EXPIRY = dt.timedelta(days=1)
BIGQUERY_SCOPE = "https://www.googleapis.com/auth/bigquery"

# (name, type) of what readers see, and of what the part files load into.
EVENT_SCHEMA = dialect_columns("bigquery", EVENTS_TABLE)  # Mixpanel's seven columns
EVENT_LOAD_SCHEMA = typed(EVENTS_TABLE, {**BIGQUERY, TIMESTAMP: "FLOAT64"})  # the part files: `time` in epoch seconds
TABLE_SCHEMAS = {table: dialect_columns("bigquery", table) for table in (PEOPLE_TABLE, IDENTITY_TABLE)}
LOG_SCHEMA = (
    ("exported_at", "TIMESTAMP"), ("pipeline", "STRING"), ("table_name", "STRING"), ("target_table", "STRING"),
    ("partition_key", "STRING"), ("partition_date", "DATE"), ("window_start", "TIMESTAMP"),
    ("window_end", "TIMESTAMP"), ("row_count", "INT64"), ("fingerprint", "STRING"),
)
_SUFFIXED = re.compile(r"^(?P<base>mp_people_data|mp_identity_mappings_data)_\d{8}T\d{6}_[0-9a-f]{6}$")
_EPOCH_MICROS = "TIMESTAMP_MICROS(CAST(ROUND(time * 1000000) AS INT64))"
OLD_PARTITION_COLUMN = "mp_date"  # what earlier versions partitioned mp_master_event on
MIGRATED_SUFFIX = "_by_mp_date"
MIGRATION_SQL = """\
ALTER TABLE `{table}` RENAME TO {name}{suffix};
CREATE TABLE `{table}` ({columns}) PARTITION BY _PARTITIONDATE;
INSERT INTO `{table}` (_PARTITIONTIME, {names})
  SELECT TIMESTAMP({old}), {names} FROM `{table}{suffix}`;"""


def migration_sql(table_ref: str) -> str:
    """The script that turns an mp_date-partitioned mp_master_event (earlier versions) into an
    ingestion-time partitioned one, each row in the partition of its mp_date; the old table is
    kept, renamed, until its owner drops it."""
    return MIGRATION_SQL.format(table=table_ref, name=table_ref.rsplit(".", 1)[-1], suffix=MIGRATED_SUFFIX,
                                columns=", ".join(f"{n} {t}" for n, t in EVENT_SCHEMA), old=OLD_PARTITION_COLUMN,
                                names=", ".join(n for n, _ in EVENT_SCHEMA))


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


def _partition(day: dt.date) -> str:
    """The `_PARTITIONTIME` of a day's partition: midnight UTC of the date."""
    return f"TIMESTAMP '{day.isoformat()}'"


def _covers_day(window: PartitionWindow) -> bool:
    """Whether the window is its local day entire (a daily partition): then nothing else of that
    day's partition is kept."""
    tz = window.local_start.tzinfo
    day = dt.datetime.combine(window.local_date, dt.time(), tz)
    following = dt.datetime.combine(window.local_date + dt.timedelta(days=1), dt.time(), tz)
    return window.start == day.astimezone(dt.UTC) and window.end == following.astimezone(dt.UTC)


class BigQueryDestination(BigQueryAdmin, Destination):
    def __init__(self, pipeline: str, project_id: int, client, dataset: str, *, timezone: str = "UTC",
                 load_compression: str = "gzip", job_timeout: float = 1800.0, log=None):
        super().__init__(pipeline, project_id, log)
        self.client = client
        self.project = client.project
        self.dataset = dataset
        self.timezone = timezone
        self.load_compression = load_compression
        self.job_timeout = job_timeout
        self._checked: set[str] = set()

    def describe(self) -> str:
        return f"BigQuery dataset {self.project}.{self.dataset}"

    @property
    def parts_format(self) -> PartsFormat:
        return PartsFormat("json", self.load_compression)

    def ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def sql_ref(self, table: str) -> str:
        return f"`{self.ref(table)}`"

    def location(self, table: str) -> str:
        return f"bigquery://{self.ref(table)}"

    def close(self) -> None:
        self.client.close()

    # --- events ------------------------------------------------------------------------------

    def write_event_window(self, parts: list[PartFile], window: PartitionWindow, fingerprint: str) -> WriteResult:
        what = f"partition {window.partition_key} of {self.ref(EVENTS_TABLE)}"
        rows = sum(p.rows for p in parts)
        staging = None
        replaced = False
        try:
            self._ensure_dataset()
            self._ensure_table(EVENTS_TABLE, EVENT_SCHEMA, partitioned=True)
            self._ensure_table(EXPORT_LOG, LOG_SCHEMA)
            if parts:
                staging = f"_mp_load_{EVENTS_TABLE}_{uuid.uuid4().hex[:12]}"
                self._create_table(staging, EVENT_LOAD_SCHEMA, expires=True)
                for part in parts:
                    self._load(part.path, staging, EVENT_LOAD_SCHEMA)
                self._check_staging(staging, rows, window)
            removed = self._count(f"SELECT COUNT(*) FROM {self.sql_ref(EVENTS_TABLE)} WHERE {self._replaced(window)}")
            self._replace_partition(staging, window)
            replaced = True
            self._run(self._log_sql(EVENTS_TABLE, EVENTS_TABLE, window.partition_key, window.local_date,
                                    window.start, window.end, rows, fingerprint), "log the export")
        except Exception as exc:
            state = ("the window was replaced, but the export log has no row for it" if replaced
                     else "the previous rows of the window are unchanged")
            raise self._fail(what, exc, state) from exc
        finally:
            self._drop_quietly(staging)
        return WriteResult(location=self.location(EVENTS_TABLE), rows=rows, removed=removed,
                           bytes=sum(p.size for p in parts))

    def _in_window(self, window: PartitionWindow) -> str:
        """The window's rows. `time` decides; the _PARTITIONTIME bounds only let BigQuery prune
        partitions, a day wide on each side so rows dated under an earlier timezone setting are found too."""
        tz = window.local_start.tzinfo
        first = window.start.astimezone(tz).date() - dt.timedelta(days=1)
        last = (window.end - dt.timedelta(microseconds=1)).astimezone(tz).date() + dt.timedelta(days=1)
        return (f"_PARTITIONTIME BETWEEN {_partition(first)} AND {_partition(last)} "
                f"AND time >= {_ts(window.start)} AND time < {_ts(window.end)}")

    def _replaced(self, window: PartitionWindow) -> str:
        """The rows a replace of the window removes: its day's partition entire for a day, the
        window's rows in that partition for an hour."""
        where = f"_PARTITIONTIME = {_partition(window.local_date)}"
        return where if _covers_day(window) else f"{where} AND time >= {_ts(window.start)} AND time < {_ts(window.end)}"

    def _replace_partition(self, staging: str | None, window: PartitionWindow) -> None:
        """One job writing the window's day partition through its decorator with WRITE_TRUNCATE:
        the staged rows, plus (unless the window is the whole day) the partition's rows outside
        the window, read by the same job before it replaces them."""
        from google.cloud import bigquery

        day, table = window.local_date, self.sql_ref(EVENTS_TABLE)
        if (window.end - dt.timedelta(microseconds=1)).astimezone(window.local_start.tzinfo).date() != day:
            raise permanent(DestinationError(f"window {window.partition_key} spans more than its local day {day}"))
        names = ", ".join(n for n, _ in EVENT_COLUMNS)
        selects = []
        if staging is not None:
            values = ", ".join("t AS time" if kind == TIMESTAMP else n for n, kind in EVENT_COLUMNS)
            selects.append(f"SELECT {values} FROM (SELECT *, {_EPOCH_MICROS} AS t FROM {self.sql_ref(staging)})")
        if not _covers_day(window):
            selects.append(f"SELECT {names} FROM {table} WHERE _PARTITIONTIME = {_partition(day)} "
                           f"AND (time < {_ts(window.start)} OR time >= {_ts(window.end)})")
        if not selects:  # an empty day: its partition emptied
            self._run(f"DELETE FROM {table} WHERE _PARTITIONTIME = {_partition(day)}", f"empty the partition of {day}")
            return
        config = bigquery.QueryJobConfig(destination=f"{self.ref(EVENTS_TABLE)}${day:%Y%m%d}",
                                         write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                                         create_disposition=bigquery.CreateDisposition.CREATE_NEVER)
        job = self.client.query("\nUNION ALL\n".join(selects), job_config=config, timeout=120, job_retry=None)
        try:
            job.result(timeout=self.job_timeout)
        except Exception as exc:
            raise DestinationError(f"could not replace the partition {EVENTS_TABLE}${day:%Y%m%d}: "
                                   f"{_first_line(exc)}") from exc

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

    def write_table(self, parts: list[PartFile], table: str, digest: str,
                    duplicate_ids: int | None = None) -> WriteResult:
        rows = sum(p.rows for p in parts)
        view = f"{table}_view"
        new = f"{table}_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
        what = f"{self.ref(view)} (new table {new})"
        swapped = False
        try:
            self._ensure_dataset()
            self._ensure_table(EXPORT_LOG, LOG_SCHEMA)
            self._create_table(new, TABLE_SCHEMAS[table])
            for part in parts:
                self._load(part.path, new, TABLE_SCHEMAS[table])
            loaded = self._count(f"SELECT COUNT(*) FROM {self.sql_ref(new)}")
            if loaded != rows:
                raise DestinationError(f"{new} holds {loaded} rows after loading, expected {rows}")
            self._run(f"CREATE OR REPLACE VIEW {self.sql_ref(view)} AS SELECT * FROM {self.sql_ref(new)}",
                      f"point {view} at {new}")
            swapped = True
            self._run(self._log_sql(table, new, None, None, None, None, loaded, digest), "log the export")
            if table == IDENTITY_TABLE:
                self.ensure_resolved_view()
        except Exception as exc:
            if not swapped:
                self._drop_quietly(new)
            state = (f"{view} already shows the new rows; the export log and the resolved view were not updated"
                     if swapped else f"{view} still shows the previous table")
            raise self._fail(what, exc, state) from exc
        removed = self._drop_previous(table, keep=new)
        return WriteResult(location=self.location(new), rows=rows, removed=removed,
                           bytes=sum(p.size for p in parts))

    def ensure_resolved_view(self) -> None:
        """Events with resolved_distinct_id: Mixpanel's documented LEFT JOIN through the mappings view."""
        self._ensure_table(EVENTS_TABLE, EVENT_SCHEMA, partitioned=True)
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

    # --- building blocks ---------------------------------------------------------------------

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

    def _ensure_table(self, table: str, fields, partitioned: bool = False) -> None:
        """Create the table if missing; refuse one whose columns or partitioning differ (readers'
        queries would break), an events table of an earlier version with its migration."""
        if table in self._checked:
            return
        from google.api_core.exceptions import NotFound

        try:
            existing = self.client.get_table(self.ref(table))
        except NotFound:
            self._create_table(table, fields, partitioned)
        else:
            found = [(f.name, f.field_type) for f in existing.schema]
            if partitioned:
                self._check_partitioning(table, existing, found)
            wanted = [(n, _LEGACY_TYPES.get(t, t)) for n, t in fields]
            if [(n, _LEGACY_TYPES.get(t, t)) for n, t in found] != wanted:
                raise permanent(DestinationError(
                    f"{self.ref(table)} exists with columns {found}, not {list(fields)}; it was not created by "
                    "this exporter (or was altered): rename it, or point the pipeline at another dataset"
                ))
        self._checked.add(table)

    def _check_partitioning(self, table: str, existing, found) -> None:
        """Ingestion-time partitioning by day, nothing else: a migration is not started from a run
        (it rewrites the whole table, billed, and renames it under its readers); the error says
        what to run."""
        partitioning = existing.time_partitioning
        field = partitioning.field if partitioning else None
        if field == OLD_PARTITION_COLUMN or OLD_PARTITION_COLUMN in (name for name, _ in found):
            raise permanent(DestinationError(
                f"{self.ref(table)} was made by an earlier version of this exporter: it is partitioned on the column "
                f"{OLD_PARTITION_COLUMN}, and Mixpanel's table (and its documented _PARTITIONTIME queries) needs "
                "ingestion-time partitions. Migrate it once by running this script in BigQuery "
                f"(`bq query --nouse_legacy_sql < migrate.sql`), then rerun; drop "
                f"{self.ref(table)}{MIGRATED_SUFFIX} after checking its row count against the new table's "
                f"(docs/destinations.md, BigQuery):\n{migration_sql(self.ref(table))}"
            ))
        if partitioning is None or field or (partitioning.type_ or "DAY") != "DAY":
            raise permanent(DestinationError(
                f"{self.ref(table)} exists but is not ingestion-time partitioned by day (found {partitioning}); "
                "Mixpanel's table is: rename it, or point the pipeline at another dataset"
            ))

    def _create_table(self, table: str, fields, partitioned: bool = False, expires: bool = False) -> None:
        from google.api_core.exceptions import Conflict
        from google.cloud import bigquery

        spec = bigquery.Table(self.ref(table), schema=_schema(fields))
        if partitioned:  # by ingestion time, as Mixpanel's: no field
            spec.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY)
        if expires:
            spec.expires = dt.datetime.now(dt.UTC) + STAGING_EXPIRY
        try:
            self.client.create_table(spec, timeout=60)
        except Conflict:
            if not partitioned:
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

        # Our own errors whole (the migration one carries its script); others' first line only.
        detail = str(exc) if isinstance(exc, DestinationError) else _first_line(exc)
        error = DestinationError(
            f"pipeline {self.pipeline!r}: loading {what} failed: {type(exc).__name__}: {detail}; {state}"
        )
        if getattr(exc, "permanent", False) or isinstance(exc, (Forbidden, Unauthorized)):
            permanent(error)
        return error


_LEGACY_TYPES = {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL"}
