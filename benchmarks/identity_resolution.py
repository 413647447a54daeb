"""Identity resolution at scale: time and peak RSS of resolving N stored links (default 10M).

    .venv/bin/python benchmarks/identity_resolution.py [--links 10000000] [--system simplified|original|both]
                                                       [--memory-limit 512MB] [--dir /tmp/idbench]

Generates a realistic link set per system once (cached in --dir), stored exactly as exports store
them (state.StateStore, one gzip file per daily partition over 180 days), then resolves it in a
child process that reports its own wall time and peak RSS (ru_maxrss, DuckDB's threads included).

Link sets (seeded):
  simplified  users with 1 + Geometric(0.35) devices (uuid4 device ids); each device's
              `$device_id`+`$user_id` link is seen on 1 + Poisson(0.5) days (the same link in
              several partition files), 40% of devices also have re-keyed rows, 1% of devices are
              later linked to a second user (a contested device).
  original    the same devices, linked by `$identify` (repeated on later days), 30% re-keyed rows,
              20% of users with an email `$create_alias`, 0.5% `$merge` of two users, 1% of
              anon ids identified again as another user (refused), and 20 shared-kiosk users
              with 700 devices each (clusters over the 500-id cap).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = 86400
START = 1_717_200_000  # 2024-06-01
DAYS = 180


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    out = []
    for hi, lo in raw.tolist():
        h = f"{hi:016x}{lo:016x}"
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}")
    return out


def generate(system: str, n_links: int, folder: Path, seed: int = 5) -> dict:
    """Write ~n_links link rows as one StateStore partition file per day; returns a summary."""
    from mixpanel_assets.transform.link_store import StateStore

    rng = np.random.default_rng(seed)
    per_device = 1.5 + (0.4 if system == "simplified" else 0.3) + 0.01 + (0.05 if system == "original" else 0)
    n_devices = int(n_links / per_device)
    n_users = max(1, int(n_devices / 2.86))
    owner = rng.integers(0, n_users, size=n_devices)
    first = START + rng.integers(0, (DAYS - 1) * DAY, size=n_devices)
    devices = _uuids(rng, n_devices)
    if system == "simplified":
        devices = ["$device:" + d for d in devices]
    users = [f"user-{i:08d}" for i in range(n_users)]
    kinds, a_list, b_list, times = [], [], [], []

    def add(kind: str, a_idx, a_names, b_idx, b_names, t):
        kinds.append(np.full(len(t), kind, dtype=object))
        a_list.append((a_idx, a_names))
        b_list.append((b_idx, b_names))
        times.append(t)

    link_kind = "device_user" if system == "simplified" else "identify"
    repeats = 1 + rng.poisson(0.5, size=n_devices)
    dev_idx = np.repeat(np.arange(n_devices), repeats)
    repeat = np.arange(len(dev_idx)) != np.searchsorted(dev_idx, dev_idx)  # not the device's first link
    later = rng.integers(0, 20 * DAY, size=len(dev_idx)) * repeat
    t = np.minimum(first[dev_idx] + later, START + DAYS * DAY - 1)
    add(link_kind, dev_idx, "devices", owner[dev_idx], "users", t)
    rekeyed = np.flatnonzero(rng.random(n_devices) < (0.4 if system == "simplified" else 0.3))
    add("rekey", rekeyed, "devices", owner[rekeyed], "users", np.maximum(first[rekeyed] - rng.integers(1, 3600, len(rekeyed)), START))
    contested = np.flatnonzero(rng.random(n_devices) < 0.01)
    other = rng.integers(0, n_users, size=len(contested))
    add(link_kind, contested, "devices", other, "users", np.minimum(first[contested] + DAY, START + DAYS * DAY - 1))
    emails: list[str] = []
    kiosk_devices: list[str] = []
    if system == "original":
        aliased = np.flatnonzero(rng.random(n_users) < 0.2)
        emails = [f"person{i}@example.com" for i in aliased.tolist()]
        add("alias", np.arange(len(aliased)), "emails", aliased, "users", START + rng.integers(0, DAYS * DAY, len(aliased)))
        merged = np.flatnonzero(rng.random(n_users) < 0.005)
        add("merge", merged, "users", rng.integers(0, n_users, len(merged)), "users",
            START + rng.integers(0, DAYS * DAY, len(merged)))
        kiosk_devices = _uuids(rng, 20 * 700)
        add("identify", np.arange(len(kiosk_devices)), "kiosk", np.repeat(np.arange(20), 700), "users",
            START + rng.integers(0, DAYS * DAY, len(kiosk_devices)))
    names = {"devices": devices, "users": users, "emails": emails, "kiosk": kiosk_devices}
    kind = np.concatenate(kinds)
    t_all = np.concatenate(times)
    a_all = [names[n][i] for idx, n in a_list for i in idx.tolist()]
    b_all = [names[n][i] for idx, n in b_list for i in idx.tolist()]
    day = (t_all - START) // DAY
    order = np.argsort(day, kind="stable")
    store = StateStore(folder)
    bounds = np.searchsorted(day[order], np.arange(DAYS + 1))
    rows = 0
    for d in range(DAYS):
        links: dict = {}
        for j in order[bounds[d]:bounds[d + 1]].tolist():
            key = (kind[j], a_all[j], b_all[j])
            if key not in links or t_all[j] < links[key]:
                links[key] = float(t_all[j])
        store.write_links("events_daily", f"2024-06-01+{d:03d}", links)
        rows += len(links)
    return {"system": system, "link_rows": rows, "devices": n_devices, "users": n_users}


def resolve_child(system: str, folder: Path, memory_limit: str) -> None:
    from mixpanel_assets.transform.identity import resolve_link_files
    from mixpanel_assets.transform.link_store import StateStore

    files = StateStore(folder).link_files(["events_daily"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as work:
        resolution = resolve_link_files(files, system, work, memory_limit=memory_limit)
        rows = sum(1 for _ in resolution.lines())
        elapsed = time.perf_counter() - started
        size = resolution.path.stat().st_size
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would include the generating parent.
    peak_mb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: less sensitive to a busy machine
    print(json.dumps({"system": system, "seconds": round(elapsed, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                      "load_avg_1m": os.getloadavg()[0], "peak_rss_mb": round(peak_mb),
                      "rows": rows, "output_mb": round(size / 1e6), **resolution.metadata()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, default=10_000_000)
    parser.add_argument("--system", choices=["simplified", "original", "both"], default="both")
    parser.add_argument("--memory-limit", default="512MB")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mp-identity-bench")
    parser.add_argument("--resolve-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resolve_only:
        resolve_child(args.system, Path(args.resolve_only), args.memory_limit)
        return
    systems = ["simplified", "original"] if args.system == "both" else [args.system]
    for system in systems:
        folder = args.dir / f"{system}-{args.links}"
        if not (folder / "done").exists():
            started = time.perf_counter()
            summary = generate(system, args.links, folder)
            (folder / "done").write_text(json.dumps(summary))
            print(f"generated {summary} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--system", system, "--memory-limit", args.memory_limit,
                        "--resolve-only", str(folder)], check=True)


if __name__ == "__main__":
    main()
