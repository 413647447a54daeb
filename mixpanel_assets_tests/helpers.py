"""Small builders shared by the tests: pipelines.yaml files, runs, and readers of what was written."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import orjson
import yaml

from mixpanel_assets.defs.build import build_definitions
from mixpanel_assets.staging.parts import iter_part_lines

TODAY = dt.date(2026, 11, 22)


def local_project(project_id: int, folder: Path, *, profiles: bool = False, **settings) -> dict:
    """The `project:` block for export files in `folder` (a `local` source), state in ./state."""
    source = {"type": "local", "path": str(folder)}
    if profiles:
        source["profiles_path"] = str(folder / "profiles.jsonl")
    return {"id": project_id, "state": {"path": "state"}, "source": source, **settings}


def events_pipeline(name: str, frequency: str, destination: dict, first_day: str = "2024-11-20", **settings) -> dict:
    """An events pipeline set up (`created`) on its first partition's day, so no backfill limit applies."""
    return {"name": name, "data_source": "events", "frequency": frequency, "from_date": first_day,
            "created": first_day, "destination": destination, **settings}


def write_config(directory: Path, project: dict, pipelines: list[dict], name: str = "pipelines.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"project": project, "pipelines": pipelines}, sort_keys=False))
    return path


def definitions(directory: Path, project: dict, pipelines: list[dict], today: dt.date = TODAY) -> dg.Definitions:
    return build_definitions(write_config(directory, project, pipelines), today=today)


def run_partition(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, partition_key: str | None = None,
                  range_: tuple[str, str] | None = None, raise_on_error: bool = True,
                  tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    tags = dict(tags or {})
    if range_:
        tags.update({"dagster/asset_partition_range_start": range_[0], "dagster/asset_partition_range_end": range_[1]})
    return defs.resolve_job_def(job).execute_in_process(
        partition_key=partition_key, instance=instance, tags=tags, raise_on_error=raise_on_error
    )


def read_folder_rows(folder: Path) -> list[dict]:
    """Every row of every part file directly in `folder` (one window of an object-store export)."""
    rows = []
    for part in sorted(folder.iterdir()):
        if part.name.startswith("part-"):
            rows.extend(orjson.loads(line) for line in iter_part_lines(part))
    return rows


def dedup_expected(lines: list[bytes], start: float | None = None, end: float | None = None) -> dict:
    """What Mixpanel's dedup rule keeps: latest mp_processing_time_ms per (event, distinct_id, time, $insert_id)."""
    kept: dict = {}
    no_insert_id = []
    for line in lines:
        event = json.loads(line)
        props = event["properties"]
        if start is not None and not (start <= props["time"] < end):
            continue
        if props.get("$insert_id") is None:
            no_insert_id.append(event)
            continue
        key = (event["event"], props.get("distinct_id"), props["time"], props["$insert_id"])
        if key not in kept or props.get("mp_processing_time_ms", 0) > kept[key]["properties"].get("mp_processing_time_ms", 0):
            kept[key] = event
    return {"kept": kept, "no_insert_id": no_insert_id, "count": len(kept) + len(no_insert_id)}


def event_line(name: str, time: float, distinct_id: str | None, insert_id: str | None, **props) -> bytes:
    properties = {"time": time}
    if distinct_id is not None:
        properties["distinct_id"] = distinct_id
    if insert_id is not None:
        properties["$insert_id"] = insert_id
    properties.update(props)
    return orjson.dumps({"event": name, "properties": properties})


def epoch(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp())
