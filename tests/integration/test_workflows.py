"""The playbook's workflows with real trials: an LR sweep with a forced divergence (every
artifact, lr* against the trials' own summaries), parallel == sequential, a Hydra multirun
analysed by `stablelab analyze`, and diagnose end to end on a tiny config."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

TINY = ["model=mlp", "max_train_steps=40", "logger=csv", "trainer.val_check_interval=20"]


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stablelab.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def _summaries(sweep_dir):
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sweep_dir.rglob("summary.json")
        if "wandb" not in p.parts
    }


def _losses(run_dir):
    return [r["loss"] for r in csv.DictReader((run_dir / "stability.csv").open())]


LRS = ["--lrs", "0.001", "0.01", "3"]


@pytest.fixture(scope="module")
def seq_sweep(tmp_path_factory, module_env):
    """A 3-trial LR sweep, sequential, 1 thread a trial (per-run PNGs off)."""
    out = tmp_path_factory.mktemp("sweep") / "seq"
    proc = cli(
        "sweep", "lr", *TINY, "plots=false", *LRS, "--jobs", "1", "--threads", "1",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def diagnosis(tmp_path_factory, module_env):
    """diagnose on the same config: its LR sweep is the same 3 trials, 2 in parallel."""
    out = tmp_path_factory.mktemp("diagnose") / "diag"
    proc = cli(
        "diagnose", *TINY, *LRS, "--probe-steps", "20", "--jobs", "2", "--threads", "1",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_lr_sweep_writes_every_artifact_and_records_divergence_as_infeasible(seq_sweep):
    sweep, proc = seq_sweep
    for name in ("sweep_summary.csv", "axis_plot.png", "curves_above_lr_star.png"):
        assert (sweep / name).is_file(), name
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [float(r["lr"]) for r in rows] == [0.001, 0.01, 3.0]
    summaries = _summaries(sweep)
    assert summaries["lr_3"]["status"] == "diverged" and not summaries["lr_3"]["feasible"]
    assert rows[2]["feasible"] == "False" and rows[2]["diverged_at_step"] != ""
    # lr* from the trials' own summaries: the feasible one with the lowest val loss
    feasible = {k: s["val_loss"] for k, s in summaries.items() if s["feasible"]}
    best = min(feasible, key=feasible.get)
    report = (sweep / "sweep_report.md").read_text()
    assert f"| {float(best.removeprefix('lr_')):.4g} (lr*) |" in report
    # LR sensitivity recomputed from the trials' files: final val loss (evals.csv's last
    # row) capped at the loss at init (the first training loss), lr_3 at its init loss
    capped = []
    for name, s in sorted(summaries.items()):
        init = s["initial_loss"]
        if s["feasible"]:
            last = list(csv.DictReader((sweep / name / "evals.csv").open()))[-1]
            capped.append(min(float(last["val_loss"]), init))
        else:
            capped.append(init)
    want = sum(c - min(capped) for c in capped) / 3
    assert float(rows[0]["lr_sensitivity"]) == pytest.approx(want, rel=1e-9)
    assert len({r["lr_sensitivity"] for r in rows}) == 1  # one LR axis: one value
    assert f"LR sensitivity (Wortsman et al. 2023): **{want:.4g}**" in report
    assert f"LR sensitivity: {want:.4g}" in proc.stdout
    assert "diverged at step" in proc.stdout  # progress lines: trial k of n with the outcome
    assert "[LR sweep 3/3]" in proc.stdout and "ETA" in proc.stdout
    # the divergence warning is the status line's already: no warnings section for it
    assert "diverged at step 1" in (sweep / "lr_3.log").read_text()
    assert "the trials' warnings" not in proc.stdout


def test_a_sweep_without_progress_callback_or_loggers_and_its_warning_on_the_console(tmp_path):
    """A trial with no progress callback runs (the workflow asks for plain progress through
    the environment, not an override that such a config refuses), and
    its config warning (a clipping.exclude that matches nothing) is on the sweep's
    console once. One real trial."""
    proc = cli(
        "sweep", "lr", "model=mlp", "max_train_steps=5", "logger=none", "plots=false",
        "callbacks.progress_bar=null", "clipping=agc", "clipping.exclude=[model.nothing]",
        "--lrs", "0.001",
        "--threads", "1", "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    head = lines.index(
        "[LR sweep] the trials' warnings, each once (their .log files give the context):"
    )
    assert lines[head + 1].startswith("  - clipping.exclude ['model.nothing'] matches no param")
    assert lines[head + 1].endswith("(lr_0.001)")
    assert sum("model.nothing" in line for line in lines) == 1
    assert "matches no parameter" in (tmp_path / "s" / "lr_0.001.log").read_text()
    assert (tmp_path / "s" / "lr_0.001" / "summary.json").is_file()
    assert "No artists" not in proc.stderr  # (an empty curves plot warned from matplotlib)


def test_parallel_trials_give_the_same_results_as_sequential(seq_sweep, diagnosis):
    seq, par = seq_sweep[0], diagnosis / "lr_sweep"
    s_seq, s_par = _summaries(seq), _summaries(par)
    assert sorted(s_seq) == sorted(s_par) == ["lr_0.001", "lr_0.01", "lr_3"]
    for name in s_seq:
        for key in ("status", "steps", "val_loss", "best_step", "diverged_at_step", "unstable"):
            assert s_seq[name][key] == s_par[name][key], (name, key)
        assert _losses(seq / name) == _losses(par / name)  # every step, bit for bit


def test_hydra_multirun_sweep_is_analysed_the_same_way(tmp_path):
    sweep = tmp_path / "multirun"
    proc = subprocess.run(
        [
            sys.executable, "-m", "stablelab.train", "-m", "sweep=lr", *TINY, "plots=false",
            "optimizer.lr=0.001,5", f"hydra.sweep.dir={sweep}",
            "callbacks.progress_bar.refresh_rate=0", "test=false",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = cli("analyze", str(sweep))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [(float(r["lr"]), r["feasible"]) for r in rows] == [(0.001, "True"), (5.0, "False")]
    assert "lr* = 0.001 sits at the edge of feasibility" in res.stdout
    # a real multirun's trials differ only in the swept LR (run paths, ids: not compared)
    assert "also differ" not in res.stdout
    assert "Besides the learning rate" not in (sweep / "sweep_report.md").read_text()
    assert cli("analyze", str(tmp_path / "nothing")).returncode == 2


def test_bad_overrides_stop_before_any_trial(tmp_path):
    proc = cli("sweep", "lr", "optimizer.lr=-1", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "optimizer.lr" in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = cli("sweep", "warmup", "--out", str(tmp_path / "y"))
    assert proc.returncode == 2 and "--unstable-lr" in proc.stderr


def test_a_warmup_sweep_with_nothing_to_try_is_refused(tmp_path):
    """A run too short for the playbook's cap (10% of 5 steps: 0) or a grid of zeros
    leaves no warmup length: refused (it ran no trial and said "no warmup trains
    stably"); diagnose refuses it before its LR sweep and probe."""
    from stablelab.cli import main

    args = ["model=mlp", "max_train_steps=5", "--out", str(tmp_path / "w")]
    assert main(["sweep", "warmup", "--unstable-lr", "0.1", *args]) == 2
    assert main(["diagnose", "model=mlp", "max_train_steps=5", "--out", str(tmp_path / "d")]) == 2
    zero = ["model=mlp", "max_train_steps=50", "--grid", "0", "--out", str(tmp_path / "z")]
    assert main(["sweep", "warmup", "--unstable-lr", "0.1", *zero]) == 2
    assert not any(tmp_path.iterdir())  # no trial, no folder
    from stablelab.workflows import warmup_values

    assert warmup_values(50, [10, 1000]) == [5]  # (the cap itself, where it cuts the grid)
    assert warmup_values(100, [10, 1000]) == [10]


def test_diagnose_end_to_end_on_a_tiny_config(diagnosis):
    from stablelab.analysis import wandb_offline

    out = diagnosis
    text = (out / "diagnosis.md").read_text()
    for section in (
        "## 1. LR sweep",
        "## 2. Stability probe",
        "## 3. Warmup sweep",
        "## 4. Clip threshold",
        "**First fix to try:",
    ):
        assert section in text, section
    # the probe: 2 x lr*, an evaluation after each of its 20 steps
    summaries = _summaries(out / "lr_sweep")
    feasible = {k: s["val_loss"] for k, s in summaries.items() if s["feasible"]}
    lr_star = float(min(feasible, key=feasible.get).removeprefix("lr_"))
    (probe,) = (out / "probe").glob("probe_*/")
    assert probe.name == f"probe_lr_{2 * lr_star:.4g}"
    dense = list(csv.DictReader((probe / "dense_eval.csv").open()))
    assert [int(r["step"]) for r in dense] == list(range(1, 21))
    # the warmup sweep: 10x the smallest bad LR, the grid capped at 10% of 40 steps
    assert sorted(p.name for p in (out / "warmup").glob("warmup_*/")) == ["warmup_4"]
    cfg = (out / "warmup" / "warmup_4" / "config.yaml").read_text()
    assert "warmup_steps: 4" in cfg and "post_warmup_steps: 8" in cfg
    report = (out / "warmup" / "sweep_report.md").read_text()
    assert report.startswith("# Warmup sweep") and "\n| 4 | " in report
    # the clip threshold is lr*'s 90th percentile
    import numpy as np

    norms = [
        float(r["grad_norm"])
        for r in csv.DictReader((out / "lr_sweep" / f"lr_{lr_star:.4g}" / "grad_norms.csv").open())
    ]
    assert f"**{np.percentile(norms, 90):.4g}**" in text
    # and W&B: one offline run with the plots and the report
    (f,) = wandb_offline.run_files(out)
    keys = {k for h in wandb_offline.history(f) for k in h}
    assert "diagnose/axis_plot/_type" in keys
    sens = float(next(csv.DictReader((out / "lr_sweep" / "sweep_summary.csv").open()))[
        "lr_sensitivity"
    ])  # fmt: skip
    assert f"LR sensitivity (Wortsman et al. 2023) {sens:.4g}." in text
    assert wandb_offline.summary(f)["lr_sensitivity"] == pytest.approx(sens, rel=1e-12)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert (run_dir / "files" / "diagnosis.md").read_text() == text


def test_ctrl_c_stops_a_sweep_its_trials_resumable_and_nothing_analysed(tmp_path, capsys):
    """Ctrl-C (SIGINT to the workflow alone: its trials run in their own process groups)
    is passed to the running trial, which stops after its step with a checkpoint; the
    next trial does not start; no analysis is written (an interrupted trial is no
    infeasible one: it made lr* 'the edge of feasibility'); exit 130. `stablelab analyze`
    leaves the interrupted trial out, saying so."""
    import signal
    import time

    out = tmp_path / "sweep"
    args = ["model=mlp", "max_train_steps=3000", "logger=csv", "plots=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stablelab.cli", "sweep", "lr", *args, "--lrs", "1e-3", "3e-3",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = out / "lr_0.001.log"
    deadline = time.time() + 120
    while time.time() < deadline and "step 1" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)  # (the trial reports its steps: it is training)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted by SIGINT; nothing was analysed" in err
    assert "1 not started (lr_0.003)" in err and "Traceback" not in err
    s = json.loads((out / "lr_0.001" / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["interrupted"]["signal"] == "SIGINT"
    assert 0 < s["steps"] < 3000 and (out / "lr_0.001" / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "lr_0.003").exists() and not (out / "sweep_summary.csv").exists()
    res = cli("analyze", str(out))
    assert res.returncode == 2 and "interrupted at step" in res.stderr
    assert "no finished trial" in res.stderr
    # the same sweep again: refused, pointing at the stopped trial's resume command
    from stablelab.cli import main

    again = ["sweep", "lr", *args, "--lrs", "1e-3", "3e-3", "--out", str(out)]
    assert main(again) == 2
    assert "lr_0.001: stopped before its end; resume it" in capsys.readouterr().err
