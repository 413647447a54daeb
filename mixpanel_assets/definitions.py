"""The code location: the MixpanelPipelines instances under mixpanel_assets/dg_defs/.

The repository's own pipelines are mixpanel_assets/dg_defs/pipelines/defs.yaml. Add a Mixpanel
project with `dg scaffold defs mixpanel_assets.MixpanelPipelines <name>` (set `key_prefix` in
each instance once there are several). A plain pipelines.yaml still loads through
`mixpanel_assets.defs.build.build_definitions("path/to/pipelines.yaml")`.

Why not `dg.load_from_defs_folder`: besides the defs folder, it imports the component modules of
every Dagster integration installed (to list them in the UI's Docs tab), and here that is
dagster-aws, -azure, -gcp and -snowflake: snowflake.core alone takes seconds, and every run worker
(one per partition) loads this module. Building the defs folder's components, with the component
tree attached, loads the same Definitions in a fraction of the time; the UI still shows the
component instances. Swap in `dg.load_from_defs_folder(path_within_project=HERE)` to list
installed component types in this location's Docs tab.
"""

import warnings
from pathlib import Path

import dagster as dg

HERE = Path(__file__).resolve().parent
DEFS_YAML = HERE / "dg_defs" / "pipelines" / "defs.yaml"

# Dagster calls its own beta and preview APIs while it loads and runs a component-built location
# (code references on every asset, the defs module's loader, the asset checks' `execution_type`
# when a run resolves them), and warns about them in every process: the code server, each run
# worker, the demo CLI. `load_from_defs_folder` silences them while it loads, not those at run time.
# They are about Dagster's internals, which no user can act on, so the beta and preview warnings that
# Dagster's own modules raise are ignored. One raised on behalf of our code (or a user's) names that
# code's module and still shows.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category, module=r"dagster(_shared)?\.")

_tree = dg.ComponentTree.for_project(HERE)
# Built eagerly, as before: `dagster code-server -m mixpanel_assets.definitions` and the tests use
# `defs` as a Definitions object.
defs = dg.Definitions.merge(_tree.build_defs(_tree.defs_module_path), dg.Definitions(component_tree=_tree))
