"""The curvature and noise instruments (:mod:`stablelab.curvature`), off by default.

``callbacks.sharpness``: the top Hessian eigenvalue of the training loss on a fixed probe
batch every N updates, against the rule's stability threshold (Cohen et al. 2021, 2022).

What is measured (:mod:`stablelab.curvature`): the sharpness, and for the adaptive rules
(Adam, NAdam, RMSProp) the preconditioned sharpness, the top eigenvalue of P^-1 H with the
rule's current preconditioner, each by ``iterations`` Lanczos steps on Hessian-vector
products. The probe batch is the first ``probe_examples`` training examples of a fresh
training loader, taken once and kept on the device; the objective is the training one
(cross-entropy plus z-loss when set) in the model's training mode, under a forked random
generator (a dropout mask fixed for the measurement, the training run's generator
untouched) with normalisation statistics restored afterwards, so a run with the
instrument trains exactly as one without it.

Off by default (``every_n_steps: null``). A measurement costs one forward and backward
with a retained graph and ``iterations`` (x2 with ``preconditioned``) double backwards, and
one host read; it runs on rank 0 only (the other ranks go on; nothing here is a
collective). Rows go to ``sharpness.csv``, the loggers (``curvature/...``), ``sharpness.png``
(the measurements against the threshold over the run) and ``summary.json``.

``callbacks.noise_scale``: the gradient noise scale B_simple (McCandlish et al. 2018) every
N updates, from the batch just trained on: split into ``pieces`` equal pieces on each
process, the squared gradient norm of a piece (batch b) and of the whole global batch
(b x pieces x processes; under DDP the mean of the ranks' gradients, one all-reduce),
both turned into |G|^2 and tr(Sigma) and smoothed separately (EMA ``ema``) before
dividing. Reported beside the global batch size: a batch well below B_simple wastes steps,
well above it wastes examples (the playbook's batch-size question).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated, Any

import torch

from stablelab.callbacks.base import CsvRows, TelemetryCallback
from stablelab.constraints import PosInt, Range

FIELDS = ["step", "lr", "sharpness", "threshold", "precond_sharpness", "precond_threshold"]
NOISE_FIELDS = ["step", "b_small", "b_big", "small_sq", "big_sq", "g2", "trace",
                "b_simple_raw", "b_simple"]  # fmt: skip


class SharpnessMonitor(TelemetryCallback):
    sets_interval = False  # measurements at its own interval; nothing on the device buffer

    def __init__(
        self,
        every_n_steps: PosInt | None = None,
        iterations: PosInt = 20,
        probe_examples: PosInt = 512,
        preconditioned: bool = True,
        seed: int = 0,
        plots: bool = True,
        filename: str = "sharpness.csv",
    ) -> None:
        self.every_n_steps = every_n_steps
        self.iterations = iterations
        self.probe_examples = probe_examples
        self.preconditioned = preconditioned
        self.seed = seed
        self.plots = plots
        self.csv: CsvRows = CsvRows(filename, FIELDS)
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_step = -1

    # ------------------------------------------------------------------ measuring
    def _probe_batch(self, trainer, pl_module) -> tuple[torch.Tensor, torch.Tensor]:
        if self._probe is None:
            xs, ys, n = [], [], 0
            for x, y in trainer.datamodule.train_dataloader():
                xs.append(x)
                ys.append(y)
                n += len(x)
                if n >= self.probe_examples:
                    break
            x, y = torch.cat(xs)[: self.probe_examples], torch.cat(ys)[: self.probe_examples]
            x = trainer.strategy.precision_plugin.convert_input(x)  # float64 under 64-true
            self._probe = (x.to(pl_module.device), y.to(pl_module.device))
        return self._probe

    def measure(self, trainer, pl_module) -> dict[str, Any]:
        """One row: the step, the LR of the next update, the sharpness and the
        preconditioned sharpness with their thresholds (None where none applies)."""
        from stablelab import curvature

        x, y = self._probe_batch(trainer, pl_module)
        optimizer = trainer.optimizers[0]
        lr = float(optimizer.param_groups[0]["lr"])
        params = [p for p in pl_module.parameters() if p.requires_grad]
        with _Frozen(pl_module, self.seed):
            _, objective = pl_module.loss_terms(pl_module(x), y)
            hvp = curvature.hessian_operator(objective, params)
            sharp = curvature.lanczos_top(hvp, params, self.iterations, self.seed)
            # (in the order of params: with weight decay the optimizer's two parameter
            # groups list them in another order)
            d = curvature.inverse_sqrt_preconditioner(optimizer, params)
            pre = None
            if self.preconditioned and d is not None:
                op = curvature.preconditioned_operator(hvp, d)
                pre = curvature.lanczos_top(op, params, self.iterations, self.seed)
        limits = curvature.thresholds(optimizer, lr)
        return {
            "step": int(trainer.global_step),
            "lr": lr,
            "sharpness": sharp,
            "threshold": limits["sharpness"],
            "precond_sharpness": pre,
            "precond_threshold": limits["preconditioned"] if pre is not None else None,
        }

    def _record(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        row = self.measure(trainer, pl_module)
        self.csv.add(self.dir, [row], write=True)
        metrics = {f"curvature/{k}": v for k, v in row.items() if k != "step" and v is not None}
        self.log_step(trainer, row["step"], metrics)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self.every_n_steps and trainer.global_step == 0:  # the initialisation too
            self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, every = trainer.global_step, self.every_n_steps
        if every and step != self._last_step and step % every == 0:
            self._record(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def finish(self, trainer, pl_module) -> None:
        if self.plots and self.csv.rows and trainer.is_global_zero:
            from stablelab.analysis.plots import plot_sharpness

            plot_sharpness(self.csv.rows, Path(trainer.default_root_dir) / "sharpness.png")

    # ------------------------------------------------------------------ state, summary
    def state_dict(self) -> dict[str, Any]:
        return {"csv": self.csv.state_dict(), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        self._last_step = state_dict["last_step"]

    def summary(self) -> dict[str, Any]:
        rows = self.csv.rows
        if not rows:
            return {}
        out: dict[str, Any] = {"sharpness_measurements": len(rows)}
        for key, limit, prefix in (
            ("sharpness", "threshold", "sharpness"),
            ("precond_sharpness", "precond_threshold", "precond_sharpness"),
        ):
            vals = [(r["step"], r[key], r[limit]) for r in rows if _num(r[key])]
            if not vals:
                continue
            out[f"{prefix}_first"] = vals[0][1]
            out[f"{prefix}_max"] = max(v for _, v, _ in vals)
            out[f"{prefix}_last"] = vals[-1][1]
            judged = [(s, v / t) for s, v, t in vals if _num(t) and t > 0]
            if judged:
                out[f"{prefix}_threshold_last"] = vals[-1][2]
                out[f"{prefix}_max_ratio"] = max(r for _, r in judged)
                above = [s for s, r in judged if r > 1.0]
                out[f"{prefix}_above_threshold"] = len(above)
                out[f"{prefix}_first_above_step"] = above[0] if above else None
        return out


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@contextlib.contextmanager
def _eager(module):
    """A model compiled in place (``compile=true``: ``nn.Module.compile``) run eagerly: the
    compiled backward has no double backward (its donated buffers forbid create_graph),
    which Hessian-vector products need. ``torch.compiler.set_stance("force_eager")`` where
    torch has it (>= 2.6), else the modules' compiled call set aside for the duration."""
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is not None:
        with stance("force_eager"):
            yield
        return
    compiled = [(m, m._compiled_call_impl) for m in module.modules()
                if getattr(m, "_compiled_call_impl", None) is not None]  # fmt: skip
    for m, _ in compiled:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, call in compiled:
            m._compiled_call_impl = call


class _Frozen:
    """The module in training mode with a fixed dropout mask (the training run's random
    generator untouched) and its normalisation statistics restored afterwards; attention
    through the math kernel of scaled_dot_product_attention (the fused CPU and GPU
    kernels have no double backward, which Hessian-vector products need), and a compiled
    model run eagerly (:func:`_eager`, for the same reason)."""

    def __init__(self, pl_module, seed: int) -> None:
        self.m, self.seed = pl_module, seed

    def __enter__(self):
        m = self.m
        self.saved = {n: b.detach().clone() for n, b in m.named_buffers()}
        self.was_training = m.training
        devices = [m.device] if m.device.type == "cuda" else []
        self.rng = torch.random.fork_rng(devices=devices)
        self.rng.__enter__()
        torch.manual_seed(self.seed)
        self.grad = torch.enable_grad()
        self.grad.__enter__()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self.kernel = sdpa_kernel(SDPBackend.MATH)
        self.kernel.__enter__()
        self.eager = _eager(m)
        self.eager.__enter__()
        m.train()
        return m

    def __exit__(self, *exc):
        self.eager.__exit__(*exc)
        self.kernel.__exit__(*exc)
        self.grad.__exit__(*exc)
        self.rng.__exit__(*exc)
        with torch.no_grad():
            for n, b in self.m.named_buffers():
                b.copy_(self.saved[n])
        self.m.train(self.was_training)
        return False


class NoiseScaleMonitor(TelemetryCallback):
    sets_interval = False

    def __init__(
        self,
        every_n_steps: PosInt | None = None,
        pieces: PosInt = 4,
        ema: Annotated[float, Range(ge=0, lt=1)] = 0.9,
        seed: int = 0,
        plots: bool = True,
        filename: str = "noise_scale.csv",
    ) -> None:
        self.every_n_steps = every_n_steps
        self.pieces = pieces
        self.ema = ema
        self.seed = seed
        self.plots = plots
        self.csv: CsvRows = CsvRows(filename, NOISE_FIELDS)
        self._avg: tuple[float, float] | None = None  # smoothed (|G|^2, tr Sigma)
        self._last_step = -1

    def measure(self, trainer, pl_module, batch) -> dict[str, Any]:
        from stablelab import curvature

        x, y = batch
        x = trainer.strategy.precision_plugin.convert_input(x)  # float64 under 64-true
        params = [p for p in pl_module.parameters() if p.requires_grad]

        def objective(xb, yb):
            return pl_module.loss_terms(pl_module(xb), yb)[1]

        with _Frozen(pl_module, self.seed):
            small_sq, grads, b = curvature.piece_gradient_norms(
                objective, params, x, y, self.pieces
            )
        world = trainer.world_size
        if world > 1:  # the ranks' mean gradient is the global batch's; small: their mean
            flat = torch.cat([g.reshape(-1) for g in grads] + [small_sq.reshape(1)])
            flat = trainer.strategy.reduce(flat, reduce_op="mean")
            big_sq, small_sq = flat[:-1].square().sum(), flat[-1]
        else:
            big_sq = sum(g.square().sum() for g in grads)
        small, big = float(small_sq), float(big_sq)  # the one host read
        b_big = b * self.pieces * world
        g2, trace = curvature.noise_scale_terms(small, big, b, b_big)
        a = self.ema
        self._avg = (g2, trace) if self._avg is None else (
            a * self._avg[0] + (1 - a) * g2, a * self._avg[1] + (1 - a) * trace
        )  # fmt: skip
        return {
            "step": int(trainer.global_step), "b_small": b, "b_big": b_big,
            "small_sq": small, "big_sq": big, "g2": g2, "trace": trace,
            "b_simple_raw": trace / g2 if g2 > 0 else None,
            "b_simple": self._avg[1] / self._avg[0] if self._avg[0] > 0 else None,
        }  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, every = trainer.global_step, self.every_n_steps
        if every and step != self._last_step and step % every == 0:
            self._last_step = step
            row = self.measure(trainer, pl_module, batch)  # every rank: a collective
            self.csv.add(self.dir, [row], write=trainer.is_global_zero)
            m = {f"noise/{k}": v for k, v in row.items() if k != "step" and v is not None}
            self.log_step(trainer, step, m)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def finish(self, trainer, pl_module) -> None:
        if self.plots and self.csv.rows and trainer.is_global_zero:
            from stablelab.analysis.plots import plot_noise_scale
            from stablelab.summary import global_batch_size

            dm = getattr(trainer, "datamodule", None)
            batch = global_batch_size(getattr(dm, "batch_size", None), trainer)
            plot_noise_scale(
                self.csv.rows, batch, Path(trainer.default_root_dir) / "noise_scale.png"
            )

    def state_dict(self) -> dict[str, Any]:
        avg = list(self._avg) if self._avg is not None else None
        return {"csv": self.csv.state_dict(), "avg": avg, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        avg = state_dict["avg"]
        self._avg = (float(avg[0]), float(avg[1])) if avg is not None else None
        self._last_step = state_dict["last_step"]

    def summary(self) -> dict[str, Any]:
        rows = [r for r in self.csv.rows if _num(r["b_simple"])]
        if not rows:
            return {}
        return {
            "noise_scale": rows[-1]["b_simple"],
            "noise_scale_max": max(r["b_simple"] for r in rows),
            "noise_scale_measurements": len(rows),
        }
