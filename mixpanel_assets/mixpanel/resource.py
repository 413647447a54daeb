"""The source as a Dagster resource: one abstract base, one subclass per kind of source.

Assets and ops ask for `MixpanelSourceResource` and get whichever kind pipelines.yaml names, so
they never branch on the kind, and each kind carries only its own settings (a demo source has no
credentials, an API source no folder). Credentials are `dg.EnvVar` references, resolved only
when a run initialises the resource, so secrets never enter the definitions snapshot, run
config, logs or metadata; the env var *names* are kept too, so an auth error can say which
variables to fix. This module knows nothing of pipelines.yaml: defs/ maps the config to a
resource, which keeps the source the lowest layer after windows.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import dagster as dg

from mixpanel_assets.mixpanel.client import MixpanelClient
from mixpanel_assets.mixpanel.demo import DemoSource
from mixpanel_assets.mixpanel.rate_budget import RateBudget
from mixpanel_assets.mixpanel.sources import EventSource, LocalFilesSource, MixpanelApiSource


class MixpanelSourceResource(dg.ConfigurableResource):
    """Opens the configured source for one run; the settings every kind shares."""

    project_id: int
    timezone: str = "UTC"
    identity_merge: str = "simplified"
    # Per-project state shared by every run (identity links, the API query budget, GDPR register).
    state_path: str
    # Staging and the bad-line policy: how the run parses what the source sends.
    export_workers: int = 2
    staging_dir: str | None = None
    max_bad_fraction: float = 0.001
    max_bad_count: int | None = None

    @abstractmethod
    def open(self, log=None) -> EventSource:
        """A fresh source for one run (the caller closes it); `log` receives rate-budget waits."""


class MixpanelApiSourceResource(MixpanelSourceResource):
    """The real project, through the Raw Event Export API and the Engage API."""

    username: str  # a dg.EnvVar in the definitions ("" with a project secret)
    secret: str  # a dg.EnvVar in the definitions: the service account's secret, or the project secret
    username_env: str  # the *names* of the env vars above, for error messages
    secret_env: str
    project_secret_auth: bool = False  # `secret` is the project's API secret (deprecated by Mixpanel)
    residency: str = "US"
    legacy_project_timezone_dates: bool = False
    export_url: str | None = None
    engage_url: str | None = None
    timeout_seconds: float = 300.0
    max_retries: int = 6
    queries_per_hour: int = 60
    queries_per_second: int = 3

    def rate_budget_path(self, api: str) -> Path:
        """One budget file per API and project, shared by all runs: the limits are per project."""
        return Path(self.state_path) / "rate_budget" / f"{api}_{self.project_id}.json"

    def open(self, log=None) -> EventSource:
        if self.project_secret_auth and log is not None:
            log.warning(f"Mixpanel project {self.project_id} is read with its project secret ({self.secret_env}), which "
                        "Mixpanel accepts only until 2027-03-03: create a service account in the project's settings "
                        "and name its env vars in project.source.credentials (username_env, secret_env) instead")

        def on_wait(api: str, per_hour: int, per_second: int):
            if log is None:
                return None
            return lambda s: log.info(f"{api} budget: waiting {s:.1f} s to stay within "
                                      f"{per_hour} queries/hour, {per_second}/second")

        client = MixpanelClient(
            project_id=self.project_id,
            username=self.username,
            secret=self.secret,
            residency=self.residency,
            export_url=self.export_url,
            engage_url=self.engage_url,
            timeout=self.timeout_seconds,
            max_retries=self.max_retries,
            export_budget=RateBudget(self.rate_budget_path("export"), self.queries_per_hour, self.queries_per_second,
                                     on_wait=on_wait("Export API", self.queries_per_hour, self.queries_per_second)),
            engage_budget=RateBudget(self.rate_budget_path("engage"), 60, 5, on_wait=on_wait("Engage API", 60, 5)),
            credentials_hint=(f"the env var {self.secret_env} (the project secret) named in pipelines.yaml"
                              if self.project_secret_auth else
                              f"the env vars {self.username_env} and {self.secret_env} named in pipelines.yaml"),
            credential_envs=(self.username_env, self.secret_env),
            project_secret_auth=self.project_secret_auth,
        )
        return MixpanelApiSource(client, self.timezone, self.legacy_project_timezone_dates)


class LocalFilesSourceResource(MixpanelSourceResource):
    """A folder of export-format files (absolute paths: defs/ resolves them against pipelines.yaml)."""

    path: str
    profiles_path: str | None = None

    def open(self, log=None) -> EventSource:
        return LocalFilesSource(self.path, self.profiles_path)


class DemoSourceResource(MixpanelSourceResource):
    """Deterministic synthetic events and profiles: the embedded default needs no credentials."""

    seed: int = 42
    events_per_hour: int = 400
    users: int = 300

    def open(self, log=None) -> EventSource:
        return DemoSource(self.seed, self.events_per_hour, self.users, self.project_id)
