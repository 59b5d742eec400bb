"""Your own model and data (examples/custom), the Python API, and an Optuna search: real
runs through the command line and in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import QUIET, ROOT, assert_ok, run_cli

EXAMPLE = ROOT / "examples" / "custom"
SMALL = [  # the example, shortened: 60 steps, evaluations at 30 and 60
    "max_train_steps=60",
    "schedule.warmup_steps=10",
    "trainer.val_check_interval=30",
    "data.num_train=1000",
    *QUIET,
]


def _env(trusted: bool = False) -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), env.get("PYTHONPATH", "")])
    if trusted:
        env["STABLELAB_TRUSTED_TARGETS"] = "my_project."
    return env


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _cli(args: list[str], cwd: Path, *, module: str = "stablelab.train", trusted=False):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=_env(trusted),
    )  # fmt: skip


@pytest.fixture(scope="module")
def example_run(tmp_path_factory, module_env):
    """The worked example, as README gives it, with the W&B logger (offline)."""
    tmp = tmp_path_factory.mktemp("example")
    out = tmp / "run"
    proc = _cli(
        ["--config-dir", str(EXAMPLE / "configs"), "experiment=waves", *SMALL,
         f"hydra.run.dir={out}"],
        tmp,
    )  # fmt: skip
    assert_ok(proc)
    return tmp, out


def test_example_trains_with_every_stability_feature(example_run):
    _, out = example_run
    s = _summary(out)
    assert s["status"] == "completed" and s["feasible"] and s["steps"] == 60
    assert s["test_acc"] > 0.4  # four balanced classes: chance is 0.25
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["_target_"] == "my_project.models.TinyConvNet"
    assert cfg["clipping"]["_target_"].endswith("FixedNorm")
    grad_rows = (out / "grad_norms.csv").read_text().splitlines()
    assert len(grad_rows) == 1 + 60  # the unclipped norm of every step
    dense = (out / "dense_eval.csv").read_text().splitlines()
    assert len(dense) > 20  # an evaluation after each early step
    for name in ("stability.csv", "report.md", "loss.png", "grad_norm.png", "lr.png"):
        assert (out / name).is_file(), name
    assert "TinyConvNet" in (out / "report.md").read_text()
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert s["grad_norm_p90"] > 0 and s["clip_fraction"] is not None


def test_example_checkpoint_evaluates_only_when_its_package_is_trusted(example_run):
    tmp, out = example_run
    best = Path(_summary(out)["best_checkpoint"])
    proc = _cli(["eval", str(best), "logger=csv"], tmp, module="stablelab.cli")
    assert proc.returncode == 2
    assert "STABLELAB_TRUSTED_TARGETS=my_project." in proc.stderr
    proc = _cli(["eval", str(best), "logger=csv", "--out", str(tmp / "eval")], tmp,
                module="stablelab.cli", trusted=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    e, s = _summary(tmp / "eval"), _summary(out)
    # the checkpoint, evaluated in a new process, gives the training run's own numbers
    assert e["val_loss"] == s["val_loss"] and e["test_acc"] == s["test_acc"]


def test_resuming_a_plain_dataloader_says_it_is_not_exact(
    example_run, tmp_path, monkeypatch, caplog
):
    """In this process, through the Python API with the example's config folder."""
    import stablelab

    monkeypatch.syspath_prepend(str(EXAMPLE))
    _, out = example_run
    s = stablelab.run(
        ["experiment=waves", *SMALL, "max_train_steps=80", "logger=csv",
         f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"],
        output_dir=tmp_path / "resumed", config_dirs=[EXAMPLE / "configs"],
    )  # fmt: skip
    assert s["resumed_from"]["exact"] is False and s["steps"] == 80
    assert s["resumed_from"]["step"] == 60
    assert "WavesDataModule does not declare exact_resume" in caplog.text


@pytest.mark.slow  # two DDP launches (~40 s on 2 cores)
@pytest.mark.parametrize("num_val,duplicates", [(500, None), (501, {"val": 1})])
def test_example_under_ddp_reports_what_one_process_measures(tmp_path, num_val, duplicates):
    """The example's plain DataLoaders under trainer=ddp_cpu (Lightning inserts its
    DistributedSampler): with a validation split that divides among the 2 processes, the
    reported best validation loss is what `stablelab eval` of that checkpoint measures in
    one process; with 501 examples the sampler repeats one, and the summary says so."""
    out = tmp_path / "ddp"
    proc = _cli(
        ["--config-dir", str(EXAMPLE / "configs"), "experiment=waves", *SMALL, "logger=csv",
         "trainer=ddp_cpu", f"data.num_val={num_val}", "callbacks.dense_eval=null",
         f"hydra.run.dir={out}"],
        tmp_path,
    )  # fmt: skip
    assert_ok(proc)
    s = _summary(out)
    assert s["world_size"] == 2 and s["global_batch_size"] == 2 * 64 and s["steps"] == 60
    assert s.get("eval_duplicates") == duplicates
    if duplicates:
        assert "repeats 1 of them" in proc.stderr + proc.stdout
        return
    proc = _cli(["eval", s["best_checkpoint"], "logger=csv", "--out", str(tmp_path / "eval")],
                tmp_path, module="stablelab.cli", trusted=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    e = _summary(tmp_path / "eval")
    # float64 sums, added in another order across the two ranks
    assert e["val_loss"] == pytest.approx(s["val_loss"], rel=1e-12)
    assert e["val_acc"] == s["val_acc"]


def _npz(tmp: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(300, 12)) + y[:, None]).astype(np.float32)
    np.savez(tmp / "d.npz", x=x, y=y)
    return tmp / "d.npz"


def test_a_model_with_the_wrong_output_is_refused_on_its_first_batch(tmp_path):
    from conftest import compose_cfg
    from stablelab.config import ConfigError
    from stablelab.train import train

    cfg = compose_cfg(
        ["data=npz", f"data.path={_npz(tmp_path)}", "model=mlp", "max_train_steps=5",
         "logger=csv", *QUIET, "model._target_=helpers.WrongOutputMLP"],
        tmp_path / "r",
    )  # fmt: skip
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert "model._target_ = 'helpers.WrongOutputMLP': forward returned logits of shape" in str(
        e.value
    )
    assert "(batch, num_classes) = " in str(e.value) and ", 3)" in str(e.value)
    assert str(e.value).startswith("Invalid model or data (found on the first batch")
    # the report says the run stopped before its first update, and names only the files
    # it has (no telemetry because nothing trained, not because a callback was off)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "**The run failed** before its first update" in report
    assert "No update was trained" in report and "callback was off" not in report
    files = report.split("Files: ")[1]
    assert "`summary.json`" in files and "`config.yaml`" in files
    assert "stability.csv" not in files and "checkpoints" not in files


def test_a_language_model_of_your_own_gets_the_log_z_monitor(tmp_path):
    """A next-token model with no stablelab attention (a GRU) on plain DataLoaders: the LM
    monitor still measures log Z of its output logits (no attention columns), on the first
    batch of validation windows its loader gives, matching a float64 recomputation from
    the last checkpoint's weights."""
    import csv
    import math

    import torch

    from conftest import compose_cfg
    from helpers import GRULanguageModel, PlainCharWindows
    from stablelab.train import train

    run = tmp_path / "r"
    cfg = compose_cfg(
        ["~data", "+data._target_=helpers.PlainCharWindows", "+data.block_size=32",
         "+data.batch_size=8", "~model",
         "+model._target_=helpers.GRULanguageModel", "+model.width=16", "max_train_steps=20",
         "callbacks.lm_monitor.every_n_steps=10", "callbacks.dense_eval=null", "logger=csv",
         *QUIET],
        run,
    )  # fmt: skip
    s = train(cfg)
    assert s["status"] == "completed"
    rows = list(csv.DictReader((run / "lm_monitor.csv").open()))
    assert list(rows[0]) == ["step", "logz_mean", "logz_max"]  # no attention to measure
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    dm = PlainCharWindows(block_size=32)
    model = GRULanguageModel(dm.input_spec, dm.num_classes, width=16).double()
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    x = next(iter(dm.val_dataloader()))[0]  # its loader's first batch: 8 of the 16 asked
    with torch.no_grad():
        logz = torch.logsumexp(model(x), -1)
    assert math.isclose(float(rows[-1]["logz_mean"]), logz.mean().item(), rel_tol=1e-4)
    assert math.isclose(float(rows[-1]["logz_max"]), logz.max().item(), rel_tol=1e-4)
    assert s["logz_mean_last"] == float(rows[-1]["logz_mean"]) and "attn_logit_max" not in s


@pytest.mark.slow  # three DDP / FSDP launches and one run (~40 s on 2 cores)
def test_an_unused_trainable_parameter_is_named_and_refused_under_plain_ddp(tmp_path):
    """A model with a trainable parameter its forward never uses: one process trains it
    and warns once; plain DDP (whose next step would fail with advice for a strategy object
    the config does not build) is refused after the first backward, naming the parameters
    and the key, before any update; ddp_find_unused_parameters_true trains it; FSDP (which
    trained it, then could not restore its own checkpoint for the test) is refused too."""
    common = [
        "data=npz", f"data.path={_npz(tmp_path)}", "model=mlp", "logger=csv", *QUIET,
        "model._target_=helpers.IdleParameterMLP", "callbacks.dense_eval=null",
        "data.batch_size=32",
    ]  # fmt: skip
    tests = str(ROOT / "tests")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}

    def cli(name, *extra):
        return subprocess.run(
            [sys.executable, "-m", "stablelab.train", *common, *extra,
             f"hydra.run.dir={tmp_path / name}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip

    one = cli("one", "max_train_steps=3")
    assert_ok(one)
    said = (
        "2 trainable parameters got no gradient in the first step "
        "(idle_head.weight, idle_head.bias)"
    )
    assert (one.stdout + one.stderr).count(said) == 1
    ddp = cli("ddp", "max_train_steps=3", "trainer=ddp_cpu")
    assert ddp.returncode == 2, ddp.stderr[-3000:]
    assert ddp.stderr.count(said + "; trainer.strategy = 'ddp' needs every trainable") == 1
    assert _summary(tmp_path / "ddp")["steps"] == 0
    ok = cli("ddp_ok", "max_train_steps=3", "trainer=ddp_cpu",
             "trainer.strategy=ddp_find_unused_parameters_true")  # fmt: skip
    assert_ok(ok)
    assert _summary(tmp_path / "ddp_ok")["steps"] == 3
    fsdp = cli("fsdp", "max_train_steps=3", "trainer=fsdp_cpu")
    assert fsdp.returncode == 2, fsdp.stderr[-3000:]
    assert fsdp.stderr.count(said + "; under trainer.strategy = ") == 1
    assert "their optimizer state is never created" in fsdp.stderr


def test_an_empty_validation_split_is_refused_before_any_update(tmp_path):
    """Lightning skips the validation of an empty loader without a word (no best
    checkpoint, no reading) and the dense evaluation divided by zero examples: refused once
    the datamodule is set up, before the sanity check and the first update."""
    from conftest import compose_cfg
    from stablelab.config import ConfigError
    from stablelab.contract import LOADERS
    from stablelab.train import train

    cfg = compose_cfg(
        ["~data", "+data._target_=helpers.EmptyValidationWindows", "+data.block_size=32",
         "~model", "+model._target_=helpers.GRULanguageModel", "max_train_steps=5",
         "logger=csv", *QUIET],
        tmp_path / "r",
    )  # fmt: skip
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert str(e.value).startswith(LOADERS)
    assert "'helpers.EmptyValidationWindows': its val_dataloader gives no batches" in str(e.value)
    assert _summary(tmp_path / "r")["steps"] == 0


def test_a_relative_data_path_is_recorded_absolute_and_evaluates_from_anywhere(
    tmp_path, monkeypatch
):
    """data.path=d.npz, relative to where the run starts: config.yaml and the checkpoint
    name the file itself, so `stablelab eval` from another directory reads the same file
    and reports the run's own best validation loss."""
    from conftest import compose_cfg
    from stablelab.analysis.runs import read_config
    from stablelab.cli import main
    from stablelab.train import train

    _npz(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = train(compose_cfg(["data=npz", "data.path=d.npz", "model=mlp", "max_train_steps=10",
                           "logger=csv", "plots=false", *QUIET], tmp_path / "r"))  # fmt: skip
    assert read_config(tmp_path / "r")["data"]["path"] == str(tmp_path / "d.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(tmp_path / "r"), "logger=csv", "--out", "e"]) == 0
    e = _summary(elsewhere / "e")
    assert e["val_loss"] == s["val_loss"] and e["evaluated_checkpoint"]["step"] == s["best_step"]


def test_npz_data_trains_any_builtin_model(tmp_path):
    import hashlib

    import torch

    from conftest import compose_cfg
    from stablelab.train import train

    path = _npz(tmp_path)
    cfg = compose_cfg(
        ["data=npz", f"data.path={path}", "model=transformer", "max_train_steps=30",
         "logger=csv", "trainer.val_check_interval=15", *QUIET],
        tmp_path / "r",
    )  # fmt: skip
    s = train(cfg)
    assert s["status"] == "completed" and s["test_acc"] > 0.6  # separable: chance is 1/3
    # the file's fingerprint, in the summary and in its checkpoints (resume/eval compare it)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert s["data_sha256"] == sha
    assert torch.load(s["best_checkpoint"], weights_only=True)["data_sha256"] == sha


def test_python_api_two_runs_in_one_process_match_the_cli(tmp_path, monkeypatch):
    """``stablelab.run`` twice in this process (no Hydra app), then the same overrides
    through ``stablelab-train``: the same numbers, each run in its own directory."""
    import stablelab

    monkeypatch.chdir(tmp_path)
    overrides = ["debug=fast", "logger=csv", "max_train_steps=30", *QUIET]
    a = stablelab.run(overrides)  # default directory: logs/<task_name>/runs/<time>_<id>
    b = stablelab.run([*overrides, "seed=7"], output_dir=tmp_path / "b")
    assert a["status"] == b["status"] == "completed"
    assert Path(a["run_dir"]).parent == tmp_path / "logs" / "debug" / "runs"
    assert b["run_dir"] == str((tmp_path / "b").resolve())
    assert (Path(a["run_dir"]) / "summary.json").is_file()
    proc = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'cli'}"], tmp_path)
    assert_ok(proc)
    cli = _summary(tmp_path / "cli")
    assert cli["val_loss"] == a["val_loss"] and cli["test_loss"] == a["test_loss"]
    assert b["val_loss"] != a["val_loss"]  # another seed: another run
    with pytest.raises(stablelab.config.ConfigError, match="optimizer.lr = -1"):
        stablelab.run(["optimizer.lr=-1"], output_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow  # (make test: test_search_direction_must_match_the_metric)
def test_optuna_search_counts_diverged_trials_as_infeasible(tmp_path):
    """Three seeded TPE trials over LR {0.003, 1000} with SGD: the LR-1000 trials diverge
    and return +inf (the search goes on); the best is the feasible trial, whose value is
    its own summary's val_loss."""
    sweep = tmp_path / "search"
    proc = run_cli(
        ["hparams_search=lr_warmup_clip", "hydra.sweeper.n_trials=3", "max_train_steps=20",
         "schedule.warmup_steps=0", "clipping.clip_threshold=1.0",
         "optimizer.lr=choice(0.003,1000)", "optimizer=sgd", "logger=csv",
         "trainer.val_check_interval=10", *QUIET,
         f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    assert_ok(proc)
    trials = {int(p.name): _summary(p) for p in sweep.iterdir() if (p / "summary.json").is_file()}
    assert len(trials) == 3
    lrs = {n: yaml.safe_load((sweep / str(n) / "config.yaml").read_text())["optimizer"]["lr"]
           for n in trials}  # fmt: skip
    assert sorted(set(lrs.values())) == [0.003, 1000], lrs  # (the seeded sampler's picks)
    for n, s in trials.items():
        assert s["status"] == ("diverged" if lrs[n] == 1000 else "completed")
        assert s.get("test_acc") is None  # a search does not test
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(s["val_loss"] for s in trials.values() if s["feasible"])
    assert result["best_params"]["optimizer.lr"] == 0.003 and result["best_value"] == best
    assert "setup plugin alembic" not in proc.stdout + proc.stderr  # (noise, silenced)


def test_search_direction_must_match_the_metric(tmp_path):
    proc = run_cli(
        ["hparams_search=lr_warmup_clip", "optimized_metric=val_acc",
         f"hydra.sweep.dir={tmp_path / 's'}"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "hydra.sweeper.direction = minimize: optimized_metric = val_acc" in proc.stderr
