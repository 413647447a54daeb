"""Where the time goes: the events job (export + checks) on the Export API stream, sampled with py-spy.

`make profile` (or `python benchmarks/profile_job.py [--size N] [--format json|parquet] [--readme]`)
serves the generated day like benchmarks/run.py does, runs benchmarks/export_ours.py --job under
`py-spy record --subprocesses` (100 samples a second of every process of the tree: the coordinator,
the forkserver's parse workers), and sorts each sample's CPU time into the stage of the pipeline it
belongs to, by the innermost frame of ours (or of Dagster) on its stack. Idle threads are not
sampled, so the figures are CPU seconds, summed over processes; on two cores the wall time is at
least half their sum. With --readme the table goes into benchmarks/README.md between the
`profile:start` / `profile:end` markers.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import BENCH_SECRET, BENCH_USER, HERE, REPO, SECRET_ENV, USER_ENV, StreamServer, generate

README = HERE / "README.md"
START, END = "<!-- profile:start -->", "<!-- profile:end -->"

# (role, stage, frames: a function name, or name@file). A sample goes to the first stage of its
# process's role that has one of its frames anywhere on the sample's stack; a stage with no frames
# takes the rest.
STAGES = [
    ("worker", "read the line: shape, UTF-8 check, msgspec decode of the properties", {"read_event", "read_typed", "_read_general"}),
    ("worker", "encode the row (orjson)", {"event_row"}),
    ("worker", "dedup-key digest (xxh3-128)", {"key_digest"}),
    ("worker", "identity links (per block, then merged per window)", {"identity_links", "write_block_links", "merge_links"}),
    ("worker", "read its block (hand-off file or local file range)", {"read_range"}),
    ("worker", "stage rows to disk", {"write_file"}),
    ("worker", "compress parts (ISA-L gzip)", {"_compress", "compress"}),
    ("worker", "read staged rows back, drop duplicates", {"filtered_lines", "filter_lines"}),
    ("worker", "Parquet part (columns, Arrow, zstd)", {"write_parquet_part"}),
    ("worker", "the block loop (windows, buffers, counts)", {"parse_block"}),
    ("worker", "process pool and other", set()),
    ("coordinator", "asset checks", {"_checks"}),
    ("coordinator", "HTTP read + gunzip (Export API stream)", {"_body_chunks"}),
    ("coordinator", "cut blocks, hand them off", {"split_blocks", "put"}),
    ("coordinator", "dedup (digest buckets, Mixpanel's rule)", {"_deduplicate", "add", "_absorb"}),
    ("coordinator", "identity links merge", {"merge_links"}),
    ("coordinator", "upload parts, manifest, shrink guard", {"write_staged_window", "write_event_window", "check_shrink"}),
    ("coordinator", "handing blocks to workers, collecting results (pool threads)", {"_run_blocks", "run@threading.py"}),
    ("coordinator", "start-up: imports, definitions, instance", {"_find_and_load", "_build_definitions", "ephemeral"}),
    ("coordinator", "Dagster run machinery and other", set()),
]
_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:)]+)")


def _stage(frames: list[str], role: str) -> str:
    names = set()
    for frame in frames:
        m = _FRAME.match(frame)
        if m:
            func = m.group("func").rsplit(".", 1)[-1]
            names.update((func, f"{func}@{os.path.basename(m.group('file'))}"))
    for stage_role, stage, funcs in STAGES:
        if stage_role == role and any(name in funcs for name in names):
            return stage
    return next(stage for stage_role, stage, funcs in STAGES if stage_role == role and not funcs)


def aggregate(raw: Path, rate: int) -> dict[tuple[str, str], float]:
    seconds: dict[tuple[str, str], float] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        role = "worker" if any(f.startswith("_process_worker") for f in frames) else "coordinator"
        if role == "coordinator" and any(f.startswith("process ") and "forkserver" in f for f in frames):
            role = "worker"  # the forkserver itself, idle but for forking
        seconds[(role, _stage(frames, role))] += int(count) / rate
    return seconds


def render(seconds: dict[tuple[str, str], float], title: str) -> str:
    total = sum(seconds.values())
    lines = [title, "", "| process | stage | CPU s | share |", "|---|---|---|---|"]
    for role in ("coordinator", "worker"):
        role_total = sum(v for (r, _), v in seconds.items() if r == role)
        for stage_role, stage, _ in STAGES:
            value = seconds.get((stage_role, stage), 0.0)
            if stage_role == role and value >= 0.05:
                lines.append(f"| {role} | {stage} | {value:.1f} | {value / total:.0%} |")
        lines.append(f"| **{role}s** | | **{role_total:.1f}** | **{role_total / total:.0%}** |"
                     if role == "worker" else f"| **{role}** | | **{role_total:.1f}** | **{role_total / total:.0%}** |")
    lines.append(f"| **all** | | **{total:.1f}** | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["json", "parquet"], default="json")
    parser.add_argument("--rate", type=int, default=100, help="samples a second")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--readme", action="store_true", help="write the table into benchmarks/README.md")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        parser.error("py-spy is not installed (pip install -e '.[bench]')")
    path, _ = generate(args.size, args.data_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO), USER_ENV: BENCH_USER, SECRET_ENV: BENCH_SECRET}
    work = Path(tempfile.mkdtemp(prefix="mp-profile-"))
    server = StreamServer(path)
    try:
        raw = work / "samples.txt"
        subprocess.run([spy, "record", "--subprocesses", "--nonblocking", "-r", str(args.rate), "-f", "raw",
                        "-o", str(raw), "--", sys.executable, str(HERE / "export_ours.py"), "--export-url",
                        server.url, "--job", "--out", str(work / "out"), "--format", args.format],
                       check=True, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        table = render(aggregate(raw, args.rate),
                       f"Command: `python benchmarks/profile_job.py --size {args.size} --format {args.format}` "
                       f"(py-spy, {args.rate} samples/s, CPU seconds summed over the process tree)")
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    print(table)
    if args.readme:
        text = README.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{START}\n{table}\n{END}{tail}")
        print(f"\nwritten to {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
