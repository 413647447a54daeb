"""The `destination:` block of a pipeline, one pydantic model per destination type.

Kept free of client libraries: validating pipelines.yaml must not import boto3, google-cloud or
the Snowflake connector (they cost seconds and hundreds of MB while the code location loads).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_VAR_NAME.match(value):
        raise ValueError(
            f"{value!r} is not an environment variable name; pipelines.yaml holds the *name* of the "
            "variable that carries the secret, never the secret itself"
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

    _check_env = field_validator("access_key_id_env", "secret_access_key_env", "session_token_env")(_env_name)

    @model_validator(mode="after")
    def _consistent(self) -> "S3Destination":
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

    _check_env = field_validator("credentials_env")(_env_name)

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
                                 "client_id_env", "client_secret_env")(_env_name)

    @model_validator(mode="after")
    def _consistent(self) -> "AzureDestination":
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


DestinationConfig = Annotated[
    Union[LocalDestination, DuckDBDestination, S3Destination, GCSDestination, AzureDestination],
    Field(discriminator="type"),
]
