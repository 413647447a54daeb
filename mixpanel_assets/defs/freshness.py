"""Freshness: Mixpanel's 24 h end-to-end SLA, expressed the two ways Dagster can show it.

Mixpanel promises on-time data in the destination within 24 h (MIXPANEL_SPEC.md 1.3): an hourly
pipeline exports each hour at :30 past the next hour, a daily one at 00:30 after the day.

1. `FreshnessPolicy.time_window` on every events asset, evaluated continuously by Dagster's
   freshness daemon and shown on the asset. Dagster measures it from the asset's newest
   materialization of *any* partition, so the windows are the SLA plus one partition: the data
   of the newest partition may be up to one partition length old when the export starts.
   hourly: warn after 2.5 h (an hourly run was missed), fail after 25 h (24 h of data missing);
   daily: warn after 25.5 h (the 00:30 run did not finish), fail after 48 h (yesterday's data was
   not out by the end of today: the SLA broken).
2. Per partition. The policy above cannot tell a backfill of an old day from a fresh export (any
   partition's materialization resets it), so the newest partition is also checked by itself, with
   `build_time_partition_freshness_checks` (superseded by FreshnessPolicy, but the only mechanism
   Dagster has with per-partition meaning). Daily: yesterday's partition must exist by 23:59
   today in the project timezone: the 24 h SLA exactly, severity ERROR. Hourly: the previous
   hour must exist by :59 (our schedule exports it at :30); a check at a fixed deadline cannot
   express "24 h after each hour", so this one watches the schedule, severity WARN, while the
   policy carries the SLA. The checks run with every export of the asset and, between exports,
   from `mixpanel_freshness_sensor` (stopped until turned on, like the schedules).
"""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg

from mixpanel_assets.config import PipelineConfig, PipelinesFile

SLA = dt.timedelta(hours=24)
FRESHNESS_SENSOR = "mixpanel_freshness_sensor"
_PARTITION = {"hourly": dt.timedelta(hours=1), "daily": dt.timedelta(days=1)}
_DEADLINES = {"hourly": ("59 * * * *", dg.AssetCheckSeverity.WARN), "daily": ("59 23 * * *", dg.AssetCheckSeverity.ERROR)}


def events_freshness_policy(pipeline: PipelineConfig) -> dg.FreshnessPolicy:
    partition = _PARTITION[pipeline.frequency]
    return dg.FreshnessPolicy.time_window(fail_window=SLA + partition, warn_window=partition + dt.timedelta(minutes=90))


def partition_freshness(config: PipelinesFile, assets_by_pipeline: dict[str, dg.AssetsDefinition],
                        sensor_name: str = FRESHNESS_SENSOR) -> tuple[list[dg.AssetChecksDefinition], list[dg.SensorDefinition]]:
    """The newest-partition checks of the recurring events pipelines, and the sensor that runs them."""
    checks: list[dg.AssetChecksDefinition] = []
    tz = config.project.timezone
    with warnings.catch_warnings():
        # Superseded, not deprecated: still the only per-partition freshness check (see above).
        warnings.filterwarnings("ignore", category=dg.SupersessionWarning)
        warnings.filterwarnings("ignore", category=dg.BetaWarning)  # raised inside Dagster's own builder
        for frequency, (cron, severity) in _DEADLINES.items():
            assets = [assets_by_pipeline[p.name] for p in config.event_pipelines
                      if p.frequency == frequency and p.recurring and p.name in assets_by_pipeline]
            if assets:
                checks.extend(dg.build_time_partition_freshness_checks(
                    assets=assets, deadline_cron=cron, timezone=tz, severity=severity))
        if not checks:
            return [], []
        sensor = dg.build_sensor_for_freshness_checks(freshness_checks=checks, name=sensor_name,
                                                      minimum_interval_seconds=300)
    return checks, [sensor]
