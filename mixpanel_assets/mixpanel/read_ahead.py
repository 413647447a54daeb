"""Reading an Export API body ahead, on a thread, while the coordinator hands blocks to the workers.

Why: reading the socket and gunzipping with ISA-L both release the GIL, but on the coordinator's
own thread they run in series with cutting blocks, handing them to the parse workers and taking
their results back, so every megabyte read is time the workers may wait for their next block. On
a thread of their own they overlap with that work. The queue is short (two chunks), so memory stays
flat, and the body's checks (export_body.py) run on that thread unchanged: whatever they raise is
raised again, as itself, where the body is consumed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()
_POLL_SECONDS = 0.1  # how soon a reader whose consumer has gone notices it


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_ahead(items: Iterator[T], depth: int = 8, name: str = "read-ahead") -> Iterator[T]:
    """Yield what `items` yields, produced up to `depth` items ahead on a daemon thread.

    When the consumer stops early (a failure elsewhere, a closed generator), the thread stops at
    its next item and closes `items`; it is not waited for, as it may be blocked on a socket that
    the caller is about to close.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
