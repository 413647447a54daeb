"""One command for the export benchmarks: `make bench` (or `python benchmarks/run.py`).

1. Generates the inputs once (../shared/tools/gen_mixpanel_export.py, seed 42, one UTC day) into
   benchmarks/data/ (git-ignored): 250k, 1M and 4M events.
2. Runs, each as its own process: our export through the real Dagster asset (gzip JSON at
   Mixpanel's paths, and Parquet) at every size, and at the baseline size the baselines of
   PERF_BASELINES.md: the streaming orjson loop, Polars eager -> Parquet, a dlt filesystem
   pipeline, and `pigz -1 -p 2` of the input (the gzip floor on two cores).
3. Measures each process from outside: wall time, and peak memory of the whole process tree
   (sampled every 50 ms with psutil: the sum of RSS over the process and all its children, and
   the sum of PSS, which counts pages shared between processes once). Checks that every export
   wrote the input's deduplicated row count.
4. Prints the table with events/s and the ratios to the targets of issue 7, and writes it into
   benchmarks/README.md with the command that produced it and the machine's load.

Ratios within one run are what count: the machine is shared, so absolute numbers move with load.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
            stdout_path: Path | None = None) -> tuple[Measured, dict]:
    """Run `cmd`, sampling the memory of its whole process tree; return the measurement and its JSON line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / f"{name}.log", "wb")
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    started = time.monotonic()
    proc = psutil.Popen(cmd, stdout=stdout, stderr=log, env=env, cwd=REPO)
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
    output = proc.communicate()[0] if stdout is subprocess.PIPE else proc.wait()
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


def ours(fmt: str, path: Path, events: int, work: Path) -> Measured:
    out = work / f"ours-{fmt}-{events}"
    shutil.rmtree(out, ignore_errors=True)
    m, info = measure(f"ours_{fmt}_{events}", [sys.executable, str(HERE / "export_ours.py"), "--input", str(path),
                                                "--out", str(out), "--format", fmt], events, work)
    m.name = f"ours, {'gzip JSON' if fmt == 'json' else 'Parquet'} (Dagster asset)"
    m.note = f"{info.get('run_seconds', 0):.1f} s inside the run"
    bucket = out / "bucket" / "1" / "mp_master_event" / "2024" / "11" / "22"
    manifest = json.loads((bucket / "manifest.json").read_text())
    if manifest["rows"] != m.rows:
        raise RuntimeError(f"{m.name}: manifest says {manifest['rows']} rows, the run {m.rows}")
    shutil.rmtree(out, ignore_errors=True)
    return m


def baseline(name: str, label: str, path: Path, events: int, work: Path) -> Measured:
    out = work / f"{name}-{events}"
    shutil.rmtree(out, ignore_errors=True)
    m, _ = measure(name, [sys.executable, str(HERE / "baselines.py"), name, "--input", str(path), "--out", str(out)],
                   events, work)
    m.name = label
    shutil.rmtree(out, ignore_errors=True)
    return m


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
    """Each target of issue 7 with the measured value: met, or the gap."""
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


def render(measured: list[Measured], verdict_lines: list[str], command: str, load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    header = [
        f"Command: `{command}` — {dt.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| run | events | wall s | CPU s (tree) | events/s | peak RSS MB (tree) | peak PSS MB (tree) | rows written | note |",
        "|---|---|---|---|---|---|---|---|---|",
        *[_row(m) for m in measured],
        "",
        "| target (issue 7) | measured | |",
        "|---|---|---|",
        *verdict_lines,
    ]
    return "\n".join(header)


def write_readme(table: str) -> None:
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="events per input (ours runs on each)")
    parser.add_argument("--baseline-size", type=int, default=1_000_000, help="the input the baselines run on")
    parser.add_argument("--skip", default="", help="comma-separated: orjson_loop,polars,dlt,pigz,parquet")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | {args.baseline_size})
    skip = {s for s in args.skip.split(",") if s}
    command = "make bench" if os.environ.get("MAKELEVEL") else "python " + " ".join([
        "benchmarks/run.py", *sys.argv[1:]])
    inputs = {size: generate(size, args.data_dir) for size in sizes}
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    measured: list[Measured] = []
    by_size: dict[int, Measured] = {}
    base: dict[str, Measured] = {}
    parquet = None
    try:
        for size in sizes:
            path, summary = inputs[size]
            m = ours("json", path, size, work)
            if m.rows != summary["unique"]:
                raise RuntimeError(f"ours wrote {m.rows} rows; the input has {summary['unique']} unique events")
            by_size[size] = m
            measured.append(m)
            print(_row(m), flush=True)
        path, summary = inputs[args.baseline_size]
        size = args.baseline_size
        if "parquet" not in skip:
            parquet = ours("parquet", path, size, work)
            measured.append(parquet)
            print(_row(parquet), flush=True)
        for name, label in (("orjson_loop", "streaming orjson loop, gzip -1"), ("polars", "Polars eager -> Parquet"),
                            ("dlt", "dlt pipeline, filesystem, jsonl")):
            if name in skip:
                continue
            m = baseline(name, label, path, size, work)
            base[name] = m
            measured.append(m)
            print(_row(m), flush=True)
        if "pigz" not in skip:
            m = pigz(path, size, work)
            if m is not None:
                base["pigz"] = m
                measured.append(m)
                print(_row(m), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    table = render(measured, verdicts(by_size, parquet, base, args.baseline_size), command, (load_before, load_after))
    print()
    print(table)
    if not args.no_readme:
        write_readme(table)
        print(f"\nwritten to {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
