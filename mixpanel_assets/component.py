"""MixpanelPipelines: this package as a Dagster component, for projects that already run Dagster.

A `defs.yaml` holds what pipelines.yaml holds (`project:` and `pipelines:`), plus an optional
`key_prefix` for when several instances share a code location:

    type: mixpanel_assets.MixpanelPipelines
    attributes:
      project: {id: 1234567, source: {type: demo}}
      pipelines:
        - {name: events_hourly, data_source: events, frequency: hourly, from_date: 2026-11-01,
           destination: {type: local, path: export}}

Validation is the pipelines.yaml validation (config.py), so an error names the defs.yaml, the
pipeline and the field in the words the README uses. Dagster's own schema check of defs.yaml
(`dg check defs`) runs first; the schema given to it documents the fields (the UI's Docs tab,
editor completion) but only rejects wrong types and values, so that misspelt, missing and
inconsistent fields reach the precise messages instead of a generic "not valid under any of the
given schemas".

Relative paths (export folders, DuckDB files, project.state.path, local sources) resolve against
the project root (the folder of pyproject.toml), not the defs.yaml's folder: data stays where it
was when the YAML moves, and stays out of the source tree.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from mixpanel_assets.config import (
    ConfigError,
    PipelineConfig,
    PipelinesFile,
    ProjectConfig,
    parse_pipelines,
    read_yaml_file,
)
from mixpanel_assets.config_checks import check_duplicate_keys
from mixpanel_assets.defs.instance import key_prefix_problem

DEFS_FILE_NAMES = ("defs.yaml", "defs.yml", "component.yaml")
# Keywords that only reject; removed so config.py's messages are the ones a user reads.
_REJECTING_ONLY = {"additionalProperties", "required", "const", "minimum", "maximum", "exclusiveMinimum",
                   "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "pattern"}


def _describe_only(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn the pydantic schema into documentation that rejects only wrong types and values.

    Dates are typeless: YAML reads `2026-11-01` as a date, which a JSON schema "string" refuses.
    """
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {k: walk(v) for k, v in node.items() if k not in _REJECTING_ONLY or k == "properties"}
        if node.get("format") in ("date", "date-time"):
            node.pop("type", None)
        if "oneOf" in node:  # tagged unions (source, destination): let config.py name the wrong tag
            node["anyOf"] = node.pop("oneOf")
            node.pop("discriminator", None)
        return node

    return walk(schema)


class MixpanelPipelinesAttributes(BaseModel):
    """The attributes of a MixpanelPipelines defs.yaml: pipelines.yaml's content plus `key_prefix`."""

    model_config = ConfigDict(extra="allow")

    key_prefix: str | None = Field(
        None, description="Set when several MixpanelPipelines share a code location: every pipeline's asset keys, "
                          "jobs, resources and sensors become '<key_prefix>__<name>', the source resource "
                          "'<key_prefix>__mixpanel'. Leave unset for one instance (names as in pipelines.yaml).")
    # Validated by load() with the file, pipeline and field named; listed here for the schema.
    project: SkipValidation[ProjectConfig] = Field(
        None, description="The Mixpanel project: id, residency, timezone, source (mixpanel | local | demo), "
                          "limits, state. As in pipelines.yaml (README, 'Configuration reference').")
    pipelines: SkipValidation[list[PipelineConfig]] = Field(
        None, description="The pipelines, as in Mixpanel's 'Create Pipeline' form: name, data_source, frequency, "
                          "from_date, to_date, sync, events, where, destination.")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _describe_only(super().model_json_schema(*args, **kwargs))


class MixpanelPipelinesScaffoldParams(BaseModel):
    key_prefix: str | None = None


class MixpanelPipelinesScaffolder(dg.Scaffolder[MixpanelPipelinesScaffoldParams]):
    """Writes a demo configuration that runs with no credentials: demo source, local folder, DuckDB."""

    @classmethod
    def get_scaffold_params(cls) -> type[MixpanelPipelinesScaffoldParams]:
        return MixpanelPipelinesScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[MixpanelPipelinesScaffoldParams]) -> None:
        if request.scaffold_format != "yaml":
            raise dg.DagsterInvariantViolationError("MixpanelPipelines is configured in YAML: scaffold it with "
                                                    "--format yaml")
        key_prefix = request.params.key_prefix if request.params else None
        text = demo_defs_yaml(request.type_name, request.target_path.name, dt.date.today(), key_prefix)
        if request.append:
            with open(request.target_path, "a", encoding="utf-8") as f:
                f.write("---\n" + text)
        else:
            (request.target_path / "defs.yaml").write_text(text, encoding="utf-8")


def demo_defs_yaml(type_name: str, instance: str, today: dt.date, key_prefix: str | None = None) -> str:
    """The scaffolded defs.yaml: two days of demo events to a local folder and to DuckDB, and profiles."""
    folder = f"mixpanel_data/{instance}"
    start = today - dt.timedelta(days=2)
    prefix = f"  key_prefix: {key_prefix}\n" if key_prefix else (
        "  # key_prefix: acme  # set when several MixpanelPipelines share this code location\n")
    return f"""\
# A demo Mixpanel project (synthetic events, no credentials) exported to a local folder laid out
# like Mixpanel's bucket and to DuckDB. For your project, set project.id and
# project.source: {{type: mixpanel}} (service-account credentials from the env vars it names).
# Every field: the mixpanel-assets README, "Configuration reference". Relative paths are
# relative to the project root (the folder of pyproject.toml).
type: {type_name}

attributes:
{prefix}  project:
    id: 1234567
    timezone: UTC
    source:
      type: demo
      events_per_hour: 400
      users: 300
    state:
      path: {folder}/state

  pipelines:
    - name: events_hourly
      data_source: events
      frequency: hourly
      from_date: {start.isoformat()}
      created: {today.isoformat()}
      destination:
        type: local
        path: {folder}/export

    - name: events_daily
      data_source: events
      frequency: daily
      from_date: {start.isoformat()}
      created: {today.isoformat()}
      destination:
        type: duckdb
        path: {folder}/warehouse.duckdb

    - name: people
      data_source: people
      destination:
        type: duckdb
        path: {folder}/warehouse.duckdb

    - name: identity
      data_source: identity
      destination:
        type: duckdb
        path: {folder}/warehouse.duckdb
"""


def defs_file(path: Path) -> Path:
    """The YAML file a component was declared in, for error messages (context.path is its folder)."""
    if path.is_dir():
        for name in DEFS_FILE_NAMES:
            if (path / name).exists():
                return path / name
    return path


def parse_attributes(raw: dict[str, Any], source: str,
                     base_dir: Path | None = None) -> tuple[PipelinesFile, str | None]:
    """defs.yaml attributes -> the validated configuration and key_prefix; errors name `source`.
    `base_dir` (the project root) resolves relative paths, so destinations compare as folders."""
    raw = dict(raw)
    key_prefix = raw.pop("key_prefix", None)
    config = parse_pipelines(raw, source=source, base_dir=base_dir)
    if key_prefix is not None:
        problem = key_prefix_problem(str(key_prefix), config) if isinstance(key_prefix, str) else (
            f"{key_prefix!r} is not a valid key_prefix: use a name such as 'acme'")
        if problem:
            raise ConfigError(f"{source}: field key_prefix: {problem}")
    return config, key_prefix


def load_defs_yaml(path: str | Path) -> tuple[PipelinesFile, str | None]:
    """Read a MixpanelPipelines defs.yaml outside Dagster (the demo CLI, tests)."""
    path = Path(path)
    document = read_yaml_file(path, "the MixpanelPipelines defs.yaml")
    if not isinstance(document, dict) or not isinstance(document.get("attributes"), dict):
        raise ConfigError(f"{path}: expected 'type: mixpanel_assets.MixpanelPipelines' and an 'attributes' mapping")
    return parse_attributes(document["attributes"], str(path), project_root(path))


def project_root(path: Path) -> Path:
    """The folder of the nearest pyproject.toml above `path` (what dg calls the project root)."""
    path = path.resolve()
    return next((p for p in path.parents if (p / "pyproject.toml").is_file()), path.parent)


@dg.scaffold_with(MixpanelPipelinesScaffolder)
class MixpanelPipelines(dg.Component):
    """Mixpanel Data Pipelines, self-hosted: a Mixpanel project's events, user profiles and identity
    mappings exported to local folders, S3, GCS, Azure, BigQuery, Snowflake, Redshift Spectrum or DuckDB.

    The attributes are those of mixpanel-assets' pipelines.yaml (`project:` and `pipelines:`). Each
    pipeline becomes assets keyed `[<pipeline>, mp_master_event | mp_people_data |
    mp_identity_mappings_data]` with hourly or daily partitions, a job, a schedule, the data-sync
    sensor and asset checks. Relative paths resolve against the project root. Set `key_prefix`
    when several instances (several Mixpanel projects) share a code location.
    """

    def __init__(self, config: PipelinesFile, key_prefix: str | None = None, base_dir: Path | None = None):
        self.config = config
        self.key_prefix = key_prefix
        self.base_dir = base_dir

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return MixpanelPipelinesAttributes

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> MixpanelPipelines:
        source = defs_file(context.path)
        if source.is_file():  # dg's YAML reader keeps the last of two equal keys: ours refuses them
            check_duplicate_keys(source)
        source = str(source)
        raw: dict[str, Any] = {}
        if attributes is not None:
            raw = {name: getattr(attributes, name) for name in attributes.model_fields_set}
            raw.update(attributes.model_extra or {})
        config, key_prefix = parse_attributes(raw, source, context.project_root)
        return cls(config, key_prefix, context.project_root)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from mixpanel_assets.defs.build import definitions_for

        base_dir = self.base_dir or context.project_root
        return definitions_for(self.config, Path(base_dir), dt.date.today(), key_prefix=self.key_prefix)
