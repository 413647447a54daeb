"""A killed run's staging folder is removed by the next run on the same host, and nothing else is."""

import os
import subprocess
import sys

import pytest

from mixpanel_assets.staging.scratch import _host, _start_time, scratch_dir, sweep_abandoned


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_folder_left_by_a_dead_process_is_swept_when_the_next_run_makes_its_own(tmp_path):
    abandoned = tmp_path / f"mp-stage~{_host()}~{_dead_pid()}~12345~abcd1234"
    (abandoned / "keys").mkdir(parents=True)
    (abandoned / "keys" / "bucket-000").write_bytes(b"x" * 1000)

    mine = scratch_dir("stage", tmp_path)

    assert not abandoned.exists()
    assert mine.exists() and mine.parent == tmp_path
    assert mine.name.startswith(f"mp-stage~{_host()}~{os.getpid()}~")


def test_folders_of_live_processes_other_hosts_and_strangers_are_left_alone(tmp_path):
    live = scratch_dir("stage", tmp_path)
    other_host = tmp_path / f"mp-stage~some_other_pod~{_dead_pid()}~1~abcd1234"
    stranger = tmp_path / "mp-stage-not-ours"
    unrelated = tmp_path / "data.jsonl"
    for folder in (other_host, stranger):
        folder.mkdir()
    unrelated.write_text("{}\n")

    assert sweep_abandoned(tmp_path) == []
    assert live.exists() and other_host.exists() and stranger.exists() and unrelated.exists()


def test_a_reused_pid_does_not_keep_a_dead_runs_folder(tmp_path):
    """Our own pid, but a different start time: the folder's owner was an earlier process."""
    own_start = _start_time(os.getpid())
    if own_start is None:
        pytest.skip("no /proc here: start times cannot be read, only whether a pid is alive")
    reused = tmp_path / f"mp-stage~{_host()}~{os.getpid()}~{own_start + 1}~abcd1234"
    reused.mkdir()

    assert sweep_abandoned(tmp_path) == [reused]
    assert not reused.exists()
