"""What every destination's config model shares: the base model, object-store options, env var names.

Each destination's own model lives in its module next to its implementation (objects/s3.py holds
S3DestinationConfig and the S3 adapter); registry.py gathers them into the `destination:` union.
Kept free of client libraries: validating pipelines.yaml must not import boto3, google-cloud or
the Snowflake connector (they cost seconds and hundreds of MB while the code location loads).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mixpanel_assets.destinations.base import DestinationError, PartsFormat, permanent

_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HTTP_URL = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # unquoted identifiers only: no quoting rules to get wrong
ROLE_ARN = r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$"


def env_var_name(value: str | None) -> str | None:
    """A field that names an environment variable holding a secret (never the secret itself)."""
    if value is not None and not _ENV_VAR_NAME.match(value):
        raise ValueError(
            "this is not an environment variable name (its value is not repeated here, in case it is a secret); "
            "pipelines.yaml holds the *name* of the variable that carries the secret, never the secret itself"
        )
    return value


def env_secret(pipeline: str, field: str, name: str | None) -> str | None:
    """The secret in the env var `name`, read only when a run opens the destination. A missing
    variable fails without retries and names the variable and the field, never a value."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise permanent(DestinationError(
            f"pipeline {pipeline!r}: destination field {field} names the environment variable {name}, "
            "which is not set in this run's environment"))
    return value


def resolve_under(base_dir: Path, value: str) -> str:
    """A path from pipelines.yaml, relative to the folder of that file."""
    path = Path(value)
    return str(path if path.is_absolute() else (Path(base_dir) / path).resolve())


class DestinationConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def location_key(self) -> tuple:
        """Identifies where data lands; two events pipelines may not share one for the same dates."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def resolved(self, base_dir: Path) -> DestinationConfigBase:
        """This config with paths made absolute (relative to pipelines.yaml); only local files have any."""
        return self

    @property
    def kind(self) -> str:
        return self.type  # type: ignore[attr-defined]


class ObjectStoreConfig(DestinationConfigBase):
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

    @property
    def parts_format(self) -> PartsFormat:
        return PartsFormat(self.format, self.effective_compression, self.max_file_mb << 20)


def object_location(scheme: str, root: str, prefix: str, project_id: int, table: str) -> str:
    """`<scheme>://<root>/[<prefix>/]<project_id>/<table>`: where a table's folder is."""
    return f"{scheme}://" + "/".join(p for p in (root, prefix, str(project_id), table) if p)
