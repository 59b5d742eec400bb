"""Your own data and model: data=npz and the contract checks (stablelab.contract)."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from stablelab.config import ConfigError, validate
from stablelab.contract import (
    FIRST_BATCH,
    batch_problems,
    check_unused_parameters,
    datamodule_problems,
    output_problems,
)
from stablelab.data import NpzDataModule
from stablelab.train import objective


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x}


def test_npz_x_y_is_split_into_disjoint_seeded_parts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3, 10)).astype(np.float32)  # rows are distinct
    y = rng.integers(0, 4, 200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dm = NpzDataModule(str(tmp_path / "d.npz"), val_fraction=0.25, test_fraction=0.1)
    a = dm._arrays()
    sizes = {s: len(a[f"y_{s}"]) for s in ("train", "val", "test")}
    assert sizes == {"test": 20, "val": 45, "train": 135}  # 10% of 200; 25% of the 180 left
    parts = [_rows(a[f"x_{s}"]) for s in ("train", "val", "test")]
    assert set.union(*parts) == _rows(x) and sum(map(len, parts)) == 200  # each row once
    by_row = {r.tobytes(): int(label) for r, label in zip(x, y, strict=True)}
    for s in ("train", "val", "test"):  # labels travel with their rows
        assert [by_row[r.tobytes()] for r in a[f"x_{s}"]] == a[f"y_{s}"].tolist()
    assert dm.input_spec == {
        "task": "classification", "kind": "real", "length": 10, "channels": 3, "vocab_size": 0
    }  # fmt: skip
    assert dm.num_classes == int(y.max()) + 1
    assert datamodule_problems(dm, "stablelab.data.NpzDataModule") == []


def test_npz_with_all_six_arrays_is_used_as_is_and_tokens_get_a_vocabulary(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for s, n in (("train", 30), ("val", 7), ("test", 9)):
        arrays[f"x_{s}"] = rng.integers(0, 50, (n, 6))
        arrays[f"y_{s}"] = rng.integers(0, 3, n)
    arrays["x_test"][0, 0] = 61  # the largest id anywhere sets the vocabulary
    np.savez(tmp_path / "t.npz", **arrays)
    dm = NpzDataModule(str(tmp_path / "t.npz"), num_classes=5)
    for k, v in arrays.items():
        assert np.array_equal(dm._arrays()[k], v)
    assert dm.input_spec["kind"] == "tokens" and dm.input_spec["vocab_size"] == 62
    assert dm.num_classes == 5
    dm.setup()
    assert dm._tensors["train"][0].dtype == torch.long


@pytest.mark.parametrize(
    "arrays,expect",
    [
        ({"x": np.zeros((5, 4)), "y": np.zeros(4, int)}, "x has 5 examples, y 4"),
        ({"a": np.zeros(3)}, "expected x and y"),
        ({"x": np.zeros((5, 4)), "y": np.zeros(5)}, "class labels are one integer"),
        ({"x": np.full((20, 4), np.nan), "y": np.arange(20) % 2}, "NaN or infinite"),
        # the file's own array and the first bad example, not a split's name
        ({"x": np.where(np.arange(20)[:, None] >= 4, np.inf, np.ones((20, 4))),
          "y": np.arange(20) % 2},
         "x holds NaN or infinite values (example 4; 16 example(s) in all)"),
        ({"x": np.arange(40).reshape(20, 2) - 3, "y": np.arange(20) % 2},
         "x holds negative token ids (example 0; 2 example(s) in all)"),
        ({"x": np.zeros((20, 4), bool), "y": np.arange(20) % 2}, "x has dtype bool"),
        ({"x_train": np.zeros((20, 4)), "y_train": np.arange(20) % 2, "x_test": np.zeros((5, 4)),
          "y_test": np.arange(5.0)}, "y_test has dtype float64"),
        ({"x": np.zeros((20, 4)), "y": np.full(20, 3)},
         "every example has the label 3; a classifier needs two classes or more"),
        ({"x": np.zeros((20, 2, 2, 2)), "y": np.zeros(20, int)}, "(N, channels, length)"),
        ({"x": np.zeros((20, 4)), "y": -np.ones(20, int)}, "negative class labels"),
        ({"x": np.array([object()] * 20), "y": np.zeros(20, int)}, "without pickled objects"),
    ],
)  # fmt: skip
def test_npz_refusals_name_data_path(tmp_path, arrays, expect):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # (object arrays are pickled into the file: refused on read)
    with pytest.raises(ConfigError) as e:
        NpzDataModule(str(path))
    assert "data.path = " in str(e.value) and expect in str(e.value)


def test_a_file_that_is_no_npz_is_named_as_such(tmp_path):
    """A text file, or one array saved with np.save, under data.path: "not a .npz file",
    not numpy's "contains pickled data", which any non-zip file gives with pickles off."""
    (tmp_path / "notes.txt").write_text("hello\n")
    np.save(tmp_path / "one.npy", np.zeros(3))
    for name, kind in (("notes.txt", "not a zip"), ("one.npy", "a single .npy array")):
        with pytest.raises(ConfigError) as e:
            NpzDataModule(str(tmp_path / name))
        assert f"not a .npz file ({kind}; np.savez writes one" in str(e.value)
        assert "pickled" not in str(e.value)
    # a zip that holds no arrays: named as numpy reads it
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("readme.txt", "no arrays here")
    with pytest.raises(ConfigError, match=r"arrays \[.readme.txt.\]; expected x and y"):
        NpzDataModule(str(tmp_path / "z.npz"))


def test_npz_missing_file_and_too_few_classes(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        NpzDataModule(str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 4)), y=np.arange(20) % 4)
    with pytest.raises(ConfigError, match=r"data.num_classes = 3: the labels go up to 3"):
        NpzDataModule(str(tmp_path / "d.npz"), num_classes=3)


class _NoSpec(L.LightningDataModule):
    num_classes = 0


class _BadSpec(L.LightningDataModule):
    num_classes = 3
    input_spec = {"task": "regression", "kind": "image", "length": 0, "channels": 1}


def test_datamodule_contract_names_what_is_missing():
    p = datamodule_problems(object(), "pkg.Thing")
    assert p and "not a lightning.LightningDataModule" in p[0]
    text = "\n".join(datamodule_problems(_NoSpec(), "pkg.NoSpec"))
    assert "no input_spec mapping after its __init__" in text and "not in setup()" in text
    assert "num_classes = 0" in text
    text = "\n".join(datamodule_problems(_BadSpec(), "pkg.BadSpec"))
    assert "input_spec['task'] = 'regression'" in text and "classification, next_token" in text
    assert "input_spec lacks vocab_size" in text


class _TrainValOnly(L.LightningDataModule):
    num_classes = 3
    input_spec = {"task": "classification", "kind": "real", "length": 4, "channels": 1,
                  "vocab_size": 0}  # fmt: skip

    def train_dataloader(self):
        return []

    def val_dataloader(self):
        return []


def test_the_loaders_a_run_calls_are_found_before_it_trains():
    """A datamodule without test_dataloader would fail only after training (Lightning's
    default raises): refused up front unless test=false; validation is always needed."""
    (p,) = datamodule_problems(_TrainValOnly(), "pkg.D")
    assert "data._target_ = 'pkg.D': no test_dataloader" in p and "(or set test=false)" in p
    assert datamodule_problems(_TrainValOnly(), "pkg.D", test=False) == []

    class TrainOnly(_TrainValOnly):
        val_dataloader = L.LightningDataModule.val_dataloader

    (p,) = datamodule_problems(TrainOnly(), "pkg.D", test=False)
    assert "no val_dataloader:" in p and "test=false" not in p
    assert "no val_dataloader, test_dataloader" in datamodule_problems(TrainOnly(), "pkg.D")[0]


def test_output_check_shapes_and_labels():
    x, y = torch.zeros(4, 10), torch.tensor([0, 1, 2, 1])
    assert output_problems(x, torch.zeros(4, 3), y, "classification", 3, "m.M") == []
    (p,) = output_problems(x, torch.zeros(4, 5), y, "classification", 3, "m.M")
    assert "shape (4, 5)" in p and "(batch, num_classes) = (4, 3)" in p
    (p,) = output_problems(x, torch.zeros(4, 3), y + 1, "classification", 3, "m.M")
    assert "labels range over [1, 3]" in p
    # the range is a host read: skipped when asked (training steps)
    assert output_problems(x, torch.zeros(4, 3), y + 1, "classification", 3, "m", False) == []
    t = torch.zeros(2, 8, dtype=torch.long)
    assert output_problems(t, torch.zeros(2, 8, 65), t, "next_token", 65, "m.G") == []
    (p,) = output_problems(t, torch.zeros(2, 65), t, "next_token", 65, "m.G")
    assert "(batch, length, num_classes) = (2, 8, 65)" in p


def test_labels_must_be_integers_of_any_integer_dtype():
    x, logits = torch.zeros(4, 10), torch.zeros(4, 3)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        y = torch.tensor([0, 1, 2, 1], dtype=dtype)
        assert output_problems(x, logits, y, "classification", 3, "m.M") == []
    for dtype in (torch.float32, torch.bool):
        (p,) = output_problems(x, logits, torch.ones(4, dtype=dtype), "classification", 3, "m")
        assert p.startswith(f"data: labels of dtype {str(dtype)[6:]}; ") and "integer" in p


def test_output_that_is_not_a_tensor_is_named():
    x, y = torch.zeros(4, 10), torch.tensor([0, 1, 2, 1])
    (p,) = output_problems(x, (torch.zeros(4, 3), None), y, "classification", 3, "m.M")
    assert "forward returned a tuple of 2 (Tensor, NoneType), not a tensor of logits" in p
    assert "(batch, num_classes)" in p and p.startswith("model._target_ = 'm.M'")
    (p,) = output_problems(x, {"logits": torch.zeros(4, 3)}, y, "next_token", 3, "m.M")
    assert "a dict with keys ['logits']" in p and "(batch, length, num_classes)" in p


@pytest.mark.parametrize(
    "batch,says",
    [
        ({"x": torch.zeros(2), "y": torch.zeros(2)}, "a dict with keys ['x', 'y']"),
        ((torch.zeros(2), torch.zeros(2), torch.zeros(2)), "a tuple of 3 (Tensor, Tensor, Tensor)"),
        ([torch.zeros(2), "label"], "a list of 2 (Tensor, str)"),
        (torch.zeros(2, 3), "a tensor of shape (2, 3)"),
    ],
)
def test_a_batch_that_is_not_x_y_is_named(batch, says):
    (p,) = batch_problems(batch, "pkg.Data")
    assert p.startswith(f"data._target_ = 'pkg.Data': its loaders yield {says};")
    assert "(x, y) batches of two tensors" in p
    assert batch_problems((torch.zeros(2), torch.zeros(2)), "pkg.Data") == []
    assert batch_problems([torch.zeros(2), torch.zeros(2)], "pkg.Data") == []


def test_real_inputs_in_another_dtype_than_the_model_are_named():
    x64, y = torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    (p,) = batch_problems((x64, y), "pkg.Data", torch.float32)
    assert "inputs of dtype float64 for a model in float32" in p
    assert "torch.from_numpy(a).to(torch.float32)" in p and "trainer.precision=64-true" in p
    (p,) = batch_problems((x64.half(), y), "pkg.Data", torch.float32)
    assert "dtype float16 for a model in float32" in p and "64-true" not in p
    assert batch_problems((x64, y), "pkg.Data", torch.float64) == []
    assert batch_problems((x64.float(), y), "pkg.Data", torch.float32) == []
    tokens = torch.zeros(2, 5, dtype=torch.long)  # token ids: no dtype to match
    assert batch_problems((tokens, y), "pkg.Data", torch.float32) == []


def test_unused_trainable_parameters_refused_under_plain_ddp_else_named_once():
    lin = torch.nn.Linear
    net = torch.nn.ModuleDict({"used": lin(3, 2), "frozen": lin(3, 3), "idle": lin(2, 2)})
    net["frozen"].requires_grad_(False)  # frozen and unused: not a problem
    net["used"](net["frozen"](torch.ones(1, 3))).sum().backward()
    assert check_unused_parameters(net["used"].named_parameters(), "m.M", "ddp") is None
    warning = check_unused_parameters(net.named_parameters(), "m.M", None)
    assert warning is not None and "2 trainable parameters got no gradient" in warning
    assert "(idle.weight, idle.bias)" in warning and "frozen" not in warning
    with pytest.raises(ConfigError) as e:
        check_unused_parameters(net.named_parameters(), "m.M", "ddp")
    assert str(e.value).startswith(FIRST_BATCH + ":")
    assert "trainer.strategy = 'ddp' needs every trainable parameter in the loss" in str(e.value)
    assert "trainer.strategy=ddp_find_unused_parameters_true" in str(e.value)
    with pytest.raises(ConfigError) as e:  # FSDP: no find_unused way out
        check_unused_parameters(net.named_parameters(), "m.M", None, "fsdp")
    assert "under trainer.strategy = 'fsdp' their optimizer state is never created" in str(e.value)
    assert "find_unused" not in str(e.value) and "freeze them" in str(e.value)


class NoSpecModel(torch.nn.Module):  # a model that does not take what stablelab passes
    def __init__(self, width: int = 3) -> None:
        super().__init__()


def test_a_model_without_input_spec_is_refused_by_the_config_check(tmp_path):
    from omegaconf import OmegaConf

    from conftest import compose_cfg

    cfg = compose_cfg([], tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.model = {"_target_": f"{__name__}.NoSpecModel"}
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "must accept the keyword arguments input_spec and num_classes" in str(e.value)


class TakesWidth(torch.nn.Module):
    def __init__(self, input_spec, num_classes, width: int = 3) -> None:
        super().__init__()


class AllFrozen(torch.nn.Module):
    def __init__(self, input_spec, num_classes) -> None:
        super().__init__()
        self.head = torch.nn.Linear(input_spec["length"], num_classes).requires_grad_(False)

    def forward(self, x):
        return self.head(x)


def test_a_model_with_nothing_to_train_is_refused_when_built(tmp_path):
    """Every parameter frozen: the first backward would fail with "element 0 of tensors
    does not require grad"; refused when the module is built, naming the key."""
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from stablelab.module import StableModule

    cfg = compose_cfg([], tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.model = {"_target_": f"{__name__}.AllFrozen"}
    plain = validate(cfg)
    spec = {"kind": "real", "length": 8, "channels": 1, "vocab_size": 0}
    with pytest.raises(ConfigError, match=r"AllFrozen': no trainable parameter \(none, or all"):
        StableModule(plain, spec, num_classes=3)
    plain["model"]["_target_"] = f"{__name__}.TakesWidth"  # no parameters at all
    with pytest.raises(ConfigError, match="TakesWidth': no trainable parameter"):
        StableModule(plain, spec, num_classes=3)


def test_keys_of_a_stablelab_model_left_on_your_own_are_named_with_the_way_out(tmp_path):
    """experiment=shakespeare_char_cpu chooses model=gpt and sets n_layer, n_head, ...;
    swapping in a class of your own by its _target_ keeps them. The refusal names each key
    and, once, where they come from and the overrides that drop them."""
    from omegaconf import OmegaConf

    from conftest import ROOT, compose_cfg

    cfg = compose_cfg(["experiment=shakespeare_char_cpu"], tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.model._target_ = f"{__name__}.TakesWidth"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    gpt_keys = [k for k in OmegaConf.load(ROOT / "configs/model/gpt.yaml") if k != "_target_"]
    set_by_experiment = [k for k in cfg.model if k in gpt_keys]
    assert len(set_by_experiment) > 5
    *each, hint = e.value.problems
    assert each == [
        f"model.{k}: unknown key for {__name__}.TakesWidth; allowed keys: width"
        for k in set_by_experiment
    ]
    assert hint.startswith(f"model: {', '.join(set_by_experiment)} are settings of ")
    assert "stablelab's model=gpt (kept when only model._target_ changes" in hint
    assert " ".join(f"~model.{k}" for k in set_by_experiment) in hint
    # one stray key (mlp's too, but more likely a slip of your own): no such line
    cfg.model = {"_target_": f"{__name__}.TakesWidth", "width": 4, "depth": 2}
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert len(e.value.problems) == 1 and "model.depth: unknown key" in e.value.problems[0]


@pytest.mark.parametrize(
    "summary,metric,expect",
    [
        ({"feasible": True, "val_loss": 0.25}, "val_loss", 0.25),
        ({"feasible": False, "val_loss": 0.25}, "val_loss", math.inf),  # diverged
        ({"feasible": True, "val_loss": None}, "val_loss", math.inf),
        ({"feasible": True, "val_loss": math.nan}, "val_loss", math.inf),
        ({"feasible": True, "val_acc": 0.9}, "val_acc", 0.9),
        ({"feasible": False, "val_acc": 0.9}, "val_acc", -math.inf),  # maximised: worst
        ({"feasible": True, "final_train_loss": 1.5}, "final_train_loss", 1.5),
    ],
)
def test_objective_returns_the_worst_value_for_infeasible_trials(summary, metric, expect):
    assert objective(summary, metric) == expect
