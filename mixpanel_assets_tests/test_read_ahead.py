"""The Export body is read ahead on a thread: it must give the same items, in order, raise the same
errors, and stop reading once its consumer has gone."""

import threading
import time

import pytest

from mixpanel_assets.mixpanel.errors import SourceStreamError
from mixpanel_assets.mixpanel.read_ahead import read_ahead


def test_items_arrive_in_order_and_the_thread_ends():
    assert list(read_ahead(iter(range(1000)), depth=3, name="t-order")) == list(range(1000))
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name == "t-order"]


def test_an_error_of_the_body_is_raised_as_itself_after_the_items_before_it():
    def body():
        yield b"a"
        yield b"b"
        raise SourceStreamError("the stream was cut after 2 bytes")

    seen = []
    with pytest.raises(SourceStreamError, match="cut after 2 bytes"):
        for item in read_ahead(body(), depth=1):
            seen.append(item)
    assert seen == [b"a", b"b"]


def test_a_consumer_that_stops_early_stops_the_reading_and_closes_the_body():
    produced, closed = [], threading.Event()

    def body():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = read_ahead(body(), depth=4, name="t-early")
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert closed.wait(2.0)
    assert len(produced) <= 3 + 4 + 2  # what was taken, what the queue held, one in hand
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name == "t-early"]
