"""The names one configuration gives its Dagster objects, so several can share a code location.

A configuration's asset keys, jobs, schedules, sensors, checks and IO manager keys all derive
from its pipeline names; only the source resource, the GDPR job and the freshness sensor have
fixed names. Two configurations (two Mixpanel projects, or two MixpanelPipelines components) in
one code location would collide on those, and on any pipeline name they share. A `key_prefix`
qualifies every one of them: pipeline `events` becomes `<key_prefix>__events` (asset key
`[<key_prefix>__events, mp_master_event]`, job `<key_prefix>__events_job`, IO manager
`<key_prefix>__events__io_manager`), the source resource `<key_prefix>__mixpanel`. Without a
prefix every name is what it always was.
"""

from __future__ import annotations

from mixpanel_assets.config import PIPELINE_NAME, PipelinesFile

SOURCE_RESOURCE_KEY = "mixpanel"
SEPARATOR = "__"


def qualified(key_prefix: str | None, name: str) -> str:
    return f"{key_prefix}{SEPARATOR}{name}" if key_prefix else name


def key_prefix_problem(key_prefix: str, config: PipelinesFile) -> str | None:
    """Why the prefixed pipeline names would not be valid names, or None."""
    if not PIPELINE_NAME.match(key_prefix) or SEPARATOR in key_prefix:
        return (f"{key_prefix!r} is not a valid key_prefix: use lower-case letters, digits and single '_', "
                "starting with a letter")
    too_long = [p.name for p in config.pipelines if not PIPELINE_NAME.match(qualified(key_prefix, p.name))]
    if too_long:
        return (f"{key_prefix!r} makes the names of pipelines {too_long} longer than 63 characters "
                f"('<key_prefix>{SEPARATOR}<pipeline name>'); shorten the prefix or the names")
    return None


def with_key_prefix(config: PipelinesFile, key_prefix: str | None) -> PipelinesFile:
    """The validated configuration with every pipeline renamed `<key_prefix>__<name>`.

    An unset `project.state.path` becomes `<default>/<key_prefix>`: the state holds the GDPR
    deletion register and identity links of one Mixpanel project, which two projects must not share.
    """
    if not key_prefix:
        return config
    pipelines = tuple(p.model_copy(update={"name": qualified(key_prefix, p.name)}) for p in config.pipelines)
    project = config.project
    if "state" not in project.model_fields_set:
        state = project.state.model_copy(update={"path": f"{project.state.path}/{key_prefix}"})
        project = project.model_copy(update={"state": state})
    return config.model_copy(update={"pipelines": pipelines, "project": project})
