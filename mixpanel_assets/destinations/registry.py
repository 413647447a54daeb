"""Every destination type, once: `type` name -> its config model, how to open it, where its tables are.

A destination is one module holding its config model and its implementation (objects/s3.py,
warehouses/bigquery.py, ...); this table is the only other place that names it. config.py builds
the `destination:` union from it, and the one IO manager (io_managers.py) opens destinations
through it. Importing the modules imports no client SDK: they import theirs when a run opens one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from mixpanel_assets.destinations.base import Destination, DestinationContext
from mixpanel_assets.destinations.configs import DestinationConfigBase
from mixpanel_assets.destinations.objects import azure, gcs, local, s3
from mixpanel_assets.destinations.warehouses import bigquery, duckdb, redshift, snowflake


@dataclass(frozen=True)
class DestinationType:
    config: type[DestinationConfigBase]
    open: Callable[[DestinationConfigBase, DestinationContext], Destination]  # when a run writes or reads
    table_location: Callable[[DestinationConfigBase, int, str], str]  # `dagster/table_name` of (project id, table)


DESTINATIONS: dict[str, DestinationType] = {
    "local": DestinationType(local.LocalDestinationConfig, local.open_destination, local.table_location),
    "s3": DestinationType(s3.S3DestinationConfig, s3.open_destination, s3.table_location),
    "gcs": DestinationType(gcs.GCSDestinationConfig, gcs.open_destination, gcs.table_location),
    "azure": DestinationType(azure.AzureDestinationConfig, azure.open_destination, azure.table_location),
    "duckdb": DestinationType(duckdb.DuckDBDestinationConfig, duckdb.open_destination, duckdb.table_location),
    "bigquery": DestinationType(bigquery.BigQueryDestinationConfig, bigquery.open_destination,
                                bigquery.table_location),
    "snowflake": DestinationType(snowflake.SnowflakeDestinationConfig, snowflake.open_destination,
                                 snowflake.table_location),
    "redshift": DestinationType(redshift.RedshiftDestinationConfig, redshift.open_destination,
                                redshift.table_location),
}

DestinationConfig = Annotated[
    Union[tuple(t.config for t in DESTINATIONS.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="type"),
]


def destination_type(config: DestinationConfigBase) -> DestinationType:
    return DESTINATIONS[config.type]  # type: ignore[attr-defined]


def parse_destination(data: dict) -> DestinationConfigBase:
    """A destination config back from its JSON form (as the IO manager holds it)."""
    kind = data.get("type")
    if kind not in DESTINATIONS:
        raise ValueError(f"unknown destination type {kind!r}; known: {', '.join(DESTINATIONS)}")
    return DESTINATIONS[kind].config.model_validate(data)


def open_destination(config: DestinationConfigBase, context: DestinationContext) -> Destination:
    return destination_type(config).open(config, context)


def table_location(config: DestinationConfigBase, project_id: int, table: str, base_dir: Path) -> str:
    """The physical place of a table, for the `dagster/table_name` metadata shown in the catalog."""
    resolved = config.resolved(base_dir)
    return destination_type(resolved).table_location(resolved, project_id, table)
