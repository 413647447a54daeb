"""A newcomer's first run: `make run`'s command prints the summary and nothing else, and the README's
commands work against what it wrote.

The command is the one `make run` (the first half of `make demo`) runs, `python -m
mixpanel_assets.cli demo`, on the embedded default (mixpanel_assets/dg_defs/pipelines/defs.yaml),
with fewer partitions (--hours 6 --days 1, the CLI's own options) to stay well under a minute.
So that it writes nowhere in the checkout, it runs on a copy of the project (pyproject.toml and the
package, which resolves relative paths against the folder of pyproject.toml) in a temporary folder,
with its own DAGSTER_HOME holding the repository's dagster.yaml, as `make setup` prepares it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PIPELINES = {p["name"]: p["data_source"] for p in yaml.safe_load(
    (REPO / "mixpanel_assets" / "dg_defs" / "pipelines" / "defs.yaml").read_text())["attributes"]["pipelines"]}


def _fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    blocks, block, start, lang = [], None, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            if block is None:
                block, start, lang = [], number, line.strip().removeprefix("```").strip()
            else:
                if lang == language:
                    blocks.append((start, "\n".join(block)))
                block = None
        elif block is not None:
            block.append(line)
    return blocks


def _commands(block: str) -> list[str]:
    """A block's commands: a line ending inside an open quote continues on the next one."""
    commands, current = [], ""
    for line in block.splitlines():
        current = f"{current}\n{line}" if current else line
        if current.count('"') % 2 == 0 and current.count("'''") % 2 == 0:
            commands.append(current)
            current = ""
    assert not current, f"README: unterminated command {current!r}"
    return commands


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkout")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "mixpanel_assets", root / "mixpanel_assets",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / ".venv").symlink_to(REPO / ".venv")  # the README calls .venv/bin/python
    home = root / ".dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(root)}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run([sys.executable, "-m", "mixpanel_assets.cli", "demo", "--hours", "6", "--days", "1"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return root, env, result


def test_the_first_run_prints_the_summary_and_no_debug_line_or_warning(first_run):
    root, _, result = first_run
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = output.splitlines()
    assert not [line for line in lines if "DEBUG" in line], output
    assert not [line for line in lines if "warning" in line.lower()], output
    summary = [line for line in lines if line.startswith("ok ")]
    # Events first, then profiles, then identity mappings (computed from the events' links).
    assert [line.split()[1] for line in summary] == sorted(
        PIPELINES, key=lambda name: ["events", "people", "identity"].index(PIPELINES[name])), output
    # One progress line before each events pipeline, the summary, nothing else: the details are in
    # the runs' event logs.
    assert len(lines) == len(summary) + list(PIPELINES.values()).count("events"), output
    assert re.search(r"^ok +events_hourly +partitions \S+ \.\. \S+ .* -> local folder export$", output, re.M), output
    assert (root / "export" / "1234567" / "mp_master_event").is_dir()
    assert not (REPO / "mixpanel_assets" / "export").exists()


def test_the_readme_commands_run_against_the_demo_output(first_run):
    """Every command of the README's bash blocks but `make ...` (set-up, the UI, the suite) runs
    verbatim in the demo's checkout and prints what its comment promises."""
    root, env, result = first_run
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [(start, command) for start, block in _fenced_blocks((REPO / "README.md").read_text(), "bash")
                for command in _commands(block) if not command.startswith("make ")]
    assert len(commands) >= 2, commands  # the DuckDB query and the `find` of the part files
    for start, command in commands:
        ran = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0 and ran.stdout.strip(), f"README.md line {start}: {command}\n{ran.stdout}{ran.stderr}"
        if command.startswith("find "):
            promised = command.split("#", 1)[1].strip()  # export/1234567/mp_master_event/YYYY/MM/DD/HH/part-*.json.gz
            pattern = re.escape(promised).replace("YYYY", r"\d{4}").replace("MM", r"\d\d").replace(
                "DD", r"\d\d").replace("HH", r"\d\d").replace(r"\*", r"[^/]*")
            found = ran.stdout.split()
            assert found and all(re.fullmatch(pattern, path) for path in found), (command, found)
        if "duckdb" in command:
            assert re.search(r"\bday\b.*\bevents\b", ran.stdout, re.S) and re.search(r"\d{4}-\d\d-\d\d", ran.stdout), ran.stdout
