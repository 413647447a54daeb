"""Identity resolution: identity links -> `distinct_id -> resolved_distinct_id` mappings.

Mixpanel merges identities at query time; pipelines export events as ingested, so counting users
like the Mixpanel UI needs `COALESCE(resolved_distinct_id, distinct_id)` through this mapping
(MIXPANEL_SPEC.md 1.6, 6). Links come from exported events (records.identity_links) and are
resolved with the rules of the project's ID merge system:

Simplified ID Merge: a `$device_id` + `$user_id` pair on any event links `$device:<id>` to the
user; the user id is canonical; a cluster holds exactly one user; a device already linked to
another user stays with the first (first write wins, by event time) and the conflict is counted.
Re-keyed rows (`$distinct_id_before_identity`) link their old id to the new one the same way.

The output is flattened: one row per non-canonical id, pointing straight at its canonical id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mixpanel_assets.records import LINK_DEVICE_USER, LINK_REKEY

DEVICE_PREFIX = "$device:"


@dataclass
class Resolution:
    mappings: dict[str, str] = field(default_factory=dict)  # distinct_id -> resolved_distinct_id
    conflicts: int = 0
    links: int = 0

    def rows(self) -> list[tuple[str, str]]:
        return sorted(self.mappings.items())


def resolve_simplified(links: Iterable[tuple[str, str, str, float]]) -> Resolution:
    """Apply Simplified ID Merge to (kind, a, b, first_seen_time) links, earliest first."""
    result = Resolution()
    candidates = []
    for kind, a, b, time in links:
        result.links += 1
        if kind == LINK_DEVICE_USER:
            candidates.append((time, a, b))
        elif kind == LINK_REKEY and a.startswith(DEVICE_PREFIX) and not b.startswith(DEVICE_PREFIX):
            candidates.append((time, a, b))
    device_owner: dict[str, str] = {}
    for time, device, user in sorted(candidates):
        if device == user:
            continue
        owner = device_owner.get(device)
        if owner is None:
            device_owner[device] = user
        elif owner != user:
            result.conflicts += 1
    result.mappings = device_owner
    return result


def resolve(links: Iterable[tuple[str, str, str, float]], system: str = "simplified") -> Resolution:
    if system == "simplified":
        return resolve_simplified(links)
    raise ValueError(f"identity_merge {system!r} is not supported yet")
