"""The Mixpanel source as a Dagster resource: built from pipelines.yaml, credentials via EnvVar.

Credentials are `dg.EnvVar` references, resolved only when a run initialises the resource, so
secrets never enter the definitions snapshot, run config, logs or metadata.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mixpanel_assets.config import DemoSource as DemoSourceConfig
from mixpanel_assets.config import LocalFilesSource as LocalSourceConfig
from mixpanel_assets.config import MixpanelApiSource as ApiSourceConfig
from mixpanel_assets.config import ProjectConfig, resolve_path
from mixpanel_assets.mixpanel.sources import EventSource
from mixpanel_assets.transform.link_store import StateStore


class MixpanelSourceResource(dg.ConfigurableResource):
    """Opens the configured source (Mixpanel APIs, local files or demo data) for one run."""

    project_id: int
    kind: str  # "mixpanel" | "local" | "demo"
    residency: str = "US"
    timezone: str = "UTC"
    legacy_project_timezone_dates: bool = False
    identity_merge: str = "simplified"
    state_path: str
    # mixpanel
    username: str | None = None
    secret: str | None = None
    username_env: str | None = None  # the *names* of the env vars above, for error messages
    secret_env: str | None = None
    export_url: str | None = None
    engage_url: str | None = None
    timeout_seconds: float = 300.0
    max_retries: int = 6
    queries_per_hour: int = 60
    queries_per_second: int = 3
    # local
    path: str | None = None
    profiles_path: str | None = None
    # demo
    seed: int = 42
    events_per_hour: int = 400
    users: int = 300
    # staging and policy
    export_workers: int = 2
    staging_dir: str | None = None
    max_bad_fraction: float = 0.001
    max_bad_count: int | None = None

    def state(self) -> StateStore:
        return StateStore(self.state_path)

    def rate_budget_path(self, api: str) -> Path:
        return Path(self.state_path) / "rate_budget" / f"{api}_{self.project_id}.json"

    def open(self, log=None) -> EventSource:
        if self.kind == "demo":
            from mixpanel_assets.mixpanel.demo import DemoSource

            return DemoSource(self.seed, self.events_per_hour, self.users, self.project_id)
        if self.kind == "local":
            from mixpanel_assets.mixpanel.sources import LocalFilesSource

            return LocalFilesSource(self.path, self.profiles_path)
        if self.kind == "mixpanel":
            from mixpanel_assets.mixpanel.client import MixpanelClient
            from mixpanel_assets.mixpanel.rate_budget import RateBudget
            from mixpanel_assets.mixpanel.sources import MixpanelApiSource

            def on_wait(api: str, per_hour: int, per_second: int):
                if log is None:
                    return None
                return lambda s: log.info(f"{api} budget: waiting {s:.1f} s to stay within "
                                          f"{per_hour} queries/hour, {per_second}/second")
            client = MixpanelClient(
                project_id=self.project_id,
                username=self.username or "",
                secret=self.secret or "",
                residency=self.residency,
                export_url=self.export_url,
                engage_url=self.engage_url,
                timeout=self.timeout_seconds,
                max_retries=self.max_retries,
                export_budget=RateBudget(self.rate_budget_path("export"), self.queries_per_hour, self.queries_per_second,
                                         on_wait=on_wait("Export API", self.queries_per_hour, self.queries_per_second)),
                engage_budget=RateBudget(self.rate_budget_path("engage"), 60, 5, on_wait=on_wait("Engage API", 60, 5)),
                credentials_hint=f"the env vars {self.username_env} and {self.secret_env} named in pipelines.yaml",
            )
            return MixpanelApiSource(client, self.timezone, self.legacy_project_timezone_dates)
        raise ValueError(f"unknown source kind {self.kind!r}")


def source_resource(project: ProjectConfig, base_dir: Path) -> MixpanelSourceResource:
    """Build the resource from the validated config; relative paths are relative to pipelines.yaml."""
    src = project.source
    common = dict(
        project_id=project.id,
        kind=src.type,
        residency=project.residency,
        timezone=project.timezone,
        legacy_project_timezone_dates=project.legacy_project_timezone_dates,
        identity_merge=project.identity_merge,
        state_path=str(resolve_path(base_dir, project.state.path)),
        queries_per_hour=project.export_api.queries_per_hour,
        queries_per_second=project.export_api.queries_per_second,
        export_workers=project.export_workers,
        max_bad_fraction=project.bad_lines.max_fraction,
        max_bad_count=project.bad_lines.max_count,
    )
    if isinstance(src, ApiSourceConfig):
        return MixpanelSourceResource(
            **common,
            username=dg.EnvVar(src.credentials.username_env),
            secret=dg.EnvVar(src.credentials.secret_env),
            username_env=src.credentials.username_env,
            secret_env=src.credentials.secret_env,
            export_url=src.export_url,
            engage_url=src.engage_url,
            timeout_seconds=src.timeout_seconds,
            max_retries=src.max_retries,
        )
    if isinstance(src, LocalSourceConfig):
        return MixpanelSourceResource(
            **common,
            path=str(resolve_path(base_dir, src.path)),
            profiles_path=str(resolve_path(base_dir, src.profiles_path)) if src.profiles_path else None,
        )
    if isinstance(src, DemoSourceConfig):
        return MixpanelSourceResource(**common, seed=src.seed, events_per_hour=src.events_per_hour, users=src.users)
    raise TypeError(src)
