"""Identity resolution rules one at a time, on hand-written link sets (no Dagster, no exports)."""

from __future__ import annotations

import pytest

from mixpanel_assets.transform import identity
from mixpanel_assets.transform.identity import MAX_CLUSTER_IDS, IdentityLinksError, resolve_link_files, resolve_links
from mixpanel_assets.transform.link_store import StateStore
from mixpanel_assets.transform.records import LINK_ALIAS, LINK_DEVICE_USER, LINK_IDENTIFY, LINK_MERGE, LINK_REKEY


def resolve(tmp_path, links, system):
    return resolve_links(links, system, tmp_path)


def test_original_cluster_stops_at_500_ids_and_counts_each_refused_merge(tmp_path):
    links = [(LINK_IDENTIFY, f"anon-{i:03d}", "kiosk-user", float(i)) for i in range(MAX_CLUSTER_IDS)]
    resolution = resolve(tmp_path, links, "original")
    mapping = resolution.mapping()
    assert len(mapping) == MAX_CLUSTER_IDS - 1 and set(mapping.values()) == {"kiosk-user"}
    assert "anon-499" not in mapping  # the user and 499 anonymous ids are 500; one more would be 501
    assert (resolution.rejected_merges, resolution.conflicts, resolution.clusters) == (1, 0, 1)


def test_original_canonical_is_the_id_mixpanel_rekeyed_to_before_the_identified_id(tmp_path):
    links = [(LINK_IDENTIFY, "D1", "U1", 1.0), (LINK_REKEY, "U1", "D1", 2.0)]
    assert resolve(tmp_path, links, "original").mapping() == {"U1": "D1"}


def test_original_canonical_without_identify_alias_or_rekey_is_the_smallest_id(tmp_path):
    links = [(LINK_MERGE, "zed", "bob", 1.0), (LINK_MERGE, "bob", "amy", 2.0)]
    assert resolve(tmp_path, links, "original").mapping() == {"bob": "amy", "zed": "amy"}


def test_original_alias_cannot_point_to_a_second_id_but_aliases_can_chain(tmp_path):
    links = [
        (LINK_ALIAS, "mail", "U1", 1.0),
        (LINK_ALIAS, "mail", "U2", 2.0),  # refused: mail already points to U1
        (LINK_ALIAS, "phone", "mail", 3.0),  # a chain: phone -> mail -> U1
    ]
    resolution = resolve(tmp_path, links, "original")
    assert resolution.mapping() == {"mail": "U1", "phone": "U1"}
    assert resolution.conflicts == 1


def test_original_ignores_device_and_user_properties(tmp_path):
    links = [(LINK_DEVICE_USER, "$device:D1", "U1", 1.0), (LINK_IDENTIFY, "D1", "U1", 2.0)]
    resolution = resolve(tmp_path, links, "original")
    assert resolution.mapping() == {"D1": "U1"}
    assert resolution.ignored_links == 1


def test_simplified_ignores_identity_events_and_links_that_would_merge_users(tmp_path):
    links = [
        (LINK_DEVICE_USER, "$device:D1", "U1", 1.0),
        (LINK_IDENTIFY, "D2", "U1", 2.0),
        (LINK_ALIAS, "mail", "U1", 3.0),
        (LINK_MERGE, "U1", "U2", 4.0),
        (LINK_REKEY, "U3", "U1", 5.0),  # a user re-keyed to a user: Simplified never merges users
        (LINK_DEVICE_USER, "$device:D3", "$device:D4", 6.0),  # a "user" that is a device id
        (LINK_DEVICE_USER, "$device:D5", "", 7.0),  # an empty user id
    ]
    resolution = resolve(tmp_path, links, "simplified")
    assert resolution.mapping() == {"$device:D1": "U1"}
    assert (resolution.links, resolution.ignored_links, resolution.conflicts) == (7, 6, 0)


def test_simplified_first_link_wins_by_event_time_not_by_file_order(tmp_path):
    store = StateStore(tmp_path / "state")
    newer = store.write_links("events", "2024-11-23", {(LINK_DEVICE_USER, "$device:D1", "U2"): 200.0})
    older = store.write_links("events", "2024-11-22", {(LINK_DEVICE_USER, "$device:D1", "U1"): 100.0})
    resolution = resolve_link_files([newer, older], "simplified", tmp_path / "work")
    assert resolution.mapping() == {"$device:D1": "U1"} and resolution.conflicts == 1


def test_ids_with_quotes_unicode_and_control_characters_round_trip(tmp_path):
    odd = ["it's", 'say "hi"', "tab\there", "line\nbreak", "😀", "\u2028", "back\\slash"]
    links = [(LINK_DEVICE_USER, f"$device:{s}", f"user {s}", float(i)) for i, s in enumerate(odd)]
    workdir = tmp_path / "it's a folder"  # the paths go into SQL literals
    resolution = resolve_links(links, "simplified", workdir)
    assert resolution.mapping() == {f"$device:{s}": f"user {s}" for s in odd}


def test_original_links_applied_across_several_batches_give_the_same_result(tmp_path, monkeypatch):
    links = [(LINK_IDENTIFY, f"D{i}", f"U{i % 3}", float(i)) for i in range(20)]
    links += [(LINK_MERGE, "U0", "U1", 30.0), (LINK_IDENTIFY, "D0", "U2", 31.0)]
    whole = resolve_links(links, "original", tmp_path / "whole")
    monkeypatch.setattr(identity, "_BATCH", 3)
    batched = resolve_links(links, "original", tmp_path / "batched")
    assert list(batched.lines()) == list(whole.lines())
    assert batched.mapping()["U1"] == "U0" and batched.conflicts == 1


def test_no_links_make_an_empty_mapping_and_an_unknown_system_is_named(tmp_path):
    empty = StateStore(tmp_path / "state").write_links("events", "2024-11-22", {})
    for files in ([], [empty]):
        resolution = resolve_link_files(files, "original", tmp_path / "work")
        assert (resolution.rows, list(resolution.lines())) == (0, [])
    with pytest.raises(ValueError, match="'legacy'"):
        resolve_link_files([empty], "legacy", tmp_path / "work")


def test_rewriting_a_partitions_links_replaces_them(tmp_path):
    store = StateStore(tmp_path)
    store.write_links("events", "2024-11-22", {(LINK_DEVICE_USER, "$device:D1", "U1"): 1.0})
    store.write_links("events", "2024-11-22", {(LINK_DEVICE_USER, "$device:D2", "U1"): 2.0})
    assert list(store.iter_links(["events"])) == [(LINK_DEVICE_USER, "$device:D2", "U1", 2.0)]
    assert len(store.link_files(["events"])) == 1


def test_an_unreadable_links_file_fails_naming_the_file(tmp_path):
    store = StateStore(tmp_path / "state")
    good = store.write_links("events", "2024-11-21", {(LINK_DEVICE_USER, "$device:D1", "U1"): 1.0})
    bad = good.with_name("2024-11-22.jsonl.gz")
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(IdentityLinksError, match="2024-11-22.jsonl.gz"):
        resolve_link_files([good, bad], "simplified", tmp_path / "work")
