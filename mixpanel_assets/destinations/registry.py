"""From a pipeline's `destination:` block to its IO manager and the names it shows in the UI."""

from __future__ import annotations

from pathlib import Path

from mixpanel_assets.config import PipelineConfig, ProjectConfig, resolve_path
from mixpanel_assets.destinations.cloud_registry import cloud_io_manager, cloud_table_location
from mixpanel_assets.destinations.configs import (
    AzureDestination,
    DuckDBDestination,
    GCSDestination,
    LocalDestination,
    S3Destination,
)
from mixpanel_assets.destinations.io_managers import DuckDBIOManager, LocalFolderIOManager, MixpanelIOManager
from mixpanel_assets.destinations.warehouse_registry import WAREHOUSES, warehouse_io_manager, warehouse_table_location


def io_manager_key(pipeline: PipelineConfig) -> str:
    return f"{pipeline.name}__io_manager"


def build_io_manager(pipeline: PipelineConfig, project: ProjectConfig, base_dir: Path) -> MixpanelIOManager:
    dest = pipeline.destination
    common = dict(pipeline=pipeline.name, project_id=project.id, workers=project.export_workers)
    if isinstance(dest, LocalDestination):
        return LocalFolderIOManager(
            **common, path=str(resolve_path(base_dir, dest.path)), prefix=dest.prefix, format=dest.format,
            compression=dest.effective_compression, max_file_mb=dest.max_file_mb,
        )
    if isinstance(dest, DuckDBDestination):
        return DuckDBIOManager(**common, path=str(resolve_path(base_dir, dest.path)), schema_name=dest.schema_name)
    if isinstance(dest, WAREHOUSES):  # before S3: a redshift destination is an S3 one plus Glue
        return warehouse_io_manager(dest, common, project.timezone)
    if isinstance(dest, (S3Destination, GCSDestination, AzureDestination)):
        return cloud_io_manager(dest, common)
    raise TypeError(f"no IO manager for destination type {dest.type!r}")


def table_location(pipeline: PipelineConfig, project: ProjectConfig, table: str, base_dir: Path) -> str:
    """The physical place of a table, for the `dagster/table_name` metadata shown in the catalog."""
    dest = pipeline.destination
    if isinstance(dest, LocalDestination):
        root = resolve_path(base_dir, dest.path)
        return "/".join(p for p in (str(root), dest.prefix, str(project.id), table) if p)
    if isinstance(dest, DuckDBDestination):
        return f"{Path(dest.path).stem}.{dest.schema_name}.{table}"
    if isinstance(dest, WAREHOUSES):
        return warehouse_table_location(dest, project.id, table)
    if isinstance(dest, (S3Destination, GCSDestination, AzureDestination)):
        return cloud_table_location(dest, project.id, table)
    raise TypeError(f"no table location for destination type {dest.type!r}")
