"""``train(cfg)`` in-process: reproducibility, exact resume, nothing lost when a run fails."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from stablelab.train import train

FAST = ["logger=csv", "callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=5"]


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _train(tmp_path: Path, name: str, overrides: list[str]) -> tuple[dict, Path]:
    out = tmp_path / name
    return train(compose_cfg([*FAST, *overrides], out)), out


def test_same_seed_gives_identical_metrics(tmp_path):
    args = ["max_train_steps=40", "trainer.val_check_interval=20"]
    s1, r1 = _train(tmp_path, "a", [*args, "seed=3"])
    s2, r2 = _train(tmp_path, "b", [*args, "seed=3"])
    s3, _ = _train(tmp_path, "c", [*args, "seed=4"])
    assert _rows(r1) == _rows(r2)  # every logged value, bit for bit
    assert (s1["val_loss"], s1["test_acc"]) == (s2["val_loss"], s2["test_acc"])
    assert s3["val_loss"] != s1["val_loss"]  # the seed matters: the test can fail
    assert s1["steps"] == 40 and "stopped_early" not in s1  # (a run of its full length)


@pytest.mark.slow  # (tests/integration/test_faults.py resumes killed runs exactly in make test)
def test_resume_continues_the_same_trajectory(tmp_path):
    """Stop at step 40 (mid-epoch: 28 batches an epoch), resume to 80: identical to an
    uninterrupted 80-step run."""
    args = ["trainer.val_check_interval=20", "test=false"]
    full, rf = _train(tmp_path, "full", [*args, "max_train_steps=80"])
    _, ra = _train(tmp_path, "first", [*args, "max_train_steps=40"])
    ckpt = ra / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 40  # plain data only
    resumed, rb = _train(tmp_path, "resumed", [*args, "max_train_steps=80", f"ckpt_path={ckpt}"])
    assert resumed["steps"] == 80
    # every value logged from step 40 on (the dense-eval columns exist only in the first run)
    after = lambda rows: [  # noqa: E731
        {k: v for k, v in r.items() if v != ""} for r in rows if int(r["step"]) >= 40
    ]
    assert after(_rows(rb)) == after(_rows(rf))
    assert resumed["val_loss"] == full["val_loss"] and resumed["best_step"] == full["best_step"]


def test_resume_with_weight_decay_groups_continues_exactly(tmp_path):
    """optimizer.weight_decay > 0 builds two parameter groups (decayed weights; biases, norm
    gains and the Transformer's position table without): a 16-step cosine run of the
    recall Transformer that crashes at step 10, resumed from its step-8 checkpoint, ends
    with every weight equal to an uninterrupted run's; the checkpoint holds both groups
    with their own decay."""
    args = ["experiment=recall_transformer", "schedule.warmup_steps=4", "test=false",
            "max_train_steps=16", "trainer.val_check_interval=8", "plots=false",
            "callbacks.dense_eval=null", "optimizer.weight_decay=0.1"]  # fmt: skip
    _, rf = _train(tmp_path, "full", args)
    boom = ["+callbacks.boom._target_=helpers.RaiseAtStep", "+callbacks.boom.step=10"]
    with pytest.raises(RuntimeError, match="boom at step 10"):
        _train(tmp_path, "crashed", [*args, *boom])
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 8
    decays = sorted(g["weight_decay"] for g in saved["optimizer_states"][0]["param_groups"])
    assert decays == [0.0, 0.1]
    resumed, rb = _train(tmp_path, "resumed", [*args, f"ckpt_path={ckpt}"])
    assert resumed["steps"] == 16 and resumed["resumed_from"]["step"] == 8
    a = torch.load(rf / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(rb / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the decay did act: the same run without it ends elsewhere
    _, r0 = _train(tmp_path, "no_decay", [*args[:-1]])
    c = torch.load(r0 / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_resume_follows_its_own_config_and_says_the_numbers_are_not_an_uninterrupted_runs(
    tmp_path, caplog
):
    """Resumed from step 10 with another LR and beta2: the run trains with them (the LR
    it logs, the hyperparameters its optimizer saves; Lightning alone restores the
    checkpoint's over the config's), the summary lists the changes with both values and is
    marked not exact, the console warns, the report says so, and the numbers differ from
    the uninterrupted run of the checkpoint's config."""
    args = ["max_train_steps=20", "trainer.val_check_interval=10", "plots=false",
            "callbacks.dense_eval=null", "test=false"]  # fmt: skip
    full, _ = _train(tmp_path, "full", args)
    _, first = _train(tmp_path, "first", [*args, "max_train_steps=10"])
    ckpt = first / "checkpoints" / "last.ckpt"
    changed = [*args, "optimizer.lr=1e-3", "optimizer.beta2=0.99", f"ckpt_path={ckpt}"]
    with caplog.at_level("WARNING", logger="stablelab"):
        resumed, rb = _train(tmp_path, "resumed", changed)
    assert resumed["resumed_from"]["changed"] == {
        "max_train_steps": [10, 20], "optimizer.beta2": [0.999, 0.99],
        "optimizer.lr": [0.003, 0.001], "schedule.max_train_steps": [10, 20],
    }  # fmt: skip
    assert resumed["resumed_from"]["exact"] is False and resumed["steps"] == 20
    assert "settings that differ from the checkpoint's" in caplog.text
    assert "optimizer.lr: 0.003 -> 0.001" in caplog.text
    lrs = {int(r["step"]): float(r["train/lr"]) for r in _rows(rb) if r.get("train/lr")}
    assert lrs and all(
        lr == pytest.approx(3e-3 if step < 10 else 1e-3, rel=1e-6) for step, lr in lrs.items()
    ), lrs
    assert max(lrs) >= 10
    (group,) = torch.load(rb / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][
        0
    ]["param_groups"]
    assert (group["lr"], group["initial_lr"], group["beta2"]) == (1e-3, 1e-3, 0.99)
    report = (rb / "report.md").read_text()
    assert "| resumed from | step 10; settings changed since the checkpoint: " in report
    assert "optimizer.lr" in report and "need not be an uninterrupted run's" in report
    assert resumed["val_loss"] != full["val_loss"]
    # resumed with the checkpoint's own settings: nothing flagged (test_faults.py: and exact)
    same, rs = _train(tmp_path, "same", [*args, "max_train_steps=10", f"ckpt_path={ckpt}"])
    assert "changed" not in same["resumed_from"]
    assert "resumed from" not in (rs / "report.md").read_text()


def test_a_resume_or_evaluation_on_another_thread_count_says_so(tmp_path):
    """A CPU reduction splits by thread, so 1 and 2 threads give other bits from the first
    update on: a run checkpointed with 2 threads and resumed with 1 is flagged
    (numerics.threads, not exact) and does differ from the uninterrupted run, while
    resumed with 2 it is not flagged and equals it bit for bit; an evaluation with 1 thread
    records numerics_changed in its summary and report."""
    from stablelab.evaluate import evaluate

    args = ["max_train_steps=12", "trainer.val_check_interval=6", "plots=false",
            "callbacks.dense_eval=null", "test=false", "model=mlp", "threads=2"]  # fmt: skip
    full, _ = _train(tmp_path, "full", args)
    boom = ["+callbacks.boom._target_=helpers.RaiseAtStep", "+callbacks.boom.step=8"]
    with pytest.raises(RuntimeError, match="boom at step 8"):
        _train(tmp_path, "crashed", [*args, *boom])
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["numerics"]
    assert saved["threads"] == 2 and saved["world_size"] == 1 and saved["device"] == "cpu"
    assert saved["torch"] == torch.__version__
    same, _ = _train(tmp_path, "same", [*args, f"ckpt_path={ckpt}"])
    assert not any(k.startswith("numerics.") for k in same["resumed_from"].get("changed", {}))
    assert same["val_loss"] == full["val_loss"]
    one, r1 = _train(tmp_path, "one", [*args[:-1], "threads=1", f"ckpt_path={ckpt}"])
    flagged = one["resumed_from"]["changed"]
    assert {k: v for k, v in flagged.items() if not k.startswith("callbacks.boom")} == {
        "numerics.threads": [2, 1]
    }
    assert one["resumed_from"]["exact"] is False
    assert one["val_loss"] != full["val_loss"]  # the flag is no formality
    assert "numerics.threads" in (r1 / "report.md").read_text()
    ev = evaluate(str(ckpt), [*FAST, "logger=csv", "threads=1"], str(tmp_path / "ev"))
    assert ev["evaluated_checkpoint"]["numerics_changed"] == {"threads": [2, 1]}
    assert "threads 2 -> 1" in (tmp_path / "ev" / "report.md").read_text()


def test_ckpt_path_auto_without_a_checkpoint_starts_fresh_and_says_so(tmp_path, caplog):
    """ckpt_path=auto in a directory without checkpoints/last.ckpt (a SLURM job's first
    start, or a forgotten hydra.run.dir): a fresh run, with a line saying why."""
    args = ["model=mlp", "max_train_steps=2", "trainer.val_check_interval=2", "plots=false",
            "test=false", "ckpt_path=auto"]  # fmt: skip
    with caplog.at_level("INFO", logger="stablelab"):
        s, run = _train(tmp_path, "auto", args)
    assert s["status"] == "completed" and "resumed_from" not in s
    assert f"no checkpoints/last.ckpt in {run} yet, so a fresh run" in caplog.text


def test_the_last_step_is_validated_and_checkpointed(tmp_path):
    """13 steps, validation every 5: Lightning alone would validate after steps 5 and 10
    only, leaving the final weights unevaluated and last.ckpt at step 10."""
    s, run = _train(
        tmp_path, "run", ["max_train_steps=13", "trainer.val_check_interval=5", "plots=false"]
    )
    evals = list(csv.DictReader((run / "evals.csv").open()))
    assert [int(r["step"]) for r in evals] == [5, 10, 13]
    assert s["evaluations"] == 3 and s["steps"] == 13
    assert s["val_loss"] == min(float(r["val_loss"]) for r in evals)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 13
    # the training loss reaches the loggers every log_every_n_steps (5) and at the last
    # step; the summary's final_train_loss is the last step's (stability.csv: every step)
    logged = {int(r["step"]): float(r["train/loss"]) for r in _rows(run) if r["train/loss"]}
    per_step = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(
        (run / "stability.csv").open())}  # fmt: skip
    assert sorted(logged) == [4, 9, 12] and sorted(per_step) == list(range(13))
    assert all(logged[k] == per_step[k] for k in logged)
    assert s["final_train_loss"] == per_step[12]


def test_failed_run_keeps_what_it_wrote(tmp_path):
    out = tmp_path / "crash"
    cfg = compose_cfg(
        [
            *FAST,
            "max_train_steps=60",
            "trainer.val_check_interval=10",
            "+callbacks.boom._target_=helpers.RaiseAtStep",
            "+callbacks.boom.step=25",
        ],
        out,
    )
    with pytest.raises(RuntimeError, match="boom at step 25"):
        train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom at step 25" in summary["error"]
    assert summary["feasible"] is False and summary["steps"] == 25
    assert summary["best_step"] == 20  # evaluations before the crash are kept
    assert (out / "config.yaml").is_file()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    steps = [int(r["step"]) for r in _rows(out) if r["train/loss"]]
    assert steps and max(steps) >= 19  # metrics flushed despite the crash


def test_checkpoint_rebuilds_the_module_from_plain_config(tmp_path):
    from stablelab.module import StableModule

    summary, out = _train(
        tmp_path, "ck", ["max_train_steps=20", "trainer.val_check_interval=10", "model=mlp"]
    )
    module = StableModule.load_from_checkpoint(summary["best_checkpoint"], weights_only=True)
    assert type(module.model).__name__ == "MLP"
    assert module.hparams["cfg"]["optimizer"]["_target_"] == "stablelab.optim.Adam"
    x = torch.randn(4, 40)
    assert module(x).shape == (4, 10)


def test_tensorboard_logger_writes_events_and_csv(tmp_path):
    out = tmp_path / "tb"
    cfg = compose_cfg(
        [
            "logger=tensorboard",
            "callbacks.progress_bar.refresh_rate=0",
            "max_train_steps=10",
            "trainer.val_check_interval=5",
            "trainer.log_every_n_steps=2",
        ],
        out,
    )
    train(cfg)
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "train/loss" in (out / "metrics.csv").read_text().splitlines()[0]
    # what TensorBoard itself (the [tensorboard] extra) reads back: the values metrics.csv has
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard")).Reload()
    tb = {e.step: e.value for e in acc.Scalars("val/loss")}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    ref = {int(r["step"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}
    assert tb.keys() == ref.keys() and len(ref) == 2
    for step, v in ref.items():
        assert tb[step] == pytest.approx(v, rel=1e-6)  # (event files hold float32)
    assert "train/loss" in acc.Tags()["scalars"]


def test_float64_run_evaluates_densely_in_float64(tmp_path):
    """precision=64-true: Lightning converts the loops' batches; dense evaluation (outside
    the loops) must too, or the first evaluation fails on a float32 input."""
    s, run = _train(tmp_path, "f64", ["trainer.precision=64-true", "max_train_steps=30"])
    assert s["status"] == "completed"
    rows = list(csv.DictReader((run / "dense_eval.csv").open()))
    assert [int(r["step"]) for r in rows][:3] == [1, 2, 3] and len(rows) >= 25
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float64}


def test_summary_is_strict_json_with_non_finite_numbers_named(tmp_path):
    from stablelab.train import write_summary

    path = tmp_path / "summary.json"
    write_summary(path, {"final_train_loss": float("nan"), "x": {"y": [1.0, float("-inf")]}})
    s = json.loads(path.read_text(), parse_constant=pytest.fail)  # no bare NaN / Infinity
    assert s == {
        "final_train_loss": None,
        "x": {"y": [1.0, None]},
        "nonfinite": {"final_train_loss": "nan", "x.y[1]": "-inf"},
    }


def test_git_sha_is_the_checkouts_wherever_the_run_starts(tmp_path, monkeypatch):
    """Launched outside the checkout, or inside another repository, a run records the
    commit of the checkout stablelab runs from (an editable install here)."""
    import subprocess

    from conftest import ROOT
    from stablelab import runinfo

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=other, check=True)
    subprocess.run(
        ["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty",
         "-m", "x"], cwd=other, check=True,
    )  # fmt: skip
    for where in (tmp_path, other):
        monkeypatch.chdir(where)
        assert runinfo.git_state()["git_sha"] == head
    # the repository around a given place, when asked for that
    assert runinfo.git_state(other)["git_sha"] != head


def test_train_false_evaluates_the_checkpoint_and_eval_command_agrees(tmp_path):
    """train=false ckpt_path=<best>: the checkpoint's own weights are evaluated (the
    training run's best validation loss and its test numbers, bit for bit), and
    `stablelab eval` (the checkpoint's stored config) gives the same."""
    from stablelab.cli import main as cli_main

    args = ["max_train_steps=30", "trainer.val_check_interval=10", "plots=false"]
    trained, run = _train(tmp_path, "trained", args)
    best = trained["best_checkpoint"]
    ev, ev_dir = _train(tmp_path, "eval", [*args, "train=false", f"ckpt_path={best}"])
    assert ev["status"] == "completed" and ev["feasible"]
    assert (ev["val_loss"], ev["val_acc"]) == (trained["val_loss"], trained["val_acc"])
    assert (ev["test_loss"], ev["test_acc"]) == (trained["test_loss"], trained["test_acc"])
    assert ev["evaluated_checkpoint"]["step"] == trained["best_step"] == ev["steps"]
    assert not (ev_dir / "checkpoints" / "last.ckpt").exists()  # nothing was trained
    untrained, _ = _train(tmp_path, "untrained", [*args, "train=false"])
    assert untrained["test_acc"] < trained["test_acc"] - 0.2  # the check can fail
    out = tmp_path / "cli"
    assert cli_main(["eval", best, "logger=csv", *FAST[1:], "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["val_loss"], s["test_acc"]) == (trained["val_loss"], trained["test_acc"])
    assert "EVALUATION" in (out / "report.md").read_text()
    # the run directory in place of the checkpoint: its best checkpoint, the same numbers
    assert cli_main(["eval", str(run), "logger=csv", *FAST[1:], "--out", str(tmp_path / "d")]) == 0
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (s["val_loss"], s["test_acc"]) == (trained["val_loss"], trained["test_acc"])


def test_wandb_disabled_run_succeeds(tmp_path, monkeypatch):
    """WANDB_MODE=disabled (a W&B run that writes nothing): the run completes, exit 0."""
    from conftest import assert_ok, run_cli

    monkeypatch.setenv("WANDB_MODE", "disabled")  # (a fresh process: W&B reads it once)
    run = tmp_path / "run"
    assert_ok(
        run_cli(
            ["logger=wandb", "max_train_steps=5", "trainer.val_check_interval=5",
             "plots=false", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run}"],
            tmp_path,
        )
    )  # fmt: skip
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert not list(run.glob("wandb/offline-run-*"))


def test_wandb_online_without_a_server_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    """W&B set online with no reachable server: one warning, the run logs offline (to sync
    later) and completes; its summary exists from the start."""
    import socket

    from stablelab.analysis import wandb_offline

    with socket.socket() as sock:  # a local port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="stablelab"):
        s = train(
            compose_cfg(
                ["logger=wandb", "max_train_steps=5", "trainer.val_check_interval=5",
                 "plots=false", "callbacks.progress_bar.refresh_rate=0"],
                out,
            )
        )  # fmt: skip
    assert s["status"] == "completed"
    warned = [
        r.getMessage() for r in caplog.records if "W&B could not log online" in r.getMessage()
    ]
    assert len(warned) == 1 and f"127.0.0.1:{port}" in warned[0] and "wandb sync" in warned[0]
    (f,) = wandb_offline.run_files(out)
    assert wandb_offline.summary(f)["summary/status"] == "completed"


def test_an_evaluation_on_part_of_a_split_says_so(tmp_path):
    """trainer.limit_val_batches / limit_test_batches: the losses are those of the first
    batches (float64 recomputation from last.ckpt on those examples), and the summary and
    closing lines say that they are not the split's (eval_subset)."""
    from helpers import float64_reference
    from stablelab.console import closing_lines

    s, run = _train(tmp_path, "run", [
        "max_train_steps=10", "trainer.val_check_interval=10", "plots=false",
        "data.eval_batch_size=100", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=3",
    ])  # fmt: skip
    # MNIST-1D's default split: 400 validation and 1,000 test examples, 100 per batch
    assert s["eval_subset"] == {"val": {"batches": 1, "of": 4}, "test": {"batches": 3, "of": 10}}
    assert s["best_step"] == 10  # the only validation: last.ckpt holds the evaluated weights
    val, _, n_val = float64_reference(run, "val", 100)
    test, _, n_test = float64_reference(run, "test", 300)
    whole, _, _ = float64_reference(run, "test")
    assert (n_val, n_test) == (400, 1000)
    assert s["val_loss"] == pytest.approx(val, rel=1e-5)
    assert s["test_loss"] == pytest.approx(test, rel=1e-5)
    assert abs(whole - test) > 1e-3  # the part is not the whole: the check can fail
    lines = "\n".join(closing_lines(s, run, None))
    assert "(on 1 of 4 batches of the split)" in lines
    assert "(on 3 of 10 batches of the split)" in lines
    report = (run / "report.md").read_text()
    assert "| evaluated on part of a split (batches of) | test 3 of 10, val 1 of 4 |" in report
    full, _ = _train(tmp_path, "full", ["max_train_steps=10", "trainer.val_check_interval=10",
                                        "plots=false", "data.eval_batch_size=100"])  # fmt: skip
    assert "eval_subset" not in full
    # resumed from its last checkpoint with nothing left to train (no validation runs): the
    # summary still says what the uninterrupted run's does; an evaluation of that checkpoint
    # without the limits measures the whole splits and says nothing of the training's
    last = run / "checkpoints" / "last.ckpt"
    resumed, _ = _train(tmp_path, "resumed", [
        "max_train_steps=10", "trainer.val_check_interval=10", "plots=false",
        "data.eval_batch_size=100", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=3", f"ckpt_path={last}",
    ])  # fmt: skip
    assert resumed["eval_subset"] == s["eval_subset"]
    assert (resumed["val_loss"], resumed["test_loss"]) == (s["val_loss"], s["test_loss"])
    evaluated, _ = _train(tmp_path, "evaluated", [
        "plots=false", "data.eval_batch_size=100", "train=false", f"ckpt_path={last}",
    ])  # fmt: skip
    assert "eval_subset" not in evaluated
    assert evaluated["val_loss"] == pytest.approx(float64_reference(run, "val")[0], rel=1e-5)


def test_an_evaluation_reports_its_own_validation_not_the_checkpoints_history(tmp_path):
    """`stablelab eval CKPT` reports the validation it just ran on CKPT's weights (float64
    recomputation), not the best of the evaluation history stored in the checkpoint. With
    another validation split (data.split_seed=1) no stored record can stand in for it."""
    import torch.nn.functional as F

    from stablelab.cli import main as cli_main
    from stablelab.data import MNIST1DDataModule
    from stablelab.module import StableModule

    args = ["max_train_steps=20", "trainer.val_check_interval=10", "plots=false"]
    trained, run = _train(tmp_path, "trained", args)
    last = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    assert cli_main(["eval", str(last), "logger=csv", *FAST[1:], "data.split_seed=1",
                     "--out", str(out)]) == 0  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    module = StableModule.load_from_checkpoint(last, weights_only=True).double().eval()
    dm = MNIST1DDataModule(data_dir=module.cfg["data"]["data_dir"], split_seed=1)
    dm.setup()
    x, y = dm._tensors["val"]
    with torch.no_grad():
        logits = module(x.double())
    assert s["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert s["val_acc"] == pytest.approx((logits.argmax(-1) == y).double().mean().item())
    assert (s["steps"], s["best_step"], s["evaluations"]) == (20, 20, 1)
    recorded = [float(r["val_loss"]) for r in csv.DictReader((run / "evals.csv").open())]
    assert all(abs(s["val_loss"] - v) > 1e-6 for v in recorded)  # the check can fail
    assert "| val loss (at step) |" in (out / "report.md").read_text()


def test_a_callback_that_stops_training_early_is_named(tmp_path):
    """A callback of the user's (Lightning's EarlyStopping) ends fit before max_train_steps:
    the run is complete but its LR schedule is not, and the summary, the report and the
    closing lines say where it stopped and why (a full-length run says nothing: see
    test_same_seed_gives_identical_metrics)."""
    from stablelab.console import closing_lines

    es = ("+callbacks.early_stopping={_target_: lightning.pytorch.callbacks.EarlyStopping, "
          "monitor: val/loss, patience: 1, min_delta: 100.0}")  # fmt: skip
    args = ["experiment=digits_mlp", "max_train_steps=40", "trainer.val_check_interval=10",
            "test=false", "schedule.warmup_steps=0",
            "callbacks.dense_eval.every_step_until=0"]  # fmt: skip
    s, run = _train(tmp_path, "es", [*args, es])
    # validations at 10 and 20: no improvement by 100 at step 20 -> stop after 20 updates
    assert s["status"] == "completed" and s["steps"] == 20 and s["total_steps"] == 40
    assert s["stopped_early"].startswith("EarlyStopping: Monitored metric val/loss did not")
    assert "stopped before max_train_steps" in (run / "report.md").read_text()
    assert any("stopped at step 20 of 40" in x for x in closing_lines(s, run, None))


def test_without_a_checkpoint_callback_the_test_is_on_the_final_weights_and_says_so(tmp_path):
    """callbacks.model_checkpoint=null: no checkpoints (Lightning's own callback would keep
    each epoch's end and call it best), the test runs on the final weights and the summary,
    report and closing lines say so. Reference: the same run with checkpoints validated only
    at its last step, whose best checkpoint is the final weights: the same test numbers."""
    from stablelab.console import closing_lines

    args = ["experiment=digits_mlp", "max_train_steps=20", "trainer.val_check_interval=20",
            "schedule.warmup_steps=0", "callbacks.dense_eval.every_step_until=0"]  # fmt: skip
    s, run = _train(tmp_path, "none", [*args, "callbacks.model_checkpoint=null"])
    ref, ref_run = _train(tmp_path, "ref", args)
    assert not (run / "checkpoints").exists() and s["best_checkpoint"] is None
    assert s["tested_weights"] == "final" and "tested_weights" not in ref
    assert ref["best_step"] == 20 and (s["test_loss"], s["test_acc"]) == (
        ref["test_loss"], ref["test_acc"]
    )  # fmt: skip
    assert "the final weights (no best checkpoint was kept)" in (run / "report.md").read_text()
    assert any("(the final weights:" in x for x in closing_lines(s, run, None))


def test_a_best_checkpoint_ranked_by_accuracy_is_the_one_summarised_and_tested(tmp_path):
    """callbacks.model_checkpoint.monitor=val/acc, mode=max: the summary's best step is the
    validation with the highest accuracy in evals.csv (the first of equals), its loss that
    validation's, the tested checkpoint that step's; the closing lines say 'best val
    accuracy'."""
    import csv as _csv

    from stablelab.console import closing_lines

    args = ["experiment=digits_mlp", "max_train_steps=60", "trainer.val_check_interval=20",
            "schedule.warmup_steps=0", "callbacks.dense_eval.every_step_until=0",
            "callbacks.model_checkpoint.monitor=val/acc",
            "callbacks.model_checkpoint.mode=max"]  # fmt: skip
    s, run = _train(tmp_path, "acc", args)
    rows = list(_csv.DictReader((run / "evals.csv").open()))
    best = max(rows, key=lambda r: float(r["val_acc"]))  # (max: the first of equals)
    assert s["best_by"] == "val/acc" and s["best_step"] == int(best["step"])
    assert s["val_acc"] == float(best["val_acc"]) and s["val_loss"] == float(best["val_loss"])
    assert Path(s["best_checkpoint"]).name == f"best-step{int(best['step']):06d}.ckpt"
    assert any(x.startswith("  best val accuracy ") for x in closing_lines(s, run, None))
