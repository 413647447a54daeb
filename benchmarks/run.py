"""One command for the export benchmarks: `make bench` (or `python benchmarks/run.py`).

1. Generates the inputs once (../shared/tools/gen_mixpanel_export.py, seed 42, one UTC day) into
   benchmarks/data/ (git-ignored): 250k, 1M and 4M events.
2. Runs, each as its own process:
   - the path users run: the Export API stream (benchmarks/stream_server.py serving the day,
     gzip and chunked, as Mixpanel does) into the daily pipeline's job as a schedule runs it,
     export and asset checks, gzip JSON and Parquet, at every size;
   - the side path: our export through the Dagster asset alone from the local file (gzip JSON at
     every size, Parquet at the baseline size);
   - with `--before PATH`, both again importing the package from another checkout;
   - at the baseline size the baselines of PERF_BASELINES.md: the streaming orjson loop (local
     file, and reading the same stream), DuckDB and Polars eager -> Parquet, a dlt filesystem
     pipeline, and `pigz -1 -p 2` of the input (the gzip floor on two cores). A baseline whose
     library is not installed is skipped, and said so.
3. Measures each process from outside: wall time, and peak memory of the whole process tree
   (sampled every 50 ms with psutil: the sum of RSS over the process and all its children, and
   the sum of PSS, which counts pages shared between processes once). Checks that every export
   wrote the input's deduplicated row count.
4. Prints the table with events/s and the verdicts on the targets of issue 13 (stream -> job with
   checks) and issue 7 (local file -> asset), and writes it into benchmarks/README.md with the
   command that produced it and the machine's load.

Quick look: `python benchmarks/run.py --sizes 50000 --baseline-size 50000 --skip-baselines --no-readme`.

Ratios within one run are what count: the machine is shared, so absolute numbers move with load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from measure import Measured, measure
from report import README, _row, render, stream_verdicts, verdicts, write_readme

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GENERATOR = REPO.parent / "shared" / "tools" / "gen_mixpanel_export.py"
SIZES = (250_000, 1_000_000, 4_000_000)
STREAM_JOB = "Export API stream, job with checks"
USER_ENV, SECRET_ENV = "BENCH_MIXPANEL_USERNAME", "BENCH_MIXPANEL_SECRET"
BENCH_USER, BENCH_SECRET = "bench", "bench-not-a-secret"  # accepted by stream_server.py only


def generate(size: int, data_dir: Path) -> tuple[Path, dict]:
    path = data_dir / f"events-{size}.jsonl"
    summary_path = data_dir / f"events-{size}.summary.json"
    if not (path.exists() and summary_path.exists()):
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"generating {size:,} events -> {path} (once; cached)", flush=True)
        tmp = path.with_suffix(".tmp")
        done = subprocess.run([sys.executable, str(GENERATOR), "-n", str(size), "-o", str(tmp), "--seed", "42"],
                              check=True, capture_output=True, text=True)
        summary = json.loads((done.stdout + done.stderr).strip().splitlines()[-1])
        os.replace(tmp, path)
        summary_path.write_text(json.dumps(summary))
    return path, json.loads(summary_path.read_text())


@dataclass(frozen=True)
class Tree:
    """A checkout whose `mixpanel_assets` the runs import (PYTHONPATH), and how its rows are labelled."""

    path: Path
    label: str  # "ours", or "before (<commit>)"


def _short_commit(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], check=False,
                          capture_output=True, text=True)
    return done.stdout.strip() or path.name


def _env(tree: Tree) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree.path), USER_ENV: BENCH_USER, SECRET_ENV: BENCH_SECRET}


def ours(fmt: str, events: int, work: Path, tree: Tree, path: Path | None = None, url: str | None = None,
         timeout: float | None = None) -> Measured:
    """One run of export_ours.py: the asset from a local file, or (url) the job with its checks from the stream.

    The process runs in a scratch folder, not in the repository: multiprocessing's forkserver is
    started with `python -c`, which puts the working directory first on sys.path, and there this
    checkout's `mixpanel_assets` would shadow the one PYTHONPATH names (the --before tree)."""
    kind = "stream" if url else "file"
    out = work / f"{tree.label[:6]}-{kind}-{fmt}-{events}".replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    source = ["--export-url", url, "--job"] if url else ["--input", str(path)]
    name = f"{'before' if tree.label != 'ours' else 'ours'}_{kind}_{fmt}_{events}"
    m, info = measure(name, [sys.executable, str(HERE / "export_ours.py"), *source, "--out", str(out), "--format", fmt],
                      events, work, env=_env(tree), cwd=work, timeout=timeout)
    if Path(info.get("package", "")).resolve() != (tree.path / "mixpanel_assets").resolve():
        raise RuntimeError(f"{name} imported mixpanel_assets from {info.get('package')}, not from {tree.path}")
    if url:
        m.name = f"{tree.label}, {STREAM_JOB}, {fmt}"
        share = info["check_seconds"] / info["run_seconds"] if info.get("run_seconds") else 0.0
        m.note = (f"{info['run_seconds']:.1f} s inside the run, checks {info['check_seconds']:.1f} s ({share:.0%})"
                  + (f"; checks FAILED: {', '.join(info['checks_failed'])}" if info.get("checks_failed") else ""))
        m.check_share = share
        m.checks_failed = info.get("checks_failed", [])
    else:
        m.name = f"{tree.label}, {'gzip JSON' if fmt == 'json' else 'Parquet'} (Dagster asset)"
        m.note = f"{info.get('run_seconds', 0):.1f} s inside the run"
    bucket = out / "bucket" / "1" / "mp_master_event" / "2024" / "11" / "22"
    manifest = json.loads((bucket / "manifest.json").read_text())
    if manifest["rows"] != m.rows:
        raise RuntimeError(f"{m.name}: manifest says {manifest['rows']} rows, the run {m.rows}")
    shutil.rmtree(out, ignore_errors=True)
    return m


def baseline(name: str, label: str, events: int, work: Path, path: Path | None = None, url: str | None = None,
             timeout: float | None = None) -> Measured:
    out = work / f"{name}-{events}"
    shutil.rmtree(out, ignore_errors=True)
    source = ["--export-url", url] if url else ["--input", str(path)]
    m, _ = measure(name, [sys.executable, str(HERE / "baselines.py"), name, *source, "--out", str(out)],
                   events, work, env=_env(Tree(REPO, "ours")), timeout=timeout)
    m.name = label
    shutil.rmtree(out, ignore_errors=True)
    return m


class StreamServer:
    """benchmarks/stream_server.py serving one input, as a separate process (not in any measured tree)."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "stream_server.py"), "--input", str(path)],
                                     stdout=subprocess.PIPE, env=_env(Tree(REPO, "ours")), cwd=REPO)
        line = self.proc.stdout.readline()  # printed once the body is compressed and the port bound
        if not line:
            raise RuntimeError(f"the stream server for {path} did not start (exit {self.proc.wait()})")
        self.url = json.loads(line)["url"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def pigz(path: Path, events: int, work: Path) -> Measured:
    target = work / "pigz.json.gz"
    m, _ = measure("pigz", ["pigz", "-1", "-p", "2", "-c", str(path)], events, work, stdout_path=target)
    target.unlink(missing_ok=True)
    m.name = "floor: `pigz -1 -p 2` of the input"
    return m


BASELINES = (  # name, label, reads the stream
    ("orjson_loop", "streaming orjson loop, gzip -1", False),
    ("orjson_stream", "orjson loop reading the Export API stream, gzip -1", True),
    ("duckdb", "DuckDB read_json -> QUALIFY dedup -> Parquet", False),
    ("polars", "Polars eager -> Parquet", False),
    ("dlt", "dlt pipeline, filesystem, jsonl", False),
)
NEEDS = {"duckdb": "duckdb", "polars": "polars", "dlt": "dlt"}  # module each baseline imports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="events per input (ours runs on each)")
    parser.add_argument("--baseline-size", type=int, default=1_000_000, help="the input the baselines run on")
    parser.add_argument("--skip", default="",
                        help="comma-separated: local,stream,parquet,orjson_loop,orjson_stream,duckdb,polars,dlt,pigz")
    parser.add_argument("--skip-baselines", action="store_true", help="only our runs (and --before's)")
    parser.add_argument("--before", type=Path, help="another checkout (e.g. the previous commit, in a git worktree) run beside this one")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is stopped")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | {args.baseline_size})
    skip = {s for s in args.skip.split(",") if s}
    if args.skip_baselines:
        skip |= {name for name, _, _ in BASELINES} | {"pigz"}
    not_installed = []
    for name, module in NEEDS.items():
        if name not in skip and importlib.util.find_spec(module) is None:
            not_installed.append(f"the {name} baseline: {module} is not installed (pip install -e '.[bench]')")
            print(f"skipped {not_installed[-1]}", flush=True)
            skip.add(name)
    if "pigz" not in skip and shutil.which("pigz") is None:
        not_installed.append("the pigz floor: pigz is not installed (apt-get install pigz)")
        print(f"skipped {not_installed[-1]}", flush=True)
        skip.add("pigz")
    trees = [Tree(REPO, "ours")]
    if args.before:
        before = args.before.resolve()
        if not (before / "mixpanel_assets").is_dir():
            parser.error(f"--before {args.before}: no mixpanel_assets package there")
        trees.append(Tree(before, f"before ({_short_commit(before)})"))
    command = "make bench" if os.environ.get("MAKELEVEL") else "python " + " ".join([
        "benchmarks/run.py", *sys.argv[1:]])
    inputs = {size: generate(size, args.data_dir) for size in sizes}
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    measured: list[Measured] = []
    failures: list[str] = []
    by_size: dict[int, Measured] = {}
    stream_json: dict[int, Measured] = {}
    stream_parquet: dict[int, Measured] = {}
    base: dict[str, Measured] = {}
    parquet = None

    def record(run, *a, **kw) -> Measured | None:
        try:
            m = run(*a, **kw)
        except RuntimeError as exc:
            print(f"FAILED: {exc}", flush=True)
            failures.append(str(exc))
            return None
        if m is not None:
            measured.append(m)
            print(_row(m), flush=True)
        return m

    def counted(m: Measured | None, unique: int) -> Measured | None:
        if m is not None and m.rows != unique:
            failures.append(f"{m.name} ({m.events:,}) wrote {m.rows} rows; the input has {unique} unique events")
            m.note += " WRONG ROW COUNT"
            return None
        return m

    timeout = args.timeout
    try:
        for size in sizes:
            path, summary = inputs[size]
            unique = summary["unique"]
            server = StreamServer(path) if "stream" not in skip or "orjson_stream" not in skip else None
            try:
                for tree in trees:
                    if "local" not in skip:
                        m = counted(record(ours, "json", size, work, tree, path=path, timeout=timeout), unique)
                        if m and tree.label == "ours":
                            by_size[size] = m
                        if size == args.baseline_size and "parquet" not in skip:
                            m = counted(record(ours, "parquet", size, work, tree, path=path, timeout=timeout), unique)
                            if m and tree.label == "ours":
                                parquet = m
                    if "stream" not in skip:
                        for fmt, into in (("json", stream_json), ("parquet", stream_parquet)):
                            if fmt == "parquet" and "parquet" in skip:
                                continue
                            m = counted(record(ours, fmt, size, work, tree, url=server.url, timeout=timeout), unique)
                            if m and tree.label == "ours":
                                into[size] = m
                if size != args.baseline_size:
                    continue
                for name, label, streams in BASELINES:
                    if name in skip:
                        continue
                    source = {"url": server.url} if streams else {"path": path}
                    m = counted(record(baseline, name, label, size, work, timeout=timeout, **source), unique)
                    if m:
                        base[name] = m
                if "pigz" not in skip:
                    m = record(pigz, path, size, work)
                    if m:
                        base["pigz"] = m
            finally:
                if server is not None:
                    server.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    table = render(measured, verdicts(by_size, parquet, base, args.baseline_size),
                   stream_verdicts(stream_json, stream_parquet, base, args.baseline_size),
                   failures + not_installed, command,
                   (load_before, load_after))
    print()
    print(table)
    if not args.no_readme:
        write_readme(table)
        print(f"\nwritten to {README.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
