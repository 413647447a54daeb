"""The README and docs/ cannot drift from the code: links resolve, `make` targets exist, YAML
examples validate with the real config loader, and every configuration field is documented.

Reads only files of the repository; no network, no Dagster instance.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from mixpanel_assets.component import parse_attributes
from mixpanel_assets.config import PipelineConfig, ProjectConfig, parse_pipelines
from mixpanel_assets.defs.gdpr import OP_NAME, GdprDeletionConfig
from mixpanel_assets.destinations import registry as destination_registry

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]+`")
# When an example carries no date, the 6-month from_date limit is checked against this day.
FALLBACK_TODAY = dt.date(2026, 11, 22)


def split(doc: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """(prose lines, fenced blocks): prose as (line number, text), blocks as (first line, language, text)."""
    prose, blocks, block, lang, start = [], [], None, "", 0
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block, lang, start = [], line.strip().removeprefix("```").strip(), number
            else:
                blocks.append((start, lang, "\n".join(block)))
                block = None
        elif block is None:
            prose.append((number, line))
        else:
            block.append(line)
    assert block is None, f"{doc.name}: code fence opened at line {start} is never closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    found: set[str] = set()
    for _, line in split(doc)[0]:
        match = re.match(r"^#{1,6} (.+)$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for number, line in split(doc)[0]:
            for target in LINK.findall(line):
                out.append((f"{doc.relative_to(REPO)}:{number}", target))
    return out


@pytest.mark.parametrize("where,target", links())
def test_every_relative_link_resolves_to_a_file_and_heading(where, target):
    if re.match(r"^[a-z]+:", target):  # http(s), mailto: not ours to check offline
        return
    doc = REPO / where.split(":")[0]
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    assert file.exists(), f"{where}: link to {target} names a file that does not exist ({file})"
    if anchor:
        assert file.suffix == ".md", f"{where}: anchor #{anchor} into a file that is not Markdown"
        assert anchor in anchors(file), (
            f"{where}: link to {target}: {file.name} has no heading with anchor #{anchor}; "
            f"it has {sorted(anchors(file))}")


def test_links_are_found_at_all():
    assert len(links()) >= 30
    assert any(t.startswith("docs/destinations.md") for _, t in links())


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_./$() -]+?)\s*:(?![=:])", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def make_commands(doc: Path) -> list[tuple[int, str]]:
    """`make X` in inline code and shell blocks (prose like "make sure" is not a command)."""
    prose, blocks = split(doc)
    found = []
    command = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][\w-]*)")
    for number, line in prose:
        for code in INLINE_CODE.findall(line):
            found += [(number, t) for t in command.findall(code.strip("`"))]
    for start, lang, text in blocks:
        if lang in ("bash", "sh", "shell", ""):
            for offset, line in enumerate(text.splitlines(), 1):
                found += [(start + offset, t) for t in command.findall(line.split("#")[0])]
    return found


def test_every_make_target_the_docs_name_exists():
    targets = makefile_targets()
    assert {"demo", "test", "run", "ui", "check", "clean", "bench", "setup-test"} <= targets
    named = [(doc, number, t) for doc in DOCS for number, t in make_commands(doc)]
    assert {"demo", "test"} <= {t for doc, _, t in named if doc.name == "README.md"}
    missing = [f"{doc.relative_to(REPO)}:{number}: make {t}" for doc, number, t in named if t not in targets]
    assert not missing, f"targets missing from the Makefile: {missing}"


def yaml_blocks() -> list[tuple[str, object]]:
    out = []
    for doc in DOCS:
        for start, lang, text in split(doc)[1]:
            if lang in ("yaml", "yml"):
                out.append((f"{doc.relative_to(REPO)}:{start}", yaml.safe_load(text)))
    return out


def validate_example(where: str, raw: object) -> str:
    """Validate one YAML block of the docs with the code that reads it; return what it was."""
    assert isinstance(raw, dict), f"{where}: a YAML example that is not a mapping"
    if {"project", "pipelines"} <= raw.keys():
        parse_pipelines(raw, source=where)
        return "pipelines file"
    if raw.keys() == {"type", "attributes"}:
        assert raw["type"] == "mixpanel_assets.MixpanelPipelines", f"{where}: a defs.yaml of another component"
        parse_attributes(raw["attributes"], source=where)
        return "component defs.yaml"
    if raw.keys() == {"ops"}:
        assert list(raw["ops"]) == [OP_NAME], f"{where}: the GDPR job's op is {OP_NAME}"
        GdprDeletionConfig.model_validate(raw["ops"][OP_NAME]["config"])
        return "gdpr run config"
    if raw.keys() <= PipelineConfig.model_fields.keys():
        # A fragment of one pipeline (a destination, sync settings): complete it around the fragment.
        pipeline = {"name": "docs_example", "data_source": "events", "from_date": FALLBACK_TODAY,
                    "destination": {"type": "local", "path": "export"}, **raw}
        parse_pipelines({"project": {"id": 1, "source": {"type": "demo"}}, "pipelines": [pipeline]},
                        source=where)
        return "destination" if raw.keys() == {"destination"} else "pipeline fragment"
    raise AssertionError(f"{where}: a YAML example this test does not know how to validate: keys {sorted(raw)}")


@pytest.mark.parametrize("where,raw", yaml_blocks())
def test_every_yaml_example_validates_with_the_config_loader(where, raw):
    validate_example(where, raw)


def test_the_yaml_examples_cover_every_destination_and_the_readme():
    kinds = [(where, validate_example(where, raw)) for where, raw in yaml_blocks()]
    readme_files = [w for w, k in kinds if w.startswith("README.md") and k == "pipelines file"]
    assert len(readme_files) >= 3, "the README shows one pipelines.yaml per destination kind"
    documented = {raw["destination"]["type"] for where, raw in yaml_blocks()
                  if where.startswith("docs/destinations.md") and isinstance(raw, dict) and "destination" in raw}
    types = {"local", "s3", "gcs", "azure", "duckdb", "bigquery", "snowflake", "redshift"}
    assert documented == types, f"docs/destinations.md has no example for {sorted(types - documented)}"


def field_names(model: type[BaseModel], without: frozenset[str] = frozenset()) -> set[str]:
    """Every field name of a pydantic model and the models nested in it, as written in YAML;
    the fields named in `without` are listed but not entered."""
    names = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        if name not in without:
            for nested in _models_in(field.annotation):
                names |= field_names(nested, without)
    return names


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def documented_names(doc: Path) -> set[str]:
    text = doc.read_text(encoding="utf-8")
    return {word for code in INLINE_CODE.findall(text) for word in re.findall(r"\w+", code)}


def test_every_configuration_field_is_documented():
    documented = documented_names(REPO / "docs" / "configuration.md")
    fields = field_names(ProjectConfig) | field_names(PipelineConfig, without=frozenset({"destination"}))
    assert {"username_env", "profiles_path", "events_per_hour", "probe_interval_hours"} <= fields
    missing = sorted(fields - documented)
    assert not missing, f"docs/configuration.md does not mention these pipelines.yaml fields: {missing}"


def test_every_destination_field_is_documented():
    documented = documented_names(REPO / "docs" / "destinations.md")
    for model in _models_in(destination_registry.DestinationConfig):
        missing = sorted(field_names(model) - documented)
        assert not missing, f"docs/destinations.md does not mention these fields of {model.__name__}: {missing}"
