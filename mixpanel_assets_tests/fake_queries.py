"""The Query API reads other Mixpanel tools make beside Export and Engage, computed from the fake's data.

Why it exists: Airbyte's Mixpanel source (and tools built like it) discover schemas and cohorts
before they export, with `GET /api/2.0/events/properties/top`, `GET /api/2.0/engage/properties`
and `GET /api/2.0/cohorts/list` (airbytehq/airbyte source-mixpanel `manifest.yaml`,
`streams/export.py` ExportSchema, `streams/engage.py` EngageSchema). Mixpanel's current docs
serve the same reads under `/api/query/...`; both prefixes are answered. The shapes:

- events/properties/top (Mixpanel docs `openapi/query.openapi.yaml`, "Top Event Properties"):
  `event` (one name, required), `limit` (default 10) -> `{"<property>": {"count": N}, ...}`, the
  number of that event's events carrying each property, most frequent first. Mixpanel does not
  say over which days it counts; the fake counts every stored event of that name.
- engage/properties (not in Mixpanel's current reference; shape from Airbyte's EngageSchema
  docstring and unit-test fixtures): `{"results": {"<property>": {"count": N, "type": T}}}` with
  T one of string, number, boolean, datetime, list, object; `limit` caps the properties returned.
- cohorts/list (query.openapi.yaml "List Saved Cohorts", documented as POST, called with GET by
  Airbyte): `[{"count", "is_visible", "description", "created", "project_id", "id", "name"}]`,
  `count` being the profiles the cohort's `where` selects now.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from mixpanel_assets_tests.fake_where import Node, selects

TOP_PROPERTIES_PATHS = ("/api/query/events/properties/top", "/api/2.0/events/properties/top")
PROFILE_PROPERTIES_PATHS = ("/api/query/engage/properties", "/api/2.0/engage/properties")
COHORTS_PATHS = ("/api/query/cohorts/list", "/api/2.0/cohorts/list")
QUERY_PATHS = TOP_PROPERTIES_PATHS + PROFILE_PROPERTIES_PATHS + COHORTS_PATHS

_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")


class QueryError(ValueError):
    """A bad parameter of a Query API read (answered with 400 and this message)."""


@dataclass
class Cohort:
    """A saved cohort: the profiles its `where` selects (None: every profile) or its listed ids."""

    id: int
    name: str
    where: str | None
    node: Node | None
    distinct_ids: frozenset[str] | None
    description: str
    created: str  # "YYYY-MM-DD HH:MM:SS", as Mixpanel lists it
    is_visible: bool

    def members(self, profiles: dict[str, dict]) -> list[str]:
        return [distinct_id for distinct_id, props in profiles.items()
                if (self.distinct_ids is None or distinct_id in self.distinct_ids)
                and (self.node is None or selects(self.node, (props, None)))]


def _limit(fields: dict[str, str], default: int | None) -> int | None:
    raw = fields.get("limit")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"limit must be an integer, got {raw!r}") from None
    if value < 1:
        raise QueryError(f"limit must be at least 1, got {value}")
    return value


def top_event_properties(events: list[dict], fields: dict[str, str]) -> dict:
    name = fields.get("event")
    if not name:
        raise QueryError("event is a required parameter (one event name)")
    counts: Counter[str] = Counter()
    for event in events:
        if event.get("event") == name:
            counts.update((event.get("properties") or {}).keys())
    return {prop: {"count": count} for prop, count in counts.most_common(_limit(fields, 10))}


def property_type(value: object) -> str:
    """The type Mixpanel reports for a profile property value (ISO date strings are datetime)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str) and _ISO_DATETIME.fullmatch(value):
        return "datetime"
    return "string"


def profile_properties(profiles: dict[str, dict], fields: dict[str, str]) -> dict:
    counts: Counter[str] = Counter()
    types: dict[str, Counter[str]] = {}
    for props in profiles.values():
        for prop, value in props.items():
            if value is None:
                continue
            counts[prop] += 1
            types.setdefault(prop, Counter())[property_type(value)] += 1
    return {"results": {prop: {"count": count, "type": types[prop].most_common(1)[0][0]}
                        for prop, count in counts.most_common(_limit(fields, None))}}


def cohorts_list(cohorts: dict[int, Cohort], profiles: dict[str, dict], project_id: int) -> list[dict]:
    return [{"count": len(cohort.members(profiles)), "is_visible": int(cohort.is_visible),
             "description": cohort.description, "created": cohort.created, "project_id": project_id,
             "id": cohort.id, "name": cohort.name} for cohort in sorted(cohorts.values(), key=lambda c: c.id)]
