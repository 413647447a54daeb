"""The code location: the pipelines declared in the repository's pipelines.yaml.

To run other pipelines, point `workspace.yaml` at your own module that calls
`build_definitions("path/to/pipelines.yaml")`.
"""

from pathlib import Path

from mixpanel_assets.defs.build import build_definitions

PIPELINES_FILE = Path(__file__).resolve().parent.parent / "pipelines.yaml"

defs = build_definitions(PIPELINES_FILE)
