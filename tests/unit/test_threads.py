"""The CPU thread policy (stablelab.threads): config key, then $OMP_NUM_THREADS, then the
cores this process may use divided among the processes the run starts on the node."""

from __future__ import annotations

import os

import pytest
import torch

from stablelab import threads


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_the_config_key_wins_then_the_environment_then_the_affinity(four_cores, monkeypatch):
    assert threads.choose(3, local=2) == {"intra_op": 3, "inter_op": 1, "source": "config threads"}
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose(None, local=1)["intra_op"] == 2
    assert threads.choose(None)["source"] == "OMP_NUM_THREADS"
    assert threads.choose(5)["intra_op"] == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # set but empty: ignored
    assert threads.choose(None)["intra_op"] == 4


@pytest.mark.parametrize(("local", "want"), [(1, 4), (2, 2), (3, 1), (8, 1)])
def test_available_cores_are_split_among_the_local_processes(four_cores, local, want):
    got = threads.choose(None, local)
    assert got["intra_op"] == want and got["inter_op"] == 1
    assert got["source"] == f"4 available cores / {local} process(es)"


@pytest.mark.parametrize(
    ("trainer", "want"),
    [
        ({"accelerator": "cpu", "devices": 1}, 1),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, 2),  # trainer=ddp_cpu
        ({"accelerator": "gpu", "devices": 8}, 1),  # a GPU rank's threads feed its device
        ({"accelerator": "cpu", "devices": "auto"}, 1),
        ({"accelerator": "cpu", "devices": "3"}, 3),  # a count as a string, as Lightning's
        ({}, 1),
    ],
)
def test_local_processes_from_the_trainer_config(trainer, want):
    assert threads.local_processes(trainer) == want


def test_apply_sets_torch_and_exports_the_count_for_the_ranks(four_cores, monkeypatch):
    before = torch.get_num_threads()
    try:
        got = threads.apply(None, {"accelerator": "cpu", "devices": 2})
        assert got["intra_op"] == 2 == torch.get_num_threads()
        assert os.environ["OMP_NUM_THREADS"] == "2"
        assert got["inter_op"] == torch.get_num_interop_threads()
    finally:
        torch.set_num_threads(before)


def test_applied_exports_for_the_run_only(four_cores, monkeypatch):
    """The export lasts one run: afterwards $OMP_NUM_THREADS is as before (unset, or the
    user's value), so a second run in the same process chooses from the cores again
    instead of reporting the first run's count as the user's."""
    before = torch.get_num_threads()
    try:
        with threads.applied(1, {"accelerator": "cpu", "devices": 1}) as got:
            assert got["source"] == "config threads" and os.environ["OMP_NUM_THREADS"] == "1"
        assert "OMP_NUM_THREADS" not in os.environ
        with threads.applied(None, {"accelerator": "cpu", "devices": 2}) as got:
            assert got == {"intra_op": 2, "inter_op": got["inter_op"],
                           "source": "4 available cores / 2 process(es)"}  # fmt: skip
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        with threads.applied(1, {}) as got:
            assert os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)


def test_the_run_line_counts_threads_in_words():
    from pathlib import Path

    from stablelab.console import run_line

    plain = {"task_name": "train"}
    one = run_line(Path("r"), plain, 10, 3, {"intra_op": 1})
    two = run_line(Path("r"), plain, 10, 1, {"intra_op": 2})
    assert "(10 steps, 3 processes, 1 thread per process; task train)" in one
    assert "(10 steps, 1 process, 2 threads per process; task train)" in two


def test_more_threads_than_cores_asked_for_in_the_config_is_warned_about(four_cores):
    """threads=N is obeyed; N threads x the processes on the node beyond the cores this
    process may use (4 here) is said, with the count the policy would choose. The
    environment's count (the workflows' and DDP's own) is not warned about."""
    import warnings

    before = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match=r"threads = 8: 8 threads in all \(1 process"):
            assert threads.apply(8, {"accelerator": "cpu", "devices": 1})["intra_op"] == 8
        with pytest.warns(UserWarning, match=r"threads = 3: 6 threads in all .* unset for 2\)"):
            threads.apply(3, {"accelerator": "cpu", "devices": 2})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            threads.apply(2, {"accelerator": "cpu", "devices": 2})  # 4 on 4 cores
            os.environ["OMP_NUM_THREADS"] = "16"
            assert threads.apply(None, {"accelerator": "cpu", "devices": 1})["intra_op"] == 16
    finally:
        torch.set_num_threads(before)
