"""Golden outputs: the same inputs must give the same outputs, byte for byte, across the rebuild.

Why these exist: the core is about to be rebuilt (issue 11: modules into subpackages, the C line
parser replaced by msgspec, ...). These tests were recorded on the behaviour before the rebuild
and pin what a user sees of it: every file an object-store export writes (relative path, sha256
of its bytes, of its decompressed rows, the manifest's stable fields), every DuckDB table (row
count, columns, sha256 of the sorted rows), and the stable materialization metadata of each run
(row counts, duplicates dropped, bad lines, the data-sync fingerprint token, windows, ...).
A part-file name derives from its content and the fingerprint from the dedup keys, so a change in
parsing, dedup, row formatting or compression shows up here as a named case and path.

The inputs are made here, deterministically: one generated day (../shared/tools/
gen_mixpanel_export.py, seed 11) with hand-written tricky lines appended (duplicates, lines
without $insert_id, non-compact JSON, numeric/boolean ids, unicode and escapes, float times,
identity events, a few bad lines under the bad-line policy) and a profiles file. Their digests are
recorded too (golden/inputs.json): if the generator changes, the inputs case fails first and the
output cases say that they cannot be compared.

Everything is driven through mixpanel_assets_tests/helpers.py (pipelines.yaml -> Definitions ->
jobs) and read back with dagster, duckdb, pyarrow, gzip and zstandard only: no internal module of
mixpanel_assets is imported, so the modules can move freely.

Recording: `MIXPANEL_ASSETS_RECORD_GOLDEN=1 pytest mixpanel_assets_tests/test_golden_outputs.py`
writes golden/*.json (sorted keys); without it the tests compare, and a missing golden file fails.
If a part name, a fingerprint or a byte must change ON PURPOSE, re-record with the env var and say
why in the commit message; an unexplained diff in golden/ is a regression.

Byte-level fields (`file_sha256`, `file_size`, manifest part `bytes`, `md5` and `stored`, `bytes_written`) depend on
the compressor or Parquet writer as well as on our code: pyarrow writes its version into every
Parquet file, and ISA-L / zstd output can change between library versions. Each case records the
versions its bytes depend on; when an installed version differs, those fields are skipped (with a
warning) and the content digests (rows, decompressed bytes, manifests, tables) are still compared.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
import zstandard

from mixpanel_assets_tests.helpers import definitions, events_pipeline, local_project, run_partition

GOLDEN_DIR = Path(__file__).parent / "golden"
RECORD = os.environ.get("MIXPANEL_ASSETS_RECORD_GOLDEN") == "1"
GENERATOR = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gen_mixpanel_export.py"

PROJECT_ID = 424242
DAY = "2024-11-22"
HOURS = ("2024-11-22-11:00", "2024-11-22-13:00")  # one range run of three hourly partitions
# Up to 20 bad event lines pass (the tricky lines hold 10); up to 5% bad profiles (2 of 45 here).
BAD_LINES = {"max_fraction": 0.05, "max_count": 20}

# Library versions that the bytes of each case's files depend on (see the module docstring).
BYTE_LIBRARIES = {
    "hourly_json_gzip": ("isal",),
    "daily_json_gzip": ("isal",),
    "daily_json_zstd": ("zstandard",),
    "daily_json_none": (),
    "daily_parquet_zstd": ("pyarrow",),
    "daily_duckdb": (),  # DuckDB: rows only (a database file's bytes are not a stable output)
    "people_local": ("isal",),
    "people_duckdb": (),
    "identity_local": ("isal",),
    "identity_duckdb": (),
    "tokyo_daily_json_gzip": ("isal",),
    "identity_original_local": ("isal",),
}
# "md5" and "stored" (a manifest part's checksums) are digests of the file's bytes, like file_sha256.
BYTE_LEVEL_KEYS = {"file_sha256", "file_size", "bytes", "bytes_written", "md5", "stored"}
# Metadata keys that differ on every run by nature: none today, everything a run reports is recorded.
UNSTABLE_METADATA: frozenset[str] = frozenset()
UNSTABLE_MANIFEST = {"exported_at"}  # the manifest's write time
UNSTABLE_COLUMNS = {"exported_at"}  # mp_export_log's load time

# --- inputs -----------------------------------------------------------------------------------

# Hours of 2024-11-22 UTC: 11:00 = 1732273200, 12:00 = 1732276800, 13:00 = 1732280400; the day
# ends at 1732320000. Most lines fall in 11:00-14:00, so the hourly case sees them too.
TRICKY_EVENT_LINES: list[bytes] = [
    # Same dedup key, the later mp_processing_time_ms first in the file: it is the one Mixpanel keeps.
    rb'{"event":"Golden Duplicate","properties":{"time":1732273210,"distinct_id":"dup-user","$insert_id":"dup-1","mp_processing_time_ms":1732273399999,"copy":"later processing time"}}',
    rb'{"event":"Golden Duplicate","properties":{"time":1732273210,"distinct_id":"dup-user","$insert_id":"dup-1","mp_processing_time_ms":1732273300000,"copy":"earlier processing time"}}',
    # A byte-identical copy.
    rb'{"event":"Golden Duplicate","properties":{"time":1732273220,"distinct_id":"dup-user","$insert_id":"dup-2","mp_processing_time_ms":1732273300000}}',
    rb'{"event":"Golden Duplicate","properties":{"time":1732273220,"distinct_id":"dup-user","$insert_id":"dup-2","mp_processing_time_ms":1732273300000}}',
    # One copy without mp_processing_time_ms, then one with it.
    rb'{"event":"Golden Duplicate","properties":{"time":1732273230,"distinct_id":"dup-user","$insert_id":"dup-3"}}',
    rb'{"event":"Golden Duplicate","properties":{"time":1732273230,"distinct_id":"dup-user","$insert_id":"dup-3","mp_processing_time_ms":1732273300001}}',
    # Same key and processing time, different content: the tie-break is recorded as it is today.
    rb'{"event":"Golden Duplicate","properties":{"time":1732273240,"distinct_id":"dup-user","$insert_id":"dup-4","mp_processing_time_ms":1732273300000,"copy":"a"}}',
    rb'{"event":"Golden Duplicate","properties":{"time":1732273240,"distinct_id":"dup-user","$insert_id":"dup-4","mp_processing_time_ms":1732273300000,"copy":"b"}}',
    # No $insert_id (or a null one): Mixpanel never deduplicates these, both copies stay.
    rb'{"event":"No Insert Id","properties":{"time":1732273300,"distinct_id":"plain-user"}}',
    rb'{"event":"No Insert Id","properties":{"time":1732273300,"distinct_id":"plain-user"}}',
    rb'{"event":"No Insert Id","properties":{"time":1732273301,"distinct_id":"plain-user","$insert_id":null}}',
    # Not the compact shape: spaces around colons and commas, "properties" first, keys reordered.
    rb'{ "properties" : { "$insert_id" : "spacey-1", "distinct_id" : "spacey user", "time" : 1732276900 , "n" : [ 1 , 2 ] }, "event" : "Spacey Event" }',
    rb'{"properties":{"time":1732276901,"distinct_id":"order-user","$insert_id":"order-1"},"event":"Properties First"}',
    rb'{"event":"Extra Top-Level Key","properties":{"time":1732276902,"distinct_id":"extra-user","$insert_id":"extra-1"},"extra":true}',
    # Ids that are not strings.
    rb'{"event":"Numeric Ids","properties":{"time":1732276910,"distinct_id":12345,"$device_id":678,"$user_id":12345,"$insert_id":"num-1"}}',
    rb'{"event":"Float Ids","properties":{"time":1732276911,"distinct_id":1.5,"$device_id":2.0,"$user_id":1e3,"$insert_id":"float-id-1"}}',
    rb'{"event":"Boolean Ids","properties":{"time":1732276912,"distinct_id":true,"$device_id":false,"$user_id":true,"$insert_id":"bool-1"}}',
    rb'{"event":"Numeric Insert Id","properties":{"time":1732276913,"distinct_id":"n-user","$insert_id":42}}',
    rb'{"event":"Null Ids","properties":{"time":1732276914,"distinct_id":null,"$device_id":null,"$insert_id":"null-1"}}',
    rb'{"event":"No Distinct Id","properties":{"time":1732276915,"$insert_id":"nodist-1"}}',
    # Unicode, raw and escaped.
    '{"event":"Café ☕ 😀","properties":{"time":1732276920,"distinct_id":"ユーザー😀","$insert_id":"uni-1","city":"Zürich","rtl":"שלום"}}'.encode(),
    rb'{"event":"Escaped \"quotes\" \\ and \/ slash","properties":{"time":1732276921,"distinct_id":"esc\tuser\n","$insert_id":"esc-1","s":"\u00e9\u00E9 \ud83d\ude00 \u2028 \u0000 \b\f\r"}}',
    rb'{"event":"\u00c9v\u00e9nement","properties":{"time":1732276922,"distinct_id":"\u30e6\u30fc\u30b6\u30fc","$insert_id":"uni-esc-1"}}',
    # Float times, one a hair before the 13:00 boundary, one in exponent notation, one exactly on it.
    rb'{"event":"Float Time","properties":{"time":1732277000.123,"distinct_id":"float-user","$insert_id":"ft-1"}}',
    rb'{"event":"Float Time","properties":{"time":1732280399.9999,"distinct_id":"float-user","$insert_id":"ft-2"}}',
    rb'{"event":"Float Time","properties":{"time":1.7322770005e9,"distinct_id":"float-user","$insert_id":"ft-3"}}',
    rb'{"event":"Float Time","properties":{"time":1732280400.0,"distinct_id":"float-user","$insert_id":"ft-4"}}',
    rb'{"event":"Boundary","properties":{"time":1732280400,"distinct_id":"edge-user","$insert_id":"edge-1"}}',
    # Outside the day: the next day's first second and the previous day's last one.
    rb'{"event":"Outside","properties":{"time":1732320000,"distinct_id":"edge-user","$insert_id":"out-1"}}',
    rb'{"event":"Outside","properties":{"time":1732233599,"distinct_id":"edge-user","$insert_id":"out-2"}}',
    # Numbers a parser may rewrite.
    rb'{"event":"Odd Numbers","properties":{"time":1732276930,"distinct_id":"num-user","$insert_id":"numbers-1","tiny":1e-300,"neg_zero":-0.0,"exp":1E+2,"big":18446744073709551615}}',
    # Beyond 64 bits: accepted today, the digits kept as written.
    rb'{"event":"Huge Integer","properties":{"time":1732276931,"distinct_id":"num-user","$insert_id":"numbers-2","huge":123456789012345678901234567890}}',
    # A line ending in CRLF.
    b'{"event":"CRLF","properties":{"time":1732277002,"distinct_id":"crlf-user","$insert_id":"crlf-1"}}\r',
    # Identity: $identify, $create_alias, $merge (Original ID Merge), $device_id + $user_id pairs.
    rb'{"event":"$identify","properties":{"time":1732273400,"distinct_id":"ident-user","$anon_id":"anon-device-1","$identified_id":"ident-user","$insert_id":"identify-1"}}',
    rb'{"event":"$create_alias","properties":{"time":1732273410,"distinct_id":"alias-target","alias":"alias-name","$insert_id":"alias-1"}}',
    rb'{"event":"$merge","properties":{"time":1732273420,"distinct_id":"merge-a","$distinct_ids":["merge-a","merge-b",7],"$insert_id":"merge-1"}}',
    rb'{"event":"Signed In","properties":{"time":1732273430,"distinct_id":"pair-user","$device_id":"pair-device","$user_id":"pair-user","$insert_id":"pair-1"}}',
    # The same device, later, with another user: a conflict, the first link wins.
    rb'{"event":"Signed In","properties":{"time":1732273440,"distinct_id":"pair-user-2","$device_id":"pair-device","$user_id":"pair-user-2","$insert_id":"pair-2"}}',
    rb'{"event":"Signed In","properties":{"time":1732273450,"distinct_id":777,"$device_id":555,"$user_id":777,"$insert_id":"pair-3"}}',
    rb'{"event":"Rekeyed","properties":{"time":1732273460,"distinct_id":"rekey-user","$distinct_id_before_identity":"$device:rekey-device","$insert_id":"rekey-1"}}',
    rb'{"event":"Signed In","properties":{"time":1732273470,"distinct_id":"$device:weird","$device_id":"weird","$user_id":"$device:weird","$insert_id":"pair-4"}}',
    '{"event":"$identify","properties":{"time":1732273480,"distinct_id":"ユーザー","$anon_id":"匿名","$identified_id":"ユーザー","$insert_id":"identify-2"}}'.encode(),
    # Bad lines (10, under BAD_LINES["max_count"]): counted and reported, never exported.
    b"this is not json",
    rb'{"event":"No Time","properties":{"distinct_id":"bad-user","$insert_id":"bad-1"}}',
    rb'{"event":"String Time","properties":{"time":"1732277000","distinct_id":"bad-user"}}',
    rb'{"event":"Boolean Time","properties":{"time":true}}',
    rb'{"properties":{"time":1732277000,"distinct_id":"bad-user"}}',
    rb'{"event":"","properties":{"time":1732277000}}',
    rb'{"event":"No Properties"}',
    b"[1,2,3]",
    rb'{"event":"Truncated","properties":{"time":17322',
    b'{"event":"Bad UTF-8","properties":{"time":1732277001,"distinct_id":"\xff\xfe","$insert_id":"utf-1"}}',
]


def profile_lines() -> list[bytes]:
    lines = [
        json.dumps({"$distinct_id": f"user-{i:02d}", "$properties": {
            "$email": f"user-{i:02d}@example.com", "$name": f"Ünïcødé Üser {i}", "plan": ["free", "pro", "team"][i % 3],
            "score": i * 1.25, "active": i % 2 == 0, "tags": ["a", "b"][: i % 3], "$last_seen": f"2024-11-22T{i % 24:02d}:00:00",
        }}, ensure_ascii=False, separators=(",", ":")).encode()
        for i in range(36)
    ]
    return lines + [
        rb'{"$distinct_id":12345,"$properties":{"$name":"numeric id"}}',
        rb'{"$distinct_id":true,"$properties":{"$name":"boolean id"}}',
        rb'{ "$properties" : { "$name" : "spacey" , "$email" : "spacey@example.com" } , "$distinct_id" : "spacey user" }',
        rb'{"$distinct_id":"esc\"aped\\\u00e9","$properties":{"$name":"\ud83d\ude00 \u2028","note":"line\nbreak"}}',
        '{"$distinct_id":"ユーザー","$properties":{"$name":"山田 太郎"}}'.encode(),
        # Two profiles with one id: both are exported today (distinct_id_unique fails; recorded as it is).
        rb'{"$distinct_id":"user-03","$properties":{"$name":"a second profile of user-03"}}',
        rb'{"$distinct_id":"no-properties"}',
        b"not a profile",  # bad
        rb'{"$properties":{"$name":"no distinct id"}}',  # bad
    ]


def make_inputs(folder: Path) -> dict:
    """The source folder: one generated day + the tricky lines, and profiles. Returns their digests."""
    folder.mkdir()
    day_file = folder / f"{DAY}.jsonl"
    subprocess.run([sys.executable, str(GENERATOR), "-n", "3000", "--seed", "11", "--day", DAY, "-o", str(day_file)],
                   check=True, capture_output=True)
    generated = day_file.read_bytes()
    with day_file.open("ab") as f:
        f.write(b"".join(line + b"\n" for line in TRICKY_EVENT_LINES))
    profiles = b"".join(line + b"\n" for line in profile_lines())
    (folder / "profiles.jsonl").write_bytes(profiles)
    return {
        "generated_day": {"lines": generated.count(b"\n"), "sha256": sha256(generated)},
        "events_file": {"name": day_file.name, "lines": day_file.read_bytes().count(b"\n"),
                        "sha256": sha256(day_file.read_bytes())},
        "profiles_file": {"lines": profiles.count(b"\n"), "sha256": sha256(profiles)},
    }


# --- the runs ---------------------------------------------------------------------------------


def object_store(case: str, **options) -> dict:
    return {"type": "local", "path": f"out/{case}", **options}


def daily(case: str, destination: dict) -> dict:
    # A date range (to_date) keeps Mixpanel's limit of two recurring events pipelines out of the way.
    return events_pipeline(case, "daily", destination, to_date=DAY)


# The main project: UTC, Simplified ID Merge, one pipeline per case.
MAIN_PIPELINES = [
    events_pipeline("hourly_json_gzip", "hourly", object_store("hourly_json_gzip"), to_date=DAY),
    daily("daily_json_gzip", object_store("daily_json_gzip")),  # json + gzip are the defaults
    daily("daily_json_zstd", object_store("daily_json_zstd", compression="zstd")),
    daily("daily_json_none", object_store("daily_json_none", compression="none")),
    daily("daily_parquet_zstd", object_store("daily_parquet_zstd", format="parquet")),  # zstd: Parquet's default
    daily("daily_duckdb", {"type": "duckdb", "path": "out/daily_duckdb.duckdb"}),
    {"name": "people_local", "data_source": "people", "destination": object_store("people_local")},
    {"name": "people_duckdb", "data_source": "people", "destination": {"type": "duckdb", "path": "out/people_duckdb.duckdb"}},
    {"name": "identity_local", "data_source": "identity", "destination": object_store("identity_local")},
    {"name": "identity_duckdb", "data_source": "identity", "destination": {"type": "duckdb", "path": "out/identity_duckdb.duckdb"}},
]
# Timezone and ID merge system are project settings: a second project on the same source covers
# folder dates in a non-UTC zone (the Tokyo day 2024-11-22 is 2024-11-21T15:00Z..2024-11-22T15:00Z)
# and Original ID Merge ($identify, $create_alias, $merge), resolved from the Tokyo day's links.
TOKYO_PIPELINES = [
    daily("tokyo_daily_json_gzip", object_store("tokyo_daily_json_gzip")),
    {"name": "identity_original_local", "data_source": "identity", "destination": object_store("identity_original_local")},
]
# project folder -> (project settings, pipelines, runs in order as (case = pipeline, partition, range)).
# Identity runs last: it is computed from the links the events exports of its project stored.
PROJECTS = {
    "main": ({}, MAIN_PIPELINES, [
        ("hourly_json_gzip", None, HOURS),
        ("daily_json_gzip", DAY, None),
        ("daily_json_zstd", DAY, None),
        ("daily_json_none", DAY, None),
        ("daily_parquet_zstd", DAY, None),
        ("daily_duckdb", DAY, None),
        ("people_local", None, None),
        ("people_duckdb", None, None),
        ("identity_local", None, None),
        ("identity_duckdb", None, None),
    ]),
    "tokyo_original": ({"timezone": "Asia/Tokyo", "identity_merge": "original"}, TOKYO_PIPELINES, [
        ("tokyo_daily_json_gzip", DAY, None),
        ("identity_original_local", None, None),
    ]),
}
CASES = ["inputs", *BYTE_LIBRARIES]


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> dict:
    """Make the inputs, run every case once (in PROJECTS order), and describe what each one wrote."""
    base = tmp_path_factory.mktemp("golden")
    source = base / "mixpanel_files"
    results = {"inputs": make_inputs(source)}
    with dg.instance_for_test() as instance:
        for folder, (settings, pipelines, runs) in PROJECTS.items():
            directory = base / folder
            directory.mkdir()
            project = local_project(PROJECT_ID, source, profiles=True, bad_lines=BAD_LINES, **settings)
            defs = definitions(directory, project, pipelines)
            for case, partition, range_ in runs:
                run = run_partition(defs, f"{case}_job", instance, partition, range_=range_)
                outcome = {"runs": run_metadata(run, base)}
                database = directory / "out" / f"{case}.duckdb"
                if database.exists():
                    outcome["duckdb"] = describe_duckdb(database)
                else:
                    outcome["files"] = describe_folder(directory / "out" / case)
                outcome["byte_libraries"] = {lib: library_version(lib) for lib in BYTE_LIBRARIES[case]}
                results[case] = outcome
    assert sorted(results) == sorted(CASES)
    return results


def run_metadata(result: dg.ExecuteInProcessResult, base: Path) -> dict:
    """Each materialization's metadata (per asset and partition) and each asset check's outcome."""
    assert result.success
    materializations = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        label = "/".join(mat.asset_key.path) + (f" [{mat.partition}]" if mat.partition else "")
        materializations[label] = {k: normalise(getattr(v, "value", v), base) for k, v in mat.metadata.items()
                                   if k not in UNSTABLE_METADATA}
    checks = {}
    for evaluation in result.get_asset_check_evaluations():
        label = f"{'/'.join(evaluation.asset_key.path)}:{evaluation.check_name}"
        partition = getattr(evaluation, "partition", None)
        checks[label + (f" [{partition}]" if partition else "")] = evaluation.passed
    return {"materializations": materializations, "checks_passed": checks}


def normalise(value, base: Path):
    """Run-specific folders become <tmp>, so paths and URIs in metadata compare across runs."""
    if isinstance(value, str):
        for form in (base.resolve().as_uri(), base.as_uri()):
            value = value.replace(form, "file://<tmp>")
        for form in (str(base.resolve()), str(base)):
            value = value.replace(form, "<tmp>")
        return value
    if isinstance(value, dict):
        return {k: normalise(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v, base) for v in value]
    return value


# --- describing outputs -----------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows_digest(rows) -> str:
    """sha256 of the rows as sorted JSON lines (order-free: a table has no row order)."""
    lines = sorted(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False) for row in rows)
    return sha256("\n".join(lines).encode())


def library_version(name: str) -> str:
    return importlib.metadata.version(name)


def describe_folder(root: Path) -> dict:
    """Every file under an object-store destination: its path, bytes and content."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        entry = {"file_sha256": sha256(data), "file_size": len(data)}
        if path.name in ("manifest.json", "_manifest.json"):
            manifest = json.loads(data)
            entry = {"manifest": {k: v for k, v in manifest.items() if k not in UNSTABLE_MANIFEST}}
        elif path.name.endswith(".parquet"):
            table = pq.read_table(path)
            entry.update(rows=table.num_rows, rows_sha256=rows_digest(table.to_pylist()),
                         schema=[[f.name, str(f.type)] for f in table.schema])
        elif path.name.startswith("part-"):
            content = decompress(path.name, data)
            entry.update(rows=content.count(b"\n"), content_sha256=sha256(content))
        files[path.relative_to(root).as_posix()] = entry
    return files


def decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def describe_duckdb(path: Path) -> dict:
    """Every table and view: columns, row count and a digest of the sorted rows."""
    tables = {}
    with duckdb.connect(str(path), read_only=True) as conn:
        names = conn.execute("SELECT table_schema, table_name, table_type FROM information_schema.tables "
                             "ORDER BY table_schema, table_name").fetchall()
        for schema, name, kind in names:
            columns = conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
                                   "AND table_name = ? ORDER BY ordinal_position", [schema, name]).fetchall()
            kept = [c for c, _ in columns if c not in UNSTABLE_COLUMNS]
            select = ", ".join(f'"{c}"' for c in kept)
            rows = conn.execute(f'SELECT {select} FROM "{schema}"."{name}"').fetchall()
            tables[f"{schema}.{name}"] = {
                "type": kind, "columns": [list(c) for c in columns], "rows": len(rows),
                "rows_sha256": rows_digest([list(r) for r in rows]),
            }
    return tables


# --- comparing --------------------------------------------------------------------------------


def golden_path(case: str) -> Path:
    return GOLDEN_DIR / f"{case}.json"


def dump(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def without_keys(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: without_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without_keys(v, keys) for v in value]
    return value


def differences(expected, actual, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(expected.keys() | actual.keys()):
            where = f"{path}/{key}"
            if key not in actual:
                found.append(f"{where}: missing (expected {json.dumps(expected[key], ensure_ascii=False)[:200]})")
            elif key not in expected:
                found.append(f"{where}: unexpected (got {json.dumps(actual[key], ensure_ascii=False)[:200]})")
            else:
                found.extend(differences(expected[key], actual[key], where))
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{path}[{i}]")]
    if expected != actual:
        shown = json.dumps(expected, ensure_ascii=False)[:200], json.dumps(actual, ensure_ascii=False)[:200]
        return [f"{path or '/'}: expected {shown[0]}, got {shown[1]}"]
    return []


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_the_golden_record(case, observed):
    # Through JSON, so tuples, ints-as-keys etc. compare as they are stored.
    actual = json.loads(dump(observed[case]))
    path = golden_path(case)
    if RECORD:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(dump(actual), encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden case {case!r}: {path} is missing; record it with MIXPANEL_ASSETS_RECORD_GOLDEN=1",
                    pytrace=False)
    expected = json.loads(path.read_text(encoding="utf-8"))
    if case != "inputs":
        inputs = json.loads(golden_path("inputs").read_text(encoding="utf-8")) if golden_path("inputs").exists() else None
        if inputs != json.loads(dump(observed["inputs"])):
            pytest.fail(f"golden case {case!r}: the inputs are not the recorded ones (see the 'inputs' case: "
                        f"did {GENERATOR.name} or the tricky lines change?), so the outputs cannot be compared")
        changed = {lib: (v, library_version(lib)) for lib, v in expected.get("byte_libraries", {}).items()
                   if library_version(lib) != v}
        if changed:
            warnings.warn(f"golden case {case!r}: {changed} (recorded, installed) differ; byte-level fields "
                          f"{sorted(BYTE_LEVEL_KEYS)} are not compared, content digests are", stacklevel=1)
            expected = without_keys(expected, BYTE_LEVEL_KEYS | {"byte_libraries"})
            actual = without_keys(actual, BYTE_LEVEL_KEYS | {"byte_libraries"})
    found = differences(expected, actual)
    if found:
        shown = "\n  ".join(found[:40]) + (f"\n  ... and {len(found) - 40} more" if len(found) > 40 else "")
        pytest.fail(f"golden case {case!r} differs from {path.relative_to(Path(__file__).parent)}:\n  {shown}\n"
                    "If this change is intended, re-record with MIXPANEL_ASSETS_RECORD_GOLDEN=1 and explain it in "
                    "the commit message.", pytrace=False)
