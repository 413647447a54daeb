"""The Dagster UI as a data engineer uses it, in a real browser.

The suite's deployment (dagster_stack.py: PostgreSQL, code server, webserver and daemon on
127.0.0.1) gets a partition backfill through the webserver's GraphQL API, exactly the mutation the
UI sends for "Materialize selected"; once the daemon has run it, headless Chromium (Debian's
package, never a downloaded browser) opens the asset's lineage and one partition's page. The
screenshots are saved under test-artifacts/browser/ for a person to look at; the assertions read
the rendered DOM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mixpanel_assets_tests.dagster_stack import REPO
from mixpanel_assets_tests.helpers import dedup_expected

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("MP_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900"]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("Debian's chromium is not installed; `make setup-test` installs it")
    return path


def open_page(url: str, screenshot: Path, budget_ms: int = 15000) -> str:
    """Render `url` in headless Chromium: save a screenshot, return the page's visible text."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mp-chromium-") as profile:
        common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, timeout=180, check=True).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom.decode("utf-8", "replace"), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_a_backfill_launched_like_the_ui_does_shows_its_materialized_partitions_in_chromium(dagster_stack):
    stack = dagster_stack
    backfill = stack.launch_backfill(["ui_daily", "mp_master_event"], stack.days)
    assert stack.wait_for_backfill(backfill) == "COMPLETED_SUCCESS"
    assert sorted(r["status"] for r in stack.backfill_runs(backfill)) == ["SUCCESS"] * len(stack.days)
    stack.dismiss_community_modal()

    lineage = open_page(f"{stack.url}/assets/ui_daily/mp_master_event?view=lineage", ARTIFACTS / "asset_lineage.png")
    assert "mp_master_event" in lineage
    assert "events" in lineage and "mixpanel" in lineage  # the upstream Mixpanel project asset
    assert f"{len(stack.days)} partitions" in lineage and "100% filled" in lineage

    day = stack.days[1]
    partition = open_page(f"{stack.url}/assets/ui_daily/mp_master_event?view=partitions&partition={day}",
                          ARTIFACTS / "partition.png")
    assert f"Materialized ({len(stack.days)})" in partition and "Missing (0)" in partition
    expected = dedup_expected(stack.source_lines(day))["count"]
    assert f"dagster/partition_row_count {expected}" in partition
    assert f"window_start {day}T00:00:00+00:00" in partition
    assert all((ARTIFACTS / name).stat().st_size > 10_000 for name in ("asset_lineage.png", "partition.png"))
