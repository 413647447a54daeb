"""The `destination:` block of a pipeline, one pydantic model per destination type.

Kept free of client libraries: validating pipelines.yaml must not import boto3, google-cloud or
the Snowflake connector (they cost seconds and hundreds of MB while the code location loads).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_var_name(value: str | None) -> str | None:
    """A field that names an environment variable holding a secret (never the secret itself)."""
    if value is not None and not _ENV_VAR_NAME.match(value):
        raise ValueError(
            "this is not an environment variable name (its value is not repeated here, in case it is a secret); "
            "pipelines.yaml holds the *name* of the variable that carries the secret, never the secret itself"
        )
    return value


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def location_key(self) -> tuple:
        """Identifies where data lands; two events pipelines may not share one for the same dates."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        return self.type  # type: ignore[attr-defined]


class _ObjectStoreOptions(_Destination):
    """Options shared by every object store (local folder, S3, GCS, Azure Blob)."""

    prefix: str = ""  # our extension: Mixpanel's paths start at the bucket root
    format: Literal["json", "parquet"] = "json"
    compression: Literal["gzip", "zstd", "none"] | None = None  # default: gzip for json, zstd for parquet
    max_file_mb: int = Field(256, ge=1, le=100_000)  # uncompressed MB per part file

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        value = value.strip("/")
        if ".." in value.split("/"):
            raise ValueError("prefix may not contain '..'")
        return value

    @property
    def effective_compression(self) -> str:
        if self.compression is not None:
            return self.compression
        return "gzip" if self.format == "json" else "zstd"


class LocalDestination(_ObjectStoreOptions):
    """A folder laid out exactly like Mixpanel's bucket."""

    type: Literal["local"]
    path: str

    def location_key(self) -> tuple:
        return ("local", self.path.rstrip("/"), self.prefix)

    def describe(self) -> str:
        return f"local folder {self.path}"


class DuckDBDestination(_Destination):
    """An embedded DuckDB database file holding the three tables."""

    type: Literal["duckdb"]
    path: str
    schema_name: str = Field("main", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def location_key(self) -> tuple:
        return ("duckdb", self.path, self.schema_name)

    def describe(self) -> str:
        return f"DuckDB {self.path} schema {self.schema_name}"


# --- cloud object stores: same layout and options as `local`; secrets only as env var *names* ---

_HTTP_URL = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"


class S3Destination(_ObjectStoreOptions):
    """An S3 bucket, or an S3-compatible store / emulator through `endpoint_url`.

    Credentials: keys from the env vars named here, else `role_arn` assumed with the default
    chain, else the default chain itself (env, profile, instance or task role).
    """

    type: Literal["s3"]
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str | None = None
    endpoint_url: str | None = Field(None, pattern=_HTTP_URL)
    profile: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
    external_id: str | None = None  # the role trust policy's sts:ExternalId condition, if any
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None  # key id/ARN/alias for aws:kms; empty = the account's aws/s3 key

    _check_env = field_validator("access_key_id_env", "secret_access_key_env", "session_token_env")(env_var_name)

    @model_validator(mode="after")
    def _consistent(self) -> S3Destination:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError("access_key_id_env and secret_access_key_env go together: give both or neither")
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id needs server_side_encryption: aws:kms")
        return self

    def location_key(self) -> tuple:
        return ("s3", self.endpoint_url, self.bucket, self.prefix)

    def describe(self) -> str:
        return f"S3 bucket {self.bucket}"


class GCSDestination(_ObjectStoreOptions):
    """A GCS bucket. Credentials: the service-account key in `credentials_env` (its JSON, or the
    path to the key file), else Application Default Credentials."""

    type: Literal["gcs"]
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
    project: str | None = None
    credentials_env: str | None = None
    endpoint_url: str | None = Field(None, pattern=_HTTP_URL)  # emulators: anonymous access

    _check_env = field_validator("credentials_env")(env_var_name)

    def location_key(self) -> tuple:
        return ("gcs", self.endpoint_url, self.bucket, self.prefix)

    def describe(self) -> str:
        return f"GCS bucket {self.bucket}"


class AzureDestination(_ObjectStoreOptions):
    """An Azure Blob container. Credentials (one kind): a service principal (three env vars), an
    account key, a SAS token, a connection string, else DefaultAzureCredential."""

    type: Literal["azure"]
    container: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", min_length=3, max_length=63)
    account: str | None = Field(None, pattern=r"^[a-z0-9]{3,24}$")  # -> https://<account>.blob.core.windows.net
    account_url: str | None = Field(None, pattern=_HTTP_URL)  # instead of account: emulators, other clouds
    connection_string_env: str | None = None
    account_key_env: str | None = None
    sas_token_env: str | None = None
    tenant_id_env: str | None = None
    client_id_env: str | None = None
    client_secret_env: str | None = None

    _check_env = field_validator("connection_string_env", "account_key_env", "sas_token_env", "tenant_id_env",
                                 "client_id_env", "client_secret_env")(env_var_name)

    @model_validator(mode="after")
    def _consistent(self) -> AzureDestination:
        principal = (self.tenant_id_env, self.client_id_env, self.client_secret_env)
        if any(principal) and not all(principal):
            raise ValueError("a service principal needs tenant_id_env, client_id_env and client_secret_env")
        kinds = [bool(self.connection_string_env), bool(self.account_key_env), bool(self.sas_token_env), all(principal)]
        if sum(kinds) > 1:
            raise ValueError("give one kind of credentials: connection_string_env, account_key_env, sas_token_env "
                             "or the service principal's three env vars")
        if self.account and self.account_url:
            raise ValueError("give account or account_url, not both")
        if not (self.account or self.account_url or self.connection_string_env):
            raise ValueError("account (the storage account name) is required unless connection_string_env is given")
        return self

    @property
    def effective_account_url(self) -> str | None:
        if self.account_url:
            return self.account_url.rstrip("/")
        return f"https://{self.account}.blob.core.windows.net" if self.account else None

    def location_key(self) -> tuple:
        return ("azure", self.effective_account_url or self.connection_string_env, self.container, self.prefix)

    def describe(self) -> str:
        where = f" in storage account {self.account}" if self.account else ""
        return f"Azure container {self.container}{where}"


# --- warehouses: BigQuery, Snowflake, Redshift Spectrum (S3 files + AWS Glue catalog) ---

_SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # unquoted identifiers only: no quoting rules to get wrong


class BigQueryDestination(_Destination):
    """A BigQuery dataset you created (as with Mixpanel). Credentials: the service-account key in
    `credentials_env` (its JSON, or the path to the key file), else Application Default Credentials;
    anonymous when `api_endpoint` (an emulator) is set without `credentials_env`."""

    type: Literal["bigquery"]
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9.:-]{2,126}$")
    dataset: str = Field(pattern=r"^[A-Za-z0-9_]{1,1024}$")
    location: str | None = None  # where jobs run, e.g. US, EU, europe-west3 (the dataset's location)
    credentials_env: str | None = None
    api_endpoint: str | None = Field(None, pattern=_HTTP_URL)
    load_compression: Literal["gzip", "none"] = "gzip"  # bytes uploaded per load job
    job_timeout_seconds: float = Field(1800.0, gt=0)

    _check_env = field_validator("credentials_env")(env_var_name)

    def location_key(self) -> tuple:
        return ("bigquery", self.api_endpoint, self.project, self.dataset)

    def describe(self) -> str:
        return f"BigQuery dataset {self.project}.{self.dataset}"


class SnowflakeDestination(_Destination):
    """A Snowflake schema, through dagster-snowflake's SnowflakeResource. Give one secret: the
    password or the private key (PEM text), each as the *name* of its env var."""

    type: Literal["snowflake"]
    account: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # account identifier, e.g. myorg-myaccount
    user: str = Field(min_length=1)
    database: str = Field(pattern=_SQL_NAME)
    schema_name: str = Field(alias="schema", pattern=_SQL_NAME)
    warehouse: str | None = Field(None, pattern=_SQL_NAME)
    role: str | None = Field(None, pattern=_SQL_NAME)
    password_env: str | None = None
    private_key_env: str | None = None
    private_key_password_env: str | None = None
    # Emulators and private endpoints: where the connector connects instead of <account>.snowflakecomputing.com.
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+$")
    port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["https", "http"] = "https"
    network_timeout_seconds: int | None = Field(None, ge=1)
    login_timeout_seconds: int | None = Field(None, ge=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _check_env = field_validator("password_env", "private_key_env", "private_key_password_env")(env_var_name)

    @model_validator(mode="after")
    def _one_secret(self) -> SnowflakeDestination:
        if bool(self.password_env) == bool(self.private_key_env):
            raise ValueError("give exactly one of password_env and private_key_env")
        if self.private_key_password_env and not self.private_key_env:
            raise ValueError("private_key_password_env goes with private_key_env")
        return self

    def location_key(self) -> tuple:
        return ("snowflake", self.host or self.account.lower(), self.database.upper(), self.schema_name.upper())

    def describe(self) -> str:
        return f"Snowflake {self.database}.{self.schema_name} (account {self.account})"


class RedshiftDestination(S3Destination):
    """Redshift Spectrum: the S3 export (every `type: s3` field applies), plus AWS Glue tables over
    it and the external schema in Redshift. Glue and the Redshift Data API use the S3 credentials
    and `endpoint_url`."""

    type: Literal["redshift"]  # type: ignore[assignment]
    glue_database: str = Field(pattern=r"^[a-z0-9_]{1,255}$")  # created by you, as with Mixpanel
    glue_region: str | None = None  # default: region
    iam_role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")  # Redshift's role
    workgroup: str | None = Field(None, pattern=r"^[a-z0-9-]{3,64}$")  # Redshift Serverless: run the DDL there
    redshift_database: str = Field("dev", pattern=_SQL_NAME)
    external_schema: str = Field("mp_json_export", pattern=_SQL_NAME)
    statement_timeout_seconds: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _spectrum_readable(self) -> RedshiftDestination:
        if self.format != "json" or self.effective_compression not in ("gzip", "none"):
            raise ValueError("Redshift Spectrum tables here read gzip or plain JSON lines (Glue's JSON SerDe): "
                             "use format: json with compression gzip or none")
        if self.workgroup and not self.iam_role_arn:
            raise ValueError("workgroup needs iam_role_arn: CREATE EXTERNAL SCHEMA names the role Redshift reads Glue with")
        return self

    def describe(self) -> str:
        return f"Redshift Spectrum on S3 bucket {self.bucket} (Glue database {self.glue_database})"


DestinationConfig = Annotated[
    LocalDestination | DuckDBDestination | S3Destination | GCSDestination | AzureDestination
    | BigQueryDestination | SnowflakeDestination | RedshiftDestination,
    Field(discriminator="type"),
]
