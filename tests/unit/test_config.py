"""Config composition through Hydra's compose API, and validation of bad input."""

from __future__ import annotations

import os

import pytest

from cases import BAD  # shared with the command-line refusal table
from conftest import ROOT, compose_cfg
from stablelab.config import ConfigError, validate
from stablelab.paths import config_dir, group_options

GROUPS = ["data", "model", "optimizer", "schedule", "clipping", "callbacks", "logger", "trainer"]


def test_config_dir_is_the_checkout_configs():
    # editable / source installs read the checkout's configs/ (the wheel case is an
    # integration test)
    assert config_dir() == ROOT / "configs"
    assert sorted(p.name for p in config_dir().iterdir() if p.is_dir()) == [
        "callbacks",
        "clipping",
        "data",
        "debug",
        "experiment",
        "hparams_search",
        "hydra",
        "logger",
        "model",
        "optimizer",
        "paths",
        "schedule",
        "sweep",
        "trainer",
    ]


def test_default_composes_and_validates(tmp_path):
    plain = validate(compose_cfg([], tmp_path))
    assert plain["data"]["_target_"] == "stablelab.data.MNIST1DDataModule"
    assert plain["model"]["_target_"] == "stablelab.models.ResNet1D"
    assert plain["optimizer"]["_partial_"] is True
    assert plain["model"]["residual"] == {"layout": "branch_norm", "branch_init": "default"}
    assert set(plain["logger"]) == {"wandb", "csv"}


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS for o in group_options(g)]
    + [("experiment", o) for o in group_options("experiment")]
    + [("debug", o) for o in group_options("debug")]
    + [("sweep", o) for o in group_options("sweep")],
)
def test_every_option_validates(tmp_path, group, option):
    needs = {"text_file": ["data.path=any.txt"], "npz": ["data.path=any.npz"]}  # required
    validate(compose_cfg([f"{group}={option}", *needs.get(option, [])], tmp_path))


def test_warmup_sweep_config_ties_post_warmup_to_twice_warmup(tmp_path):
    for w in (10, 150):
        plain = validate(compose_cfg(["sweep=warmup", f"schedule.warmup_steps={w}"], tmp_path))
        assert plain["schedule"]["post_warmup_steps"] == 2 * w


def test_overrides_reach_the_config(tmp_path):
    plain = validate(
        compose_cfg(
            [
                "model=transformer",
                "model.residual.layout=post_norm",
                "optimizer=rmsprop",
                "optimizer.rho=0.5",
                "schedule=cosine",
                "schedule.warmup_steps=10",
                "seed=7",
            ],
            tmp_path,
        )
    )
    assert plain["model"]["_target_"] == "stablelab.models.Transformer"
    assert plain["model"]["residual"]["layout"] == "post_norm"
    assert plain["optimizer"]["rho"] == 0.5
    assert plain["schedule"]["warmup_steps"] == 10
    assert plain["data"]["shuffle_seed"] == 7  # interpolated from the root seed


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_names_key_and_allowed_values(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides, tmp_path))
    msg = str(err.value)
    for text in expected:
        assert text in msg, f"{text!r} not in:\n{msg}"
    # exactly the problem we introduced (an interpolated copy of the key counts with it)
    keys = {p.split(" ")[0].split(":")[0] for p in err.value.problems}
    assert len(keys) == 1 or keys == {"max_train_steps", "schedule.max_train_steps"}, msg


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["optimizer.lr=-1", "seed=-2", "model.norm=bad"], tmp_path))
    assert len(err.value.problems) == 3


def test_unresolvable_interpolation_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        validate(compose_cfg(["+run_name=${nope}"], tmp_path))


COMPOSITION = [
    (["optimizer=adamw"], ["optimizer = 'adamw': no such option of the 'optimizer' config "
                           "group", "nadam", "did you mean 'adam'?"]),
    (["schedule.warmup=3"], ["schedule.warmup: not a key of 'schedule'",
                             "did you mean 'schedule.warmup_steps'?", "+schedule.warmup=3"]),
    (["seeed=1"], ["seeed: not a key at the top level", "did you mean 'seed'?"]),
    # below a key that does not exist: that key named, the nearest dotted key suggested
    (["warmup.steps=5"], ["warmup.steps: 'warmup' is not a key at the top level",
                          "did you mean 'schedule.warmup_steps'?", "schedule, clipping",
                          "+warmup.steps=5"]),
    (["optim.lr=1"], ["'optim' is not a key at the top level", "did you mean 'optimizer.lr'?"]),
    (["model.residal.layout=x"], ["'model.residal' is not a key of 'model'",
                                  "did you mean 'model.residual.layout'?"]),
    (["model.foo.bar=1"], ["'model.foo' is not a key of 'model' (keys of 'model': _target_"]),
    # below a value (an interpolation too: not resolved to say so)
    (["optimizer.lr.x=1"], ["optimizer.lr.x: 'optimizer.lr' holds a value (0.003), not keys",
                            "optimizer.lr=..."]),
    (["schedule.max_train_steps.x=1"], ["'schedule.max_train_steps' holds a value ("
                                        "'${max_train_steps}')"]),
    (["optimizer.learning_rate=1"], ["did you mean 'optimizer.lr'?"]),  # a common name
    (["trainer.max_steps=5"], ["trainer.max_steps: set by stablelab at run time",
                               "max_train_steps=N"]),
    (["model.width=[1"], ["'model.width=[1': not a valid override"]),
    (["~nosuch"], ["nosuch", "does not exist"]),
]  # fmt: skip


@pytest.mark.parametrize("overrides,expected", COMPOSITION, ids=[o[0] for o, _ in COMPOSITION])
def test_an_override_hydra_cannot_compose_is_one_named_config_error(
    tmp_path, capsys, overrides, expected
):
    """What Hydra refuses while composing (an unknown key or group option, bad grammar) is
    a ConfigError naming the override, for the API and every command that composes: the
    workflow commands exit 2 with it, no traceback."""
    from stablelab.cli import main as cli_main

    with pytest.raises(ConfigError) as err:
        compose_cfg(overrides, tmp_path)
    assert len(err.value.problems) == 1
    for text in expected:
        assert text in str(err.value), f"{text!r} not in:\n{err.value}"
    assert cli_main(["probe", "--lr", "1e-3", *overrides]) == 2
    printed = capsys.readouterr().err
    assert "stablelab probe: Invalid config" in printed and expected[0] in printed


def test_signatures_read_from_source_equal_the_imported_ones():
    """The fast pass's reading of every stablelab target in configs/ (ast, no import) gives
    the parameters, required flags and annotations that inspecting the imported class
    gives; what it cannot read is left to the full check (None), never guessed."""
    import yaml

    from stablelab.config import _callable_params, _import_target
    from stablelab.static_signatures import static_params

    targets: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                targets.add(node["_target_"])
            for v in node.values():
                walk(v)

    for f in config_dir().rglob("*.yaml"):
        walk(yaml.safe_load(f.read_text()))
    read = 0
    for t in sorted(targets):
        static = static_params(t)
        if not t.startswith("stablelab."):
            assert static is None, t  # third-party targets: always the full check
            continue
        if static is not None:
            read += 1
            assert static == _callable_params(_import_target(t)), t
    assert read >= 25  # models, optimizers, schedules, clipping, data, stablelab's callbacks


def test_a_class_with_only_objects_init_is_read_as_taking_no_keys():
    """NoClip defines no __init__: object's takes no argument (Python itself refuses
    one), so both readings say "no keys" rather than "may take **kwargs"; a decorated
    class (a dataclass writes its own __init__) is left to the full check, and a class whose
    arguments go to ``__new__`` (a namedtuple) is not judged."""
    from collections import namedtuple

    import pytest

    from stablelab.config import _callable_params
    from stablelab.optim.clipping import NoClip
    from stablelab.static_signatures import static_params

    with pytest.raises(TypeError):
        NoClip(clip_threshold=1.0)  # the reference: Python's own refusal
    assert _callable_params(NoClip) == ({}, False)
    assert static_params("stablelab.optim.clipping.NoClip") == ({}, False)
    assert static_params("stablelab.config.LossConfig") is None  # @dataclass: not read
    point = namedtuple("Point", "x y")
    assert point(x=1, y=2).y == 2 and _callable_params(point)[1]  # __new__ takes them


def test_the_python_api_takes_lists_and_config_folders_that_exist(tmp_path, monkeypatch):
    """stablelab.run("optimizer.lr=1e-3") used to compose one-letter overrides, and
    config_dirs="my/configs" one-letter folders that Hydra skipped without a word (a default
    run trained): strings and missing folders are refused before anything is composed."""
    import pytest

    from conftest import ROOT
    from stablelab.api import compose_run
    from stablelab.config import ConfigError

    with pytest.raises(TypeError, match=r"overrides: a list of strings, e\.g\. \["):
        compose_run("optimizer.lr=1e-3")
    with pytest.raises(TypeError, match="config_dirs: a list of strings"):
        compose_run([], config_dirs="examples/custom/configs")
    with pytest.raises(TypeError, match=r"overrides: a list of strings, .*; got \[3\]"):
        compose_run([3])  # type: ignore[list-item]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config_dirs: 'examples/custom/configs' is not a dir"):
        compose_run([], config_dirs=["examples/custom/configs"])
    cfg = compose_run(["experiment=waves"], config_dirs=[ROOT / "examples/custom/configs"])
    assert cfg.model._target_ == "my_project.models.TinyConvNet"
    # the same folder named on Hydra's search path by hand (as the workflows take it)
    with pytest.raises(ConfigError, match="hydra.searchpath: 'file://my/configs' is not a dir"):
        compose_run(["hydra.searchpath=[file://my/configs]"])


def test_the_float16_eps_rule_is_float16s_own_limits():
    """The threshold is float16's smallest normal number (torch.finfo), and Adam's default
    eps is not even representable there: it rounds to 0."""
    import torch

    from stablelab.config import FP16_SMALLEST_NORMAL

    assert torch.finfo(torch.float16).tiny == FP16_SMALLEST_NORMAL
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0
    assert torch.tensor(1e-4, dtype=torch.float16).item() > FP16_SMALLEST_NORMAL


def test_only_stablelabs_own_data_path_is_made_absolute(tmp_path, monkeypatch):
    """npz / text files are read against the start directory and recorded absolute; a
    datamodule of your own may mean a URL or a name by `path`: left as given."""
    from stablelab.train import _absolute_data_path

    monkeypatch.chdir(tmp_path)
    ours = {"data": {"_target_": "stablelab.data.NpzDataModule", "path": "d.npz"}}
    _absolute_data_path(ours)
    assert ours["data"]["path"] == str(tmp_path / "d.npz")
    for path in ("s3://bucket/d.npz", "d.npz"):
        yours = {"data": {"_target_": "my_project.data.D", "path": path}}
        _absolute_data_path(yours)
        assert yours["data"]["path"] == path
    absolute = {"data": {"_target_": "stablelab.data.NpzDataModule", "path": "/x/d.npz"}}
    _absolute_data_path(absolute)
    assert absolute["data"]["path"] == "/x/d.npz"


def test_an_experiments_settings_for_switched_off_callbacks_are_dropped_with_a_warning(tmp_path):
    """`experiment=shakespeare_char_cpu callbacks=none`: the experiment's settings for the
    dense evaluation and the LM monitor have no callback left to configure: dropped, one
    warning naming both (the run has no callbacks, as asked), where they used to refuse
    the run; an entry of another name without a _target_ (a typo, a class of yours left
    out) is still refused by name."""
    import warnings

    cfg = compose_cfg(["experiment=shakespeare_char_cpu", "callbacks=none"], tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = validate(cfg)
    assert plain["callbacks"] == {}
    (w,) = [str(c.message) for c in caught if "callbacks." in str(c.message)]
    assert w.startswith("callbacks.dense_eval, callbacks.lm_monitor: settings for callbacks")
    assert "ignored" in w
    cfg = compose_cfg(["experiment=shakespeare_char_cpu", "+callbacks.mine.every=3"], tmp_path)
    with pytest.raises(ConfigError, match=r"callbacks.mine: missing _target_"):
        validate(cfg)
    # with the default callbacks the experiment's settings reach their callbacks
    plain = validate(compose_cfg(["experiment=shakespeare_char_cpu"], tmp_path))
    assert plain["callbacks"]["lm_monitor"]["_target_"] == "stablelab.callbacks.LMMonitor"


DEVICES = [1, 2, -1, -2, 0, "0", "1", "-1", "2", " 3 ", "0,1", "1,", "0,,2", "abc", "1.5", "",
           [0, 1], [2], [], [-1], [0, "a"], 1.5, True, None]  # fmt: skip


@pytest.mark.parametrize("devices", DEVICES, ids=[repr(d) for d in DEVICES])
def test_the_fast_devices_check_refuses_what_lightning_s_parsers_refuse(devices, monkeypatch):
    """``trainer.devices`` is checked before Lightning is imported; the reference is
    Lightning's own parsers: the CPU's (a number of processes) and the GPU's, on a machine
    made to look as if it had 8 GPUs. ``0`` (no GPU) counts as refused: Lightning takes it
    for "none" and the run would not use the accelerator it named; a bool is refused too."""
    from lightning.fabric.accelerators.cpu import _parse_cpu_cores
    from lightning.fabric.utilities import device_parser

    from stablelab.config import _device_count_problem

    def lightning_accepts(parse) -> bool:
        try:
            return bool(parse(devices))
        except Exception:  # noqa: BLE001 - TypeError, ValueError, MisconfigurationException
            return False

    monkeypatch.setattr(device_parser, "_get_all_available_gpus", lambda **_: list(range(8)))
    gpu = lightning_accepts(lambda d: device_parser._parse_gpu_ids(d, include_cuda=True))
    cpu = lightning_accepts(_parse_cpu_cores)
    if isinstance(devices, bool):  # stricter on purpose: Lightning takes True for 1
        gpu = cpu = False
    assert (_device_count_problem(devices, cpu=True) is None) == cpu
    assert (_device_count_problem(devices, cpu=False) is None) == gpu


def test_a_folder_the_file_system_will_not_create_is_refused_and_the_probe_leaves_nothing(
    tmp_path, monkeypatch
):
    """paths.log_dir / data_dir: a folder still to be made is tried at its first level, so a
    file system that refuses it (here /proc, where permissions alone say yes to root) is
    named before Hydra tries; a folder that can be made is left unmade (Hydra makes it)."""
    import sys

    from stablelab.preflight import writable_problem

    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert writable_problem("paths.log_dir", tmp_path / "a" / "b" / "c") is None
    assert list(tmp_path.iterdir()) == []  # the probe's folder is gone again
    (tmp_path / "f").write_text("x")
    assert "is a file, not a directory" in str(writable_problem("k", tmp_path / "f" / "x"))
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        problem = writable_problem("paths.log_dir", "/proc/stablelab-logs/train")
        assert problem is not None, "/proc accepted a folder"
        assert problem.startswith("paths.log_dir = '/proc/stablelab-logs/train': cannot be created")
