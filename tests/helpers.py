"""Test-only Lightning callbacks (importable as ``helpers.X`` from configs in tests)."""

from __future__ import annotations

import lightning as L
import torch


class RaiseAtStep(L.Callback):
    """Raise RuntimeError when training reaches ``step`` (simulates a crash mid-run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"boom at step {trainer.global_step}")


def _f64_norm(pl_module) -> float:
    grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
    return sum(float(g.double().square().sum()) for g in grads) ** 0.5


class GradNormReference(L.Callback):
    """Independent reference: the float64 global L2 norm of every parameter's .grad, read
    in on_before_optimizer_step (Lightning runs it after unscaling/accumulation/all-reduce
    and before configure_gradient_clipping), and again after the optimizer step (the
    clipped gradient). Written to <run dir>/ref_norms.json (rank 0) and
    ref_norms_rank<r>.json (every rank) at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []
        self.after: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rows.append((trainer.global_step, _f64_norm(pl_module)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(_f64_norm(pl_module))  # grads stay until the next zero_grad

    def on_train_end(self, trainer, pl_module) -> None:
        import json
        from pathlib import Path

        rank = trainer.global_rank
        data = json.dumps({"unclipped": self.rows, "clipped": self.after})
        Path(trainer.default_root_dir, f"ref_norms_rank{rank}.json").write_text(data)
        if rank == 0:
            Path(trainer.default_root_dir, "ref_norms.json").write_text(json.dumps(self.rows))


SYNC_EVENTS: list[tuple[int, str]] = []
_COUNTING = {"on": False, "step": -1}


def install_sync_counter(monkeypatch) -> None:
    """Count Tensor methods that wait on the host when a stablelab frame is on the stack,
    while SyncCounter says a training batch is running."""
    import sys

    import torch

    for name in ["item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "nonzero"]:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            if _COUNTING["on"]:
                f = sys._getframe(1)
                while f is not None:
                    if "/stablelab/" in f.f_code.co_filename.replace("\\", "/"):
                        SYNC_EVENTS.append((_COUNTING["step"], f"{f.f_code.co_name}:{_name}"))
                        break
                    f = f.f_back
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)


class SyncCounter(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _COUNTING.update(on=True, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _COUNTING["on"] = False


class NaNAtStep(L.Callback):
    """Poison the first parameter with NaN just before update ``step`` is computed: the
    loss of that step is NaN (a crafted divergence at a known step). With ``rank``, only on
    that DDP rank."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        mine = self.rank is None or trainer.global_rank == self.rank
        if trainer.global_step == self.step and mine:
            import torch

            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class UpdateRatioReference(L.Callback):
    """Independent reference for the update-to-weight ratio: float64 copies of every
    parameter at the start and the end of each batch (not at the optimizer hooks), their
    difference's norm over the start's norm. Written to <run dir>/ref_update_ratios.json."""

    def __init__(self) -> None:
        self.before: dict[str, object] = {}
        self.rows: dict[int, dict[str, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step
        self.before = {n: p.detach().double().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        out = {}
        for n, p in pl_module.named_parameters():
            b = self.before[n]
            den = float(b.norm())
            num = float((p.detach().double() - b).norm())
            out[n.removeprefix("model.")] = num / den if den else float("inf")
        self.rows[self.step] = out

    def on_train_end(self, trainer, pl_module) -> None:
        import json
        from pathlib import Path

        Path(trainer.default_root_dir, "ref_update_ratios.json").write_text(json.dumps(self.rows))


class ScaleWeightsAtStep(L.Callback):
    """Multiply every weight matrix of the classifier head by ``factor`` just before update
    ``step`` is computed: a one-off loss spike at a known step, mid-run."""

    def __init__(self, step: int, factor: float) -> None:
        self.step = step
        self.factor = factor

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import torch

            with torch.no_grad():
                for p in pl_module.model.head.parameters():
                    p.mul_(self.factor)


def float64_reference(run_dir, split: str, n: int | None = None) -> tuple[float, float, int]:
    """Independent evaluation of a run's ``last.ckpt``: loss and accuracy of its weights in
    float64, in one process, on the first ``n`` examples of ``split`` (all when None), and
    the size of the whole split."""
    import torch
    from hydra.utils import instantiate

    from stablelab.module import StableModule

    module = StableModule.load_from_checkpoint(
        f"{run_dir}/checkpoints/last.ckpt", weights_only=True
    ).double()
    module.eval()
    dm = instantiate(module.cfg["data"])
    dm.setup()
    x, y = dm._tensors[split]
    size = len(y)
    x, y = x[:n], y[:n]
    with torch.no_grad():
        logits = module(x.double())
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(-1) == y).double().mean().item(), size


class KillAtStep(L.Callback):
    """Send ``signal`` (default SIGKILL: no handler, no cleanup, as a crash or an OOM
    kill) to this process when training reaches ``step``: at the start of that step's
    batch, or, with ``during_validation``, in the middle of the validation run at that
    step. With ``rank``, only that DDP rank. With ``once`` (a file path), only while that
    file does not exist (it is created first): the run resumed with the same config (the
    README's way) is not stopped again."""

    def __init__(
        self,
        step: int,
        signal: int = 9,
        during_validation: bool = False,
        rank: int | None = None,
        once: str | None = None,
    ) -> None:
        self.step, self.signal, self.during_validation, self.rank, self.once = (
            step, signal, during_validation, rank, once,
        )  # fmt: skip
        self.sent = False

    def _fire(self, trainer) -> None:
        import os
        from pathlib import Path

        if self.sent or (self.rank is not None and trainer.global_rank != self.rank):
            return
        if self.once is not None and Path(self.once).exists():
            return
        if trainer.global_step >= self.step:
            self.sent = True
            if self.once is not None:
                Path(self.once).touch()
            os.kill(os.getpid(), self.signal)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.during_validation:
            self._fire(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        if self.during_validation and not trainer.sanity_checking:
            self._fire(trainer)


class WrongOutputMLP:
    """A "model" whose forward returns one logit too many (the contract check must say so)."""

    def __new__(cls, input_spec, num_classes, **kwargs):
        from stablelab.models import MLP

        return MLP(input_spec=input_spec, num_classes=num_classes + 1, **kwargs)


class IdleParameterMLP:
    """stablelab's MLP with one more trainable Linear that forward never uses (a head left
    over from pre-training, say): under plain DDP it must be refused on the first step."""

    def __new__(cls, input_spec, num_classes, **kwargs):
        from torch import nn

        from stablelab.models import MLP

        model = MLP(input_spec=input_spec, num_classes=num_classes, **kwargs)
        model.idle_head = nn.Linear(4, 2)
        return model


class GRULanguageModel(torch.nn.Module):
    """A next-token model of your own with no stablelab layer in it: an embedding, a GRU
    and a linear head, returning (batch, length, vocab) logits."""

    next_token = True

    def __init__(self, input_spec, num_classes, width: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(input_spec["vocab_size"], width)
        self.rnn = torch.nn.GRU(width, width, batch_first=True)
        self.head = torch.nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0])


class PlainCharWindows(L.LightningDataModule):
    """Tiny Shakespeare's windows (stablelab's split) served by plain torch DataLoaders of
    8 windows a batch: a datamodule of your own, with no ``tensors`` to peek at."""

    def __init__(self, block_size: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        from stablelab.data import CharTextDataModule

        self.chars = CharTextDataModule(block_size=block_size)
        self.input_spec = dict(self.chars.input_spec)
        self.num_classes = self.chars.num_classes
        self.batch_size = batch_size

    def _loader(self, split: str, shuffle: bool = False):
        from torch.utils.data import DataLoader, TensorDataset

        self.chars.setup()
        x, y = self.chars._tensors["val" if split == "train" else split]  # (few steps)
        return DataLoader(
            TensorDataset(x[:64], y[:64]), batch_size=self.batch_size, shuffle=shuffle
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


class EmptyValidationWindows(PlainCharWindows):
    """PlainCharWindows whose validation split is empty (a filter that kept nothing)."""

    def val_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        empty = torch.zeros(0, self.chars.block_size, dtype=torch.long)
        return DataLoader(TensorDataset(empty, empty), batch_size=self.batch_size)


class SpikeAtStep(L.Callback):
    """At update ``step`` (global_step before it), multiply the model's output by
    ``factor``: a crafted loss and gradient-norm spike. Keeps copies of the parameters and
    optimizer state from just before that update and just after it."""

    def __init__(self, step: int, factor: float = 50.0) -> None:
        self.step, self.factor = step, factor
        self.before: dict | None = None
        self.after: dict | None = None
        self._hook = None

    @staticmethod
    def _copy(pl_module, trainer) -> dict:
        opt = trainer.optimizers[0]
        state = {
            (i, k): (v.clone() if isinstance(v, torch.Tensor) else v)
            for i, p in enumerate(pl_module.parameters())
            for k, v in opt.state.get(p, {}).items()
        }
        params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        return {"params": params, "state": state}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.before = self._copy(pl_module, trainer)
            self._hook = pl_module.model.register_forward_hook(lambda m, a, out: out * self.factor)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            self.after = self._copy(pl_module, trainer)


class DivergeAt(L.Callback):
    """From update ``step`` on (global_step before it), for ``times`` batches in all,
    multiply the model's output by ``factor`` (negative: the likeliest class becomes the
    least likely): a crafted divergence (the loss far above
    10x the first step's). ``times=1``: transient, gone after a rollback; a large ``times``:
    it comes back."""

    def __init__(self, step: int, factor: float = -100.0, times: int = 1) -> None:
        self.step, self.factor, self.left = step, factor, times
        self._hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and self.left > 0:
            self.left -= 1
            self._hook = pl_module.model.register_forward_hook(lambda m, a, out: out * self.factor)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_batch_end(trainer, pl_module, None, None, 0)


class OverflowScaler(L.Callback):
    """Under a float16 GradScaler: before each of ``steps`` set the loss scale so high
    that the float16 backward overflows (as the scaler's own periodic growth makes a long
    real run do), with a back-off that returns it to ``scale_after`` in one step. Records,
    independently of stablelab, the steps whose update the scaler skipped (its scale fell)
    in ``skipped`` and whether the weights were left as they were (``unchanged``)."""

    def __init__(self, steps=(), scale_after: float = 1024.0) -> None:
        self.steps = {int(s) for s in steps}
        self.scale_after = scale_after
        self.skipped: list[int] = []
        self.unchanged: list[bool] = []
        self._before: tuple[int, float, list[torch.Tensor]] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        scaler = trainer.precision_plugin.scaler
        step = int(trainer.global_step)
        if step in self.steps:
            scaler.update(1e30)  # the next backward overflows float16
            scaler._backoff_factor = self.scale_after / 1e30
        params = [p.detach().clone() for p in pl_module.parameters()]
        self._before = (step, scaler.get_scale(), params)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        scaler = trainer.precision_plugin.scaler
        assert self._before is not None
        step, scale, params = self._before
        scaler._backoff_factor = 0.5
        if scaler.get_scale() < scale:
            self.skipped.append(step)
            now = list(pl_module.parameters())
            self.unchanged.append(all(torch.equal(a, b) for a, b in zip(params, now, strict=True)))
