"""mixpanel-assets: self-hosted Mixpanel Data Pipelines for Dagster.

`mixpanel_assets.MixpanelPipelines` (the Dagster component) is imported on first use: worker
processes import subpackages of this package and must not pay for Dagster at import time.
"""

__all__ = ["MixpanelPipelines"]


def __getattr__(name: str):
    if name == "MixpanelPipelines":
        from mixpanel_assets.component import MixpanelPipelines

        return MixpanelPipelines
    raise AttributeError(f"module 'mixpanel_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
