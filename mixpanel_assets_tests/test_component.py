"""MixpanelPipelines, the component: the repository loads through it, its YAML gets config.py's
messages, two instances share a code location, and a fresh dg project scaffolds and runs it.

The fresh-project test drives the real `dg` CLI in subprocesses with this environment's Python
(no network, no install): it is marked slow (about 1 min on 2 idle cores, several on a busy one).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import jsonschema
import pytest
import yaml

from mixpanel_assets.component import (
    MixpanelPipelines,
    MixpanelPipelinesAttributes,
    demo_defs_yaml,
    load_defs_yaml,
)
from mixpanel_assets.config import ConfigError
from mixpanel_assets.defs.build import definitions_for

REPO = Path(__file__).resolve().parents[1]
TODAY = dt.date(2026, 11, 22)
DG = Path(sys.executable).with_name("dg")


def _write_project(root: Path, module: str, instances: dict[str, str]) -> None:
    """A dg project: pyproject.toml, a root module with definitions.py, one defs folder per instance."""
    (root / module / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{module.replace('_', '-')}"
        version = "0.0.0"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "{module}"
        """))
    (root / module / "__init__.py").write_text("")
    (root / module / "defs" / "__init__.py").write_text("")
    (root / module / "definitions.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        import dagster as dg

        defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
        """))
    for name, text in instances.items():
        (root / module / "defs" / name).mkdir()
        (root / module / "defs" / name / "defs.yaml").write_text(text)


def _instance_yaml(key_prefix: str | None, project_id: int, folder: str) -> str:
    attributes = {
        "project": {"id": project_id, "source": {"type": "demo", "events_per_hour": 20, "users": 10}},
        "pipelines": [
            {"name": "events", "data_source": "events", "frequency": "daily", "from_date": "2026-11-20",
             "created": "2026-11-20", "destination": {"type": "local", "path": f"{folder}/export"}},
            {"name": "people", "data_source": "people", "destination": {"type": "duckdb", "path": f"{folder}/wh.duckdb"}},
        ],
    }
    if key_prefix:
        attributes["key_prefix"] = key_prefix
    return yaml.safe_dump({"type": "mixpanel_assets.MixpanelPipelines", "attributes": attributes}, sort_keys=False)


# --- the repository's own code location ------------------------------------------------------------

def test_the_shipped_defs_yaml_is_valid():
    """Moved from test_config.py (it read pipelines.yaml, now this component's defs.yaml)."""
    from mixpanel_assets.definitions import DEFS_YAML

    config, key_prefix = load_defs_yaml(DEFS_YAML)
    assert {p.data_source for p in config.pipelines} == {"events", "people", "identity"}
    assert yaml.safe_load(DEFS_YAML.read_text())["attributes"]["project"]["source"]["type"] == "demo"
    assert key_prefix is None


def test_the_code_location_is_the_component_with_the_names_of_pipelines_yaml():
    """Same Definitions as definitions_for on the same configuration, paths relative to the repo root."""
    from mixpanel_assets.definitions import DEFS_YAML, defs

    config, _ = load_defs_yaml(DEFS_YAML)
    direct = definitions_for(config, REPO, dt.date.today())
    assert set(defs.resources) == set(direct.resources)
    assert "mixpanel" in defs.resources and "events_hourly__io_manager" in defs.resources
    graph, direct_graph = defs.resolve_asset_graph(), direct.resolve_asset_graph()
    assert graph.get_all_asset_keys() == direct_graph.get_all_asset_keys()
    assert dg.AssetKey(["events_hourly", "mp_master_event"]) in graph.get_all_asset_keys()
    for key in direct_graph.get_all_asset_keys():
        meta = graph.get(key).metadata
        assert meta.get("dagster/table_name") == direct_graph.get(key).metadata.get("dagster/table_name"), key
    assert str(REPO / "export") in graph.get(dg.AssetKey(["events_hourly", "mp_master_event"])).metadata[
        "dagster/table_name"]
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert jobs == {j.name for j in direct.resolve_all_job_defs()}
    assert {s.name for s in defs.schedules} == {s.name for s in direct.schedules}
    assert {s.name for s in defs.sensors} == {s.name for s in direct.sensors}
    assert {"events_hourly_job", "gdpr_deletion_job"} <= jobs
    assert "mixpanel_freshness_sensor" in {s.name for s in defs.sensors}


def test_importing_the_package_stays_light_and_the_component_resolves_lazily():
    script = ("import sys, mixpanel_assets; assert 'dagster' not in sys.modules, 'dagster imported'; "
              "assert 'MixpanelPipelines' in dir(mixpanel_assets); "
              "c = mixpanel_assets.MixpanelPipelines; import dagster as dg; assert issubclass(c, dg.Component); "
              "print(c.__module__)")
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "mixpanel_assets.component"


# --- validation ------------------------------------------------------------------------------------

def test_a_defs_yaml_mistake_names_the_defs_yaml_the_pipeline_and_the_field(tmp_path):
    path = tmp_path / "defs.yaml"
    document = yaml.safe_load(demo_defs_yaml("mixpanel_assets.MixpanelPipelines", "x", TODAY))
    document["attributes"]["pipelines"][0]["frequncy"] = "hourly"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as info:
        load_defs_yaml(path)
    assert str(info.value) == (f"{path}: pipeline 'events_hourly', field frequncy: unknown field; did you mean "
                               "'frequency'? (check the spelling against the configuration reference, "
                               "docs/configuration.md)")


@pytest.mark.parametrize("key_prefix, expected", [
    ("Acme", "'Acme' is not a valid key_prefix"),
    ("a__b", "'a__b' is not a valid key_prefix"),
    ("a" * 60, "longer than 63 characters"),
])
def test_a_bad_key_prefix_is_named(tmp_path, key_prefix, expected):
    path = tmp_path / "defs.yaml"
    path.write_text(_instance_yaml(key_prefix, 1, "data"))
    with pytest.raises(ConfigError, match=f"{path}: field key_prefix: .*{expected}"):
        load_defs_yaml(path)


def test_the_schema_documents_every_field_and_leaves_misspellings_to_config_py():
    """dg checks defs.yaml against this schema before loading: it must accept what config.py accepts
    (dates included), refuse wrong types, and let unknown fields through to the precise messages."""
    schema = MixpanelPipelinesAttributes.model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    from mixpanel_assets.definitions import DEFS_YAML

    shipped = yaml.safe_load(DEFS_YAML.read_text())["attributes"]
    assert list(validator.iter_errors(shipped)) == []
    assert {"key_prefix", "project", "pipelines"} <= set(schema["properties"])
    documented = {name.removesuffix("Config") for name in schema["$defs"]}
    assert {"LocalDestination", "DuckDBDestination", "S3Destination", "SnowflakeDestination", "DemoSource"} <= documented
    (local,) = [d for name, d in schema["$defs"].items() if name.startswith("LocalDestination")]
    assert "path" in local["properties"]
    shipped["pipelines"][0]["destination"]["pathh"] = "typo"
    assert list(validator.iter_errors(shipped)) == []  # config.py names it
    shipped["project"]["id"] = "abc"
    assert [e.message for e in validator.iter_errors(shipped)] == ["'abc' is not of type 'integer'"]


def test_the_scaffolded_demo_is_a_valid_configuration():
    text = demo_defs_yaml("mixpanel_assets.MixpanelPipelines", "mixpanel", TODAY, key_prefix="acme")
    document = yaml.safe_load(text)
    assert document["type"] == "mixpanel_assets.MixpanelPipelines"
    from mixpanel_assets.component import parse_attributes

    config, key_prefix = parse_attributes(document["attributes"], "defs.yaml")
    assert key_prefix == "acme"
    assert config.project.source.type == "demo"
    assert {p.destination.type for p in config.pipelines} == {"local", "duckdb"}
    assert all(p.from_date == TODAY - dt.timedelta(days=2) for p in config.event_pipelines)


# --- two instances -------------------------------------------------------------------------------

def test_two_instances_share_a_code_location_and_each_materializes(tmp_path, monkeypatch):
    module = f"two_mp_{uuid.uuid4().hex[:8]}"
    _write_project(tmp_path, module, {
        "acme": _instance_yaml("acme", 111, "data/acme"),
        "globex": _instance_yaml("globex", 222, "data/globex"),
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    defs = dg.load_from_defs_folder(path_within_project=tmp_path)

    keys = defs.resolve_asset_graph().get_all_asset_keys()
    for prefix in ("acme", "globex"):
        assert dg.AssetKey([f"{prefix}__events", "mp_master_event"]) in keys
        assert dg.AssetKey([f"{prefix}__people", "mp_people_data"]) in keys
        assert {f"{prefix}__mixpanel", f"{prefix}__events__io_manager", f"{prefix}__people__io_manager"} <= set(
            defs.resources)
    assert "mixpanel" not in defs.resources
    assert dg.AssetKey(["acme__mixpanel", "project_111", "events"]) in keys
    assert dg.AssetKey(["globex__mixpanel", "project_222", "profiles"]) in keys
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {"acme__events_job", "globex__events_job", "acme__gdpr_deletion_job", "globex__gdpr_deletion_job",
            "acme__events_sync_probe_job"} <= jobs
    acme, globex = defs.resources["acme__mixpanel"], defs.resources["globex__mixpanel"]
    assert (acme.project_id, globex.project_id) == (111, 222)
    # State (GDPR register, identity links) per instance; the pool per Mixpanel project.
    assert acme.state_path == str(tmp_path / ".mixpanel_assets" / "state" / "acme")
    assert globex.state_path == str(tmp_path / ".mixpanel_assets" / "state" / "globex")
    events_defs = {p: defs.resolve_assets_def(dg.AssetKey([f"{p}__events", "mp_master_event"])) for p in ("acme", "globex")}
    op_pools = {p: a.op.pool for p, a in events_defs.items()}
    assert op_pools == {"acme": "mixpanel_project_111", "globex": "mixpanel_project_222"}

    instance = dg.DagsterInstance.ephemeral()
    for prefix, project_id in (("acme", 111), ("globex", 222)):
        result = defs.resolve_job_def(f"{prefix}__events_job").execute_in_process(
            partition_key="2026-11-20", instance=instance)
        assert result.success
        day = tmp_path / "data" / prefix / "export" / str(project_id) / "mp_master_event" / "2026" / "11" / "20"
        assert any(p.name.startswith("part-") for p in day.iterdir()), day
        event = instance.get_latest_materialization_event(dg.AssetKey([f"{prefix}__events", "mp_master_event"]))
        assert event.asset_materialization.partition == "2026-11-20"


def test_two_scaffolded_demos_of_one_mixpanel_project_load_side_by_side(tmp_path, monkeypatch):
    """Components stamp each instance's specs with its own metadata, so even the Mixpanel project's
    source assets must be per instance: [<key_prefix>__mixpanel, project_<id>, events]."""
    module = f"demos_{uuid.uuid4().hex[:8]}"
    _write_project(tmp_path, module, {
        name: demo_defs_yaml("mixpanel_assets.MixpanelPipelines", name, TODAY, key_prefix=name)
        for name in ("north", "south")
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    defs = dg.load_from_defs_folder(path_within_project=tmp_path)
    dg.Definitions.validate_loadable(defs)
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert {dg.AssetKey([f"{n}__mixpanel", "project_1234567", "events"]) for n in ("north", "south")} <= keys
    assert {dg.AssetKey([f"{n}__events_hourly", "mp_master_event"]) for n in ("north", "south")} <= keys


def test_the_component_is_usable_from_python_with_the_same_names():
    """`MixpanelPipelines(config)` in a Python defs module: no key_prefix, names as in pipelines.yaml."""
    from mixpanel_assets.definitions import DEFS_YAML

    config, _ = load_defs_yaml(DEFS_YAML)
    component = MixpanelPipelines(config, base_dir=REPO)
    defs = component.build_defs(dg.ComponentTree.for_test().load_context)
    assert "mixpanel" in defs.resources
    assert dg.AssetKey(["people", "mp_people_data"]) in defs.resolve_asset_graph().get_all_asset_keys()


# --- a fresh project, through the dg CLI -----------------------------------------------------------

def _dg(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(project)]),
           "VIRTUAL_ENV": str(Path(sys.executable).parents[1]), "NO_COLOR": "1"}
    env.pop("DAGSTER_HOME", None)  # an ephemeral instance: nothing of the user's is touched
    return subprocess.run([str(DG), *args], check=False, cwd=project, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_fresh_dg_project_scaffolds_checks_and_materializes_the_component(tmp_path):
    module = f"fresh_mp_{uuid.uuid4().hex[:8]}"
    _write_project(tmp_path, module, {})

    scaffold = _dg(tmp_path, "scaffold", "defs", "mixpanel_assets.MixpanelPipelines", "mixpanel")
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    defs_yaml = tmp_path / module / "defs" / "mixpanel" / "defs.yaml"
    assert "type: mixpanel_assets.MixpanelPipelines" in defs_yaml.read_text()

    check = _dg(tmp_path, "check", "defs")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully." in check.stdout

    # One demo partition, in process, from the project's own definitions module.
    script = textwrap.dedent(f"""
        import dagster as dg
        from {module}.definitions import defs
        job = defs.resolve_job_def("events_daily_job")
        key = job.partitions_def.get_last_partition_key()
        result = job.execute_in_process(partition_key=key, instance=dg.DagsterInstance.ephemeral())
        print("materialized", key, result.success)
    """)
    run = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("True"), run.stdout
    assert (tmp_path / "mixpanel_data" / "mixpanel" / "warehouse.duckdb").exists()

    # A misspelt field fails `dg check defs` with config.py's message naming file, pipeline and field.
    defs_yaml.write_text(defs_yaml.read_text().replace("        path: mixpanel_data/mixpanel/export",
                                                       "        pathh: mixpanel_data/mixpanel/export"))
    bad = _dg(tmp_path, "check", "defs")
    assert bad.returncode == 1
    assert (f"{defs_yaml}: pipeline 'events_hourly', field destination.pathh: unknown field"
            in bad.stdout + bad.stderr), bad.stdout[-3000:] + bad.stderr[-3000:]
