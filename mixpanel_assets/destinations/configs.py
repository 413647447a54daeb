"""What every destination's config model shares: the base model, object-store options, env var names.

Each destination's own model lives in its module next to its implementation (objects/s3.py holds
S3DestinationConfig and the S3 adapter); registry.py gathers them into the `destination:` union.
Kept free of client libraries: validating pipelines.yaml must not import boto3, google-cloud or
the Snowflake connector (they cost seconds and hundreds of MB while the code location loads).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, Strict, field_validator

from mixpanel_assets.destinations.base import DestinationError, PartsFormat, permanent

_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HTTP_URL = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # unquoted identifiers only: no quoting rules to get wrong
# IAM's own character set for role paths and names: nothing that needs quoting in SQL or a policy.
ROLE_ARN = r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,576}$"
AWS_REGION = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"  # us-east-1, eu-central-1, us-gov-west-1


def _no_edge_spaces(value: str) -> str:
    if value != value.strip():
        raise ValueError("starts or ends with spaces; remove them (a path, name or URL never does)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give a value or leave the field out")
    return value


def _aws_region(value: str) -> str:
    if not re.match(AWS_REGION, value):
        raise ValueError(f"{value!r} is not an AWS region such as us-east-1 or eu-central-1")
    return value


def _role_arn(value: str) -> str:
    if not re.match(ROLE_ARN, value):
        raise ValueError("not an IAM role ARN such as arn:aws:iam::123456789012:role/mixpanel-export "
                         "(letters, digits and +=,.@_-/ after 'role/')")
    return value


AwsRegion = Annotated[str, AfterValidator(_aws_region)]
RoleArn = Annotated[str, AfterValidator(_role_arn)]

# The types of pipelines.yaml's fields. Strict: YAML `true` is not the number 1, `1.5` is not 1 and
# "42" is not 42; a value of the wrong type is a mistake to name, not to convert. Numbers are finite
# (`.inf` / `.nan` are YAML floats too).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Field(min_length=1), AfterValidator(_no_edge_spaces)]  # non-empty, no edge spaces
NonBlank = Annotated[str, AfterValidator(_not_blank)]  # not empty nor only spaces (a `|` block ends with "\n")


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
        """Identifies the store data lands in (a bucket, a database schema); with folder(), where."""
        raise NotImplementedError

    def folder(self) -> tuple[str, ...]:
        """The folder, as path segments, under which this destination keeps its tables in the store
        of location_key(); two events pipelines whose table folders are equal or nested overlap."""
        return ()

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
    max_file_mb: Int = Field(256, ge=1, le=100_000)  # uncompressed MB per part file

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        """One spelling per folder: `a/`, `/a`, `a//b` and `./a` name the folders `a` and `a/b`."""
        segments = [s for s in value.split("/") if s not in ("", ".")]
        if ".." in segments:
            raise ValueError("prefix may not contain '..'")
        if any(s != s.strip() for s in segments):
            raise ValueError("a folder name in prefix starts or ends with spaces; remove them")
        return "/".join(segments)

    def folder(self) -> tuple[str, ...]:
        return tuple(self.prefix.split("/")) if self.prefix else ()

    @property
    def effective_compression(self) -> str:
        if self.compression is not None:
            return self.compression
        return "gzip" if self.format == "json" else "zstd"

    @property
    def parts_format(self) -> PartsFormat:
        return PartsFormat(self.format, self.effective_compression, self.max_file_mb << 20)


def path_segments(value: str) -> tuple[str, ...]:
    """A filesystem path as its segments, spelled one way (`export`, `./export/` and `export//` agree)."""
    return PurePosixPath(os.path.normpath(value)).parts


def object_location(scheme: str, root: str, prefix: str, project_id: int, table: str) -> str:
    """`<scheme>://<root>/[<prefix>/]<project_id>/<table>`: where a table's folder is."""
    return f"{scheme}://" + "/".join(p for p in (root, prefix, str(project_id), table) if p)
