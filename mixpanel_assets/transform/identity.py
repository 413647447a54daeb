"""Identity resolution: the identity links of exported events -> `distinct_id -> resolved_distinct_id`.

Pipelines export events as ingested, so counting users the way Mixpanel does needs
`COALESCE(resolved_distinct_id, distinct_id)` through a mapping (MIXPANEL_SPEC.md 1.6, 6.6).
Mixpanel computes that mapping from its ID clusters; we recompute it from the links found in the
exported events (records.identity_links, stored per partition by state.StateStore), with the
rules of the project's ID merge system (`project.identity_merge`).

Simplified ID Merge (MIXPANEL_SPEC.md 6.3, 6.4)
  * `$device_id` + `$user_id` on any event links `$device:<device_id>` to the user. A re-keyed
    export row links its `$distinct_id_before_identity` (a `$device:` id) to its distinct_id the
    same way: Mixpanel re-keyed it because that link exists.
  * The user id is canonical; a cluster is one user and its devices, so users never merge.
  * A device linked to several users stays with the first: the earliest link by event time (same
    time: the smallest user id). Mixpanel rejects the later ones (`errAnonDistinctIdAssignedAlready`);
    each rejected (device, user) pair is counted in `conflicts`.
  * Events with only a distinct_id (backward compatibility: `$device:X` is device X, any other value
    a user) carry one id, so they link nothing: their distinct_id already is the device or user id
    and resolves through the mapping like any other.
  * Ignored (counted in `ignored_links`): `$identify`, `$create_alias` and `$merge` (no meaning in
    Simplified), re-keyed rows whose old id is not a device, and links whose user id itself starts
    with `$device:` (it would make a device of a user and a chain in the mapping). Both systems
    also ignore a link of an id to itself or with an empty id.

Original ID Merge (MIXPANEL_SPEC.md 6.2), links applied in event-time order (same time: rekey,
identify, alias, merge, then by ids), each merge subject to the cluster cap:
  * `$identify` merges `$anon_id` into the cluster of `$identified_id`, unless the anon id's cluster
    already holds an identified id (an `$identified_id` of an earlier identify): a conflict. The docs
    also ask for a UUIDv4 anon id; that check is not applied, because Mixpanel's own SDKs sent
    non-UUID device ids for years and exports cannot tell which identifies Mixpanel refused.
  * `$create_alias` adds `alias` to the cluster of `distinct_id`; an alias already pointing into
    another cluster cannot point to a second one: a conflict.
  * `$merge` merges the clusters of its ids; re-keyed rows merge their old id into the new one.
  * A merge that would make a cluster of more than 500 ids is rejected (`rejected_merges`).
  * Canonical id: Mixpanel picks one at random inside the cluster and does not say which. We pick,
    deterministically: the id a re-keyed export row was re-keyed to (Mixpanel's own canonical id,
    as its Export API returns it); else the id the earliest successful `$identify` identified or
    `$create_alias` pointed to; else the smallest id in byte order. Within a tier the earliest link
    wins. User counts do not depend on this choice, only the label of each user does.

Output: one row per non-canonical id, pointing straight at its canonical id (flattened: no chains,
each distinct_id once), sorted by distinct_id in byte order so destination part names are stable.

Memory stays bounded for tens of millions of links: the strings never become Python objects in
bulk. DuckDB (with a memory limit, spilling to the work folder) reads the link files, removes
duplicate links, groups, sorts and joins; Simplified is a pure group-by. Original's order-dependent
rules run as a Python union-find over integer ids (ids ranked in byte order, about 20 bytes per id
in numpy arrays), fed in sorted batches; the result is joined back to strings by DuckDB and
written as sorted JSON lines.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mixpanel_assets.transform.link_store import StateStore, read_links_sql
from mixpanel_assets.transform.records import LINK_ALIAS, LINK_DEVICE_USER, LINK_IDENTIFY, LINK_MERGE, LINK_REKEY

DEVICE_PREFIX = "$device:"
MAX_CLUSTER_IDS = 500  # Original ID Merge cluster cap
SYSTEMS = ("simplified", "original")
DEFAULT_MEMORY_LIMIT = "512MB"
_BATCH = 1 << 20

# Processing order of Original links that share an event time.
_ORIGINAL_KINDS = (LINK_REKEY, LINK_IDENTIFY, LINK_ALIAS, LINK_MERGE)
_K_REKEY, _K_IDENTIFY, _K_ALIAS, _K_MERGE = range(4)
# Canonical-choice tiers, see the module docstring; lower wins.
_TIER_REKEYED, _TIER_NAMED, _TIER_NONE = 0, 1, 2


class IdentityLinksError(RuntimeError):
    """A stored identity-links file is unreadable (truncated, edited, or from another format)."""


@dataclass
class Resolution:
    """A resolved mapping, written as sorted JSON lines in `path`, and what it took."""

    system: str
    path: Path
    rows: int = 0
    links: int = 0  # distinct (kind, a, b) links read, after removing copies from other partitions
    clusters: int = 0  # clusters of two or more ids, i.e. distinct resolved ids
    conflicts: int = 0
    rejected_merges: int = 0
    ignored_links: int = 0

    def metadata(self) -> dict:
        return {
            "identity_merge": self.system,
            "links": self.links,
            "clusters": self.clusters,
            "conflicts": self.conflicts,
            "rejected_merges": self.rejected_merges,
            "ignored_links": self.ignored_links,
        }

    def lines(self, chunk_bytes: int = 4 << 20) -> Iterator[bytes]:
        """The rows as JSON lines without newlines, read in chunks (the file can be GBs)."""
        if not self.path.exists():
            return
        rest = b""
        with open(self.path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                yield from lines
        if rest:
            yield rest

    def mapping(self) -> dict[str, str]:
        """The whole mapping in memory, for small results (tests, checks)."""
        import orjson

        result = {}
        for line in self.lines():
            row = orjson.loads(line)
            result[row["distinct_id"]] = row["resolved_distinct_id"]
        return result


def resolve_link_files(files: list[Path], system: str, workdir: str | Path, *,
                       memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int | None = None,
                       max_cluster_ids: int = MAX_CLUSTER_IDS) -> Resolution:
    """Resolve the links stored in `files` (state.StateStore's format) with `system`'s rules.

    Everything is written inside `workdir` (the caller removes it); the mapping ends up in
    `<workdir>/mappings.jsonl`. `max_cluster_ids` is Original's cap (500; smaller in tests).
    """
    if system not in SYSTEMS:
        raise ValueError(f"identity_merge {system!r} is not one of {', '.join(SYSTEMS)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    resolution = Resolution(system, workdir / "mappings.jsonl")
    resolution.path.unlink(missing_ok=True)
    if not files:
        resolution.path.touch()
        return resolution
    spill = workdir / "spill"
    spill.mkdir(exist_ok=True)
    con = duckdb.connect(":memory:", config={
        "memory_limit": memory_limit,
        "threads": threads or min(os.cpu_count() or 1, 4),
        "temp_directory": str(spill),
        "preserve_insertion_order": False,  # every query that needs an order says so
    })
    try:
        try:
            con.execute(
                f"CREATE TABLE links AS SELECT kind, a, b, min(time) AS time FROM ({read_links_sql(files)}) "
                "WHERE kind IS NOT NULL AND a IS NOT NULL AND b IS NOT NULL GROUP BY kind, a, b"
            )
        except duckdb.Error as exc:
            raise IdentityLinksError(
                f"stored identity links could not be read ({exc}). Each file holds one exported partition's "
                "links: re-export that partition to rewrite it, or delete the file to drop its links."
            ) from exc
        resolution.links = con.execute("SELECT count(*) FROM links").fetchall()[0][0]
        if system == "simplified":
            _resolve_simplified(con, resolution)
        else:
            _resolve_original(con, resolution, max_cluster_ids)
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return resolution


def resolve_links(links: Iterable[tuple[str, str, str, float]], system: str, workdir: str | Path,
                  **options) -> Resolution:
    """Resolve in-memory (kind, a, b, time) links, e.g. in tests: stored first like an export's."""
    earliest: dict[tuple[str, str, str], float] = {}
    for kind, a, b, time in links:
        seen = earliest.get((kind, a, b))
        if seen is None or time < seen:
            earliest[(kind, a, b)] = time
    workdir = Path(workdir)
    path = StateStore(workdir / "state").write_links("links", "all", earliest)
    return resolve_link_files([path], system, workdir / "work", **options)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# A link to itself, or with an empty id (`""`, or `$device:` of an empty `$device_id`), merges nothing.
_WELL_FORMED = f"a <> b AND a NOT IN ('', {_quoted(DEVICE_PREFIX)}) AND b NOT IN ('', {_quoted(DEVICE_PREFIX)})"


def _copy_rows(con: duckdb.DuckDBPyConnection, select: str, path: Path) -> None:
    """Write `select`'s (distinct_id, resolved_distinct_id) rows, in its order, as JSON lines."""
    con.execute("SET preserve_insertion_order = true")  # a writer may not reorder the sorted rows
    con.execute(f"COPY ({select}) TO {_quoted(str(path))} (FORMAT json)")


def _resolve_simplified(con: duckdb.DuckDBPyConnection, resolution: Resolution) -> None:
    prefix = _quoted(DEVICE_PREFIX)
    usable = (
        f"(kind = {_quoted(LINK_DEVICE_USER)} OR (kind = {_quoted(LINK_REKEY)} AND starts_with(a, {prefix}))) "
        f"AND NOT starts_with(b, {prefix}) AND {_WELL_FORMED}"
    )
    con.execute(
        f"CREATE TABLE pairs AS SELECT a AS device, b AS user_id, min(time) AS time FROM links WHERE {usable} "
        "GROUP BY a, b"
    )
    used = con.execute(f"SELECT count(*) FROM links WHERE {usable}").fetchall()[0][0]
    resolution.ignored_links = resolution.links - used
    con.execute(
        """CREATE TABLE owners AS
        SELECT device, arg_min(user_id, (time, user_id)) AS owner, count(*) - 1 AS rejected
        FROM pairs GROUP BY device"""
    )
    rows, conflicts, clusters = con.execute(
        "SELECT count(*), coalesce(sum(rejected), 0), count(DISTINCT owner) FROM owners"
    ).fetchall()[0]
    resolution.rows, resolution.conflicts, resolution.clusters = rows, int(conflicts), clusters
    con.execute("DROP TABLE pairs")
    _copy_rows(con, "SELECT device AS distinct_id, owner AS resolved_distinct_id FROM owners ORDER BY device",
               resolution.path)


def _resolve_original(con: duckdb.DuckDBPyConnection, resolution: Resolution, max_cluster_ids: int) -> None:
    kinds = ", ".join(_quoted(k) for k in _ORIGINAL_KINDS)
    con.execute(f"CREATE TABLE used AS SELECT * FROM links WHERE kind IN ({kinds}) AND {_WELL_FORMED}")
    con.execute("DROP TABLE links")
    used = con.execute("SELECT count(*) FROM used").fetchall()[0][0]
    resolution.ignored_links = resolution.links - used
    # Integer ids ranked in byte order: the rank order is the output order and the tie-breaker.
    # Each join is its own statement so DuckDB holds one join's build side at a time.
    con.execute(
        "CREATE TABLE ids AS SELECT id, (row_number() OVER (ORDER BY id) - 1)::UINTEGER AS rank "
        "FROM (SELECT a AS id FROM used UNION SELECT b FROM used)"
    )
    n_ids = con.execute("SELECT count(*) FROM ids").fetchall()[0][0]
    code = " ".join(f"WHEN {_quoted(k)} THEN {i}" for i, k in enumerate(_ORIGINAL_KINDS))
    con.execute(
        f"CREATE TABLE ranked_a AS SELECT (CASE kind {code} END)::UTINYINT AS k, time, ids.rank AS a, b "
        "FROM used JOIN ids ON used.a = ids.id"
    )
    con.execute("DROP TABLE used")
    con.execute("CREATE TABLE ranked AS SELECT k, time, a, ids.rank AS b FROM ranked_a JOIN ids ON ranked_a.b = ids.id")
    con.execute("DROP TABLE ranked_a")
    clusters = _OriginalClusters(n_ids, max_cluster_ids)
    for batch in con.sql("SELECT k, a, b FROM ranked ORDER BY time, k, a, b").to_arrow_reader(_BATCH):
        clusters.apply(batch.column(0).to_numpy(), batch.column(1).to_numpy(), batch.column(2).to_numpy())
    con.execute("DROP TABLE ranked")
    resolution.conflicts, resolution.rejected_merges = clusters.conflicts, clusters.rejected_merges
    mapped, canonical = clusters.flattened()
    del clusters
    resolution.rows = len(mapped)
    resolution.clusters = len(np.unique(canonical))
    con.register("result", pa.table({"i": pa.array(mapped, pa.uint32()), "c": pa.array(canonical, pa.uint32())}))
    con.execute("CREATE TABLE named AS SELECT i, ids.id AS resolved FROM result JOIN ids ON ids.rank = result.c")
    con.unregister("result")
    del mapped, canonical
    _copy_rows(
        con,
        "SELECT ids.id AS distinct_id, named.resolved AS resolved_distinct_id FROM named "
        "JOIN ids ON ids.rank = named.i ORDER BY named.i",
        resolution.path,
    )


class _OriginalClusters:
    """Union-find over integer ids with Original ID Merge's rules, applied link by link.

    Per id: parent (u4), cluster size (u2, meaningful at roots, never above the cap), flags
    (identified cluster at roots; "is an alias" per id), and at roots the canonical candidate:
    a u8 key ordering (tier, link sequence or id rank) and the candidate's id. About 20 bytes an id.
    """

    IDENTIFIED = 1  # at a root: the cluster holds the $identified_id of a successful $identify
    ALIAS = 2  # per id: it is the alias of a successful $create_alias

    def __init__(self, n: int, cap: int = MAX_CLUSTER_IDS):
        if not 1 <= cap < 1 << 16:
            raise ValueError(f"cluster cap {cap} must be between 1 and 65535 (sizes are 16-bit)")
        self.n = n
        self.cap = cap
        self._parent = np.arange(n, dtype=np.uint32)
        self._size = np.ones(n, dtype=np.uint16)
        self._flags = np.zeros(n, dtype=np.uint8)
        self._key = (np.uint64(_TIER_NONE) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        self._canon = np.arange(n, dtype=np.uint32)
        self.seq = 0
        self.conflicts = 0
        self.rejected_merges = 0

    def apply(self, kinds: np.ndarray, a_ids: np.ndarray, b_ids: np.ndarray) -> None:
        """Apply one batch of links, in order. Written as one flat loop: it runs per link."""
        parent, size, flags = memoryview(self._parent), memoryview(self._size), memoryview(self._flags)
        key, canon = memoryview(self._key), memoryview(self._canon)
        identified, alias_flag = self.IDENTIFIED, self.ALIAS
        cap = self.cap
        seq = self.seq
        conflicts = rejected = 0
        for k, a, b in zip(kinds.tolist(), a_ids.tolist(), b_ids.tolist()):
            seq += 1
            ra, up = a, parent[a]
            while up != ra:  # path halving
                up = parent[ra] = parent[up]
                ra, up = up, parent[up]
            rb, up = b, parent[b]
            while up != rb:
                up = parent[rb] = parent[up]
                rb, up = up, parent[up]
            if k == _K_IDENTIFY:
                if ra != rb and flags[ra] & identified:
                    conflicts += 1
                    continue
                tier = _TIER_NAMED
            elif k == _K_ALIAS:
                if ra != rb and flags[a] & alias_flag:
                    conflicts += 1
                    continue
                tier = _TIER_NAMED
            elif k == _K_REKEY:
                tier = _TIER_REKEYED
            else:
                tier = _TIER_NONE
            if ra != rb:
                merged = size[ra] + size[rb]
                if merged > cap:
                    rejected += 1
                    continue
                if size[ra] > size[rb] or (size[ra] == size[rb] and ra < rb):
                    ra, rb = rb, ra
                # ra joins rb
                parent[ra] = rb
                size[rb] = merged
                flags[rb] |= flags[ra] & identified
                if key[ra] < key[rb]:
                    key[rb] = key[ra]
                    canon[rb] = canon[ra]
            if k == _K_IDENTIFY:
                flags[rb] |= identified
            elif k == _K_ALIAS:
                flags[a] |= alias_flag
            if tier != _TIER_NONE:
                claim = (tier << 32) | seq
                if claim < key[rb]:
                    key[rb] = claim
                    canon[rb] = b
        self.seq = seq
        self.conflicts += conflicts
        self.rejected_merges += rejected

    def flattened(self) -> tuple[np.ndarray, np.ndarray]:
        """(id, canonical id) for every id that is not its cluster's canonical id, by id."""
        root = self._parent.copy()
        while True:
            hop = root[root]
            if np.array_equal(hop, root):
                break
            root = hop
        canonical = self._canon[root]
        mapped = np.flatnonzero(canonical != np.arange(self.n, dtype=np.uint32)).astype(np.uint32)
        return mapped, canonical[mapped]
