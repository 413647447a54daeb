"""A process pool for the CPU-bound half of an export (JSON parsing, compression).

Python parses one line at a time under the GIL, so a 2-core machine exports twice as fast with
two worker processes. Workers are started by a forkserver that imports only this package's light
modules: forking the Dagster run process itself (threads, gRPC, 150 MB of imports) is unsafe and
would multiply its memory.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait

_PRELOAD = ["mixpanel_assets.transform.events", "mixpanel_assets.staging.parts", "mixpanel_assets.staging.block_worker"]
_pools: dict[int, ProcessPoolExecutor] = {}


class InlineExecutor(Executor):
    """Runs tasks in the calling process; used for one worker or tiny inputs (no start-up cost)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


def _context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def process_pool(workers: int) -> Executor:
    """A shared pool of `workers` processes, created on first use and reused by later exports."""
    if workers <= 1:
        return InlineExecutor()
    key = (os.getpid(), workers)
    pool = _pools.get(key)
    if pool is None:
        fixed_mmap_threshold()  # the run process handing out blocks: see the function
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_init_worker,
                                   initargs=(os.getpid(),))
        _pools[key] = pool
    return pool


def _init_worker(coordinator_pid: int) -> None:
    """Set up a worker: give freed block buffers back to the OS, and die with the coordinator.

    glibc raises its mmap threshold after the first large free, so 4 MB block buffers would then
    come from the heap and the worker's RSS would stay at its high-water mark; a fixed threshold
    keeps it at what the worker holds: 263 vs 278 MB peak RSS for the process tree of a 1M-event
    gzip JSON export (benchmarks/export_ours.py, one run each, 2026-12). Arrow (Parquet parts) is
    pointed at the same malloc rather than its own mimalloc, which keeps freed row groups mapped:
    586 vs 684 MB peak RSS for a 1M-event Parquet export, no slower (94 vs 90 s on a loaded
    machine). A worker whose run process was killed (OOM, SIGKILL, a lost node) would otherwise
    wait forever on its task queue.
    """
    fixed_mmap_threshold()
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read when pyarrow is imported; a user's choice stands

    def watch() -> None:
        while True:
            time.sleep(2)
            try:
                os.kill(coordinator_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="coordinator-watch", daemon=True).start()


def fixed_mmap_threshold() -> None:
    """Buffers of 1 MB and more get their own mappings, returned to the OS when freed (glibc
    `mallopt(M_MMAP_THRESHOLD)`; elsewhere nothing). Without it glibc raises the threshold after the
    first large free, and the 4 MB blocks and key records that come and go for every block of an
    export then reuse and fragment the heap, whose high-water mark stays resident. Set in the
    workers, and in the run process once it stages events: its RSS grew ~10 MB per million events
    without it (179 -> 219 MB over a 4M-event stream)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MB
    except (OSError, AttributeError):
        pass


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc `malloc_trim`; elsewhere nothing).

    For a worker that just wrote a Parquet part: its row groups' buffers were freed, but freed
    heap memory stays resident until trimmed, and a pool's workers live on between exports
    (91 -> 83 MB RSS for a worker after a 256 MB part, 2026-12)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def stop_futures(futures: Iterable[Future]) -> None:
    """Cancel the tasks not started and wait for the running ones to end.

    A shared pool cannot be stopped for one export, and a running task cannot be interrupted; so
    after a failure (a full disk) the export cancels what is queued and waits for what is running
    before it removes its staging folder. Otherwise those workers would write their blocks into a
    folder just removed, recreating it. Waiting costs at most one task per worker (~0.1 s a block).
    """
    pending = [future for future in futures if not future.cancel()]
    wait(pending)


def discard_pool(workers: int) -> None:
    """Drop a pool after a worker died (BrokenProcessPool) so the next export starts a fresh one."""
    pool = _pools.pop((os.getpid(), workers), None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def _shutdown_pools() -> None:
    for pool in _pools.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _pools.clear()


def _stop_pools_before_exit() -> None:
    for pool in _pools.values():
        pool.shutdown(wait=True, cancel_futures=True)  # wait: the workers must get their stop signal
    _pools.clear()


# A process started by multiprocessing (Dagster's multiprocess executor runs each step in one)
# never runs atexit handlers: it joins its children and calls os._exit. Without this finalizer
# the step process would wait forever on the idle pool workers, and the run would never end.
multiprocessing.util.Finalize(None, _stop_pools_before_exit, exitpriority=100)
