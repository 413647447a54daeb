"""The code location: the MixpanelPipelines instances under mixpanel_assets/dg_defs/.

The repository's own pipelines are mixpanel_assets/dg_defs/pipelines/defs.yaml. Add a Mixpanel
project with `dg scaffold defs mixpanel_assets.MixpanelPipelines <name>` (set `key_prefix` in
each instance once there are several). A plain pipelines.yaml still loads through
`mixpanel_assets.defs.build.build_definitions("path/to/pipelines.yaml")`.
"""

from pathlib import Path

import dagster as dg

DEFS_YAML = Path(__file__).resolve().parent / "dg_defs" / "pipelines" / "defs.yaml"

# Built eagerly, as before: `dagster code-server -m mixpanel_assets.definitions` and the tests use
# `defs` as a Definitions object.
defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)
