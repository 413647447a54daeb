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
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GENERATOR = REPO.parent / "shared" / "tools" / "gen_mixpanel_export.py"
README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SIZES = (250_000, 1_000_000, 4_000_000)
STREAM_JOB = "Export API stream, job with checks"
USER_ENV, SECRET_ENV = "BENCH_MIXPANEL_USERNAME", "BENCH_MIXPANEL_SECRET"
BENCH_USER, BENCH_SECRET = "bench", "bench-not-a-secret"  # accepted by stream_server.py only


@dataclass
class Measured:
    name: str
    events: int
    wall: float
    rss_mb: float
    pss_mb: float
    rows: int | None
    cpu_s: float = 0.0  # user + system seconds of the whole tree (last sample of each process)
    note: str = ""
    check_share: float = 0.0  # jobs: the check steps' seconds / the run's seconds
    checks_failed: tuple | list = ()

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall


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


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(name: str, cmd: list[str], events: int, out_dir: Path, env: dict | None = None,
            stdout_path: Path | None = None, cwd: Path = REPO, timeout: float | None = None) -> tuple[Measured, dict]:
    """Run `cmd`, sampling the memory of its whole process tree; return the measurement and its JSON line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / f"{name}.log", "wb")
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    started = time.monotonic()
    proc = psutil.Popen(cmd, stdout=stdout, stderr=log, env=env, cwd=cwd)
    peak = {"rss": 0, "pss": 0}
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                tree = [proc] + proc.children(recursive=True)
            except psutil.Error:
                break
            rss = pss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    continue
                pss += _pss_kb(p.pid) * 1024
            peak["rss"] = max(peak["rss"], rss)
            peak["pss"] = max(peak["pss"], pss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output = proc.communicate(timeout=timeout)[0] if stdout is subprocess.PIPE else proc.wait(timeout)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        for p in [proc] + proc.children(recursive=True):  # only the tree this harness started
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait()
        done.set()
        log.close()
        raise RuntimeError(f"{name} ran over {timeout:.0f} s and was stopped; see {out_dir / (name + '.log')}") from None
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {out_dir / (name + '.log')}")
    info = {}
    if isinstance(output, bytes) and output.strip():
        try:
            info = json.loads(output.strip().splitlines()[-1])
        except ValueError:
            info = {}
    cpu_total = sum(cpu.values())  # sampled every 50 ms: the last 50 ms of each process are missed
    return Measured(name, events, wall, peak["rss"] / 2**20, peak["pss"] / 2**20, info.get("rows"), cpu_total), info


@dataclass(frozen=True)
class Tree:
    """A checkout whose `mixpanel_assets` the runs import (PYTHONPATH), and how its rows are labelled."""

    path: Path
    label: str  # "ours", or "before the rebuild (<commit>)"


def _short_commit(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
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


def pigz(path: Path, events: int, work: Path) -> Measured | None:
    if shutil.which("pigz") is None:
        print("pigz is not installed (apt-get install pigz): skipped", flush=True)
        return None
    target = work / "pigz.json.gz"
    m, _ = measure("pigz", ["pigz", "-1", "-p", "2", "-c", str(path)], events, work, stdout_path=target)
    target.unlink(missing_ok=True)
    m.name = "floor: `pigz -1 -p 2` of the input"
    return m


def _row(m: Measured) -> str:
    rows = f"{m.rows:,}" if m.rows is not None else "-"
    return (f"| {m.name} | {m.events:,} | {m.wall:.1f} | {m.cpu_s:.1f} | {m.events_per_s / 1000:,.0f}k | "
            f"{m.rss_mb:,.0f} | {m.pss_mb:,.0f} | {rows} | {m.note} |")


def verdicts(by_size: dict[int, Measured], parquet: Measured | None, base: dict[str, Measured], size: int) -> list[str]:
    """Each target of issue 7 (local file, asset alone) with the measured value: met, or the gap."""
    lines = []
    ours_json = by_size.get(size)

    def check(label: str, ok: bool, value: str) -> None:
        lines.append(f"| {label} | {value} | {'met' if ok else 'MISSED'} |")

    if ours_json:
        check("≥ 100k events/s end to end (whole process)", ours_json.events_per_s >= 100_000,
              f"{ours_json.events_per_s / 1000:,.0f}k events/s")
        if "orjson_loop" in base:
            r = ours_json.events_per_s / base["orjson_loop"].events_per_s
            check("≥ 2x the streaming orjson loop", r >= 2, f"{r:.2f}x")
        if "dlt" in base:
            r = ours_json.events_per_s / base["dlt"].events_per_s
            check("≥ 13x dlt (filesystem, jsonl)", r >= 13, f"{r:.1f}x")
        if "pigz" in base:
            r = ours_json.wall / base["pigz"].wall
            check("within 2.5x of `pigz -1 -p 2`", r <= 2.5, f"{r:.2f}x its wall time")
    if parquet and "polars" in base:
        pol = base["polars"]
        check("Parquet no slower than Polars eager", parquet.wall <= pol.wall,
              f"{parquet.wall:.1f} s vs {pol.wall:.1f} s")
        check("… with a fraction of its memory", parquet.rss_mb < pol.rss_mb,
              f"{parquet.rss_mb:,.0f} MB vs {pol.rss_mb:,.0f} MB ({parquet.rss_mb / pol.rss_mb:.0%})")
    if by_size:
        peaks = [m.rss_mb for m in by_size.values()]
        check("peak RSS (sum over the process tree) < 300 MB", max(peaks) < 300, f"max {max(peaks):,.0f} MB")
        spread = max(peaks) / min(peaks)
        check(f"flat: same within 20% for {', '.join(f'{s:,}' for s in sorted(by_size))} events", spread <= 1.2,
              f"max/min {spread:.2f}")
    return lines


def stream_verdicts(json_by_size: dict[int, Measured], parquet_by_size: dict[int, Measured],
                    base: dict[str, Measured], size: int) -> list[str]:
    """Each target of issue 13: the path users run (Export API stream -> the job with its checks)."""
    lines = []

    def check(label: str, ok: bool, value: str) -> None:
        lines.append(f"| {label} | {value} | {'met' if ok else 'MISSED'} |")

    js, pq = json_by_size.get(size), parquet_by_size.get(size)
    at = f"{size:,} events"
    if js:
        check(f"json: ≥ 100k events/s ({at}, whole process)", js.events_per_s >= 100_000,
              f"{js.events_per_s / 1000:,.0f}k events/s")
        if "orjson_stream" in base:
            r = js.events_per_s / base["orjson_stream"].events_per_s
            check("json: ≥ 2x the orjson loop reading the same stream", r >= 2, f"{r:.2f}x")
    if pq:
        check(f"Parquet: ≥ 70k events/s ({at}, whole process)", pq.events_per_s >= 70_000,
              f"{pq.events_per_s / 1000:,.0f}k events/s")
        for name, label in (("duckdb", "DuckDB"), ("polars", "Polars eager")):
            if name in base:
                other = base[name]
                check(f"Parquet: faster than {label}", pq.wall < other.wall, f"{pq.wall:.1f} s vs {other.wall:.1f} s")
                check(f"Parquet: ≤ a third of {label}'s memory", pq.rss_mb <= other.rss_mb / 3,
                      f"{pq.rss_mb:,.0f} MB vs {other.rss_mb:,.0f} MB ({pq.rss_mb / other.rss_mb:.0%})")
    for fmt, m in (("json", js), ("Parquet", pq)):
        if m is not None:
            check(f"{fmt}: checks ≤ 15% of the job's wall time (check steps / run, from the event log)",
                  m.check_share <= 0.15 and not m.checks_failed,
                  f"{m.check_share:.0%}" + (f", FAILED: {', '.join(m.checks_failed)}" if m.checks_failed else ""))
    if json_by_size:
        peaks = [m.rss_mb for m in json_by_size.values()]
        check("json: peak RSS (sum over the process tree) < 300 MB", max(peaks) < 300, f"max {max(peaks):,.0f} MB")
        spread = max(peaks) / min(peaks)
        check(f"json: flat, within 1.2x for {', '.join(f'{s:,}' for s in sorted(json_by_size))} events",
              spread <= 1.2, f"max/min {spread:.2f}")
    return lines


def render(measured: list[Measured], verdict_lines: list[str], stream_lines: list[str], failures: list[str],
           command: str, load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    header = [
        f"Command: `{command}` — {dt.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| run | events | wall s | CPU s (tree) | events/s | peak RSS MB (tree) | peak PSS MB (tree) | rows written | note |",
        "|---|---|---|---|---|---|---|---|---|",
        *[_row(m) for m in measured],
        "",
        *(["| target (issue 13: Export API stream -> job with checks) | measured | |", "|---|---|---|",
            *stream_lines, ""] if stream_lines else []),
        *(["| target (issue 7: local file, asset alone) | measured | |", "|---|---|---|", *verdict_lines]
          if verdict_lines else []),
        *(["", "Not measured (failed or skipped):", *[f"- {f}" for f in failures]] if failures else []),
    ]
    return "\n".join(header)


def write_readme(table: str) -> None:
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{table}\n{END}{tail}")


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
    parser.add_argument("--before", type=Path, help="another checkout (C extension built) run beside this one")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is stopped")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | {args.baseline_size})
    skip = {s for s in args.skip.split(",") if s}
    if args.skip_baselines:
        skip |= {name for name, _, _ in BASELINES} | {"pigz"}
    for name, module in NEEDS.items():
        if name not in skip and importlib.util.find_spec(module) is None:
            print(f"{module} is not installed (pip install -e '.[bench]'): the {name} baseline is skipped", flush=True)
            skip.add(name)
    trees = [Tree(REPO, "ours")]
    if args.before:
        before = args.before.resolve()
        if not (before / "mixpanel_assets").is_dir():
            parser.error(f"--before {args.before}: no mixpanel_assets package there")
        trees.append(Tree(before, f"before the rebuild ({_short_commit(before)})"))
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
                   stream_verdicts(stream_json, stream_parquet, base, args.baseline_size), failures, command,
                   (load_before, load_after))
    print()
    print(table)
    if not args.no_readme:
        write_readme(table)
        print(f"\nwritten to {README.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
