"""Mixpanel's documented identity flows, exported end to end: source files -> events + identity assets -> DuckDB.

Each flow (MIXPANEL_SPEC.md 6.2 for Original ID Merge, 6.4 for Simplified) is written as
export-format lines, exported through the Dagster assets, and checked twice: the mapping rows, and
the unique users that `mp_master_event_resolved` (COALESCE through the mapping) counts.

All flows of one ID merge system share one exported project (one events run, one identity run),
so they also show that clusters of different users do not bleed into each other. Ids are
namespaced per flow (`A.D1` is the doc's D1 in flow A); each event carries its flow's name.
"""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from mixpanel_assets.destinations.io_managers import ALLOW_SHRINK_TAG
from mixpanel_assets_tests.helpers import definitions, epoch, event_line, run_partition

DAY = "2024-11-22"


class Flows:
    """Builds export lines in event-time order, with distinct_id set the way Mixpanel sets it."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.time = epoch(f"{DAY}T08:00:00")

    def _add(self, flow: str, name: str, distinct_id: str, **props) -> None:
        self.time += 60
        self.lines.append(event_line(name, self.time, distinct_id, f"{flow}-{len(self.lines)}", flow=flow, **props))

    def simplified(self, flow: str, device: str | None = None, user: str | None = None,
                   distinct_id: str | None = None, rekeyed_from: str | None = None) -> None:
        """An event as ingested: distinct_id = $user_id, else `$device:` + $device_id, else as sent.

        `rekeyed_from` makes it a row the Export API re-keyed after the merge: distinct_id is the
        user, the old id is kept in `$distinct_id_before_identity`.
        """
        props = {}
        if device is not None:
            props["$device_id"] = f"{flow}.{device}"
        if user is not None:
            props["$user_id"] = f"{flow}.{user}"
        if rekeyed_from is not None:
            props["$distinct_id_before_identity"] = rekeyed_from
            distinct_id = f"{flow}.{distinct_id}"
        elif user is not None:
            distinct_id = f"{flow}.{user}"
        elif device is not None:
            distinct_id = f"$device:{flow}.{device}"
        self._add(flow, "Viewed Page", distinct_id, **props)

    def original(self, flow: str, distinct_id: str, device: str | None = None, user: str | None = None) -> None:
        """An event of an Original ID Merge project; its $device_id/$user_id must not link anything."""
        props = {}
        if device is not None:
            props["$device_id"] = f"{flow}.{device}"
        if user is not None:
            props["$user_id"] = f"{flow}.{user}"
        self._add(flow, "Viewed Page", f"{flow}.{distinct_id}", **props)

    def identify(self, flow: str, anon: str, identified: str) -> None:
        self._add(flow, "$identify", f"{flow}.{identified}",
                  **{"$anon_id": f"{flow}.{anon}", "$identified_id": f"{flow}.{identified}"})

    def alias(self, flow: str, alias: str, distinct_id: str) -> None:
        self._add(flow, "$create_alias", f"{flow}.{distinct_id}", alias=f"{flow}.{alias}")

    def merge(self, flow: str, *ids: str) -> None:
        self._add(flow, "$merge", f"{flow}.{ids[0]}", **{"$distinct_ids": [f"{flow}.{i}" for i in ids]})


def simplified_flows() -> Flows:
    f = Flows()
    # A. New user signup: two anonymous events, then identify(U1) on D1.
    f.simplified("A", device="D1")
    f.simplified("A", device="D1")
    f.simplified("A", device="D1", user="U1")
    # B. Returning user on a new device. Events 1-2 come back from the Export API re-keyed to U1.
    f.simplified("B", device="D1", distinct_id="U1", rekeyed_from="$device:B.D1")
    f.simplified("B", device="D1", distinct_id="U1", rekeyed_from="$device:B.D1")
    f.simplified("B", device="D1", user="U1")
    f.simplified("B", device="D2")
    f.simplified("B", device="D2")
    f.simplified("B", device="D2", user="U1")
    # C. Multiple users, one device: U1 on D1, logout + reset() gives D2, then U2 signs in on D2.
    f.simplified("C", device="D1")
    f.simplified("C", device="D1", user="U1")
    f.simplified("C", device="D2")
    f.simplified("C", device="D2")
    f.simplified("C", device="D2", user="U2")
    # D1. Migration guide: charlie signs up on anonymous111; events with only distinct_id (the
    # backward-compatible form, a user and a $device: id); logout, anonymous222, charlie again.
    f.simplified("D1", device="anonymous111", user="charlie")
    f.simplified("D1", device="anonymous111")
    f.simplified("D1", distinct_id="D1.charlie")
    f.simplified("D1", distinct_id="$device:D1.anonymous111")
    f.simplified("D1", device="anonymous222")
    f.simplified("D1", device="anonymous222", user="charlie")
    # D2. Migration guide: taylor (not charlie) logs in on anonymous222.
    f.simplified("D2", device="anonymous111", user="charlie")
    f.simplified("D2", device="anonymous222")
    f.simplified("D2", device="anonymous222", user="taylor")
    # D3. Migration guide: a phone number sent as $device_id is a device of charlie; sent later as
    # $user_id it is a user of its own.
    f.simplified("D3", device="+6512345678", user="charlie")
    f.simplified("D3", user="+6512345678")
    # E. A device already linked to a user stays with that user (errAnonDistinctIdAssignedAlready).
    f.simplified("E", device="shared", user="U1")
    f.simplified("E", device="shared", user="U2")
    return f


def original_flows() -> Flows:
    f = Flows()
    # 1. New user: events as D1, identify(U1). The SDK's $device_id/$user_id link nothing here.
    f.original("O1", "D1", device="D1")
    f.original("O1", "D1", device="D1")
    f.identify("O1", "D1", "U1")
    f.original("O1", "U1", device="D1", user="U1")
    # 2. Returning user on a new device D2: identify(U1) again adds D2 to {D1, U1}.
    f.original("O2", "D1", device="D1")
    f.identify("O2", "D1", "U1")
    f.original("O2", "D2", device="D2")
    f.identify("O2", "D2", "U1")
    f.original("O2", "U1", device="D2", user="U1")
    # 3. Multiple users, one device: U1 on D1, logout (still U1), reset() -> D2, identify(U2).
    f.original("O3", "D1", device="D1")
    f.identify("O3", "D1", "U1")
    f.original("O3", "U1", device="D1", user="U1")
    f.original("O3", "U1", device="D1", user="U1")
    f.original("O3", "D2", device="D2")
    f.identify("O3", "D2", "U2")
    f.original("O3", "U2", device="D2", user="U2")
    # 3b. The same without reset(): D1 is already merged with U1, so identify(U2) on D1 is refused.
    f.original("O4", "D1", device="D1")
    f.identify("O4", "D1", "U1")
    f.identify("O4", "D1", "U2")
    f.original("O4", "U2", device="D1", user="U2")
    # Two user ids of one person: an email alias, then a $merge with a second account.
    f.original("O5", "D1", device="D1")
    f.identify("O5", "D1", "U1")
    f.alias("O5", "mail", "U1")
    f.original("O5", "mail")
    f.original("O5", "U2")
    f.merge("O5", "U1", "U2")
    return f


def project_defs(tmp_path, system: str, days: dict[str, Flows]) -> dg.Definitions:
    """A project reading `days` (day -> events) from local files into DuckDB, events and identity."""
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    write_days(source, days)
    project = {"id": 4242, "timezone": "UTC", "identity_merge": system, "state": {"path": "state"},
               "source": {"type": "local", "path": str(source)}}
    pipelines = [
        {"name": "events", "data_source": "events", "frequency": "daily", "from_date": "2024-11-20",
         "created": "2024-11-20", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
        {"name": "identity", "data_source": "identity", "destination": {"type": "duckdb", "path": "wh.duckdb"}},
    ]
    return definitions(tmp_path, project, pipelines)


def write_days(source, days: dict[str, Flows]) -> None:
    for day, flows in days.items():
        (source / f"{day}.jsonl").write_bytes(b"\n".join(flows.lines) + b"\n")


def export_identity(defs, instance, *days: str, tags: dict[str, str] | None = None) -> dict:
    """Export the events of `days`, then the identity mapping; returns the mapping's metadata."""
    for day in days:
        run_partition(defs, "events_job", instance, day)
    result = run_partition(defs, "identity_job", instance, tags=tags)
    (materialization,) = result.asset_materializations_for_node("identity__mp_identity_mappings_data")
    return {k: v.value for k, v in materialization.metadata.items()}


def export(tmp_path, system: str, flows: Flows):
    defs = project_defs(tmp_path, system, {DAY: flows})
    with dg.instance_for_test() as instance:
        metadata = export_identity(defs, instance, DAY)
    return tmp_path / "wh.duckdb", metadata


@pytest.fixture(scope="module")
def simplified(tmp_path_factory):
    return export(tmp_path_factory.mktemp("simplified"), "simplified", simplified_flows())


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return export(tmp_path_factory.mktemp("original"), "original", original_flows())


def mapping_of(db, flow: str) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute(
            "SELECT distinct_id, resolved_distinct_id FROM mp_identity_mappings_data "
            "WHERE resolved_distinct_id LIKE ? ORDER BY 1", [f"{flow}.%"]
        ).fetchall()
    return dict(rows)


def users_of(db, flow: str) -> tuple[int, int]:
    """(unique users after resolution, distinct ids as exported) among the flow's events."""
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(
            "SELECT count(DISTINCT resolved_distinct_id), count(DISTINCT distinct_id) FROM mp_master_event_resolved "
            "WHERE properties->>'flow' = ?", [flow]
        ).fetchone()


def test_new_user_signup_merges_the_anonymous_device_into_the_user(simplified):
    db, _ = simplified
    assert mapping_of(db, "A") == {"$device:A.D1": "A.U1"}
    assert users_of(db, "A") == (1, 2)


def test_returning_user_on_a_new_device_adds_the_device_and_reads_rekeyed_rows_as_links(simplified):
    db, _ = simplified
    assert mapping_of(db, "B") == {"$device:B.D1": "B.U1", "$device:B.D2": "B.U1"}
    assert users_of(db, "B") == (1, 2)


def test_multiple_users_on_one_device_with_reset_stay_two_users(simplified):
    db, _ = simplified
    assert mapping_of(db, "C") == {"$device:C.D1": "C.U1", "$device:C.D2": "C.U2"}
    assert users_of(db, "C") == (2, 4)


def test_migration_guide_charlie_on_two_devices_and_distinct_id_only_events_is_one_user(simplified):
    db, _ = simplified
    assert mapping_of(db, "D1") == {"$device:D1.anonymous111": "D1.charlie", "$device:D1.anonymous222": "D1.charlie"}
    assert users_of(db, "D1") == (1, 3)


def test_migration_guide_taylor_logging_in_on_the_second_device_gets_that_device(simplified):
    db, _ = simplified
    assert mapping_of(db, "D2") == {"$device:D2.anonymous111": "D2.charlie", "$device:D2.anonymous222": "D2.taylor"}
    assert users_of(db, "D2") == (2, 3)


def test_migration_guide_phone_number_as_device_then_as_user_makes_two_users(simplified):
    db, _ = simplified
    assert mapping_of(db, "D3") == {"$device:D3.+6512345678": "D3.charlie"}
    assert users_of(db, "D3") == (2, 2)


def test_a_device_already_linked_stays_with_its_first_user_and_the_conflict_is_reported(simplified):
    db, metadata = simplified
    assert mapping_of(db, "E") == {"$device:E.shared": "E.U1"}
    assert users_of(db, "E") == (2, 2)
    assert metadata["conflicts"] == 1
    assert metadata["clusters"] == 9  # A 1, B 1, C 2, D1 1, D2 2, D3 1, E 1
    assert metadata["identity_merge"] == "simplified"


def test_original_new_user_identify_merges_device_and_user_with_the_user_id_canonical(original):
    db, _ = original
    assert mapping_of(db, "O1") == {"O1.D1": "O1.U1"}
    assert users_of(db, "O1") == (1, 2)


def test_original_returning_user_identify_on_a_new_device_joins_the_cluster(original):
    db, _ = original
    assert mapping_of(db, "O2") == {"O2.D1": "O2.U1", "O2.D2": "O2.U1"}
    assert users_of(db, "O2") == (1, 3)


def test_original_multiple_users_on_one_device_with_reset_stay_two_clusters(original):
    db, _ = original
    assert mapping_of(db, "O3") == {"O3.D1": "O3.U1", "O3.D2": "O3.U2"}
    assert users_of(db, "O3") == (2, 4)


def test_original_identify_of_an_already_identified_anon_id_is_refused(original):
    db, metadata = original
    assert mapping_of(db, "O4") == {"O4.D1": "O4.U1"}
    assert users_of(db, "O4") == (2, 3)
    assert metadata["conflicts"] == 1


def test_original_alias_and_merge_join_two_user_ids_of_one_person(original):
    db, metadata = original
    assert mapping_of(db, "O5") == {"O5.D1": "O5.U1", "O5.U2": "O5.U1", "O5.mail": "O5.U1"}
    assert users_of(db, "O5") == (1, 4)
    assert metadata["rejected_merges"] == 0 and metadata["identity_merge"] == "original"


def test_a_reexported_day_replaces_its_links_so_a_vanished_link_leaves_the_mapping(tmp_path, instance):
    before = Flows()
    before.simplified("R", device="D1")
    before.simplified("R", device="D1", user="R1")
    defs = project_defs(tmp_path, "simplified", {DAY: before})
    export_identity(defs, instance, DAY)
    assert mapping_of(tmp_path / "wh.duckdb", "R") == {"$device:R.D1": "R.R1"}
    after = Flows()  # the day changed at the source: the login event no longer carries the device
    after.simplified("R", device="D1")
    after.simplified("R", user="R1")
    write_days(tmp_path / "source", {DAY: after})
    # The mapping empties: the shrink guard refuses that unless the run allows it.
    run_partition(defs, "events_job", instance, DAY)
    assert not run_partition(defs, "identity_job", instance, raise_on_error=False).success
    assert mapping_of(tmp_path / "wh.duckdb", "R") == {"$device:R.D1": "R.R1"}
    metadata = export_identity(defs, instance, tags={ALLOW_SHRINK_TAG: "true"})
    assert mapping_of(tmp_path / "wh.duckdb", "R") == {}
    assert users_of(tmp_path / "wh.duckdb", "R") == (2, 2)
    assert metadata["links"] == 0


def test_links_of_every_exported_day_combine_and_the_earliest_wins_whatever_the_export_order(tmp_path, instance):
    first_day, second_day = Flows(), Flows()
    first_day.time = epoch("2024-11-21T09:00:00")
    first_day.simplified("M", device="D1", user="U1")
    second_day.simplified("M", device="D1", user="U2")
    second_day.simplified("M", device="D2", user="U2")
    defs = project_defs(tmp_path, "simplified", {"2024-11-21": first_day, DAY: second_day})
    export_identity(defs, instance, DAY)
    assert mapping_of(tmp_path / "wh.duckdb", "M") == {"$device:M.D1": "M.U2", "$device:M.D2": "M.U2"}
    metadata = export_identity(defs, instance, "2024-11-21")  # a backfill of the earlier day
    assert mapping_of(tmp_path / "wh.duckdb", "M") == {"$device:M.D1": "M.U1", "$device:M.D2": "M.U2"}
    assert (metadata["links"], metadata["conflicts"], metadata["clusters"]) == (3, 1, 2)
    assert users_of(tmp_path / "wh.duckdb", "M") == (2, 2)
