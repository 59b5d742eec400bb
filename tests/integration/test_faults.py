"""Fault injection: runs killed (SIGKILL: no handler runs, as a crash or an OOM kill) or
interrupted (SIGTERM, real signals) at several steps and resumed, in place or into a new
directory, end with the run directory of an uninterrupted run: the same CSVs byte for
byte (one row per step, no gaps, no duplicates), metrics.csv, summary numbers, report and
best checkpoint. The reference is an uninterrupted run of the same config.

The kill steps are drawn once from a seeded generator (printed with each case): before
the first checkpoint, just after one, and during a validation are always among them.
Quick cases run in ``make test``; the adaptive-clipping and DDP cases are ``slow``.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch

from conftest import QUIET, assert_ok, compose_cfg, run_cli
from stablelab.train import train

BASE = [
    *QUIET,
    "logger=csv",
    "max_train_steps=40",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=5",
    "plots=false",
]
FILES = ("grad_norms.csv", "stability.csv", "evals.csv", "dense_eval.csv", "metrics.csv")
# summary keys that name the run rather than measure it
RUN_KEYS = {"argv", "run_dir", "wall_seconds", "best_checkpoint", "resumed_from", "machine"}
CONFIGS = {
    "default": [],
    "percentile": ["clipping=percentile"],
    "zscore": ["clipping=zscore"],
    # a small GPT on Tiny Shakespeare with z-loss: random windows by (seed, step)
    "lm": ["data=shakespeare_char", "model=gpt", "model.n_layer=1", "model.n_head=2",
           "model.n_embd=32", "data.block_size=32", "callbacks.dense_eval.subset=32",
           "loss.z_loss=1e-4", "callbacks.lm_monitor.every_n_steps=5"],
    # the best checkpoint and the summary's best ranked by validation accuracy
    "by_acc": ["callbacks.model_checkpoint.monitor=val/acc", "callbacks.model_checkpoint.mode=max"],
}  # fmt: skip
RNG = random.Random(16)
STEPS = sorted(RNG.sample(range(11, 40), 2))  # two more kill steps, anywhere after one ckpt


def _kill(
    step: int, sig: int = signal.SIGKILL, during_validation: bool = False, once: Path | None = None
) -> list[str]:
    """The overrides of a stop at ``step``; with ``once``, the resume passes them too (the
    same config, as README says) and is not stopped again."""
    return [
        "+callbacks.kill._target_=helpers.KillAtStep",
        f"+callbacks.kill.step={step}",
        f"+callbacks.kill.signal={int(sig)}",
        f"+callbacks.kill.during_validation={str(during_validation).lower()}",
        *([f"+callbacks.kill.once={once}"] if once is not None else []),
    ]


def assert_same_run(run: Path, ref: Path) -> None:
    for name in FILES:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    if (ref / "lm_monitor.csv").is_file():  # its row at initialisation once, then every 5
        assert (run / "lm_monitor.csv").read_bytes() == (ref / "lm_monitor.csv").read_bytes()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    resumed = a.get("resumed_from", {})  # (none: killed before the first checkpoint)
    assert "changed" not in resumed and resumed.get("exact") is not False  # the same config
    assert {k: v for k, v in a.items() if k not in RUN_KEYS} == {
        k: v for k, v in b.items() if k not in RUN_KEYS
    }
    assert Path(a["best_checkpoint"]).name == Path(b["best_checkpoint"]).name
    assert Path(a["best_checkpoint"]).parent == run / "checkpoints"
    ca, cb = (torch.load(s["best_checkpoint"], weights_only=True) for s in (a, b))
    assert ca["global_step"] == cb["global_step"]
    for k, v in cb["state_dict"].items():
        assert torch.equal(ca["state_dict"][k], v), k
    # the report, but for its title (the run directory's name)
    ra, rb = ((d / "report.md").read_text().split("\n", 1)[1] for d in (run, ref))
    assert ra == rb


class _References(dict):
    """The uninterrupted run of each config, trained in this process when first asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        summary = train(compose_cfg([*BASE, *CONFIGS[name]], self.root / name))
        assert summary["status"] == "completed"
        self[name] = self.root / name
        return self[name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, module_env):
    return _References(tmp_path_factory.mktemp("ref"))


def _resume(run: Path, into: Path, cwd: Path, extra: list[str] = ()) -> None:
    """Resume ``run`` from its last checkpoint into ``into`` (in place when the same), with
    the original overrides, as the README says."""
    ckpt = "auto" if into == run else str(run / "checkpoints" / "last.ckpt")
    assert_ok(run_cli([*BASE, *extra, f"ckpt_path={ckpt}", f"hydra.run.dir={into}"], cwd))


@pytest.mark.parametrize(
    "case",
    [
        # (kill step, during validation, resume into a new directory, config)
        pytest.param(  # before the first checkpoint: a fresh start in place
            (7, False, False, "default"), marks=pytest.mark.slow
        ),
        pytest.param((11, False, False, "default"), marks=pytest.mark.slow),  # just after one
        (20, True, True, "default"),  # in the middle of the validation at step 20
        pytest.param((STEPS[0], False, True, "percentile"), marks=pytest.mark.slow),  # AutoClip
        pytest.param((STEPS[1], False, False, "zscore"), marks=pytest.mark.slow),  # ZClip's EMAs
        (STEPS[1], False, False, "lm"),  # the language model, resumed in place
        pytest.param((STEPS[0], False, True, "by_acc"), marks=pytest.mark.slow),  # best_by
    ],
    ids=lambda c: f"step{c[0]}{'-val' if c[1] else ''}{'-newdir' if c[2] else '-inplace'}-{c[3]}",
)
def test_killed_and_resumed_equals_uninterrupted(tmp_path, reference, case):
    step, during_val, new_dir, config = case
    extra = CONFIGS[config]
    run = tmp_path / "run"
    kill = _kill(step, during_validation=during_val, once=tmp_path / "killed")
    proc = run_cli([*BASE, *extra, *kill, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # as left
    into = tmp_path / "resumed" if new_dir else run
    _resume(run, into, tmp_path, [*extra, *kill])
    assert_same_run(into, reference[config])


def test_sigterm_checkpoints_the_step_exits_143_and_resumes_exactly(tmp_path, reference):
    run = tmp_path / "run"
    step = STEPS[1]
    kill = _kill(step, signal.SIGTERM, once=tmp_path / "stopped")
    proc = run_cli([*BASE, *kill, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["feasible"] is False
    info = s["interrupted"]
    assert info["signal"] == "SIGTERM" and info["exit_code"] == 143
    assert info["step"] == info["checkpoint_step"] == step + 1  # after the step it was in
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == step + 1
    assert s["resume_command"].endswith(f"ckpt_path=auto hydra.run.dir={run.resolve()}")
    report = (run / "report.md").read_text()
    assert "INTERRUPTED" in report and s["resume_command"] in report
    assert "to resume: stablelab-train" in proc.stdout + proc.stderr
    _resume(run, run, tmp_path, kill)
    assert_same_run(run, reference["default"])


@pytest.mark.slow  # (the same path as SIGTERM, tested in make test)
def test_ctrl_c_stops_after_the_step_and_exits_130(tmp_path):
    """A first Ctrl-C (SIGINT) stops like SIGTERM: after the step, checkpointed, 130."""
    run = tmp_path / "run"
    proc = run_cli([*BASE, *_kill(13, signal.SIGINT), f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 130, proc.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["interrupted"]["signal"] == "SIGINT"
    assert s["interrupted"]["checkpoint_step"] == 14 == s["steps"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14


def test_slurm_preemption_signal_checkpoints_and_requeues(tmp_path, monkeypatch):
    """SIGUSR1 (sbatch --signal=USR1@...) under SLURM: checkpoint, `scontrol requeue
    <job>` (a stand-in scontrol on PATH records the call), exit 138."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = tmp_path / "run"
    proc = run_cli([*BASE, *_kill(16, signal.SIGUSR1), f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 128 + signal.SIGUSR1, proc.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    s = json.loads((run / "summary.json").read_text())
    assert s["interrupted"]["signal"] == "SIGUSR1" and s["interrupted"]["requeued"] is True
    assert s["interrupted"]["checkpoint_step"] == 17
