"""The gates a staged input must pass before anything is written: judged from the counts the
parse step gathered, so a source that answered with something else (an error page, a wrong file,
times in another unit) fails the run and the destination keeps what it had.

`staged` is a StagedEvents or StagedTable (stage.py): anything with `lines`, `bad_lines` and
`bad_examples`, and for the window check `far_outside`, `far_examples` and `windows`.
"""

from __future__ import annotations

from mixpanel_assets.mixpanel.errors import BadInputError
from mixpanel_assets.staging.block_worker import MAX_FAR_EXAMPLES
from mixpanel_assets.transform.records import epoch_to_datetime

# Rows beyond this many seconds of a run's windows, more than MAX_FAR_SHARE of its lines and more
# than MIN_FAR_ROWS, fail the run (see check_outside_window).
REACH_SECONDS = 2 * 86400
MAX_FAR_SHARE = 0.01
MIN_FAR_ROWS = 10


def check_bad_lines(staged, max_fraction: float, max_count: int | None, source: str,
                    what: str = "lines are not valid Mixpanel export events") -> None:
    """project.bad_lines, the one rule for events and profiles: `max_count` when set, else
    `max_fraction` of the lines read; over it, the run fails naming the first bad lines.
    Also fails when every line is bad: an input with no valid line is not the project's data (an
    error page, a wrong file), whatever max_count allows, and loading it would replace the window
    with nothing."""
    if not staged.bad_lines:
        return
    total = staged.lines
    if staged.bad_lines >= total:
        examples = "\n".join(f"  {where}: {why}" for where, why in staged.bad_examples)
        raise BadInputError(
            f"{source}: all {total} {what}: an input without one valid line cannot be the project's data "
            f"(an error page, a wrong file?); nothing was written. First lines:\n{examples}"
        )
    too_many = staged.bad_lines > max_count if max_count is not None else staged.bad_lines > max_fraction * total
    if too_many:
        examples = "\n".join(f"  {where}: {why}" for where, why in staged.bad_examples)
        limit = f"max_count {max_count}" if max_count is not None else f"max_fraction {max_fraction}"
        raise BadInputError(
            f"{source}: {staged.bad_lines} of {total} {what}, more than "
            f"project.bad_lines allows ({limit}); nothing was written. First bad lines:\n{examples}"
        )


def check_outside_window(staged, source: str, reach: float | None) -> None:
    """Fail when more rows lie beyond the run's reach than a few strays: their time is misread.

    Rows outside a run's windows are normal and only counted: a query of project-timezone days or
    a local file named by its date (read for the days either side) holds rows of neighbouring
    days, and an hourly partition's query a whole day. None of them lies more than REACH_SECONDS
    (2 days) from the run's windows, so rows beyond that are what a time in another unit
    (microseconds; milliseconds are recognised, block_worker.MS_TIMES) or a wrong file gives: it
    hits every row, and the window would be replaced by fewer rows or none. A few such rows are a
    device with a wrong clock and stay counted. The threshold is more than MAX_FAR_SHARE (1%) of
    the lines read, and more than MIN_FAR_ROWS (10) so a small window is not failed by two or
    three strays. Sources whose rows may be of any time (a local file without a date in its name,
    read for every partition) pass `reach` None and are not checked.
    """
    far = staged.far_outside
    if reach is None or far <= max(MIN_FAR_ROWS, MAX_FAR_SHARE * staged.lines):
        return
    windows = staged.windows
    span = (f"{epoch_to_datetime(windows[0].window.start):%Y-%m-%dT%H:%MZ}.."
            f"{epoch_to_datetime(max(w.window.end for w in windows)):%Y-%m-%dT%H:%MZ}")
    examples = "\n".join(f"  {where}: time {time!r}" for where, time in staged.far_examples[:MAX_FAR_EXAMPLES])
    raise BadInputError(
        f"{source}: {far:,} of {staged.lines:,} rows have a time more than {reach / 86400:g} days outside the "
        f"run's windows ({span}), more than {MAX_FAR_SHARE:.0%} of the lines (and more than {MIN_FAR_ROWS}): "
        "their times are probably in another unit (seconds are expected; milliseconds are recognised) or the "
        f"source holds other data; nothing was written. First ones:\n{examples}"
    )
