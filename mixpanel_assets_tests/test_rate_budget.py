"""RateBudget keeps every run on a machine inside Mixpanel's Export API limits (60/hour, 3/second).

Most tests drive it with a fake clock whose `sleep` advances time, so hour-long waits take no time
and the waits themselves are what we assert. The last test uses two real processes on one file.
"""

import multiprocessing
import threading

import pytest

from mixpanel_assets.mixpanel.rate_budget import HOUR, RateBudget


class FakeClock:
    """time.time + time.sleep stand-ins: sleeping moves the clock and is recorded."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def budget(path, clock: FakeClock, per_hour: int = 60, per_second: int = 3, **kwargs) -> RateBudget:
    return RateBudget(path, per_hour, per_second, clock=clock, sleep=clock.sleep, **kwargs)


@pytest.mark.parametrize("shared_file", [False, True], ids=["in-memory", "file"])
def test_the_fourth_query_in_one_second_waits_for_the_first_to_leave_the_second(tmp_path, shared_file):
    clock = FakeClock()
    b = budget(tmp_path / "b.json" if shared_file else None, clock)
    assert [b.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []
    waited = b.acquire()
    assert clock.sleeps == [pytest.approx(1.01)] and waited == pytest.approx(1.01)
    assert b.used_last_hour() == 4 and b.spent == 4


def test_the_61st_query_in_an_hour_waits_until_the_oldest_leaves_the_window(tmp_path):
    clock = FakeClock()
    b = budget(tmp_path / "b.json", clock)
    first = clock.now
    for _ in range(60):
        b.acquire()
        clock.advance(10)
    assert clock.sleeps == []  # 60 queries spread over 600 s fit
    b.acquire()
    assert clock.sleeps == [pytest.approx(first + HOUR - (first + 600) + 0.01)]
    assert clock.now == pytest.approx(first + HOUR + 0.01)
    assert b.used_last_hour() == 60  # the oldest left, the new one came in


def test_two_budgets_on_one_file_share_the_limit(tmp_path):
    clock = FakeClock()
    a = budget(tmp_path / "shared.json", clock)
    b = budget(tmp_path / "shared.json", clock)
    a.acquire()
    a.acquire()
    b.acquire()
    assert clock.sleeps == []
    b.acquire()  # the 4th in this second, although b took only its 2nd
    assert clock.sleeps == [pytest.approx(1.01)]
    assert a.used_last_hour() == b.used_last_hour() == 4
    assert (a.spent, b.spent) == (2, 2)


def test_a_budget_that_waits_does_not_hold_the_lock_while_it_sleeps(tmp_path):
    clock = FakeClock()
    path = tmp_path / "shared.json"
    other = budget(path, clock)
    seen = []

    def sleep_and_let_another_process_look(seconds: float) -> None:
        # Another user of the file must get through while this one sleeps; if the lock were held,
        # the thread below would block until the join gives up.
        reader = threading.Thread(target=lambda: seen.append(other.used_last_hour()))
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "the budget file stayed locked while a query was waiting"
        clock.sleep(seconds)

    waiting = RateBudget(path, 60, 3, clock=clock, sleep=sleep_and_let_another_process_look)
    for _ in range(4):
        waiting.acquire()
    assert seen == [3] and len(clock.sleeps) == 1


def test_on_wait_reports_each_wait_before_sleeping(tmp_path):
    clock = FakeClock()
    waits = []
    b = budget(None, clock, per_second=1, on_wait=waits.append)
    b.acquire()
    b.acquire()
    assert waits == clock.sleeps == [pytest.approx(1.01)]


def _hammer(path: str, queries: int, start: multiprocessing.Event) -> None:
    start.wait(60)
    budget = RateBudget(path, 60, 3)
    for _ in range(queries):
        budget.acquire()


def test_two_processes_on_one_file_never_exceed_three_queries_in_any_second(tmp_path):
    path = str(tmp_path / "export_budget.json")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_hammer, args=(path, 5, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    stamps = sorted(RateBudget(path, 60, 3).recorded())
    assert len(stamps) == 10
    # any 4 consecutive queries must span at least a second
    assert all(later - earlier >= 1.0 for earlier, later in zip(stamps, stamps[3:]))
