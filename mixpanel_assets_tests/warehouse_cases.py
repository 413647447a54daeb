"""What the BigQuery, Snowflake and Redshift Spectrum tests share: one source, one set of windows,
and the expectations every warehouse must meet on them.

The project runs in America/Los_Angeles, so its local day 2024-11-22 is 08:00Z..08:00Z next day:
partition dates that were UTC by mistake would show.
"""

from __future__ import annotations

import collections
import datetime as dt
import shutil
import zoneinfo

import orjson

from mixpanel_assets.staging.stage import stage_events
from mixpanel_assets.windows import PartitionWindow
from mixpanel_assets_tests.helpers import dedup_expected, epoch, event_line, local_project

PROJECT_ID = 777
TZ = "America/Los_Angeles"
LA = zoneinfo.ZoneInfo(TZ)
DAY = "2024-11-22"  # local day: 2024-11-22T08:00Z .. 2024-11-23T08:00Z
DAY_UTC = ("2024-11-22T08:00:00", "2024-11-23T08:00:00")
HOUR = "2024-11-22-05:00-0800"  # 13:00Z .. 14:00Z
HOUR_UTC = ("2024-11-22T13:00:00", "2024-11-22T14:00:00")
PROFILES = 50
MERGED_DEVICES = 3


def merging_events() -> list[bytes]:
    """Devices seen first anonymous, then identified: the mappings must merge each pair into one user
    (the generated day keeps its anonymous and identified devices apart)."""
    lines = []
    for i in range(MERGED_DEVICES):
        at = epoch("2024-11-22T12:00:00") + 60 * i
        lines.append(event_line("Viewed Page", at, f"$device:merge-d{i}", f"m-a{i}", **{"$device_id": f"merge-d{i}"}))
        lines.append(event_line("Signed Up", at + 30, f"merge-user{i}", f"m-b{i}",
                                **{"$device_id": f"merge-d{i}", "$user_id": f"merge-user{i}"}))
    return lines


def write_source(folder, generated_day):
    """The generated day, the merging devices and 50 profiles, as a `type: local` source folder."""
    folder.mkdir()
    shutil.copy(generated_day, folder / generated_day.name)
    (folder / "2024-11-22-merging.jsonl").write_bytes(b"\n".join(merging_events()) + b"\n")
    write_profiles(folder, city="Kyiv")
    return folder


def write_profiles(folder, city: str):
    (folder / "profiles.jsonl").write_bytes(b"\n".join(
        orjson.dumps({"$distinct_id": f"u{i}", "$properties": {"$email": f"u{i}@example.com", "$city": city}})
        for i in range(PROFILES)
    ))


def source_lines(generated_day) -> list[bytes]:
    return generated_day.read_bytes().splitlines() + merging_events()


def project(source_dir) -> dict:
    return local_project(PROJECT_ID, source_dir, profiles=True, timezone=TZ)


def pipelines(daily: dict, hourly: dict, tables: dict, prefix: str) -> list[dict]:
    """Daily and hourly events into two destinations (one table would hold both), people and identity
    beside the daily events."""
    events = {"data_source": "events", "from_date": "2024-11-20", "created": "2024-11-20"}
    return [
        {"name": f"{prefix}_daily", **events, "frequency": "daily", "destination": daily},
        {"name": f"{prefix}_hourly", **events, "frequency": "hourly", "destination": hourly},
        {"name": f"{prefix}_people", "data_source": "people", "destination": tables},
        {"name": f"{prefix}_identity", "data_source": "identity", "destination": tables},
    ]


def kept_events(lines, window_utc: tuple[str, str]) -> list[dict]:
    """The events of a window after Mixpanel's dedup, as parsed export lines."""
    expected = dedup_expected(lines, epoch(window_utc[0]), epoch(window_utc[1]))
    return list(expected["kept"].values()) + expected["no_insert_id"]


def expected_unique_users(kept: list[dict], mapping: dict[str, str]) -> int:
    """COUNT(DISTINCT COALESCE(resolved_distinct_id, distinct_id)) computed in Python."""
    users = {mapping.get(e["properties"]["distinct_id"], e["properties"]["distinct_id"]) for e in kept}
    assert len(users) == len({e["properties"]["distinct_id"] for e in kept}) - MERGED_DEVICES
    return len(users)


def expected_cities(kept: list[dict]) -> dict:
    return dict(collections.Counter(e["properties"].get("$city") for e in kept))


def window_of(day: str) -> PartitionWindow:
    start = dt.datetime.fromisoformat(day).replace(tzinfo=LA)
    end = start + dt.timedelta(days=1)
    return PartitionWindow(day, start.astimezone(dt.timezone.utc), end.astimezone(dt.timezone.utc), start, "daily")


def staged_window(tmp_path, window: PartitionWindow, lines: list[bytes]):
    """Stage export lines for one window, as the events asset would (the destination-level tests)."""
    staged = stage_events([b"\n".join(lines) + b"\n"], [window], [window.partition_key],
                          staging_root=tmp_path, workers=1)
    return staged.windows[0]


def corrupt(staged) -> None:
    """Append a row no warehouse can parse to a staged window: its load must fail."""
    segment = staged.segments[0]
    segment.path.write_bytes(segment.path.read_bytes() + b'{"device_id": "d", "distinct_id": "broken\n')
    segment.rows += 1
    staged.rows_read += 1


def misplace(staged, at_iso: str) -> None:
    """Move a staged row's time outside its window: the destination must refuse the window."""
    segment = staged.segments[0]
    rows = segment.path.read_bytes().splitlines()
    row = orjson.loads(rows[0])
    row["time"] = epoch(at_iso)
    segment.path.write_bytes(b"\n".join([orjson.dumps(row), *rows[1:]]) + b"\n")


def good_events(n: int, city: str = "Oslo") -> list[bytes]:
    return [event_line("Signed Up", epoch("2024-11-22T12:00:00") + i, f"u{i}", f"i{i}", **{"$city": city})
            for i in range(n)]
