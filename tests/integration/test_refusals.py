"""Bad values and hostile files, through the real command line: ``stablelab-train``'s
``main()`` (Hydra's CLI, the validation, the preflight checks) run in this process with
``sys.argv`` set. Every case must exit 2 with the key named, before anything trains: no
summary, no checkpoint, and no run directory left behind. The table holds the validator's
cases of tests/unit/test_config.py and the machine, data, checkpoint and Hydra cases
here; README's reliability section quotes its counts."""

from __future__ import annotations

import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from cases import BAD as VALIDATOR_CASES
from conftest import compose_cfg

FAST = ["callbacks.progress_bar.refresh_rate=0", "plots=false"]


def cli(argv: list[str], run_dir: Path, capsys) -> tuple[int, str]:
    """``stablelab-train ARGV hydra.run.dir=RUN_DIR`` in this process: (exit code, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    from stablelab import train as train_mod

    GlobalHydra.instance().clear()
    train_mod._TASK_STARTED.clear()
    old = sys.argv
    flags = [a for a in argv if a.startswith("-")]  # (Hydra's flags come before overrides)
    rest = [a for a in argv if not a.startswith("-")]
    sys.argv = ["stablelab-train", *flags, *FAST, *rest, f"hydra.run.dir={run_dir}"]
    try:
        train_mod.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory, module_env):
    """Real checkpoints (a 2-step MLP run with Adam; a ResNet run) and crafted files."""
    from stablelab.train import train

    root = tmp_path_factory.mktemp("files")
    mlp = ["logger=csv", "plots=false", "max_train_steps=2", "trainer.val_check_interval=2",
           "test=false", "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip
    train(compose_cfg([*mlp, "model=mlp"], root / "mlp"))
    train(compose_cfg([*mlp, "model=resnet"], root / "resnet"))
    ckpt = root / "mlp" / "checkpoints" / "last.ckpt"
    raw = ckpt.read_bytes()
    (root / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (root / "text.ckpt").write_text("not a checkpoint\n")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "adir.ckpt").mkdir()
    (root / "afile").write_text("x")
    # a pickle that would create a file if it were unpickled
    marker = root / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "payload": Payload()}, root / "pickled.ckpt")
    # a zip that is no torch file
    with zipfile.ZipFile(root / "zip.ckpt", "w") as z:
        z.writestr("hello.txt", "hi")
    # a plain-data checkpoint whose stored config names builtins.open as a target
    crafted = torch.load(ckpt, weights_only=True)
    crafted["hyper_parameters"]["cfg"]["clipping"] = {
        "_target_": "builtins.open",
        "file": str(marker),
        "mode": "w",
    }
    torch.save(crafted, root / "crafted_target.ckpt")
    buf = io.BytesIO()
    pickle.dump({"a": 1}, buf)
    (root / "plain_pickle.ckpt").write_bytes(buf.getvalue())
    return root


# (overrides, texts that must all appear); "{f}" is replaced by the files fixture's folder
CASES = [
    *VALIDATOR_CASES,
    # numbers that are no settings
    (["optimizer.lr=inf"], ["optimizer.lr = inf", "must be a finite number"]),
    (["optimizer.lr=1e309"], ["optimizer.lr = inf", "finite"]),
    (["optimizer.lr=nan"], ["optimizer.lr = nan", "finite"]),
    (["seed=4294967296"], ["seed = 4294967296", "must be <= 4294967295"]),
    # trainer values Lightning's signature allows but that fail late or are ignored
    (["trainer.val_check_interval=0"], ["trainer.val_check_interval = 0", ">= 1"]),
    (["trainer.devices=0"], ["trainer.devices = 0", "count >= 1"]),
    (["trainer.accelerator=gpu"], ["trainer.accelerator = 'gpu'", "not available", "trainer=cpu"]),
    # Lightning's names and device formats, refused before the imports (not by the Trainer)
    (["trainer.accelerator=gpus"], ["trainer.accelerator = 'gpus'", "auto, cpu, cuda, gpu",
                                    "did you mean 'gpu'"]),  # fmt: skip
    (["trainer.devices=abc"], ["trainer.devices = 'abc'", "a count >= 1 or 'auto'"]),
    (["trainer.devices=-1"], ["trainer.devices = -1", "-1 and device indices are for GPUs"]),
    (["+trainer.strategy=ddpx"], ["trainer.strategy = 'ddpx'", "did you mean 'ddp'"]),
    # what only the Trainer itself checks: its refusal, as a refusal
    (["+trainer.plugins=[foo]"], ["trainer: Lightning's Trainer refused these settings",
                                  "invalid type for plugin foo"]),  # fmt: skip
    (["+trainer.gradient_clip_val=1.0"], ["trainer.gradient_clip_val = 1.0", "clipping=fixed"]),
    (["+trainer.gradient_clip_algorithm=norm"], ["trainer.gradient_clip_algorithm", "clipping"]),
    (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps = 0", "must be >= 1"]),
    # an experiment's settings for the option it chose, after the command line chose another
    (
        ["experiment=shakespeare_char_cpu", "optimizer=rmsprop", "schedule=rsqrt"],
        ["optimizer.beta2: unknown key", "of optimizer=adam / optimizer=nadam, not of the "
         "chosen RMSProp", "drop it with ~optimizer.beta2", "with ~schedule.final_lr_fraction"],
    ),  # fmt: skip
    # limits that end a run before max_train_steps (its schedule unfinished) or after it
    (["trainer.max_epochs=3"], ["trainer.max_epochs = 3", "before max_train_steps", "-1"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs = 'abc'", "expected an integer",
                                  "leave it -1"]),  # fmt: skip
    (["+trainer.max_time=00:00:01:00"], ["trainer.max_time = '00:00:01:00'", "SIGTERM"]),
    (["+trainer.min_steps=2000"], ["trainer.min_steps = 2000", "past max_train_steps"]),
    (["+trainer.limit_train_batches=0"], ["trainer.limit_train_batches = 0", "trains nothing",
                                          "train=false ckpt_path="]),  # fmt: skip
    # a best checkpoint ranked the wrong way, or by a metric no validation logs
    (["callbacks.model_checkpoint.monitor=val/acc"],
     ["callbacks.model_checkpoint.mode = 'min' with monitor = 'val/acc'", "mode=max"]),
    (["callbacks.model_checkpoint.monitor=val/accuracy"],
     ["monitor = 'val/accuracy'", "one of val/loss, val/acc"]),  # fmt: skip
    (
        ["trainer=fsdp_cpu", "callbacks.sharpness.every_n_steps=10"],
        ["callbacks.sharpness.every_n_steps = 10", "Hessian-vector", "FSDP2Strategy"],
    ),
    (["callbacks.sharpness.iterations=0"], ["callbacks.sharpness.iterations = 0", "must be > 0"]),
    (
        ["trainer=ddp_cpu", "callbacks.stability.rollbacks=2"],
        ["callbacks.stability.rollbacks = 2", "one process only"],
    ),
    (
        ["skip_spikes.enabled=true", "skip_spikes.min_history=200"],
        ["skip_spikes.min_history = 200", "<= skip_spikes.window = 128"],
    ),
    (
        ["callbacks.stability.rollback_lr_factor=2"],
        ["callbacks.stability.rollback_lr_factor = 2", "<= 1"],
    ),
    (["+trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches = 0", ">= 1"]),
    (["+trainer.limit_val_batches=-1"], ["trainer.limit_val_batches = -1", "batches >= 0"]),
    (["trainer.val_check_interval=0.5"], ["trainer.val_check_interval = 0.5", "whole number"]),
    (["+trainer.limit_test_batches=1.5"], ["trainer.limit_test_batches = 1.5", "[0.0, 1.0]"]),
    # data that cannot fill one batch
    (["data.batch_size=100000"], ["data.batch_size = 100000", "training split (3600"]),
    (["data.num_samples=10"], ["data.batch_size = 128", "training split (7 examples)"]),
    # paths
    (["paths.data_dir={f}/afile/data"], ["paths.data_dir", "is a file, not a directory"]),
    (["paths.log_dir={f}/afile/logs"], ["paths.log_dir", "is a file, not a directory"]),
    # checkpoints: missing, not one, hostile, another model, another update rule
    (["ckpt_path={f}/missing.ckpt"], ["ckpt_path = '{f}/missing.ckpt': no such file"]),
    (["ckpt_path={f}/adir.ckpt"], ["ckpt_path", "not a file"]),
    (["ckpt_path=http://127.0.0.1:9/x.ckpt"], ["ckpt_path = 'http://127.0.0.1:9/x.ckpt'", "URLs"]),
    (["ckpt_path={f}/truncated.ckpt"], ["{f}/truncated.ckpt", "truncated or corrupt"]),
    (["ckpt_path={f}/text.ckpt"], ["{f}/text.ckpt", "not a readable PyTorch checkpoint"]),
    (["ckpt_path={f}/empty.ckpt"], ["{f}/empty.ckpt", "not a readable PyTorch checkpoint"]),
    (["ckpt_path={f}/zip.ckpt"], ["{f}/zip.ckpt", "not a readable PyTorch checkpoint"]),
    (["ckpt_path={f}/plain_pickle.ckpt"], ["{f}/plain_pickle.ckpt", "ckpt_path"]),
    (["ckpt_path={f}/pickled.ckpt"], ["{f}/pickled.ckpt", "pickled Python objects"]),
    (
        ["model=mlp", "ckpt_path={f}/resnet/checkpoints/last.ckpt"],
        ["ckpt_path", "a checkpoint of another model", "stablelab eval"],
    ),
    (
        ["model=mlp", "optimizer=sgd", "ckpt_path={f}/mlp/checkpoints/last.ckpt"],
        ["ckpt_path", "optimizer is stablelab.optim.Adam", "stablelab.optim.SGD"],
    ),
    (
        ["model=mlp", "optimizer.weight_decay=0.1", "ckpt_path={f}/mlp/checkpoints/last.ckpt"],
        ["optimizer.weight_decay = 0.1", "groups the tensors differently", "trained with 0.0"],
    ),
    (
        ["model=mlp", "max_train_steps=1", "ckpt_path={f}/mlp/checkpoints/last.ckpt"],
        ["max_train_steps = 1: the run would train 1 steps", "is at step 2, past its end"],
    ),
    # the language model's data and model
    (
        ["data=text_file", "data.path={f}/missing.txt"],
        ["data.path = '{f}/missing.txt': no such file"],
    ),
    (["model=gpt"], ["model = GPT", "data=shakespeare_char"]),
    (["data=shakespeare_char"], ["model = ResNet1D: a classifier", "use model=gpt"]),
    (
        ["data=shakespeare_char", "model=gpt", "data.block_size=200000"],
        ["data.block_size = 200000"],
    ),
    # a config folder that does not exist: Hydra skips a searchpath entry without a word
    (
        ["hydra.searchpath=[file://{f}/no-such-configs]"],
        ["hydra.searchpath: 'file://{f}/no-such-configs' is not a directory"],
    ),
    # Hydra's own refusals (exit 2 like the others), said in stablelab's one line instead
    # of Hydra's (checked below): the keys beside an unknown one, "did you mean" (Hydra's
    # own hint, +key=value, adds a key nothing reads)
    (["foo=1"], ["stablelab-train: foo: not a key at the top level"]),
    # a key of another group: named
    (["model.batch_size=16"], ["stablelab-train: model.batch_size: not a key of 'model'; "
                               "did you mean 'data.batch_size'?"]),
    # a key another option of the group sets, which the chosen class does not take: that
    # option named (adding it with + would be refused by ResNet1D); a key the class takes
    # (Lightning's Trainer here) keeps Hydra's +key hint
    (["model.qk_norm=true"], ["model.qk_norm: not a key of the chosen 'model' option; qk_norm "
                              "is a setting of model=gpt: choose it (model=gpt "
                              "model.qk_norm=true)"]),
    (["optimizer.rho=0.8"], ["rho is a setting of optimizer=rmsprop"]),
    # NoClip has only object's __init__: it takes no keys (not "add it with +")
    (["clipping=none", "clipping.clip_threshold=1"],
     ["clip_threshold is a setting of clipping=fixed: choose it (clipping=fixed "
      "clipping.clip_threshold=1)"]),
    (["clipping=none", "+clipping.clip_threshold=1"],
     ["clipping.clip_threshold: unknown key for stablelab.optim.clipping.NoClip; it takes "
      "no keys"]),
    (["trainer.sync_batchnorm=true"], ["trainer.sync_batchnorm: not a key of 'trainer' (keys",
                                       "to add a new key write +trainer.sync_batchnorm=true"]),
    # a required value left unset, an interpolation that does not resolve: the key
    (["data=text_file"], ["data.path: required and not set; give it on the command line"]),
    (["optimizer.lr=${oc.env:STABLELAB_NO_SUCH_VAR}"],
     ["optimizer.lr: does not resolve", "STABLELAB_NO_SUCH_VAR"]),
    (["optimizer.learning_rate=1"], ["stablelab-train: optimizer.learning_rate: not a key of "
                                     "'optimizer'; did you mean 'optimizer.lr'?"]),
    (["trainer.max_steps=5"], ["stablelab-train: trainer.max_steps: set by stablelab at run "
                               "time (the run's length is the top-level max_train_steps=N)"]),
    (["-m", "optimizer.lr=1e-3,2e-3", "optimizer.bta1=0.8"],
     ["stablelab-train: optimizer.bta1: not a key of 'optimizer'; did you mean "
      "'optimizer.beta1'?"]),
    (["optimizer=adamw"], ["optimizer = 'adamw': no such option of the 'optimizer' config "
                           "group (choose one of: adam,", "nadam", "did you mean 'adam'?"]),
]  # fmt: skip


def _ids(case) -> str:
    return " ".join(case[0])[:60]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[_ids(c) for c in CASES])
def test_bad_value_exits_2_naming_the_key_before_anything_trains(
    tmp_path, capsys, files, overrides, expected
):
    overrides = [o.replace("{f}", str(files)) for o in overrides]
    run = tmp_path / "run"
    code, err = cli(overrides, run, capsys)
    assert code == 2, err[-3000:]
    for text in expected:
        assert text.replace("{f}", str(files)) in err, f"{text!r} not in:\n{err}"
    assert "Traceback" not in err
    # stablelab's line, not Hydra's dozen before it (search path, HYDRA_FULL_ERROR)
    assert "Config search path" not in err and "HYDRA_FULL_ERROR" not in err, err
    assert not run.exists(), sorted(p.name for p in run.rglob("*"))  # nothing left behind
    assert not (files / "PWNED").exists()


EVAL_CASES = [
    (["model=resnet"], ["model=resnet: stablelab eval takes the model config from the checkpoint",
                        "train=false ckpt_path"]),
    (["data=digits"], ["data=digits: stablelab eval takes the data config"]),
    (["model.widht=64"], ["model.widht: not a key of the checkpoint's 'model'",
                          "did you mean 'model.width'?", "+model.widht=64"]),
    (["~model.nosuch"], ["~model.nosuch: the checkpoint's 'model' has no key 'nosuch'"]),
    (["data.eval_batch_size=10,20"], ["data.eval_batch_size=10,20", "not a sweep"]),
    (["model.width=[1"], ["'model.width=[1': not a valid override"]),
    (["nosuch=1"], ["nosuch: not a key at the top level", "+nosuch=1"]),
    (["sed=1"], ["did you mean 'seed'?"]),
    (["trainer.max_epoch=1"], ["trainer.max_epoch: not a key of 'trainer'",
                               "did you mean 'trainer.max_epochs'?"]),
    (["trainer=nosuch"], ["trainer = 'nosuch': no such option of the 'trainer' config group",
                          "cpu, ddp, ddp_cpu"]),
    # the stored groups, validated as usual
    (["model.width=-3"], ["model.width = -3"]),
    (["+data.note=x"], ["data.note: unknown key", "allowed keys: data_dir, batch_size"]),
]  # fmt: skip


@pytest.mark.parametrize("overrides,expected", EVAL_CASES, ids=[_ids(c) for c in EVAL_CASES])
def test_eval_refuses_overrides_it_cannot_apply_naming_them(
    tmp_path, capsys, files, overrides, expected
):
    """`stablelab eval CKPT OVERRIDES`: the stored groups come from the checkpoint, so a
    group choice for one is refused, and a key the stored config lacks is named with the
    keys it has; Hydra's composition errors are one line each (no traceback); exit 2, no
    output directory."""
    from stablelab.cli import main as cli_main

    out = tmp_path / "eval"
    ckpt = files / "mlp" / "checkpoints" / "last.ckpt"
    code = cli_main(["eval", str(ckpt), *FAST, *overrides, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert "Traceback" not in err
    assert not out.exists()


def test_eval_applies_overrides_of_keys_only_the_checkpoints_model_has(tmp_path, files):
    """model.dropout exists in the MLP's config, not in the default model's (the ResNet):
    the override reaches the stored config, and evaluation (dropout off) gives the numbers
    of an evaluation without it; a key deleted with ~ falls back to its default."""
    import yaml

    from stablelab.cli import main as cli_main

    ckpt = str(files / "mlp" / "checkpoints" / "last.ckpt")
    plain, changed = tmp_path / "plain", tmp_path / "changed"
    assert cli_main(["eval", ckpt, *FAST, "logger=csv", "--out", str(plain)]) == 0
    argv = ["model.dropout=0.5", "~model.embed_dim", "data.eval_batch_size=7"]
    assert cli_main(["eval", ckpt, *FAST, "logger=csv", *argv, "--out", str(changed)]) == 0
    cfg = yaml.safe_load((changed / "config.yaml").read_text())
    assert cfg["model"]["dropout"] == 0.5 and cfg["model"]["_target_"] == "stablelab.models.MLP"
    assert "embed_dim" not in cfg["model"] and cfg["data"]["eval_batch_size"] == 7
    a = json.loads((plain / "summary.json").read_text())
    b = json.loads((changed / "summary.json").read_text())
    assert b["val_acc"] == a["val_acc"] and b["test_acc"] == a["test_acc"]
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)  # other batch sums


def test_the_table_is_large_enough_and_readme_quotes_its_size():
    from conftest import ROOT

    assert len(CASES) >= 40
    readme = (ROOT / "README.md").read_text()
    assert f"tested as a table of {len(CASES)} cases" in " ".join(readme.split())
    assert f"| {len(CASES)} | {len(CASES)} refused" in readme


def test_crafted_target_in_a_checkpoint_is_refused_by_load_from_checkpoint(files):
    """The README's way to rebuild a model anywhere: a plain-data checkpoint whose stored
    config names builtins.open must build nothing (the file it names is not created)."""
    from stablelab.checkpoints import CheckpointError
    from stablelab.module import StableModule

    with pytest.raises(CheckpointError) as e:
        StableModule.load_from_checkpoint(files / "crafted_target.ckpt")
    assert "clipping._target_ = 'builtins.open'" in str(e.value)
    assert not (files / "PWNED").exists()
    with pytest.raises(CheckpointError, match="pickled Python objects") as e:
        StableModule.load_from_checkpoint(files / "pickled.ckpt")
    assert not (files / "PWNED").exists()
    # it names what the pickle would call, without torch's advice to load it unsafely
    assert "it names io.open" in str(e.value) and "weights_only" not in str(e.value)
    # a genuine checkpoint still loads
    module = StableModule.load_from_checkpoint(files / "mlp" / "checkpoints" / "last.ckpt")
    assert type(module.model).__name__ == "MLP"


@pytest.mark.parametrize(
    "target,why",
    [
        ("builtins.open", "outside the allowed packages"),
        ("os.system", "outside the allowed packages"),
        ("stablelab.train.os.system", "not a class"),
        ("stablelab.train.train", "not a class"),
        ("stablelab.checkpoints.importlib.import_module", "not a class"),
        ("stablelab.module.torch.nn.Linear", "defined in torch"),
        ("stablelab.nope.Thing", "cannot be imported"),
        ("stablelab.optim.Adam; import os", "not a dotted class name"),
    ],
)
def test_target_checks(target, why):
    from stablelab.checkpoints import target_problems

    (problem,) = target_problems({"model": {"_target_": target}}, "crafted.ckpt")
    assert why in problem and "model._target_" in problem and "crafted.ckpt" in problem
    assert target_problems({"model": {"_target_": "stablelab.models.MLP"}}, "x") == []
    assert (
        target_problems(
            {"callbacks": {"c": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint"}}}, "x"
        )
        == []
    )


HEAVY = ("torch", "lightning", "wandb", "matplotlib")


def _imported(argv: list[str], tmp_path: Path) -> tuple[int, set[str], str]:
    """Exit code, the top-level packages imported (python -X importtime) and stderr."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    mods = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return proc.returncode, mods, proc.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["optimizer.lr=-1", "model.norm=bad", "seed=-1"],  # stablelab targets and root keys
        ["callbacks.grad_norm.recent_window=0"],
        ["schedule.warmup_steps=-5", "clipping=fixed", "clipping.clip_threshold=0"],
        ["trainer=fsdp_cpu", "compile=true"],  # a rule across groups
        ["trainer.accelerator=gpus", "trainer.devices=abc"],  # Lightning's names and formats
    ],
)
def test_a_refusal_imports_neither_torch_nor_lightning(tmp_path, bad):
    """Refusing a config needs no deep-learning import (the fast pass reads stablelab's
    targets from source): measured as the set of modules imported, not as a time."""
    code, mods, err = _imported(
        ["-m", "stablelab.train", *bad, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    assert code == 2, err[-2000:]
    assert "Invalid config" in err
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sweep", "lr", "callbacks=none", "--lrs", "1e-3"], "callbacks.stability: off"),
        (["probe", "--lr", "1e-3", "callbacks.dense_eval=null"], "callbacks.dense_eval: off"),
    ],
)
def test_a_workflow_without_the_callbacks_it_reads_is_refused_without_heavy_imports(
    tmp_path, argv, says
):
    code, mods, err = _imported(["-m", "stablelab.cli", *argv, "--out", str(tmp_path / "o")],
                                tmp_path)  # fmt: skip
    assert code == 2 and says in err, err[-2000:]
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv",
    [["-m", "stablelab.train", "--help"], ["-m", "stablelab.cli", "--help"],
     ["-m", "stablelab.cli", "sweep", "--help"]],
)  # fmt: skip
def test_help_imports_neither_torch_nor_lightning(tmp_path, argv):
    code, mods, err = _imported(argv, tmp_path)
    assert code == 0, err[-2000:]
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_a_mistake_only_the_full_check_sees_is_still_refused_before_training(tmp_path):
    """A Lightning key (read by importing Lightning): refused too, after the imports."""
    code, mods, err = _imported(
        ["-m", "stablelab.train", "+trainer.max_epoch=3", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )
    assert code == 2 and "trainer.max_epoch: unknown key" in err and "max_epochs" in err
    assert "lightning" in mods


def test_rebuilding_a_report_never_runs_a_crafted_config(tmp_path):
    """`stablelab report` builds the schedule from a run's config.yaml for lr.png: a
    config.yaml naming a callable outside stablelab (Path.touch here, builtins.open with
    mode "w" would truncate any file; Hydra blocks only some, such as os.system) is not
    built; a genuine
    schedule is (lr.png written, its values checked against the closed form)."""
    from stablelab.cli import main

    pwned = tmp_path / "PWNED"
    crafted = {
        "_target_": "pathlib.Path.touch",
        "_args_": [str(pwned)],
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 3}))
    (run / "config.yaml").write_text(
        json.dumps({"optimizer": {"lr": 0.1}, "schedule": crafted})  # JSON is YAML
    )
    assert main(["report", str(run)]) == 0
    assert not pwned.exists() and not (run / "lr.png").exists()
    assert (run / "report.md").is_file()
    from stablelab.analysis.runs import lr_curve

    # a genuine schedule: linear warmup step / 4 over 4 steps, then constant (8 steps)
    good = {"_target_": "stablelab.optim.schedules.Constant", "warmup_steps": 4,
            "max_train_steps": 8}  # fmt: skip
    sched, steps, lrs = lr_curve({"optimizer": {"lr": 0.1}, "schedule": good}, source="x.yaml")
    assert steps == list(range(8))
    assert lrs == pytest.approx([0.1 * min(1.0, s / 4) for s in range(8)], abs=1e-12)
    good["_target_"] = "stablelab.optim.schedules.os.system"  # reached through a module
    assert lr_curve({"optimizer": {"lr": 0.1}, "schedule": good}, source="x.yaml") is None


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_directory_holding_a_run_is_refused_and_left_as_it_was(tmp_path, files, capsys):
    """A new run, an evaluation or a sweep trial aimed at a directory that holds a run
    (hydra.run.dir / --out / paths.output_dir) would overwrite its summary, config, CSVs
    and report and mix its checkpoints: refused before anything is written there (not
    even Hydra's .hydra/ and log); a resume in place is what such a directory is for."""
    import shutil

    from hydra.core.global_hydra import GlobalHydra

    from stablelab import train as train_mod
    from stablelab.cli import main as cli_main
    from stablelab.config import ConfigError

    old = tmp_path / "old"
    shutil.copytree(files / "mlp", old)
    before = _snapshot(old)
    assert "summary.json" in before and ".hydra/config.yaml" not in before

    def train_cli(*argv: str) -> int:
        GlobalHydra.instance().clear()
        train_mod._TASK_STARTED.clear()
        flags = [a for a in argv if a.startswith("-")]
        rest = [a for a in argv if not a.startswith("-")]
        saved = sys.argv
        sys.argv = ["stablelab-train", *flags, *FAST, *rest, f"hydra.run.dir={old}"]
        try:
            train_mod.main()
            return 0
        except SystemExit as e:
            return int(e.code or 0)
        finally:
            sys.argv = saved
            GlobalHydra.instance().clear()

    says = (
        f"hydra.run.dir = '{old}': holds a run already (a completed run at step 2, 2 checkpoint(s))"
    )
    assert train_cli("model=mlp", "logger=csv") == 2
    assert says in capsys.readouterr().err
    assert train_cli("model=mlp", "train=false", f"ckpt_path={old}/checkpoints/last.ckpt") == 2
    assert "an evaluation there would overwrite" in capsys.readouterr().err
    # a multirun into the folder of an earlier sweep, whose job 0 holds a run
    assert (
        train_cli("-m", "model=mlp", "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={tmp_path}") == 2
    )
    assert f"hydra.sweep.dir = '{tmp_path}': holds runs already (old)" in capsys.readouterr().err
    assert cli_main(["eval", str(old), *FAST, "--out", str(old)]) == 2
    assert f"--out = '{old}': holds a run already" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="paths.output_dir = .*holds a run already"):
        train_mod.train(compose_cfg(["model=mlp", "logger=csv", *FAST], old))
    sweep = tmp_path / "sweep"
    shutil.copytree(files / "mlp", sweep / "lr_0.001")
    args = ["sweep", "lr", "model=mlp", *FAST, "--lrs", "1e-3", "3e-3", "--out", str(sweep)]
    assert cli_main(args) == 2
    assert "already holds the run(s) lr_0.001" in capsys.readouterr().err
    assert sorted(p.name for p in sweep.iterdir()) == ["lr_0.001"]  # no trial was started
    assert _snapshot(old) == before  # not a byte changed, nothing added


def test_report_and_analyze_name_the_directory_they_take(tmp_path, capsys):
    """`stablelab report RUN/summary.json` names the run directory to give; `stablelab
    analyze RUN` (one run, not a sweep) is refused, writing nothing into the run."""
    from stablelab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 3}))
    (run / "config.yaml").write_text(json.dumps({"optimizer": {"lr": 0.1}}))
    assert main(["report", str(run / "summary.json")]) == 2
    assert f"give the run directory that holds summary.json ({run})" in capsys.readouterr().err
    assert main(["analyze", str(run)]) == 2
    assert "is one run's directory" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "summary.json"]


DAMAGED = [
    # (file, content, command, texts)
    ("summary.json", "[]", "report", ["summary.json: not a stablelab summary (a JSON list"]),
    ("summary.json", "{", "report", ["summary.json: not a stablelab summary (not JSON"]),
    ("summary.json", "", "report", ["summary.json: not a stablelab summary (not JSON"]),
    ("config.yaml", ": : :", "report", ["config.yaml: not a readable run config"]),
    ("config.yaml", "- a\n- b\n", "report", ["config.yaml: not a run config (a YAML list"]),
    ("evals.csv", "step,val_loss\n1,0.5\n,\n", "report", ["evals.csv, row 2: step '' is not"]),
    ("stability.csv", b"\x9c\xff\x00", "report", ["stability.csv: not a readable CSV file"]),
    ("grad_norms.csv", "step,grad_norm\nx,1\n", "clip-threshold",
     ["grad_norms.csv, row 1: step 'x' is not an integer"]),
    ("grad_norms.csv", "step,grad_norm\n1,zz\n", "clip-threshold",
     ["grad_norms.csv: a row without a numeric grad_norm"]),
    ("stability.csv", "step,loss\n1,0.5\n", "report",
     ["stability.csv: no loss_ema column in its header ['step', 'loss']"]),
    ("evals.csv", "a,b\n1,2\n", "report", ["evals.csv: no step, val_loss columns in its header"]),
    ("grad_norms.csv", "step,gn\n1,2\n", "clip-threshold",
     ["grad_norms.csv: no grad_norm column in its header ['step', 'gn']"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,content,command,texts", DAMAGED, ids=[f"{d[2]}-{d[0]}-{i}" for i, d in enumerate(DAMAGED)]
)
def test_a_damaged_run_file_is_named_not_a_traceback(
    tmp_path, capsys, files, name, content, command, texts
):
    """`stablelab report` / `clip-threshold` on a run directory whose file was edited or
    damaged: exit 2 with the file and what is wrong, no traceback; the same run reads
    fine before the damage (the fixture's real run)."""
    import shutil

    from stablelab.cli import main

    run = tmp_path / "run"
    shutil.copytree(files / "mlp", run)
    assert main([command, str(run)]) == 0  # the genuine files
    capsys.readouterr()
    if isinstance(content, bytes):
        (run / name).write_bytes(content)
    else:
        (run / name).write_text(content)
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    for text in texts:
        assert text in err, err
    assert "Traceback" not in err and str(run) in err


def test_a_sweep_leaves_out_a_trial_it_cannot_read_and_says_so(tmp_path, files):
    """The sweep's table and plot over runs on disk: a trial with a damaged summary is
    left out with a warning naming it; the readable trial stays."""
    import shutil

    from stablelab.analysis.sweep import load_trials

    for name in ("a", "b"):
        shutil.copytree(files / "mlp", tmp_path / name)
    (tmp_path / "b" / "summary.json").write_text("{")
    with pytest.warns(UserWarning, match=r"left out of the sweep: .*b: .*not JSON"):
        rows = load_trials(tmp_path)
    assert [Path(r["run_dir"]).name for r in rows] == ["a"]


def test_the_cli_prints_stablelab_warnings_as_one_line(tmp_path, files):
    """`stablelab analyze` over a sweep with a damaged trial: the warning is one line
    naming the command, not Python's file:line header and source line."""
    import shutil
    import subprocess
    import sys

    for name in ("lr_a", "lr_b"):
        shutil.copytree(files / "mlp", tmp_path / "sweep" / name)
    (tmp_path / "sweep" / "lr_b" / "evals.csv").write_text("step,foo\n1,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stablelab.cli", "analyze", str(tmp_path / "sweep")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [x for x in proc.stderr.splitlines() if "left out of the sweep" in x]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("stablelab analyze: warning: left out of the sweep: ")
    assert "evals.csv: no val_loss column" in lines[0] and "UserWarning" not in proc.stderr


def test_a_wandb_mode_wandb_does_not_know_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """WANDB_MODE=nonsense with the W&B logger: refused naming the variable and W&B's
    modes (it used to fall back to offline as if an online run had failed); the modes are
    W&B's own (its Settings.mode type); without a W&B logger the variable is not read."""
    import typing

    import wandb

    from stablelab.preflight import WANDB_MODES

    annotation = wandb.Settings.model_fields["mode"].annotation
    assert set(typing.get_args(annotation)) == set(WANDB_MODES)
    monkeypatch.setenv("WANDB_MODE", "nonsense")
    run = tmp_path / "run"
    code, err = cli(["logger=wandb", "max_train_steps=2"], run, capsys)
    assert code == 2 and "WANDB_MODE = 'nonsense' (environment): W&B's modes are online" in err
    assert not run.exists()
    code, err = cli(
        ["logger=csv", "max_train_steps=2", "trainer.val_check_interval=2"], run, capsys
    )
    assert code == 0, err[-2000:]
