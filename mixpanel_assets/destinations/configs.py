"""The `destination:` block of a pipeline, one pydantic model per destination type.

Kept free of client libraries: validating pipelines.yaml must not import boto3, google-cloud or
the Snowflake connector (they cost seconds and hundreds of MB while the code location loads).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


DestinationConfig = Annotated[
    Union[LocalDestination, DuckDBDestination],
    Field(discriminator="type"),
]
