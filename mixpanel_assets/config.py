"""pipelines.yaml: the one file a user edits, modelled and validated with pydantic.

It mirrors Mixpanel's "Create Pipeline" form (name, data source, frequency, dates, sync,
destination) so people moving off Mixpanel's add-on recognise every field. Validation runs while
the code location loads, so an error here is the first thing a user sees: every message names the
file, the pipeline and the field, and says how to fix it. Nothing here reads the environment;
credentials are *names* of environment variables, resolved only when a run starts. Nothing here
reads the date either: a file valid today stays valid (Mixpanel's backfill limit, which counts
from a date, is checked here only against the pipeline's own `created` date; without one it is
enforced when a run exports, see defs/backfill_limit.py).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixpanel_assets.config_checks import (  # ConfigError and read_yaml_file are imported from here too
    ConfigError,
    Date,
    api_url,
    describe_validation_error,
    read_yaml_file,
)
from mixpanel_assets.destinations.configs import Bool, Float, Int, NonBlank, Text, env_var_name
from mixpanel_assets.destinations.registry import DestinationConfig

PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceAccountCredentials(_Model):
    """Names of the env vars carrying a Mixpanel service account (Export + Engage API auth).

    `project_secret_env` instead names the project's API secret: Mixpanel's older auth, deprecated
    and accepted until 2027-03-03, kept because many existing setups still use it; runs warn."""

    username_env: str = "MIXPANEL_SERVICE_ACCOUNT_USERNAME"
    secret_env: str = "MIXPANEL_SERVICE_ACCOUNT_SECRET"
    project_secret_env: str | None = None

    _check = field_validator("username_env", "secret_env", "project_secret_env")(env_var_name)

    @model_validator(mode="after")
    def _one_kind(self):
        both = {"username_env", "secret_env"} & self.model_fields_set
        if self.project_secret_env is not None and both:
            raise ValueError(f"project_secret_env and {' and '.join(sorted(both))} name two kinds of credentials; "
                             "keep the service account (username_env, secret_env) or the project secret, not both")
        return self


class MixpanelApiSource(_Model):
    """Read the real project through the Raw Event Export API and the Engage API."""

    type: Literal["mixpanel"]
    credentials: ServiceAccountCredentials = ServiceAccountCredentials()
    # Overrides for tests and proxies; normally derived from project.residency.
    export_url: str | None = None
    engage_url: str | None = None
    timeout_seconds: Float = Field(300.0, gt=0, le=86_400)
    max_retries: Int = Field(6, ge=0, le=20)

    _check_urls = field_validator("export_url", "engage_url")(api_url)


class LocalFilesSource(_Model):
    """A folder of export-format JSONL(.gz) files, e.g. saved Export API responses."""

    type: Literal["local"]
    path: Text
    profiles_path: Text | None = None  # JSONL of Engage results ({"$distinct_id", "$properties"})


class DemoSource(_Model):
    """Deterministic synthetic events, so the embedded default runs with no credentials."""

    type: Literal["demo"]
    seed: Int = Field(42, ge=-(2**63), le=2**63 - 1)
    events_per_hour: Int = Field(400, ge=1, le=1_000_000)
    users: Int = Field(300, ge=1, le=1_000_000)  # each is held in memory


SourceConfig = Annotated[MixpanelApiSource | LocalFilesSource | DemoSource, Field(discriminator="type")]


class ExportApiLimits(_Model):
    """Mixpanel's documented Raw Export API limits, enforced client-side across runs."""

    queries_per_hour: Int = Field(60, ge=1, le=1_000_000)
    queries_per_second: Int = Field(3, ge=1, le=1_000)
    max_concurrent: Int = Field(100, ge=1, le=10_000)


class BadLinePolicy(_Model):
    """How many malformed export lines a run tolerates before it fails (they are always reported)."""

    max_fraction: Float = Field(0.001, ge=0, le=1)
    max_count: Int | None = Field(None, ge=0, le=10**15)


class Limits(_Model):
    """Mixpanel's pipeline limits. Self-hosting removes the reason for some; lift them here."""

    enforce_mixpanel_limits: Bool = True
    max_recurring_event_pipelines: Int = Field(2, ge=0, le=1_000)
    max_backfill_months: Int = Field(6, ge=0, le=1_200)  # at most 100 years


class StateConfig(_Model):
    """Where small per-partition state (identity links) lives; shared by all runs of a project."""

    path: Text = ".mixpanel_assets/state"


class StepRetries(_Model):
    """How an export step retries transient failures (429/5xx, a cut stream, a store hiccup).

    Permanent failures (refused credentials, malformed data, a missing bucket) never retry.
    """

    max_retries: Int = Field(3, ge=0, le=20)
    delay_seconds: Float = Field(60, ge=0, le=86_400)  # doubled at each retry, with jitter


class IdentitySettings(_Model):
    """Resources for resolving identity links into mappings (identity.py)."""

    memory_limit_mb: Int = Field(512, ge=64, le=1 << 20)  # DuckDB spills to disk beyond this


class ProjectConfig(_Model):
    id: Int = Field(gt=0, le=2**53 - 1)  # strict: `id: true` is not project 1
    residency: Literal["US", "EU", "IN"] = "US"
    timezone: str = "UTC"
    # Projects created before 2023-01-01 store event times shifted to the project timezone and
    # read the Export API's from_date/to_date in that timezone too.
    legacy_project_timezone_dates: Bool = False
    identity_merge: Literal["simplified", "original"] = "simplified"
    source: SourceConfig
    export_api: ExportApiLimits = ExportApiLimits()
    bad_lines: BadLinePolicy = BadLinePolicy()
    limits: Limits = Limits()
    state: StateConfig = StateConfig()
    export_workers: Int = Field(2, ge=1, le=64)
    step_retries: StepRetries = StepRetries()
    identity: IdentitySettings = IdentitySettings()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as 'UTC' or 'America/Los_Angeles'")
        return value

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class SyncWindow(_Model):
    """Which exported days the data-sync sensor re-checks against the source, and how often.

    Mixpanel's own sync looked at days from 24 h after their export up to 10 days back; late
    mobile data and back-dated imports rarely reach further. `max_age_days: null` checks every
    exported day (each probe then reads the whole exported range with one Export API query).
    """

    min_age_hours: Float = Field(24, ge=0, le=24 * 3_660)  # a day is checked once its newest export is this old
    max_age_days: Int | None = Field(10, ge=1, le=36_600)  # null = any age
    probe_interval_hours: Float = Field(6, gt=0, le=24 * 366)  # how often the source is asked for fingerprints


class ChecksSettings(_Model):
    """How the asset checks prove what the destination holds (object stores; warehouses always
    answer with one query). By default an object-store folder is proved from its manifest and one
    listing of the folder (destinations/objects/at_rest.py), no part downloaded; `read_back: true`
    downloads and re-parses every part of every checked partition, and `read_back_share` does that
    for a share of evaluations, picked by a hash of the run id and the partition key (so repeated
    runs cover different partitions, and one run's choice is reproducible)."""

    read_back: Bool = False
    read_back_share: Float = Field(0.0, ge=0.0, le=1.0)


class PipelineConfig(_Model):
    name: str
    data_source: Literal["events", "people", "identity"]
    frequency: Literal["hourly", "daily"] = "daily"
    from_date: Date | None = None
    to_date: Date | None = None
    # The day the pipeline was set up; anchors the backfill limit. Without it the limit counts from
    # the pipeline's first export (or the run's day), checked when a run exports.
    created: Date | None = None
    sync: Bool = True
    sync_window: SyncWindow | None = None  # events pipelines with sync; default SyncWindow()
    events: tuple[str, ...] | None = None
    where: NonBlank | None = None
    destination: DestinationConfig
    backfill_partitions_per_run: Int | None = Field(None, ge=1, le=10_000)
    # The shrink guard: a run may not remove more than this share of a window's (or table's) rows,
    # nor empty one, since a source that answered short looks exactly like that. 1 turns it off;
    # the run tag mixpanel_assets/allow_shrink=true lifts it for one run (destinations/io_managers.py).
    max_shrink: Float = Field(0.5, ge=0.0, le=1.0)
    checks: ChecksSettings = ChecksSettings()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not PIPELINE_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid pipeline name: use lower-case letters, digits and '_', "
                "starting with a letter (it becomes a Dagster asset key prefix)"
            )
        return value

    @field_validator("events")
    @classmethod
    def _non_empty_events(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or any(not e.strip() for e in value)):
            raise ValueError("the events allow-list must be absent or a list of non-empty event names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.data_source == "events":
            if self.from_date is None:
                raise ValueError("from_date is required for an events pipeline (the first day to export)")
            if self.to_date is not None and self.to_date < self.from_date:
                raise ValueError(f"to_date {self.to_date} is before from_date {self.from_date}")
        else:
            for field in ("events", "where", "sync_window"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field} applies only to events pipelines, not to {self.data_source}")
        if self.sync_window is not None and not self.sync:
            raise ValueError("sync_window applies only when sync is true; remove it or set sync: true")
        return self

    @property
    def recurring(self) -> bool:
        return self.to_date is None

    @property
    def syncs(self) -> bool:
        """True when the data-sync sensor watches this pipeline (events pipelines with sync on)."""
        return self.data_source == "events" and self.sync

    @property
    def effective_sync_window(self) -> SyncWindow:
        return self.sync_window or SyncWindow()


class PipelinesFile(_Model):
    project: ProjectConfig
    pipelines: tuple[PipelineConfig, ...]

    @field_validator("pipelines")
    @classmethod
    def _some_pipelines(cls, value: tuple[PipelineConfig, ...]) -> tuple[PipelineConfig, ...]:
        # Not Field(min_length=1): pydantic checks that on the items that validated, so one bad
        # pipeline also printed "Tuple should have at least 1 item". This runs only when all did.
        if not value:
            raise ValueError("no pipelines: list at least one (name, data_source, destination)")
        return value

    def pipeline(self, name: str) -> PipelineConfig:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        raise KeyError(name)

    @property
    def event_pipelines(self) -> tuple[PipelineConfig, ...]:
        return tuple(p for p in self.pipelines if p.data_source == "events")


def load_pipelines_file(path: str | Path) -> PipelinesFile:
    """Read and validate pipelines.yaml; every error names the file, pipeline and field."""
    path = Path(path)
    raw = read_yaml_file(path, "the pipelines configuration")
    return parse_pipelines(raw, source=str(path), base_dir=path.resolve().parent)


def parse_pipelines(raw: Any, source: str = "pipelines.yaml", base_dir: Path | None = None) -> PipelinesFile:
    """Validate a parsed configuration. `base_dir` is what relative paths resolve against: with it,
    two destinations compare by the folders they resolve to (`export`, `./export`, `/abs/export`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'project' and 'pipelines' at the top level")
    try:
        parsed = PipelinesFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, raw, source, PipelinesFile)) from None
    problems = _cross_pipeline_problems(parsed, base_dir)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return parsed


def _cross_pipeline_problems(parsed: PipelinesFile, base_dir: Path | None = None) -> list[str]:
    problems: list[str] = []
    names = [p.name for p in parsed.pipelines]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"pipeline {name!r}, field name: used by more than one pipeline; names must be unique")
    events = parsed.event_pipelines
    if any(p.data_source == "identity" for p in parsed.pipelines) and not events:
        problems.append(
            "identity pipelines compute mappings from the identity links in exported events; "
            "add an events pipeline for the same project"
        )
    limits = parsed.project.limits
    if not limits.enforce_mixpanel_limits:
        return problems
    lift = "(Mixpanel's limit; set project.limits.enforce_mixpanel_limits: false to lift it)"
    recurring = [p for p in events if p.recurring]
    if len(recurring) > limits.max_recurring_event_pipelines:
        problems.append(
            f"pipelines {[p.name for p in recurring]}: more than {limits.max_recurring_event_pipelines} "
            f"recurring events pipelines (no to_date) {lift}"
        )
    frequencies = [p.frequency for p in recurring]
    if len(frequencies) != len(set(frequencies)):
        problems.append(f"pipelines {[p.name for p in recurring]}, field frequency: recurring events pipelines must have different frequencies {lift}")
    for i, a in enumerate(events):
        for b in events[i + 1 :]:
            shared = _shared_tables(a, b, parsed.project.id, base_dir)
            if shared and _overlap(a, b):
                problems.append(
                    f"pipelines {a.name!r} and {b.name!r}, field destination: both export events to "
                    f"{shared} for overlapping dates {lift}"
                )
    for p in events:
        # Only against `created`: a limit counted from today would make a valid file invalid as
        # time passes. Without `created`, runs enforce it (defs/backfill_limit.py).
        if p.created is not None and p.from_date < months_before(p.created, limits.max_backfill_months):
            problems.append(
                f"pipeline {p.name!r}, field from_date: {p.from_date} is more than {limits.max_backfill_months} months "
                f"before created {p.created} {lift}"
            )
    return problems


def _shared_tables(a: PipelineConfig, b: PipelineConfig, project_id: int, base_dir: Path | None) -> str | None:
    """Where two pipelines' events tables are the same or one inside the other, or None.

    Compared as places, not spellings: paths resolved against `base_dir` (lexically without it),
    prefixes as folders (`a/` is `a`), the table folder `<root>/<prefix>/<project>/<table>` of one
    inside the other's. Folders merely side by side under one root (prefixes `hourly`, `daily`) are fine.
    """
    da, db = (p.destination.resolved(base_dir) if base_dir else p.destination for p in (a, b))
    if da.location_key() != db.location_key():
        return None
    table = (str(project_id), "mp_master_event")
    ta, tb = da.folder() + table, db.folder() + table
    if ta == tb:
        return da.describe()
    if ta[: len(tb)] == tb or tb[: len(ta)] == ta:
        return f"{da.describe()} and {db.describe()}, one table folder inside the other,"
    return None


def _overlap(a: PipelineConfig, b: PipelineConfig) -> bool:
    far = dt.date.max
    return a.from_date <= (b.to_date or far) and b.from_date <= (a.to_date or far)


def months_before(day: dt.date, months: int) -> dt.date:
    """The same day `months` calendar months earlier (the month's last day when it is shorter)."""
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    if year < dt.MINYEAR:
        return dt.date.min  # only reachable past the config's bounds: earlier than any date is the meaning
    month += 1
    for d in (day.day, 30, 29, 28):
        try:
            return dt.date(year, month, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def resolve_path(base_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (base_dir / path).resolve()
