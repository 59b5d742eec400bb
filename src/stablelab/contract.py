"""What your own model and datamodule must expose to run under stablelab.

The contract, stated once (README: "Your own model and data"):

**Datamodule** (the ``data`` group's ``_target_``): a ``lightning.LightningDataModule``
whose loaders yield ``(x, y)`` batches, with two attributes set by the end of its
``__init__``:

* ``input_spec``: a mapping with ``task`` (``"classification"`` or ``"next_token"``;
  default classification), ``kind`` (``"real"``: float inputs, or ``"tokens"``: integer
  ids), ``length`` (sequence length, or features), ``channels`` (>= 1) and ``vocab_size``
  (the token vocabulary; 0 for real inputs). Models read what they need from it.
* ``num_classes``: the number of output classes (next token: the vocabulary size).
* optionally ``exact_resume = True``: its training order is a pure function of (seed,
  step) and restores mid-epoch from a checkpoint (Lightning's stateful-loader protocol, as
  :class:`~stablelab.data.InMemoryLoader`), so a resumed run sees exactly the batches an
  uninterrupted one would. Without it a resume warns, and ``summary.json`` says
  ``resumed_from.exact: false``.

**Model** (the ``model`` group's ``_target_``): a ``torch.nn.Module`` whose constructor
takes the keyword arguments ``input_spec`` and ``num_classes`` (stablelab passes them; the
config sets the rest) and whose ``forward(x)`` returns logits: ``(batch, num_classes)`` for
classification, ``(batch, length, num_classes)`` for next-token prediction (then the class
also sets ``next_token = True``). Everything else (the loss, metrics, optimizer, schedule,
clipping, telemetry, the stability guard, dense evaluation, checkpoints, DDP / FSDP, W&B)
comes from stablelab and needs nothing more of the model.

The checks here run when the run is built (the datamodule and model classes) and on the
first batch the model sees (the shapes of its output and of the labels), each problem a
:class:`~stablelab.constraints.ConfigError` line naming the config key.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeGuard

from stablelab.constraints import ConfigError

TASKS = ("classification", "next_token")
KINDS = ("real", "tokens")
SPEC_KEYS = ("kind", "length", "channels", "vocab_size")
SEE = "see README 'Your own model and data'"
# the headline of a problem found on the first batch: the run had started, nothing trained
FIRST_BATCH = "Invalid model or data (found on the first batch, before any update)"
LOADERS = "Invalid data (found when its loaders were built, before any update)"


def _int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def model_signature_problems(fn: Any, target: str) -> list[str]:
    """The model class must take ``input_spec`` and ``num_classes`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    missing = [k for k in ("input_spec", "num_classes") if k not in params]
    if not missing:
        return []
    return [
        f"model._target_ = {target!r}: its constructor must accept the keyword arguments "
        f"input_spec and num_classes (missing: {', '.join(missing)}); stablelab passes "
        f"them from the data at build time ({SEE})"
    ]


def datamodule_problems(dm: Any, target: str, test: bool = True) -> list[str]:
    """``dm`` (built from ``data._target_``) against the datamodule contract."""
    import lightning as L

    where = f"data._target_ = {target!r}"
    if not isinstance(dm, L.LightningDataModule):
        return [
            f"{where}: built a {type(dm).__name__}, not a lightning.LightningDataModule ({SEE})"
        ]
    problems = []
    spec = getattr(dm, "input_spec", None)
    if not isinstance(spec, Mapping):
        problems.append(
            f"{where}: the datamodule has no input_spec mapping after its __init__ (keys "
            f"task, {', '.join(SPEC_KEYS)}; set it there, not in setup(): the model is built "
            f"from it before Lightning calls setup; {SEE})"
        )
    else:
        task = spec.get("task", "classification")
        if task not in TASKS:
            problems.append(f"{where}: input_spec['task'] = {task!r}; allowed: {', '.join(TASKS)}")
        missing = [k for k in SPEC_KEYS if k not in spec]
        if missing:
            problems.append(f"{where}: input_spec lacks {', '.join(missing)} ({SEE})")
        else:
            if spec["kind"] not in KINDS:
                problems.append(
                    f"{where}: input_spec['kind'] = {spec['kind']!r}; allowed: {', '.join(KINDS)}"
                )
            for k, low in (("length", 1), ("channels", 1), ("vocab_size", 0)):
                if not _int(spec[k]) or spec[k] < low:
                    problems.append(
                        f"{where}: input_spec[{k!r}] = {spec[k]!r}; an integer >= {low}"
                    )
            if spec["kind"] == "tokens" and _int(spec["vocab_size"]) and spec["vocab_size"] < 1:
                problems.append(f"{where}: input_spec['vocab_size'] must be >= 1 for tokens")
    n = getattr(dm, "num_classes", None)
    if not _int(n) or n < 1:
        problems.append(f"{where}: num_classes = {n!r}; the datamodule must set an integer >= 1")
    return problems + loader_problems(dm, where, test)


def loader_problems(dm: Any, where: str, test: bool = True) -> list[str]:
    """The loaders a run calls, found before it trains: training and validation always
    (the best checkpoint, dense evaluation and the stability reading come from validation),
    test when ``test`` is on (else a run would fail only at its end, after training)."""
    import lightning as L

    needed = ["train_dataloader", "val_dataloader"] + (["test_dataloader"] if test else [])
    missing = [
        name
        for name in needed
        if not callable(getattr(dm, name, None))
        or getattr(type(dm), name, None) is getattr(L.LightningDataModule, name)
    ]
    if not missing:
        return []
    hint = " (or set test=false)" if missing == ["test_dataloader"] else ""
    them = "them" if len(missing) > 1 else "it"
    return [
        f"{where}: no {', '.join(missing)}: stablelab trains, validates"
        f"{' and tests' if test else ''} with them; implement {them}{hint} ({SEE})"
    ]


def empty_validation_problems(dm: Any, target: str) -> list[str]:
    """After the datamodule's ``setup("fit")``: a validation loader with no batches (an empty
    split) gives no best checkpoint, no dense evaluation and no stability reading, and the
    dense evaluation would divide by zero examples. Loaders without a length are not
    checked (an iterable dataset's length is not known before it runs)."""
    try:
        n = len(dm.val_dataloader())
    except TypeError:
        return []
    if n:
        return []
    return [
        f"data._target_ = {target!r}: its val_dataloader gives no batches (an empty "
        "validation split); stablelab needs validation examples (the best checkpoint, dense "
        f"evaluation, the stability reading) ({SEE})"
    ]


def _describe(obj: Any) -> str:
    """A short description of what a loader or a model handed over, for an error line."""
    import torch

    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with keys {sorted(map(str, obj))[:6]}"
    if isinstance(obj, list | tuple):
        kinds = ", ".join(type(v).__name__ for v in obj[:4]) + (", ..." if len(obj) > 4 else "")
        return f"a {type(obj).__name__} of {len(obj)} ({kinds})"
    return f"a {type(obj).__name__}"


def batch_problems(batch: Any, target: str, param_dtype: Any = None) -> list[str]:
    """A batch must be ``(x, y)``: two tensors; real-valued inputs in the dtype of the
    model's parameters (``param_dtype``, as the batch reaches the step: Lightning has cast
    it already under 16-bit, bf16 and 64-bit precision)."""
    import torch

    pair = isinstance(batch, list | tuple) and len(batch) == 2
    if not (pair and all(isinstance(v, torch.Tensor) for v in batch)):
        return [
            f"data._target_ = {target!r}: its loaders yield {_describe(batch)}; stablelab "
            f"needs (x, y) batches of two tensors ({SEE})"
        ]
    x = batch[0]
    if param_dtype is not None and x.is_floating_point() and x.dtype != param_dtype:
        name, want = (str(d).removeprefix("torch.") for d in (x.dtype, param_dtype))
        return [
            f"data._target_ = {target!r}: its loaders yield inputs of dtype {name} for a "
            f"model in {want}: yield {want} inputs (a float64 numpy array: "
            f"torch.from_numpy(a).to(torch.{want}))"
            + (", or train in float64 with trainer.precision=64-true" if name == "float64" else "")
        ]
    return []


def check_batch(batch: Any, target: str, param_dtype: Any = None) -> None:
    problems = batch_problems(batch, target, param_dtype)
    if problems:
        raise ConfigError(problems, headline=FIRST_BATCH)


def output_problems(
    x: Any, logits: Any, y: Any, task: str, num_classes: int, target: str, labels: bool = True
) -> list[str]:
    """The model's output and the labels of one batch against the task's shapes; with
    ``labels``, also the labels' range (one device-to-host read: not in a training step)."""
    import torch

    where = f"model._target_ = {target!r}"
    if not isinstance(logits, torch.Tensor):
        form = "(batch, length, num_classes)" if task == "next_token" else "(batch, num_classes)"
        return [
            f"{where}: forward returned {_describe(logits)}, not a tensor of logits; return the "
            f"logits alone, {form} (a model that returns more can be wrapped in a module whose "
            f"forward picks them) ({SEE})"
        ]
    shape, xs, ys = tuple(logits.shape), tuple(x.shape), tuple(y.shape)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return [
            f"data: labels of dtype {str(y.dtype).removeprefix('torch.')}; classification and "
            "next-token prediction need integer class indices (any integer dtype)"
        ]
    if task == "next_token":
        want = (*ys, num_classes)
        if shape != want:
            return [
                f"{where}: forward returned logits of shape {shape} for labels of shape {ys}; "
                f"next-token prediction needs (batch, length, num_classes) = {want} ({SEE})"
            ]
    else:
        want = (xs[0], num_classes)
        if shape != want:
            return [
                f"{where}: forward returned logits of shape {shape} for a batch of {xs[0]}; "
                f"classification needs (batch, num_classes) = {want} ({SEE})"
            ]
        if ys != (xs[0],):
            return [f"data: labels of shape {ys}; classification needs one label per example"]
    if labels and y.numel():
        lo, hi = int(y.min()), int(y.max())  # once per run: the first batch
        if lo < 0 or hi >= num_classes:
            return [
                f"data: labels range over [{lo}, {hi}], outside [0, num_classes - 1 = "
                f"{num_classes - 1}]: set num_classes to the number of classes"
            ]
    return []


def check_output(
    x: Any, logits: Any, y: Any, task: str, num_classes: int, target: str, labels: bool = True
) -> None:
    problems = output_problems(x, logits, y, task, num_classes, target, labels)
    if problems:
        raise ConfigError(problems, headline=FIRST_BATCH)


def check_unused_parameters(
    named_params: Any, target: str, ddp: str | None, sharded: str | None = None
) -> str | None:
    """After the first backward: the trainable parameters whose gradient is still None.
    Under DDP without ``find_unused_parameters`` (``ddp``: the ``trainer.strategy`` value)
    or under FSDP (``sharded``: its name) a ConfigError naming them and what to do;
    otherwise the warning to log (None: every trainable parameter got a gradient). Reads
    Python attributes only: no device sync."""
    unused = [n for n, p in named_params if p.requires_grad and p.grad is None]
    if not unused:
        return None
    names = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
    what = (
        f"model._target_ = {target!r}: {len(unused)} trainable parameter"
        f"{'s' if len(unused) > 1 else ''} got no gradient in the first step ({names})"
    )
    if sharded is not None:  # the run would train, then fail to restore its checkpoint
        raise ConfigError(
            [
                f"{what}; under trainer.strategy = {sharded!r} their optimizer state is "
                "never created, and the sharded checkpoint of the run could not be restored "
                "(for the test, a resume): freeze them (requires_grad_(False)) or remove "
                f"them ({SEE})"
            ],
            headline=FIRST_BATCH,
        )
    if ddp is not None:
        raise ConfigError(
            [
                f"{what}; trainer.strategy = {ddp!r} needs every trainable parameter in the "
                "loss: freeze them (requires_grad_(False)), remove them, or set "
                "trainer.strategy=ddp_find_unused_parameters_true (slower: DDP then walks "
                f"the graph every step) ({SEE})"
            ],
            headline=FIRST_BATCH,
        )
    return (
        f"{what}: they are not trained; under trainer=ddp they would stop the run (freeze "
        "them with requires_grad_(False), or trainer.strategy=ddp_find_unused_parameters_true)"
    )
