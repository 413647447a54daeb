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
from concurrent.futures import Executor, Future, ProcessPoolExecutor

_PRELOAD = ["mixpanel_assets.records", "mixpanel_assets.parts", "mixpanel_assets.block_worker"]
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
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
        _pools[key] = pool
    return pool


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
