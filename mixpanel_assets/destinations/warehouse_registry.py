"""`destination: {type: bigquery|snowflake|redshift}` -> its IO manager and the `dagster/table_name`.

Secrets become `dg.EnvVar` references, resolved only when a run starts: loading definitions reads
no environment and imports no warehouse SDK.
"""

from __future__ import annotations

import dagster as dg

from mixpanel_assets.destinations.base import EVENTS_TABLE, IDENTITY_TABLE, PEOPLE_TABLE
from mixpanel_assets.destinations.configs import BigQueryDestination, RedshiftDestination, SnowflakeDestination
from mixpanel_assets.destinations.io_managers import BigQueryIOManager, RedshiftSpectrumIOManager, SnowflakeIOManager

WAREHOUSES = (BigQueryDestination, SnowflakeDestination, RedshiftDestination)

_SNOWFLAKE_NAMES = {EVENTS_TABLE: "MP_MASTER_EVENT", PEOPLE_TABLE: "MP_PEOPLE_DATA",
                    IDENTITY_TABLE: "MP_IDENTITY_MAPPINGS_DATA"}


def _env(name: str | None):
    return dg.EnvVar(name) if name else None


def warehouse_io_manager(dest, common: dict, timezone: str):
    if isinstance(dest, BigQueryDestination):
        return BigQueryIOManager(
            **common, timezone=timezone, project=dest.project, dataset=dest.dataset, location=dest.location,
            credentials=_env(dest.credentials_env), credentials_env=dest.credentials_env,
            api_endpoint=dest.api_endpoint, load_compression=dest.load_compression,
            job_timeout_seconds=dest.job_timeout_seconds,
        )
    if isinstance(dest, SnowflakeDestination):
        return SnowflakeIOManager(
            **common, timezone=timezone, account=dest.account, user=dest.user, database=dest.database,
            schema_name=dest.schema_name, warehouse=dest.warehouse, role=dest.role,
            password=_env(dest.password_env), private_key=_env(dest.private_key_env),
            private_key_password=_env(dest.private_key_password_env), host=dest.host, port=dest.port,
            protocol=dest.protocol, network_timeout_seconds=dest.network_timeout_seconds,
            login_timeout_seconds=dest.login_timeout_seconds,
        )
    if isinstance(dest, RedshiftDestination):
        from mixpanel_assets.destinations.cloud_registry import _s3_credentials_from

        return RedshiftSpectrumIOManager(
            **common, timezone=timezone, prefix=dest.prefix, format=dest.format,
            compression=dest.effective_compression, max_file_mb=dest.max_file_mb,
            bucket=dest.bucket, region=dest.region, endpoint_url=dest.endpoint_url, profile=dest.profile,
            access_key_id=_env(dest.access_key_id_env), secret_access_key=_env(dest.secret_access_key_env),
            session_token=_env(dest.session_token_env), role_arn=dest.role_arn, external_id=dest.external_id,
            server_side_encryption=dest.server_side_encryption, kms_key_id=dest.kms_key_id,
            credentials_from=_s3_credentials_from(dest), glue_database=dest.glue_database,
            glue_region=dest.glue_region, iam_role_arn=dest.iam_role_arn, workgroup=dest.workgroup,
            redshift_database=dest.redshift_database, external_schema=dest.external_schema,
            statement_timeout_seconds=dest.statement_timeout_seconds,
        )
    raise TypeError(f"not a warehouse destination: {dest.type!r}")


def warehouse_table_location(dest, project_id: int, table: str) -> str:
    """What readers query: BigQuery's people/identity views, Snowflake's events view, the Glue table."""
    if isinstance(dest, BigQueryDestination):
        name = table if table == EVENTS_TABLE else f"{table}_view"
        return f"{dest.project}.{dest.dataset}.{name}"
    if isinstance(dest, SnowflakeDestination):
        return f"{dest.database}.{dest.schema_name}.{_SNOWFLAKE_NAMES[table]}".upper()
    if isinstance(dest, RedshiftDestination):
        return f"{dest.glue_database}.{table}"  # the Glue table; Redshift reads it as <external_schema>.<table>
    raise TypeError(f"not a warehouse destination: {dest.type!r}")
