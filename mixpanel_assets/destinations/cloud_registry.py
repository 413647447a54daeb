"""`destination: {type: s3|gcs|azure}` -> its IO manager and the URI shown as `dagster/table_name`.

Every credential becomes a `dg.EnvVar` reference: nothing is read from the environment while
definitions load, and the secret never enters the definitions snapshot, run config or metadata.
The env var *names* travel along as `credentials_from`, so errors can say where to look.
"""

from __future__ import annotations

import dagster as dg

from mixpanel_assets.destinations.configs import AzureDestination, GCSDestination, S3Destination
from mixpanel_assets.destinations.io_managers import AzureBlobIOManager, GCSIOManager, S3IOManager


def _env(name: str | None):
    return dg.EnvVar(name) if name else None


def _object_store_options(dest) -> dict:
    return {"prefix": dest.prefix, "format": dest.format, "compression": dest.effective_compression,
                "max_file_mb": dest.max_file_mb}


def cloud_io_manager(dest, common: dict):
    options = {**common, **_object_store_options(dest)}
    if isinstance(dest, S3Destination):
        return S3IOManager(
            **options, bucket=dest.bucket, region=dest.region, endpoint_url=dest.endpoint_url, profile=dest.profile,
            access_key_id=_env(dest.access_key_id_env), secret_access_key=_env(dest.secret_access_key_env),
            session_token=_env(dest.session_token_env), role_arn=dest.role_arn, external_id=dest.external_id,
            server_side_encryption=dest.server_side_encryption, kms_key_id=dest.kms_key_id,
            credentials_from=_s3_credentials_from(dest),
        )
    if isinstance(dest, GCSDestination):
        return GCSIOManager(
            **options, bucket=dest.bucket, project=dest.project, credentials=_env(dest.credentials_env),
            credentials_env=dest.credentials_env, endpoint_url=dest.endpoint_url,
        )
    if isinstance(dest, AzureDestination):
        return AzureBlobIOManager(
            **options, container=dest.container, account_url=dest.effective_account_url,
            connection_string=_env(dest.connection_string_env), account_key=_env(dest.account_key_env),
            sas_token=_env(dest.sas_token_env), tenant_id=_env(dest.tenant_id_env),
            client_id=_env(dest.client_id_env), client_secret=_env(dest.client_secret_env),
            credentials_from=_azure_credentials_from(dest),
        )
    raise TypeError(f"not a cloud object store: {dest.type!r}")


def cloud_table_location(dest, project_id: int, table: str) -> str:
    if isinstance(dest, S3Destination):
        scheme, root = "s3", dest.bucket
    elif isinstance(dest, GCSDestination):
        scheme, root = "gs", dest.bucket
    else:
        scheme, root = "az", dest.container
    return f"{scheme}://" + "/".join(p for p in (root, dest.prefix, str(project_id), table) if p)


def _s3_credentials_from(dest: S3Destination) -> str:
    if dest.access_key_id_env:
        base = f"the keys in env vars {dest.access_key_id_env}/{dest.secret_access_key_env}"
    elif dest.profile:
        base = f"AWS profile {dest.profile}"
    else:
        base = "the default AWS credential chain"
    return f"role {dest.role_arn} (assumed with {base})" if dest.role_arn else base


def _azure_credentials_from(dest: AzureDestination) -> str:
    if dest.connection_string_env:
        return f"the connection string in env var {dest.connection_string_env}"
    if dest.account_key_env:
        return f"the account key in env var {dest.account_key_env}"
    if dest.sas_token_env:
        return f"the SAS token in env var {dest.sas_token_env}"
    if dest.client_secret_env:
        return (f"the service principal in env vars {dest.tenant_id_env}/{dest.client_id_env}/"
                f"{dest.client_secret_env}")
    return "DefaultAzureCredential"
