"""Measuring one benchmark process from outside: wall time, CPU and peak memory of its whole tree.

Used by benchmarks/run.py. The tree is sampled every 50 ms with psutil: the peak of the sum of RSS
over the process and all its children (workers, forkserver, resource tracker) and the peak of the
sum of PSS (pages shared between processes counted once); `/usr/bin/time -v` would report only
the largest single process.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


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
