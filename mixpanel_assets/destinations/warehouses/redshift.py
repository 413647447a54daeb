"""Redshift Spectrum: the S3 export, plus the AWS Glue tables Spectrum reads it through.

Files land exactly as with `type: s3` (object_store.py: same layout, same replace protocol), with
one difference: the folder markers are named `_manifest.json` and `_complete`. Spectrum (like
Athena and Hive) reads every file under a table or partition location except names starting with
`_` or `.`, so a visible `manifest.json` would be read as rows.

Glue, in the database you created (as with Mixpanel):

    mp_master_event            Mixpanel's columns (schema.py) in Glue's types (schema.GLUE: string,
                               properties as its JSON text, time double = UTC epoch seconds);
                               partition key mp_date string = the PROJECT-TIMEZONE date (Mixpanel
                               uses the UTC date here; we keep one date rule everywhere), each
                               partition at its day folder .../mp_master_event/YYYY/MM/DD/ (hourly
                               pipelines: the day folder holding the HH folders, read recursively)
    mp_people_data             Mixpanel's columns, at .../mp_people_data/
    mp_identity_mappings_data  Mixpanel's columns, at .../mp_identity_mappings_data/

all JSON SerDe (org.openx.data.jsonserde.JsonSerDe) over gzip JSON lines. The tables are created
or brought up to date before any file is written (a missing database or denied access fails
before S3 changes); after a window's files are in place, its partition is created or re-pointed.

Redshift sees the Glue database through an external schema. Its DDL is printed in the run log;
with `workgroup` set it is also run through the Redshift Data API (once: a Glue table parameter
records that it succeeded), since creating it needs the database's CREATE privilege.

Over ~400 lines because the destination is one module: its config model and the code that opens
it sit here with the Glue catalog code (docs/destinations.md).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mixpanel_assets.destinations.base import (
    EVENTS_TABLE,
    Destination,
    DestinationError,
    WriteResult,
    permanent,
)
from mixpanel_assets.destinations.configs import SQL_NAME, AwsRegion, Float, RoleArn
from mixpanel_assets.destinations.objects.cloud import open_object_store
from mixpanel_assets.destinations.objects.s3 import S3DestinationConfig
from mixpanel_assets.destinations.objects.store import COMPLETE, MANIFEST, Bucket, ObjectStoreDestination
from mixpanel_assets.schema import GLUE, TABLES, typed
from mixpanel_assets.staging.parts import PartFile
from mixpanel_assets.windows import PartitionWindow


class RedshiftDestinationConfig(S3DestinationConfig):
    """Redshift Spectrum: the S3 export (every `type: s3` field applies), plus AWS Glue tables over
    it and the external schema in Redshift. Glue and the Redshift Data API use the S3 credentials
    and `endpoint_url`."""

    type: Literal["redshift"]  # type: ignore[assignment]
    region: AwsRegion | None = None  # AWS's own: it goes into CREATE EXTERNAL SCHEMA
    glue_database: str = Field(pattern=r"^[a-z0-9_]{1,255}$")  # created by you, as with Mixpanel
    glue_region: AwsRegion | None = None  # default: region
    iam_role_arn: RoleArn | None = None  # Redshift's role
    workgroup: str | None = Field(None, pattern=r"^[a-z0-9-]{3,64}$")  # Redshift Serverless: run the DDL there
    redshift_database: str = Field("dev", pattern=SQL_NAME)
    external_schema: str = Field("mp_json_export", pattern=SQL_NAME)
    statement_timeout_seconds: Float = Field(120.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _spectrum_readable(self) -> RedshiftDestinationConfig:
        if self.format != "json" or self.effective_compression not in ("gzip", "none"):
            raise ValueError("Redshift Spectrum tables here read gzip or plain JSON lines (Glue's JSON SerDe): "
                             "use format: json with compression gzip or none")
        if self.workgroup and not self.iam_role_arn:
            raise ValueError("workgroup needs iam_role_arn: CREATE EXTERNAL SCHEMA names the role Redshift reads Glue with")
        return self

    def describe(self) -> str:
        return f"Redshift Spectrum on S3 bucket {self.bucket} (Glue database {self.glue_database})"


def table_location(config: RedshiftDestinationConfig, project_id: int, table: str) -> str:
    return f"{config.glue_database}.{table}"  # the Glue table; Redshift reads it as <external_schema>.<table>

PARTITION_KEY = "mp_date"
SCHEMA_MARKER = "mixpanel_assets.external_schema"  # Glue table parameter: "<workgroup>/<database>/<schema>"
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
COLUMNS = {table: typed(table, GLUE) for table in TABLES}  # the Glue tables' columns, as the JSON SerDe reads the parts
_HIDDEN = {MANIFEST: "_" + MANIFEST, COMPLETE: "_" + COMPLETE}
_SHOWN = {v: k for k, v in _HIDDEN.items()}
_DONE = {"FINISHED", "FAILED", "ABORTED"}


class HiddenMarkersBucket(Bucket):
    """A bucket whose folder markers are stored under names Spectrum skips (`_manifest.json`,
    `_complete`), while the object-store protocol above it keeps using the usual names."""

    def __init__(self, inner: Bucket):
        self.inner = inner

    @staticmethod
    def _stored(key: str) -> str:
        folder, slash, name = key.rpartition("/")
        return folder + slash + _HIDDEN[name] if name in _HIDDEN else key

    @staticmethod
    def _shown(key: str) -> str:
        folder, slash, name = key.rpartition("/")
        return folder + slash + _SHOWN[name] if name in _SHOWN else key

    def uri(self, key: str) -> str:
        return self.inner.uri(self._stored(key))

    def describe(self) -> str:
        return self.inner.describe()

    def upload_file(self, key: str, path: Path, md5: str | None = None) -> None:
        self.inner.upload_file(self._stored(key), path, md5=md5)

    def download_file(self, key: str, path: Path) -> bool:
        return self.inner.download_file(self._stored(key), path)

    def stat_files(self, folder: str):
        return {self._shown(k): v for k, v in self.inner.stat_files(folder).items()}

    def expected_checksum(self, path: Path, md5: str) -> str | None:
        return self.inner.expected_checksum(path, md5)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(self._stored(key), data)

    def get_bytes(self, key: str) -> bytes | None:
        return self.inner.get_bytes(self._stored(key))

    def list_files(self, folder: str) -> list[str]:
        return sorted(self._shown(k) for k in self.inner.list_files(folder))

    def delete(self, keys: list[str]) -> None:
        self.inner.delete([self._stored(k) for k in keys])

    def __getattr__(self, name):  # check_access, client, bucket ...: the S3 adapter's own
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def external_schema_sql(schema: str, glue_database: str, region: str | None, iam_role_arn: str | None) -> str:
    role = iam_role_arn or "<ARN of the IAM role Redshift uses to read Glue and S3>"
    region_clause = f"\nREGION {_literal(region)}" if region else ""
    return (f"CREATE EXTERNAL SCHEMA IF NOT EXISTS {schema}\nFROM DATA CATALOG DATABASE {_literal(glue_database)}"
            f"{region_clause}\nIAM_ROLE {_literal(role)};")


def _literal(value: str) -> str:
    """A SQL string literal; the config model already refuses quotes here, this holds if it ever did not."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def aws_session(config: S3DestinationConfig, keys: dict):
    """A boto3 session with the destination's S3 credentials (keys, profile, assumed role)."""
    import boto3

    session = boto3.Session(aws_access_key_id=keys["access_key_id"], aws_secret_access_key=keys["secret_access_key"],
                            aws_session_token=keys["session_token"], profile_name=config.profile)
    if config.role_arn:
        sts = session.client("sts", region_name=config.region, endpoint_url=config.endpoint_url)
        args = {"RoleArn": config.role_arn, "RoleSessionName": "mixpanel-assets-export", "DurationSeconds": 3600}
        if config.external_id:
            args["ExternalId"] = config.external_id
        creds = sts.assume_role(**args)["Credentials"]
        session = boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                                aws_session_token=creds["SessionToken"])
    return session


def open_destination(config: RedshiftDestinationConfig, context) -> RedshiftSpectrumDestination:
    """The S3 side first (bucket opened, access checked), then the Glue and Data API clients."""
    pipeline = context.pipeline
    store = open_object_store(config, context, lambda: HiddenMarkersBucket(config.open_bucket(pipeline)))
    region = config.glue_region or config.region
    if not region:
        raise permanent(DestinationError(
            f"pipeline {pipeline!r}: set glue_region (or region) for Glue database {config.glue_database!r}"))
    try:
        session = aws_session(config, config.keys(pipeline))
        glue = session.client("glue", region_name=region, endpoint_url=config.endpoint_url)
        data_api = (session.client("redshift-data", region_name=region, endpoint_url=config.endpoint_url)
                    if config.workgroup else None)
    except Exception as exc:
        raise DestinationError(f"pipeline {pipeline!r}: cannot build AWS clients for Glue: "
                               f"{type(exc).__name__}: {_first_line(exc)}") from exc
    return RedshiftSpectrumDestination(
        pipeline, context.project_id, store, glue, config.glue_database, region=region,
        timezone=context.timezone, data_api=data_api, workgroup=config.workgroup,
        redshift_database=config.redshift_database, iam_role_arn=config.iam_role_arn,
        external_schema=config.external_schema, statement_timeout=config.statement_timeout_seconds, log=context.log,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


class RedshiftSpectrumDestination(Destination):
    def __init__(self, pipeline: str, project_id: int, store: ObjectStoreDestination, glue, glue_database: str, *,
                 region: str | None = None, timezone: str = "UTC", data_api=None, workgroup: str | None = None,
                 redshift_database: str = "dev", iam_role_arn: str | None = None,
                 external_schema: str = "mp_json_export", statement_timeout: float = 120.0, log=None):
        super().__init__(pipeline, project_id, log or store.log)
        self.store = store
        self.glue = glue
        self.glue_database = glue_database
        self.region = region
        self.timezone = timezone
        self.data_api = data_api
        self.workgroup = workgroup
        self.redshift_database = redshift_database
        self.iam_role_arn = iam_role_arn
        self.external_schema = external_schema
        self.statement_timeout = statement_timeout
        self.statement_id: str | None = None  # the last external-schema statement sent to the Data API
        self._tables: dict[str, dict] = {}
        self._schema_done = False

    def describe(self) -> str:
        return f"Redshift Spectrum: {self.store.describe()}, Glue database {self.glue_database}"

    def external_schema_sql(self) -> str:
        return external_schema_sql(self.external_schema, self.glue_database, self.region, self.iam_role_arn)

    # --- writes: files first (the object-store protocol), then the catalog ----------------------

    @property
    def parts_format(self):
        return self.store.parts_format

    def write_event_window(self, parts: list[PartFile], window: PartitionWindow, fingerprint: str) -> WriteResult:
        self._ensure_table(EVENTS_TABLE)
        result = self.store.write_event_window(parts, window, fingerprint)
        day = window.local_date.isoformat()
        location = self.store.bucket.uri(self.store.table_folder(EVENTS_TABLE) + "/".join(window.folder_parts()[:3]) + "/")
        try:
            self._put_partition(day, location, window)
        except Exception as exc:
            raise self._fail(f"Glue partition {PARTITION_KEY}={day} of {self.glue_database}.{EVENTS_TABLE} "
                             f"(for partition {window.partition_key})", exc,
                             f"the files of the window are in place at {result.location}; rerun to register them"
                             ) from exc
        self._ensure_external_schema(EVENTS_TABLE)
        return result

    def write_table(self, parts: list[PartFile], table: str, digest: str,
                    duplicate_ids: int | None = None) -> WriteResult:
        self._ensure_table(table)
        result = self.store.write_table(parts, table, digest, duplicate_ids)
        self._ensure_external_schema(table)
        return result

    # --- reading back and deleting (asset checks, GDPR): the data is the S3 files ---------------

    def read_event_window(self, window: PartitionWindow):
        return self.store.read_event_window(window)

    def read_table(self, table: str):
        return self.store.read_table(table)

    def check_event_window(self, window: PartitionWindow, read_back: bool = False):
        return self.store.check_event_window(window, read_back)

    def check_table(self, table: str, read_back: bool = False):
        return self.store.check_table(table, read_back)

    def delete_event_rows(self, distinct_ids, windows, work_dir, dry_run=False):
        return self.store.delete_event_rows(distinct_ids, windows, work_dir, dry_run)

    def delete_table_rows(self, table, distinct_ids, work_dir, dry_run=False):
        return self.store.delete_table_rows(table, distinct_ids, work_dir, dry_run)

    # --- Glue ---------------------------------------------------------------------------------

    def _storage(self, table: str, location: str) -> dict:
        compressed = self.store.compression == "gzip"
        return {
            "Columns": [{"Name": name, "Type": kind} for name, kind in COLUMNS[table]],
            "Location": location,
            "InputFormat": "org.apache.hadoop.mapred.TextInputFormat",
            "OutputFormat": "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            "Compressed": compressed,
            "SerdeInfo": {"SerializationLibrary": JSON_SERDE,
                          "Parameters": {"paths": ",".join(name for name, _ in COLUMNS[table])}},
        }

    def _table_input(self, table: str, parameters: dict | None = None) -> dict:
        location = self.store.bucket.uri(self.store.table_folder(table))
        spec = {
            "Name": table,
            "Description": f"Mixpanel {table} of project {self.project_id}, exported by mixpanel-assets",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "json", "EXTERNAL": "TRUE", "typeOfData": "file",
                           "compressionType": "gzip" if self.store.compression == "gzip" else "none",
                           **({f"{PARTITION_KEY}.timezone": self.timezone} if table == EVENTS_TABLE else {}),
                           **(parameters or {})},
            "StorageDescriptor": self._storage(table, location),
        }
        if table == EVENTS_TABLE:
            spec["PartitionKeys"] = [{"Name": PARTITION_KEY, "Type": "string",
                                      "Comment": f"event date in {self.timezone}, the project timezone"}]
        return spec

    def _ensure_table(self, table: str) -> None:
        """Create the Glue table, or bring its columns, location and SerDe up to date."""
        if table in self._tables:
            return
        wanted = self._table_input(table)
        try:
            try:
                existing = self.glue.get_table(DatabaseName=self.glue_database, Name=table)["Table"]
            except self.glue.exceptions.EntityNotFoundException:
                self._check_database()
                self.glue.create_table(DatabaseName=self.glue_database, TableInput=wanted)
                self._tables[table] = wanted
                return
            if _shape(existing) != _shape(wanted):
                kept = {k: v for k, v in (existing.get("Parameters") or {}).items() if k == SCHEMA_MARKER}
                wanted = self._table_input(table, kept)
                self.glue.update_table(DatabaseName=self.glue_database, TableInput=wanted)
                self.log.info(f"pipeline {self.pipeline!r}: updated Glue table {self.glue_database}.{table} "
                              "(columns, location or SerDe differed)")
                existing = wanted
            self._tables[table] = existing
        except DestinationError:
            raise
        except Exception as exc:
            raise self._fail(f"Glue table {self.glue_database}.{table}", exc,
                             "nothing was written to S3") from exc

    def _check_database(self) -> None:
        try:
            self.glue.get_database(Name=self.glue_database)
        except self.glue.exceptions.EntityNotFoundException:
            raise permanent(DestinationError(
                f"pipeline {self.pipeline!r}: Glue database {self.glue_database!r} does not exist in {self.region}; "
                f"create it (e.g. `aws glue create-database --database-input Name={self.glue_database}`)"
            )) from None

    def _put_partition(self, day: str, location: str, window: PartitionWindow) -> None:
        partition = {
            "Values": [day],
            "StorageDescriptor": self._storage(EVENTS_TABLE, location),
            "Parameters": {"mixpanel_assets.exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "mixpanel_assets.last_partition_key": window.partition_key},
        }
        try:
            self.glue.create_partition(DatabaseName=self.glue_database, TableName=EVENTS_TABLE, PartitionInput=partition)
        except self.glue.exceptions.AlreadyExistsException:
            self.glue.update_partition(DatabaseName=self.glue_database, TableName=EVENTS_TABLE,
                                       PartitionValueList=[day], PartitionInput=partition)

    # --- Redshift -----------------------------------------------------------------------------

    def _ensure_external_schema(self, table: str) -> None:
        if self._schema_done:
            return
        self._schema_done = True
        sql = self.external_schema_sql()
        if not self.workgroup or self.data_api is None:
            self.log.info(f"pipeline {self.pipeline!r}: to query Glue database {self.glue_database!r} from Redshift, "
                          f"run once (as a user with CREATE on the database):\n{sql}")
            return
        marker = f"{self.workgroup}/{self.redshift_database}/{self.external_schema}"
        if (self._tables.get(table, {}).get("Parameters") or {}).get(SCHEMA_MARKER) == marker:
            self.log.info(f"pipeline {self.pipeline!r}: external schema {self.external_schema} exists in workgroup "
                          f"{self.workgroup} (created by an earlier run with):\n{sql}")
            return
        self.log.info(f"pipeline {self.pipeline!r}: creating external schema {self.external_schema} in Redshift "
                      f"workgroup {self.workgroup}, database {self.redshift_database}:\n{sql}")
        status, error = self._execute(sql)
        if status == "FINISHED":
            self._mark_schema(table, marker)
        elif status in ("FAILED", "ABORTED"):
            raise DestinationError(
                f"pipeline {self.pipeline!r}: Redshift workgroup {self.workgroup} {status.lower()} statement "
                f"{self.statement_id} ({self.external_schema} over Glue database {self.glue_database}): {error}; "
                f"the data and the Glue tables are in place")
        else:
            self.log.warning(f"pipeline {self.pipeline!r}: statement {self.statement_id} creating external schema "
                             f"{self.external_schema} is still {status} after {self.statement_timeout:g} s; not "
                             "waiting longer (the next run sends it again)")

    def _execute(self, sql: str) -> tuple[str, str | None]:
        try:
            self.statement_id = self.data_api.execute_statement(
                WorkgroupName=self.workgroup, Database=self.redshift_database, Sql=sql,
                StatementName="mixpanel-assets external schema")["Id"]
            deadline = time.monotonic() + self.statement_timeout
            while True:
                described = self.data_api.describe_statement(Id=self.statement_id)
                status = described.get("Status", "")
                if status in _DONE or time.monotonic() >= deadline:
                    return status, described.get("Error")
                time.sleep(min(1.0, self.statement_timeout / 10))
        except Exception as exc:
            raise self._fail(f"the external schema {self.external_schema} (Redshift workgroup {self.workgroup})",
                             exc, "the data and the Glue tables are in place") from exc

    def _mark_schema(self, table: str, marker: str) -> None:
        try:
            current = self.glue.get_table(DatabaseName=self.glue_database, Name=table)["Table"]
            spec = self._table_input(table, {SCHEMA_MARKER: marker})
            spec["StorageDescriptor"] = current["StorageDescriptor"]
            self.glue.update_table(DatabaseName=self.glue_database, TableInput=spec)
        except Exception as exc:  # noqa: BLE001 - only means the DDL is sent again next time
            self.log.warning(f"could not record the external schema on Glue table {table}: {_first_line(exc)}")

    def _fail(self, what: str, exc: Exception, state: str) -> DestinationError:
        error = DestinationError(f"pipeline {self.pipeline!r}: {what} failed: {type(exc).__name__}: "
                                 f"{_first_line(exc)}; {state}")
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidClientTokenId"):
            permanent(error)
        return error


def _shape(table: dict) -> tuple:
    """What must match for readers: columns, partition keys, location, SerDe."""
    sd = table.get("StorageDescriptor") or {}
    return (
        tuple((c["Name"], c["Type"]) for c in sd.get("Columns", [])),
        tuple((k["Name"], k["Type"]) for k in table.get("PartitionKeys") or []),
        sd.get("Location"),
        (sd.get("SerdeInfo") or {}).get("SerializationLibrary"),
    )
