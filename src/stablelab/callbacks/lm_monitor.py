"""Transformer-instability signals of a language model, measured at intervals off the
training step's hot path (Wortsman et al. 2023's two small-scale instabilities):

* **attention-logit growth**: the largest attention logit q.k / sqrt(d) (after qk-norm and
  soft-capping, within the causal mask) of each layer. The fused attention kernel never
  materialises the logits, so they are recomputed from each layer's queries and keys on a
  fixed probe batch (the first ``probe_windows`` validation windows);
* **output-logit divergence**: the mean and the max of log Z = logsumexp of the output
  logits over the probe batch's positions (z-loss pulls the mean towards 0). This one needs
  nothing of the model but its logits: a model of your own gets it (without the attention
  columns, which need stablelab's ``CausalSelfAttention``).

At initialisation (step 0) and every ``every_n_steps`` updates the probe forward runs in
eval mode without gradients; the values stay on the device and are read back with the other
telemetry (no host sync per step). They go to ``<run dir>/lm_monitor.csv`` (step,
logz_mean, logz_max, attn_logit_max, attn_logit_max/<layer>...), to every logger
(``lm/...``) and to ``summary.json`` (first / last / max of each), where the stability
report reads them: it flags attention-logit growth when the largest logit grew
``growth_factor`` times from its value at initialisation and above ``logit_alarm``, and
log Z drift when |mean log Z| exceeds ``logz_alarm``. Off by default (``every_n_steps:
null``); checkpointed like the others.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from stablelab.callbacks.base import CsvRows, TelemetryCallback
from stablelab.constraints import PosFloat, PosInt


class LMMonitor(TelemetryCallback):
    sets_interval = False  # read back whenever the other telemetry is

    def __init__(
        self,
        every_n_steps: PosInt | None = None,
        probe_windows: PosInt = 16,
        growth_factor: PosFloat = 10.0,
        logit_alarm: PosFloat = 50.0,
        logz_alarm: PosFloat = 20.0,
        filename: str = "lm_monitor.csv",
    ) -> None:
        self.every_n_steps = every_n_steps
        self.probe_windows = probe_windows
        self.growth_factor = growth_factor
        self.logit_alarm = logit_alarm
        self.logz_alarm = logz_alarm
        self.csv: CsvRows = CsvRows(filename)
        self.layers: list[str] = []
        self._probe: torch.Tensor | None = None
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._last_step = -1

    def _attention(self, pl_module) -> list[tuple[str, Any]]:
        from stablelab.models.gpt import CausalSelfAttention

        return [
            (n.removeprefix("model."), m)
            for n, m in pl_module.named_modules()
            if isinstance(m, CausalSelfAttention)
        ]

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self.layers = [n for n, _ in self._attention(pl_module)]
            attn = ["attn_logit_max", *[f"attn_logit_max/{n}" for n in self.layers]]
            self.csv.fields = ["step", "logz_mean", "logz_max", *(attn if self.layers else [])]

    def _probe_batch(self, trainer, pl_module) -> torch.Tensor:
        """The first ``probe_windows`` validation inputs: stablelab's in-memory loaders
        hand them over as a tensor; a plain DataLoader of your own gives its first batch
        (fewer, if its batches are smaller)."""
        if self._probe is None:
            loader = trainer.datamodule.val_dataloader()
            tensors = getattr(loader, "tensors", None)
            x = tensors[0] if tensors is not None else next(iter(loader))[0]
            self._probe = x[: self.probe_windows].to(pl_module.device)
        return self._probe

    @torch.no_grad()
    def measure(self, trainer, pl_module) -> torch.Tensor:
        """[logz_mean, logz_max, attention-logit max per layer...] on the device."""
        attn = self._attention(pl_module)
        found: list[torch.Tensor] = []

        def hook(module, args, output):
            q, k, _ = module.qkv_heads(args[0])
            t = q.shape[-2]
            causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
            logits = module.logits(q, k).masked_fill(~causal, float("-inf"))
            found.append(logits.amax().float())

        handles = [m.register_forward_hook(hook) for _, m in attn]
        was_training = pl_module.training
        pl_module.eval()
        try:
            logits = pl_module(self._probe_batch(trainer, pl_module)).float()
        finally:
            pl_module.train(was_training)
            for h in handles:
                h.remove()
        logz = torch.logsumexp(logits, dim=-1)
        return torch.stack([logz.mean(), logz.amax(), *found])

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        # a fresh run measures its initialisation too (step 0: what the growth is relative
        # to); a resumed one has that row in its restored CSV already
        if self.every_n_steps and trainer.global_step == 0:
            self._last_step = 0
            self._pending.append((0, self.measure(trainer, pl_module)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = self.every_n_steps
        if every and step != self._last_step and step % every == 0:
            self._last_step = step
            self._pending.append((step, self.measure(trainer, pl_module)))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def consume(self, trainer: L.Trainer, pl_module, rows) -> None:
        if not self._pending:
            return
        dev = self._pending[-1][1].device
        values = torch.stack([t.to(dev) for _, t in self._pending]).cpu().tolist()
        steps = [s for s, _ in self._pending]
        self._pending = []
        new = []
        for s, v in zip(steps, values, strict=True):
            per_layer = dict(zip(self.layers, v[2:], strict=True))
            row = {"step": s, "logz_mean": v[0], "logz_max": v[1]}
            if per_layer:  # a model of your own has no stablelab attention: log Z only
                row["attn_logit_max"] = max(per_layer.values())
                row.update({f"attn_logit_max/{n}": x for n, x in per_layer.items()})
            new.append(row)
        self.csv.add(self.dir, new, write=trainer.is_global_zero)
        for r in new:
            self.log_step(trainer, r["step"], {f"lm/{k}": v for k, v in r.items() if k != "step"})

    def state_dict(self) -> dict[str, Any]:
        pending = [(s, t.cpu().tolist()) for s, t in self._pending]
        return {"csv": self.csv.state_dict(), "pending": pending, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        self._pending = [(s, torch.tensor(v)) for s, v in state_dict["pending"]]
        self._last_step = state_dict["last_step"]

    def summary(self) -> dict[str, Any]:
        rows = self.csv.rows
        if not rows:
            return {}
        logz = [r["logz_mean"] for r in rows]
        out: dict[str, Any] = {
            "logz_mean_first": logz[0],
            "logz_mean_last": logz[-1],
            "logz_abs_max": max(abs(z) for z in logz),
            "logz_drifting": max(abs(z) for z in logz) > self.logz_alarm,
        }
        if rows[0].get("attn_logit_max") in (None, ""):
            return out
        logit = [r["attn_logit_max"] for r in rows]
        first = logit[0]
        growth = max(logit) / first if first > 0 and math.isfinite(first) else None
        return {
            "attn_logit_max_first": first,
            "attn_logit_max_last": logit[-1],
            "attn_logit_max": max(logit),
            "attn_logit_growth": growth,
            "attn_logit_growing": bool(
                growth is not None
                and growth >= self.growth_factor
                and max(logit) > self.logit_alarm
            ),
            **out,
        }
