"""Dagster IO managers: hand a staged export to its destination and record where it went.

The assets stage data (staging.py); the IO manager of the pipeline's destination loads it. One
base class does the Dagster side (windows, metadata, cleanup); each destination only says how
to build its `Destination` from config. Staged files are removed once the load is done, whether
it succeeded or not.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import dagster as dg

from mixpanel_assets.destinations.base import Destination, WriteResult
from mixpanel_assets.staging.scratch import scratch_folder
from mixpanel_assets.staging.stage import StagedEvents, StagedTable
from mixpanel_assets.windows import PartitionWindow

MAX_URIS_IN_METADATA = 20


class MixpanelIOManager(dg.ConfigurableIOManager):
    pipeline: str
    project_id: int
    workers: int = 2

    @abstractmethod
    def destination(self, log) -> Destination: ...

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        destination = self.destination(context.log)
        try:
            with scratch_folder("parts") as work_dir:
                if isinstance(obj, StagedEvents):
                    results = self._write_events(context, destination, obj, work_dir)
                elif isinstance(obj, StagedTable):
                    results = [destination.write_table(obj, work_dir)]
                else:
                    raise TypeError(f"{type(self).__name__} got {type(obj).__name__}; expected staged Mixpanel data")
        finally:
            obj.cleanup()
            destination.close()
        uris = [u for r in results for u in r.uris]
        context.add_output_metadata({
            "destination": destination.describe(),
            "rows_written": sum(r.rows for r in results),
            "bytes_written": sum(r.bytes for r in results),
            "locations": dg.MetadataValue.json(sorted({r.location for r in results})[:MAX_URIS_IN_METADATA]),
            "output_uris": dg.MetadataValue.json(uris[:MAX_URIS_IN_METADATA]),
            "output_files": len(uris),
            "replaced": sum(r.removed for r in results),
        })

    def _write_events(self, context, destination: Destination, staged: StagedEvents, work_dir: Path) -> list[WriteResult]:
        results = []
        for window in staged.windows:
            info = window.partition
            if not isinstance(info, PartitionWindow):
                raise TypeError(f"staged window {window.partition_key!r} was not staged from a partition window")
            result = destination.write_event_window(window, info, work_dir)
            context.log.info(
                f"{self.pipeline}: partition {info.partition_key}: {result.rows} rows -> {result.location}"
            )
            results.append(result)
        return results

    def load_input(self, context: dg.InputContext):
        raise NotImplementedError(
            f"{type(self).__name__} stores Mixpanel exports for other tools to read; read them from the destination "
            "(folders, tables) instead of as a Dagster input"
        )


class LocalFolderIOManager(MixpanelIOManager):
    """Mixpanel's bucket layout in a local folder."""

    path: str
    prefix: str = ""
    format: str = "json"
    compression: str = "gzip"
    max_file_mb: int = 256

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.objects.local import LocalBucket
        from mixpanel_assets.destinations.objects.store import ObjectStoreDestination

        return ObjectStoreDestination(
            self.pipeline, self.project_id, LocalBucket(self.path), prefix=self.prefix, fmt=self.format,
            compression=self.compression, max_file_mb=self.max_file_mb, workers=self.workers, log=log,
        )


class DuckDBIOManager(MixpanelIOManager):
    """The three tables in an embedded DuckDB database."""

    path: str
    schema_name: str = "main"

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.warehouses.duckdb import DuckDBDestination

        return DuckDBDestination(self.pipeline, self.project_id, self.path, self.schema_name, self.workers, log)


class _CloudObjectStoreIOManager(MixpanelIOManager):
    """S3, GCS and Azure Blob: the local folder's layout and replace protocol over a cloud client.

    The client is built, and its SDK imported, only when a run writes; credential fields hold
    dg.EnvVar references that Dagster resolves at that moment. Bucket access is checked once
    before any part is written, and a missing bucket, denied access or rejected credentials fail
    the step without retries (see destinations/cloud.py).
    """

    prefix: str = ""
    format: str = "json"
    compression: str = "gzip"
    max_file_mb: int = 256
    credentials_from: str = ""  # where credentials come from (env var *names*), for error messages

    @abstractmethod
    def open_bucket(self): ...

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.objects.cloud import open_destination

        return open_destination(self, log)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        from mixpanel_assets.destinations.objects.cloud import permanent_failures

        with permanent_failures(obj):
            super().handle_output(context, obj)


class S3IOManager(_CloudObjectStoreIOManager):
    """Mixpanel's bucket layout in S3, through dagster-aws' S3Resource client."""

    bucket: str
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    role_arn: str | None = None
    external_id: str | None = None
    server_side_encryption: str | None = None
    kms_key_id: str | None = None

    def open_bucket(self):
        from mixpanel_assets.destinations.objects.s3 import S3Bucket

        return S3Bucket.connect(
            self.bucket, region=self.region, endpoint_url=self.endpoint_url, profile=self.profile,
            access_key_id=self.access_key_id, secret_access_key=self.secret_access_key,
            session_token=self.session_token, role_arn=self.role_arn, external_id=self.external_id,
            credentials_from=self.credentials_from or "the default AWS credential chain",
            server_side_encryption=self.server_side_encryption, kms_key_id=self.kms_key_id,
        )


class GCSIOManager(_CloudObjectStoreIOManager):
    """Mixpanel's bucket layout in GCS, through dagster-gcp's GCSResource client (or a key / emulator)."""

    bucket: str
    project: str | None = None
    credentials: str | None = None  # service-account key JSON or path, from the env var credentials_env
    credentials_env: str | None = None
    endpoint_url: str | None = None

    def open_bucket(self):
        from mixpanel_assets.destinations.objects.gcs import GCSBucket

        return GCSBucket.connect(self.bucket, project=self.project, credentials=self.credentials,
                                 credentials_env=self.credentials_env, endpoint_url=self.endpoint_url)


class AzureBlobIOManager(_CloudObjectStoreIOManager):
    """Mixpanel's bucket layout in an Azure Blob container."""

    container: str
    account_url: str | None = None
    connection_string: str | None = None
    account_key: str | None = None
    sas_token: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None

    def open_bucket(self):
        from mixpanel_assets.destinations.objects.azure import AzureBlobBucket

        return AzureBlobBucket.connect(
            self.container, account_url=self.account_url, connection_string=self.connection_string,
            account_key=self.account_key, sas_token=self.sas_token, tenant_id=self.tenant_id,
            client_id=self.client_id, client_secret=self.client_secret,
            credentials_from=self.credentials_from or "DefaultAzureCredential",
        )


# --- warehouses: BigQuery, Snowflake, Redshift Spectrum (destinations/bigquery.py, snowflake.py, redshift.py) ---


class _WarehouseIOManager(MixpanelIOManager):
    """Removes the staged data also when the warehouse client cannot even be built (bad key, typo),
    which the base class does only once writing has started; fails without step retries on errors
    the destination marks `permanent` (a missing dataset does not appear by waiting)."""

    timezone: str = "UTC"  # the project's: partition dates and clustering keys use it

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        try:
            super().handle_output(context, obj)
        except Exception as exc:
            cleanup = getattr(obj, "cleanup", None)
            if cleanup is not None:
                cleanup()
            if getattr(exc, "permanent", False):
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            raise


class BigQueryIOManager(_WarehouseIOManager):
    """Mixpanel's BigQuery tables in one dataset, loaded by load jobs from the part files."""

    project: str
    dataset: str
    location: str | None = None
    credentials: str | None = None  # service-account key JSON or path, from the env var credentials_env
    credentials_env: str | None = None
    api_endpoint: str | None = None
    load_compression: str = "gzip"
    job_timeout_seconds: float = 1800.0

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.warehouses.bigquery import BigQueryDestination, make_client

        client = make_client(self.project, location=self.location, credentials=self.credentials,
                             credentials_env=self.credentials_env, api_endpoint=self.api_endpoint)
        return BigQueryDestination(self.pipeline, self.project_id, client, self.dataset, timezone=self.timezone,
                                   load_compression=self.load_compression, job_timeout=self.job_timeout_seconds,
                                   workers=self.workers, log=log)


class SnowflakeIOManager(_WarehouseIOManager):
    """Mixpanel's Snowflake tables in one schema, loaded by PUT + COPY INTO through dagster-snowflake's
    SnowflakeResource (built when a run writes, so the connector is not imported while definitions load)."""

    account: str
    user: str
    database: str
    schema_name: str
    warehouse: str | None = None
    role: str | None = None
    password: str | None = None  # from the env var password_env
    private_key: str | None = None  # from the env var private_key_env
    private_key_password: str | None = None
    host: str | None = None
    port: int | None = None
    protocol: str = "https"
    network_timeout_seconds: int | None = None
    login_timeout_seconds: int | None = None

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.warehouses.snowflake import SnowflakeDestination, snowflake_resource

        resource = snowflake_resource(
            account=self.account, user=self.user, database=self.database, schema=self.schema_name,
            warehouse=self.warehouse, role=self.role, password=self.password, private_key=self.private_key,
            private_key_password=self.private_key_password, host=self.host, port=self.port, protocol=self.protocol,
            network_timeout=self.network_timeout_seconds, login_timeout=self.login_timeout_seconds,
        )
        return SnowflakeDestination(self.pipeline, self.project_id, resource, self.database, self.schema_name,
                                    timezone=self.timezone, workers=self.workers, log=log)


class RedshiftSpectrumIOManager(S3IOManager):
    """The S3 export plus the AWS Glue tables Redshift Spectrum reads, and the external schema DDL."""

    timezone: str = "UTC"
    glue_database: str
    glue_region: str | None = None
    iam_role_arn: str | None = None
    workgroup: str | None = None
    redshift_database: str = "dev"
    external_schema: str = "mp_json_export"
    statement_timeout_seconds: float = 120.0

    def open_bucket(self):
        from mixpanel_assets.destinations.warehouses.redshift import HiddenMarkersBucket

        return HiddenMarkersBucket(super().open_bucket())

    def destination(self, log) -> Destination:
        from mixpanel_assets.destinations.warehouses.redshift import open_spectrum_destination

        return open_spectrum_destination(self, super().destination(log), log)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        try:
            super().handle_output(context, obj)  # also removes the staged data on failures
        except Exception as exc:
            if getattr(exc, "permanent", False):  # e.g. a missing Glue database
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            raise
