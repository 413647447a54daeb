"""The benchmark's table and its verdicts on the targets of issues 7 and 13 (used by benchmarks/run.py)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import psutil
from measure import Measured

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


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
        (f"Command: `{command}` — {dt.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), "
         f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average {load[0]:.2f} before, {load[1]:.2f} after."),
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
