"""pipelines.yaml -> the source resource of its kind, and the project's state store.

The mapping lives here, in the Dagster wiring, so the source (mixpanel/resource.py) knows
nothing of the configuration file, and the state store (transform/) stays above the source.
Credentials become `dg.EnvVar` references: nothing is read from the environment while the
definitions load.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mixpanel_assets.config import DemoSource as DemoSourceConfig
from mixpanel_assets.config import LocalFilesSource as LocalSourceConfig
from mixpanel_assets.config import MixpanelApiSource as ApiSourceConfig
from mixpanel_assets.config import ProjectConfig, resolve_path
from mixpanel_assets.mixpanel.resource import (
    DemoSourceResource,
    LocalFilesSourceResource,
    MixpanelApiSourceResource,
    MixpanelSourceResource,
)
from mixpanel_assets.transform.link_store import StateStore


def source_resource(project: ProjectConfig, base_dir: Path) -> MixpanelSourceResource:
    """Build the resource from the validated config; relative paths are relative to pipelines.yaml."""
    src = project.source
    common = dict(
        project_id=project.id,
        timezone=project.timezone,
        identity_merge=project.identity_merge,
        state_path=str(resolve_path(base_dir, project.state.path)),
        export_workers=project.export_workers,
        max_bad_fraction=project.bad_lines.max_fraction,
        max_bad_count=project.bad_lines.max_count,
    )
    if isinstance(src, ApiSourceConfig):
        return MixpanelApiSourceResource(
            **common,
            **_credentials(src.credentials),
            residency=project.residency,
            legacy_project_timezone_dates=project.legacy_project_timezone_dates,
            export_url=src.export_url,
            engage_url=src.engage_url,
            timeout_seconds=src.timeout_seconds,
            max_retries=src.max_retries,
            queries_per_hour=project.export_api.queries_per_hour,
            queries_per_second=project.export_api.queries_per_second,
        )
    if isinstance(src, LocalSourceConfig):
        return LocalFilesSourceResource(
            **common,
            path=str(resolve_path(base_dir, src.path)),
            profiles_path=str(resolve_path(base_dir, src.profiles_path)) if src.profiles_path else None,
        )
    if isinstance(src, DemoSourceConfig):
        return DemoSourceResource(**common, seed=src.seed, events_per_hour=src.events_per_hour, users=src.users)
    raise TypeError(f"no source resource for project.source of type {type(src).__name__}")


def _credentials(credentials) -> dict:
    """The resource's credential fields: env var references (resolved when a run starts) and names."""
    if credentials.project_secret_env is not None:
        return dict(username="", secret=dg.EnvVar(credentials.project_secret_env), username_env="",
                    secret_env=credentials.project_secret_env, project_secret_auth=True)
    return dict(username=dg.EnvVar(credentials.username_env), secret=dg.EnvVar(credentials.secret_env),
                username_env=credentials.username_env, secret_env=credentials.secret_env)


def state_store(source: MixpanelSourceResource) -> StateStore:
    """The project's per-partition identity links, kept where the source resource says state lives."""
    return StateStore(source.state_path)
