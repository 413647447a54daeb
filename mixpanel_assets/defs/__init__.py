"""Dagster wiring only: assets, partitions, checks, schedules, sensors, the GDPR job and the resources
that open the source and destinations. The work itself lives in the layers below."""
