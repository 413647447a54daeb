"""dg's defs folder (`[tool.dg.project] defs_module`): one folder per MixpanelPipelines instance.

Named dg_defs because `mixpanel_assets.defs` holds the Dagster wiring modules, which are not
autoloaded: a defs.yaml here is the whole configuration of a code location's pipelines.
"""
