"""Property-based tests of identity resolution on random link sets (hypothesis).

The production resolver (DuckDB + an integer union-find) is checked against invariants every
mapping must have, and against a plain, slow model that applies the rules of identity.py's
docstring link by link with Python sets. Ids come from small pools, so links collide, chain,
contest devices and fill clusters; Original's cluster cap is lowered so it is actually reached.
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mixpanel_assets.transform.identity import resolve_link_files, resolve_links
from mixpanel_assets.transform.link_store import StateStore
from mixpanel_assets.transform.records import LINK_ALIAS, LINK_DEVICE_USER, LINK_IDENTIFY, LINK_MERGE, LINK_REKEY

DEVICE = "$device:"
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

devices = st.sampled_from([f"{DEVICE}d{i}" for i in range(3)] + [f"{DEVICE}é", DEVICE])
users = st.sampled_from(["u1", "u2", "u3", "U4", "ü5", "", f"{DEVICE}u1"])
any_id = st.one_of(devices, users, st.sampled_from(["a1", "a2", "a3", "Z", "é"]))
times = st.integers(0, 6).map(float)  # few values: links often share a time, so tie-breaks matter

simplified_link = st.one_of(
    st.tuples(st.just(LINK_DEVICE_USER), devices, users, times),
    st.tuples(st.just(LINK_REKEY), any_id, any_id, times),
    st.tuples(st.sampled_from([LINK_IDENTIFY, LINK_ALIAS, LINK_MERGE]), any_id, any_id, times),
)
original_link = st.tuples(
    st.sampled_from([LINK_IDENTIFY, LINK_IDENTIFY, LINK_IDENTIFY, LINK_ALIAS, LINK_MERGE, LINK_REKEY, LINK_DEVICE_USER]),
    any_id, any_id, times,
)


def well_formed(a: str, b: str) -> bool:
    return a != b and a not in ("", DEVICE) and b not in ("", DEVICE)


def earliest(links) -> dict:
    first: dict = {}
    for kind, a, b, t in links:
        first[(kind, a, b)] = min(t, first.get((kind, a, b), math.inf))
    return first


def simplified_model(links) -> tuple[dict, int]:
    """Each device goes to the user of its earliest usable link (same time: smallest user)."""
    pairs: dict = {}
    for (kind, a, b), t in earliest(links).items():
        usable = kind == LINK_DEVICE_USER or (kind == LINK_REKEY and a.startswith(DEVICE))
        if usable and not b.startswith(DEVICE) and well_formed(a, b):
            pairs[(a, b)] = min(t, pairs.get((a, b), math.inf))
    owner: dict = {}
    for (device, user), _ in sorted(pairs.items(), key=lambda item: (item[1], item[0][1])):
        owner.setdefault(device, user)
    return owner, len(pairs) - len(owner)


ORDER = {LINK_REKEY: 0, LINK_IDENTIFY: 1, LINK_ALIAS: 2, LINK_MERGE: 3}


class _Cluster:
    def __init__(self, first: str):
        self.ids = {first}
        self.identified = False
        self.claims: list[tuple[int, int, str]] = []  # (tier, link sequence, id)


def original_model(links, cap: int) -> tuple[dict, int, int]:
    """Original ID Merge's rules applied link by link in (time, kind, a, b) order, with sets."""
    ordered = sorted(
        ((t, ORDER[kind], kind, a, b) for (kind, a, b), t in earliest(links).items()
         if kind in ORDER and well_formed(a, b)),
    )
    cluster_of: dict[str, _Cluster] = {}
    aliases: set[str] = set()
    conflicts = rejected = 0

    def of(x: str) -> _Cluster:
        return cluster_of.setdefault(x, _Cluster(x))

    for seq, (_, _, kind, a, b) in enumerate(ordered, start=1):
        ca, cb = of(a), of(b)
        if kind == LINK_IDENTIFY and ca is not cb and ca.identified:
            conflicts += 1
            continue
        if kind == LINK_ALIAS and ca is not cb and a in aliases:
            conflicts += 1
            continue
        if ca is not cb:
            if len(ca.ids) + len(cb.ids) > cap:
                rejected += 1
                continue
            cb.ids |= ca.ids
            cb.identified |= ca.identified
            cb.claims += ca.claims
            for x in ca.ids:
                cluster_of[x] = cb
        if kind == LINK_IDENTIFY:
            cb.identified = True
        if kind == LINK_ALIAS:
            aliases.add(a)
        tier = {LINK_REKEY: 0, LINK_IDENTIFY: 1, LINK_ALIAS: 1}.get(kind)
        if tier is not None:
            cb.claims.append((tier, seq, b))
    mapping = {}
    for cluster in {id(c): c for c in cluster_of.values()}.values():
        canonical = min(cluster.claims)[2] if cluster.claims else min(cluster.ids)
        mapping.update({x: canonical for x in cluster.ids if x != canonical})
    return mapping, conflicts, rejected


def resolved(links, system: str, **options):
    with tempfile.TemporaryDirectory() as tmp:
        resolution = resolve_links(links, system, tmp, **options)
        return resolution, resolution.mapping(), list(resolution.lines())


def assert_flat_and_sorted(mapping: dict, lines: list[bytes]) -> None:
    assert len(lines) == len(mapping), "a distinct_id appears more than once"
    keys = list(mapping)
    assert keys == sorted(keys, key=lambda s: s.encode()), "rows are not sorted by distinct_id"
    assert not set(mapping.values()) & set(mapping), "a resolved id is itself mapped (a chain)"
    assert all(k != v for k, v in mapping.items())


@PROPERTY_SETTINGS
@given(st.lists(simplified_link, max_size=40))
@example([(LINK_DEVICE_USER, "$device:d", "u2", 1.0), (LINK_DEVICE_USER, "$device:d", "u1", 1.0)])  # a tie
def test_simplified_maps_each_device_once_to_the_user_of_its_first_link(links):
    resolution, mapping, lines = resolved(links, "simplified")
    assert_flat_and_sorted(mapping, lines)
    assert all(k.startswith(DEVICE) for k in mapping), "only devices are merged into users"
    assert not any(v.startswith(DEVICE) for v in mapping.values()), "a cluster's canonical id is its one user"
    expected, conflicts = simplified_model(links)
    assert mapping == expected
    assert resolution.conflicts == conflicts
    assert resolution.clusters == len(set(expected.values()))
    assert resolution.links == len(earliest(links))


@PROPERTY_SETTINGS
@given(st.lists(original_link, max_size=40), st.sampled_from([2, 3, 4, 500]))
# An identify refused by the cap does not make its cluster "identified".
@example([(LINK_MERGE, "a3", "u2", 0.0), (LINK_IDENTIFY, "a4", "u2", 1.0), (LINK_IDENTIFY, "a3", "u3", 2.0)], 2)
def test_original_follows_the_rules_and_never_exceeds_the_cluster_cap(links, cap):
    resolution, mapping, lines = resolved(links, "original", max_cluster_ids=cap)
    assert_flat_and_sorted(mapping, lines)
    sizes: dict[str, int] = {}
    for canonical in mapping.values():
        sizes[canonical] = sizes.get(canonical, 1) + 1
    assert all(size <= cap for size in sizes.values())
    expected, conflicts, rejected = original_model(links, cap)
    assert mapping == expected
    assert (resolution.conflicts, resolution.rejected_merges) == (conflicts, rejected)
    assert resolution.clusters == len(sizes)


@PROPERTY_SETTINGS
@given(st.sampled_from(["simplified", "original"]),
       st.lists(st.tuples(st.sampled_from([LINK_IDENTIFY, LINK_ALIAS, LINK_MERGE, LINK_REKEY, LINK_DEVICE_USER]),
                          any_id, any_id, st.floats(0, 1e9)), max_size=40, unique_by=lambda link: link[3]),
       st.randoms(use_true_random=False), st.integers(1, 4))
def test_the_result_does_not_depend_on_input_order_or_partitioning(system, links, rnd: random.Random, files):
    """Distinct times; the links shuffled and spread over partition files (with copies) resolve alike."""
    _, mapping, lines = resolved(links, system)
    shuffled = list(links)
    rnd.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state")
        for n in range(files):
            part = shuffled[n::files] + rnd.sample(shuffled, len(shuffled) // 3)  # copies, as hourly + daily give
            store.write_links("events", f"p{n}", earliest(part))
        other = resolve_link_files(store.link_files(["events"]), system, Path(tmp) / "work")
        assert list(other.lines()) == lines
