"""The LightningModule: cross-entropy for classification or next-token prediction (the
task comes from the data: ``input_spec["task"]``), any model, optimizer, schedule and
clipping strategy from the config groups, and the ``loss`` group's extra terms (z-loss).

Its hyperparameters are plain data (the resolved config as a dict, the input spec and the
class count), and it rebuilds the model, optimizer, schedule and clipper from them with
``hydra.utils.instantiate``: a checkpoint holds no pickled module or partial, loads with
``weights_only=True`` and rebuilds anywhere.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from stablelab.config import ConfigError, instantiate

log = logging.getLogger("stablelab")


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """The mean over predictions of (log Z)^2, log Z = logsumexp of the output logits (in
    float32 at least): pulls the log-partition towards 0 (PaLM; Wortsman et al. 2023)."""
    lse = torch.logsumexp(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    return lse.square().mean()


class StableModule(L.LightningModule):
    def __init__(self, cfg: dict[str, Any], input_spec: dict[str, Any], num_classes: int):
        super().__init__()
        # plain data only; logged to the trackers by train.py together with run info
        self.save_hyperparameters(logger=False)
        self.cfg = cfg
        self.task = input_spec.get("task", "classification")  # or "next_token"
        self.z_loss = float((cfg.get("loss") or {}).get("z_loss", 0.0))
        self.model = instantiate(cfg["model"], input_spec=input_spec, num_classes=num_classes)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(
                [
                    f"model._target_ = {cfg['model'].get('_target_')!r}: no trainable "
                    "parameter (none, or all with requires_grad=False): nothing to train"
                ]
            )
        if (self.task == "next_token") != bool(getattr(self.model, "next_token", False)):
            name = type(self.model).__name__
            raise ConfigError(
                [
                    f"model = {name}: a classifier; the data is next-token prediction: use "
                    "model=gpt (your own model: set next_token = True on its class and return "
                    "(batch, length, vocab) logits)"
                    if self.task == "next_token"
                    else f"model = {name}: a next-token model; the data is classification"
                ]
            )
        self.clipper = instantiate(cfg["clipping"])
        self._warn_unmatched_exclusions()
        # rollbacks so far (StabilityMonitor's `rollbacks`): each one's record, the training
        # batches skipped in all (the data order's offset) and the LR scale; kept in checkpoints
        self.rollback: dict[str, Any] = {"log": [], "offset": 0, "lr_scale": 1.0}
        skip = cfg.get("skip_spikes") or {}
        self.skipper = None  # stablelab.remedies.SpikeSkipper when skip_spikes.enabled
        if skip.get("enabled"):
            from stablelab.remedies import SpikeSkipper

            self.skipper = SpikeSkipper(
                self.build_schedule().total_steps,
                skip.get("window", 128),
                skip.get("min_history", 64),
                skip.get("zscore", 6.0),
            )
        # evaluation: per split, [summed loss, correct predictions, examples] in float64 on
        # the device, reduced over ranks once per evaluation and divided then: the mean over
        # every example of the split, however unevenly the ranks' shares split. Float32
        # per-example losses add up exactly in float64, in any order (ranks, batch sizes),
        # so a resumed or re-evaluated run reports the same bits. A NaN loss stays NaN.
        self._eval_totals: dict[str, torch.Tensor] = {}
        # examples an evaluation counted twice: Lightning's DistributedSampler pads a plain
        # DataLoader's split to a multiple of the processes (stablelab's loaders never do)
        self.eval_duplicates: dict[str, int] = {}
        # splits evaluated on fewer batches than they have (trainer.limit_val_batches /
        # limit_test_batches): {"val": {"batches": 1, "of": 4}}; their losses are not the
        # split's, and the summary says so
        self.eval_subset: dict[str, dict[str, int]] = {}
        self.telemetry = None  # a StepTelemetry, attached by the telemetry callbacks
        self._named_params: list | None = None
        self._sharded = False  # configure_model has applied FSDP2
        self.num_classes = num_classes
        self._checked: set[str] = set()  # "shapes" (first batch), "labels" (first evaluation)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]  # Lightning's is a restricted classmethod
        cls, checkpoint_path, map_location=None, strict=None, **kwargs
    ):
        """Rebuild the module from a checkpoint anywhere, without trusting it: it is loaded
        with ``weights_only=True`` only, and every ``_target_`` of its stored config must be
        a stablelab class (see :mod:`stablelab.checkpoints`) before anything is built.
        Keyword arguments override stored hyperparameters, as in Lightning."""
        from stablelab import checkpoints

        if kwargs.pop("weights_only", True) is not True or kwargs.get("hparams_file"):
            raise ValueError(
                "StableModule checkpoints load with weights_only=True only (no hparams_file)"
            )
        path = checkpoints.resolve_path(str(checkpoint_path), Path("."), key="checkpoint_path")
        if path is None:  # "auto" names no file here
            raise FileNotFoundError(f"checkpoint_path = {checkpoint_path!r}: not a checkpoint file")
        ckpt = checkpoints.load(path, key="checkpoint_path")
        cfg = kwargs.get("cfg", ckpt.cfg)
        groups = {k: cfg.get(k) for k in ("model", "optimizer", "schedule", "clipping")}
        checkpoints.check_targets(groups, f"checkpoint {path}")
        return super().load_from_checkpoint(
            path, map_location=map_location, strict=strict, weights_only=True, **kwargs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _check_first(
        self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, labels: bool
    ) -> None:
        """The first batch the model sees: its output shape against the task; the first
        evaluation batch also the labels' range (a host read, so never in a training step).
        See :mod:`stablelab.contract`: a clear error instead of a cross-entropy error deep in
        Lightning."""
        from stablelab.contract import check_output

        target = str(self.cfg["model"].get("_target_"))
        check_output(x, logits, y, self.task, self.num_classes, target, labels)
        self._checked |= {"shapes", "labels"} if labels else {"shapes"}

    def _check_batch(self, batch: Any) -> None:
        """Before the first batch is unpacked: ``(x, y)``, two tensors (a dict or a longer
        tuple would fail later with an error that names neither the contract nor the key)."""
        from stablelab.contract import check_batch

        param = next(self.model.parameters(), None)
        dtype = param.dtype if param is not None else None
        check_batch(batch, str((self.cfg.get("data") or {}).get("_target_")), dtype)

    def build_schedule(self):
        return instantiate(self.cfg["schedule"])

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        if "shapes" not in self._checked:
            self._check_batch(batch)
        x, y = batch
        logits = self(x)
        if "shapes" not in self._checked:
            self._check_first(x, logits, y, labels=False)
        loss, objective = self.loss_terms(logits, y)
        if self.telemetry is not None:  # every step's loss, kept on the device
            self.telemetry.add_loss(loss)
        if self.skipper is not None:
            self.skipper.add_loss(loss)
        if self._logged_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            sched = self.lr_schedulers()
            if isinstance(sched, torch.optim.lr_scheduler.LRScheduler):  # ours: one LambdaLR
                self.log("train/lr", float(sched.get_last_lr()[0]), on_step=True, on_epoch=False)
        return objective

    def _logged_step(self) -> bool:
        """Whether Lightning sends this step's ``self.log`` values to the loggers: every
        ``trainer.log_every_n_steps`` updates (its rule: ``(step + 1) % n == 0``), and the
        run's last update (which the summary's ``final_train_loss`` reads). ``self.log``
        costs ~0.3 ms a call in Lightning's bookkeeping, a few percent of a small model's
        step, for values that on the other steps nobody would see."""
        trainer = self.trainer
        every = max(1, int(trainer.log_every_n_steps or 1))  # type: ignore[attr-defined]
        step = trainer.global_step
        last = trainer.max_steps > 0 and step + 1 >= trainer.max_steps
        return (step + 1) % every == 0 or last

    def loss_terms(
        self, logits: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the cross-entropy, the objective minimised: plus z-loss when set).
        Classification: (B, C) vs (B,); next token: (B, T, V) vs (B, T), every position."""
        # (.long(): labels of any integer dtype; the same tensor when they are int64 already)
        loss = F.cross_entropy(logits.flatten(0, -2), y.flatten().long())
        objective = loss + self.z_loss * z_loss(logits) if self.z_loss else loss
        return loss, objective

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Validate (and checkpoint) after the last step too. Lightning validates at the
        multiples of ``val_check_interval`` only: a run whose last step is not one (say 1550
        steps, or a warmup-extended length) would end without evaluating its final weights,
        and its ``last.ckpt`` would be the previous validation's, so a resume would redo the
        steps since. Asking the loop to stop at the last step makes it validate there (at a
        multiple it validates once, as before)."""
        trainer = self.trainer
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True

    def _eval_step(self, batch, split: str) -> None:
        if "labels" not in self._checked:
            self._check_batch(batch)
        x, y = batch
        # also on an empty slice: sharded models gather their parameters in every forward
        sums = self.eval_sums(x, y)
        prev = self._eval_totals.get(split)
        self._eval_totals[split] = sums if prev is None else prev + sums

    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[summed loss, correct predictions, predictions]`` of one batch in float64, on
        the device (evaluations add these up and divide once). A prediction is an example
        (classification) or a position (next token: the loss is per token)."""
        logits = self(x)
        if "labels" not in self._checked:
            self._check_first(x, logits, y, labels=True)
        if logits.dtype not in (torch.float32, torch.float64):  # bf16 / fp16 autocast
            logits = logits.float()
        logits, y = logits.flatten(0, -2), y.flatten().long()
        losses = F.cross_entropy(logits, y, reduction="none").double()
        correct = (logits.argmax(dim=-1) == y).sum().double()
        return torch.stack([losses.sum(), correct, losses.new_tensor(float(y.numel()))])

    def eval_result(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss and accuracy of the evaluation just run, over every rank's
        examples (one all-reduce); clears the sums."""
        total = self._eval_totals.pop(split, None)
        if total is None:
            total = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        return total[0] / total[2], total[1] / total[2]

    def _log_eval(self, split: str) -> None:
        loss, acc = self.eval_result(split)
        # one value per evaluation, already reduced (batch_size=1: logged as is)
        self.log(f"{split}/loss", loss, on_epoch=True, sync_dist=False, batch_size=1)
        self.log(f"{split}/acc", acc, on_epoch=True, sync_dist=False, batch_size=1)
        if self.task == "next_token":  # bits per character (token)
            self.log(f"{split}/bpc", loss / math.log(2), on_epoch=True, batch_size=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _note_padding(self, split: str, loaders: Any) -> None:
        from torch.utils.data import DistributedSampler

        for dl in loaders if isinstance(loaders, list | tuple) else [loaders]:
            sampler = getattr(dl, "sampler", None)
            if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
                extra = sampler.total_size - len(sampler.dataset)  # type: ignore[arg-type]
                if extra > 0 and split not in self.eval_duplicates and self.trainer.is_global_zero:
                    log.warning(
                        "stablelab: the %s split has %d examples, not a multiple of the %d "
                        "processes: Lightning's DistributedSampler repeats %d of them, so "
                        "%s/loss counts those twice (summary.json: eval_duplicates); give "
                        "the split a multiple of the processes for exact numbers",
                        split, len(sampler.dataset), sampler.num_replicas, extra, split,  # type: ignore[arg-type]
                    )  # fmt: skip
                if extra > 0:
                    self.eval_duplicates[split] = extra

    def _note_subset(self, split: str, loaders: Any, limits: list) -> None:
        """Record (and say once) that ``split`` is evaluated on fewer batches than it has."""
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        for dl, n in zip(loaders, limits, strict=False):
            try:
                full = len(dl)
            except TypeError:  # an iterable without a length: nothing to compare
                continue
            if n >= full or split in self.eval_subset:
                continue
            self.eval_subset[split] = {"batches": int(n), "of": int(full)}
            if self.trainer.is_global_zero:
                log.warning(
                    "stablelab: %s runs on %d of the %s split's %d batches "
                    "(trainer.limit_%s_batches): %s/loss is not the whole split's "
                    "(summary.json: eval_subset)",
                    "validation" if split == "val" else "the test", n, split, full,
                    split, split,
                )  # fmt: skip

    def on_validation_epoch_start(self) -> None:
        self._eval_totals.pop("val", None)
        if not self.trainer.sanity_checking:
            self._note_subset("val", self.trainer.val_dataloaders, self.trainer.num_val_batches)
            if self.trainer.world_size > 1:
                self._note_padding("val", self.trainer.val_dataloaders)

    def on_test_epoch_start(self) -> None:
        self._eval_totals.pop("test", None)
        self._note_subset("test", self.trainer.test_dataloaders, self.trainer.num_test_batches)
        if self.trainer.world_size > 1:
            self._note_padding("test", self.trainer.test_dataloaders)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        from stablelab.optim import weight_decay_groups

        factory = instantiate(self.cfg["optimizer"])  # a partial (_partial_: true)
        opt_cfg = self.cfg["optimizer"]
        params: Any = self.parameters()
        if opt_cfg.get("weight_decay"):  # decoupled decay: which tensors, decided once here
            skip = getattr(self.model, "no_weight_decay", None)
            params = weight_decay_groups(
                self.model.named_parameters(),
                float(opt_cfg["weight_decay"]),
                bool(opt_cfg.get("decay_norms_and_biases", False)),
                skip() if callable(skip) else (),
            )
        optimizer = factory(params=params)
        schedule = self.build_schedule()
        # a plain function, so LambdaLR checkpoints no state of it: the schedule is a pure
        # function of the step and this run's config (LambdaLR would otherwise restore the
        # attributes of the checkpoint's schedule object over this config's)
        # (lr_scale: 1.0 unless a rollback lowered it, and 1.0 * x is x, bit for bit)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.rollback["lr_scale"] * schedule(step)
        )
        # this config's hyperparameters of every group (lr as initial_lr): a resume restores
        # the checkpoint's over them, and on_train_start puts these back
        self._configured_groups = [
            {k: v for k, v in g.items() if k not in ("params", "lr")}
            for g in optimizer.param_groups
        ]
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step", "frequency": 1},
        }

    def on_after_backward(self) -> None:
        """Once, after the first backward: the trainable parameters that got no gradient.
        Plain DDP cannot train such a model (its next step fails with Lightning's advice
        for a strategy object stablelab's config does not build): refuse it here, naming
        them and the key; on one process say once that they are not trained."""
        if "grads" in self._checked:
            return
        self._checked.add("grads")
        from stablelab.contract import check_unused_parameters

        strategy = self.trainer.strategy
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        ddp = kwargs is not None and not kwargs.get("find_unused_parameters", False)
        name = (self.cfg.get("trainer") or {}).get("strategy", "ddp")
        name = name if isinstance(name, str) else str(name.get("_target_", name))
        message = check_unused_parameters(
            self.model.named_parameters(),
            str(self.cfg["model"].get("_target_")),
            name if ddp else None,
            name if self._sharded else None,
        )
        if message and self.trainer.is_global_zero:
            log.warning("stablelab: %s", message)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning calls this once per optimizer step, after DDP's all-reduce, AMP
        # unscaling and gradient accumulation; we own the norm and the clip so the unclipped
        # norm is kept (Lightning's discards it). Nothing here waits on the device.
        skipper = self.skipper
        if self.telemetry is None and skipper is None and not getattr(self.clipper, "clips", True):
            return  # nothing to clip and nobody listening: skip even the norm
        if self._named_params is None:  # walking the module tree each step costs ~60 us
            self._named_params = list(self.named_parameters())
        stats = self.clipper(self._named_params)
        skip = overflow = None
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            # float16 AMP: non-finite gradients are the GradScaler's overflow (it skips the
            # step and halves its scale), told apart from divergence by the guard
            overflow = ~torch.isfinite(stats.grad_norm)
        if skipper is not None:  # a spike's update is computed, then undone, on the device
            if skipper.reduce_loss is None and self.trainer.world_size > 1:
                skipper.reduce_loss = lambda t: self.trainer.strategy.reduce(t, reduce_op="mean")
            opt = getattr(optimizer, "optimizer", optimizer)  # (a LightningOptimizer)
            step = self.trainer.global_step
            opt.skip = skip = skipper.decide(step, stats.grad_norm, overflow)
        if self.telemetry is not None:
            self.telemetry.record(self.trainer.global_step, stats, skip, overflow)

    def configure_model(self) -> None:
        """Under FSDP2 (``trainer=fsdp`` / ``fsdp_cpu``: Lightning's ModelParallelStrategy)
        shard every residual block, then the rest, over the data-parallel mesh: parameters,
        gradients and optimizer state become DTensors sharded along dim 0. Under
        ``precision=64-true`` the module becomes float64 here, before a checkpoint is
        restored into it. Lightning may call this more than once."""
        from lightning.pytorch.plugins.precision import DoublePrecision
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is not None and isinstance(strategy.precision_plugin, DoublePrecision):
            # Lightning restores a checkpoint before it converts the module (strategy
            # setup): a float32 module would round the float64 weights being resumed
            self.double()
        if not isinstance(strategy, ModelParallelStrategy) or self._sharded:
            return
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # pragma: no cover - torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard

        from stablelab.models.blocks import ResidualBlock

        assert self.device_mesh is not None  # Lightning sets it before configure_model
        mesh = self.device_mesh["data_parallel"]
        for block in [m for m in self.model.modules() if isinstance(m, ResidualBlock)]:
            fully_shard(block, mesh=mesh)  # one all-gather / reduce-scatter unit each
        fully_shard(self.model, mesh=mesh)
        self._sharded = True

    def _warn_unmatched_exclusions(self) -> None:
        """A clipping ``exclude`` prefix that names no parameter excludes nothing (a typo,
        or a weight-tied head: the GPT's head is its token embedding, ``model.tok``)."""
        exclude = getattr(self.clipper, "exclude", None)
        if not exclude:
            return
        names = [n for n, _ in self.named_parameters()]
        unmatched = [e for e in exclude if not any(n.startswith(e) for n in names)]
        if unmatched:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            log.warning(
                "stablelab: clipping.exclude %s matches no parameter of %s, so nothing is "
                "excluded by it; its parameters start with %s",
                unmatched,
                type(self.model).__name__,
                ", ".join(tops),
            )

    def on_fit_start(self) -> None:
        """The datamodule is set up: an empty validation split is refused before the
        sanity check or any update (Lightning would skip every validation silently)."""
        from stablelab.contract import LOADERS, empty_validation_problems

        dm = self.trainer.datamodule  # type: ignore[attr-defined]
        if dm is not None:
            target = str((self.cfg.get("data") or {}).get("_target_"))
            problems = empty_validation_problems(dm, target)
            if problems:
                raise ConfigError(problems, headline=LOADERS)

    def on_train_start(self) -> None:
        """The run follows its own config: a resumed optimizer holds the checkpoint's
        hyperparameters (lr, betas, eps, weight decay, ...) and the scheduler its base LRs;
        put this config's back (equal values for an unchanged config, so an exact resume
        stays bit for bit), and set the LR of the step as the scheduler computes it now
        (after a rollback that lowered the LR scale too)."""
        sched = self.lr_schedulers()
        opt = self.optimizers(use_pl_optimizer=False)
        configured = getattr(self, "_configured_groups", None)
        if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR) or isinstance(opt, list):
            return
        if configured is not None and len(configured) == len(opt.param_groups):
            for g, mine in zip(opt.param_groups, configured, strict=True):
                g.update(mine)
            sched.base_lrs = [float(mine["initial_lr"]) for mine in configured]
        for g, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
            g["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in opt.param_groups]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainer = self._trainer  # (None when saved outside a Trainer)
        sha = getattr(getattr(trainer, "datamodule", None), "source_sha256", None)
        if isinstance(sha, str):  # the data file's: a resume or evaluation compares it
            checkpoint["data_sha256"] = sha
        from stablelab.runinfo import numerics  # (what the bits depend on: a resume compares)

        world = trainer.world_size if trainer is not None else 1
        checkpoint["numerics"] = numerics(self.device, world)
        checkpoint["rollback"] = {
            "log": [dict(r) for r in self.rollback["log"]],
            "offset": int(self.rollback["offset"]),
            "lr_scale": float(self.rollback["lr_scale"]),
        }
        if self.skipper is not None:
            checkpoint["skipper"] = self.skipper.state_dict()
        if hasattr(self.clipper, "state_dict"):  # adaptive clippers' running statistics
            checkpoint["clipper"] = self.clipper.state_dict()
        if self.telemetry is not None:  # steps recorded, not yet read back
            checkpoint["telemetry"] = self.telemetry.state_dict()
        if "val" in self.eval_subset:  # the validations so far covered part of the split
            checkpoint["eval_subset_val"] = dict(self.eval_subset["val"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if fitting and "eval_subset_val" in checkpoint:  # a resume: the run's validations
            # so far were partial, even if none is left to run (an evaluation measures anew)
            self.eval_subset.setdefault("val", dict(checkpoint["eval_subset_val"]))
        saved = checkpoint.get("rollback")
        # a rollback reloads a checkpoint older than itself: the live record (longer) wins
        if saved and len(saved["log"]) > len(self.rollback["log"]):
            self.rollback.update({**saved, "log": list(saved["log"])})
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "batch_offset"):  # before its training loader
            dm.batch_offset = int(self.rollback["offset"])
        if "skipper" in checkpoint and self.skipper is not None:
            self.skipper.load_state_dict(checkpoint["skipper"])
        if "clipper" in checkpoint and hasattr(self.clipper, "load_state_dict"):
            self.clipper.load_state_dict(checkpoint["clipper"])
        if "telemetry" in checkpoint and self.telemetry is not None:
            self.telemetry.load_state_dict(checkpoint["telemetry"])
