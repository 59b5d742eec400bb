"""Hydra launchers (optional extras, installed by the dev extra): local parallel trials with
joblib give the same results as Hydra's sequential launcher; submitit's local executor
(the SLURM launcher's code path without a cluster) runs trials; the SLURM config composes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import QUIET

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

TRIALS = [
    *QUIET,
    "optimizer.lr=0.001,0.003",
    "model=mlp",
    "max_train_steps=20",
    "trainer.val_check_interval=10",
    "test=false",
    "logger=csv",
    "plots=false",
]


def _multirun(tmp_path, name, *extra):
    sweep = tmp_path / name
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stablelab.train",
            "-m",
            *TRIALS,
            *extra,
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep, proc


def _results(sweep):
    out = []
    for trial in ("0", "1"):
        s = json.loads((sweep / trial / "summary.json").read_text())
        out.append((s["status"], s["steps"], s["val_loss"], s["grad_norm_p90"]))
    return out


@pytest.mark.slow  # (parallel == sequential trials runs in make test: test_workflows.py)
def test_joblib_parallel_trials_equal_sequential_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same thread count in both sweeps
    par, proc = _multirun(tmp_path, "parallel", "hydra/launcher=parallel")
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    seq, _ = _multirun(tmp_path, "sequential")
    assert _results(par) == _results(seq)
    assert [r[0] for r in _results(par)] == ["completed", "completed"]


@pytest.mark.slow  # (a Hydra launcher plugin; the joblib one is also slow)
def test_submitit_local_launcher_runs_the_trials(tmp_path):
    sweep, _ = _multirun(tmp_path, "submitit", "hydra/launcher=submitit_local")
    assert [r[0] for r in _results(sweep)] == ["completed", "completed"]
    assert (sweep / ".submitit").is_dir()  # the submitit job folders


def test_slurm_launcher_config_composes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable, "-m", "stablelab.train", "hydra/launcher=slurm",
            "hydra.launcher.tasks_per_node=4", "--cfg", "hydra",
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout
    assert "tasks_per_node: 4" in proc.stdout and "timeout_min: 240" in proc.stdout
