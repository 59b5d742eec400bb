"""``stablelab-train``: compose -> validate -> build -> fit -> test -> summarize.

``train(cfg)`` is importable and returns the run summary; ``main`` is the thin Hydra CLI
around it. torch and Lightning are imported inside ``train`` so ``--help`` and ``--cfg``
stay fast.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from stablelab import console, launch, tracking
from stablelab import summary as summary_mod
from stablelab.config import ConfigError, register_resolvers, validate
from stablelab.paths import config_dir
from stablelab.summary import _finite, _scalar, json_safe, write_summary  # noqa: F401

log = logging.getLogger("stablelab")
register_resolvers()

SUMMARY_FILE = "summary.json"
RESOLVED_CONFIG_FILE = "config.yaml"


def build(plain: dict[str, Any]):
    """Instantiate datamodule, module, callbacks, loggers and trainer from a validated
    config (plain data). Returns ``(datamodule, module, trainer, schedule, history)``."""
    from stablelab.callbacks import EvalHistory, Interruption, MetricsFile
    from stablelab.config import instantiate
    from stablelab.module import StableModule

    tracking.wandb_defaults(plain)
    datamodule = instantiate(plain["data"])
    from stablelab.contract import datamodule_problems

    target = str(plain["data"].get("_target_"))
    problems = datamodule_problems(datamodule, target, test=bool(plain.get("test", True)))
    if problems:
        raise ConfigError(problems)
    module = StableModule(plain, datamodule.input_spec, datamodule.num_classes)
    if plain.get("compile"):
        # in place: the parameters, their names and the checkpoints stay the same
        module.model.compile()
    schedule = module.build_schedule()
    if plain.get("train", True):  # (an evaluation trains on no schedule: nothing to advise)
        schedule.warn_if_long_warmup()
    history = EvalHistory()
    callbacks = [instantiate(c) for c in (plain["callbacks"] or {}).values() if c]
    # an interruption is checkpointed before the other callbacks react to it (telemetry
    # still on the device goes into the checkpoint, not just into the files)
    callbacks.sort(key=lambda cb: not isinstance(cb, Interruption))
    callbacks += [history, MetricsFile()]
    loggers = [instantiate(lg) for lg in (plain["logger"] or {}).values() if lg]
    trainer = _trainer(plain, callbacks, loggers, schedule.total_steps)
    return datamodule, module, trainer, schedule, history


def _trainer(plain: dict[str, Any], callbacks: list, loggers: list, max_steps: int):
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    from stablelab.config import instantiate

    extra = {}
    if "enable_progress_bar" not in plain["trainer"] and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):  # no RunProgress (callbacks=none, callbacks.progress_bar=null): no bar, rather than
        # Lightning's own, which counts epochs of a run measured in steps ("Epoch 0/-2")
        extra["enable_progress_bar"] = False
    if "enable_checkpointing" not in plain["trainer"] and not any(
        isinstance(c, ModelCheckpoint) for c in callbacks
    ):  # no model_checkpoint: none, rather than Lightning's own, which keeps each epoch's
        # end as "best" (the test then ran on it beside the best validation of another step)
        extra["enable_checkpointing"] = False
    from hydra.errors import InstantiationException

    try:
        trainer = instantiate(
            plain["trainer"], callbacks=callbacks, logger=loggers or False, max_steps=max_steps,
            **extra,
        )  # fmt: skip
    except InstantiationException as e:  # a combination the config check does not know
        cause = e.__cause__ if e.__cause__ is not None else e
        raise ConfigError(
            [f"trainer: Lightning's Trainer refused these settings ({type(cause).__name__}: "
             f"{cause})"]
        ) from e  # fmt: skip
    trainer._stablelab_parts = (plain, callbacks, loggers, max_steps)  # (a rollback's refit)
    return trainer


def train(cfg: DictConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Run one experiment; return its summary (also written to ``summary.json``).

    Raises :class:`ConfigError` before anything trains if the config is invalid, the
    machine cannot run it, the data cannot fill one batch or ``ckpt_path`` is unusable. A
    run writes ``config.yaml`` and ``summary.json`` (``status: running``) before anything
    else can fail; a run that fails part-way then records ``status: failed`` next to the
    config, metrics and checkpoints it already wrote, and re-raises. A run stopped by the
    divergence guard ends cleanly (``status: diverged``, ``feasible: false``, no test) and
    returns its summary, unless the guard was set to ``fail_on_divergence``: then
    :class:`~stablelab.stability.TrainingDiverged` is raised after everything is written.
    An interrupted run (SIGTERM, SIGUSR1, Ctrl-C) records ``status: interrupted`` with the
    command that resumes it and raises ``SystemExit(128 + signal)``. Every run with a run
    directory ends with its stability report (``report.md``).

    ``train=false``: evaluate ``ckpt_path`` (validation and test splits) without training.
    ``command``: the overrides this run was started with, for the resume command (default:
    Hydra's, or the command line).
    """
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    plain = validate(cfg)
    _absolute_data_path(plain)
    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks

    from stablelab import threads

    # before Lightning and the data start any thread pool (and exported for DDP ranks,
    # for this run only: the next run in this process chooses for itself)
    with threads.applied(plain.get("threads"), plain["trainer"]) as thread_info:
        return _run(plain, command, thread_info)


def _absolute_data_path(plain: dict[str, Any]) -> None:
    """``data.path`` (your .npz or text file) as an absolute path, against the directory the
    run was started from: config.yaml and the checkpoints then name the file itself, and
    ``stablelab eval`` / a resume from another directory read the same file (a relative
    path would be read against wherever that command runs)."""
    data = plain.get("data")
    if not isinstance(data, dict) or not str(data.get("_target_", "")).startswith("stablelab."):
        return  # (a datamodule of your own may mean something else by path: a URL, say)
    path = data.get("path")
    if isinstance(path, str) and path and not Path(path).expanduser().is_absolute():
        data["path"] = os.path.abspath(path)


def _run(plain: dict[str, Any], command: list[str] | None, thread_info: dict) -> dict[str, Any]:
    """:func:`train` once the config is valid and the threads are set."""
    import lightning as L
    import torch

    from stablelab.stability import TrainingDiverged

    _quiet_libraries()
    run_dir = Path(plain["paths"]["output_dir"])
    ckpt = _checkpoint_or_refuse(plain, run_dir)  # before anything is written or trained
    launch.ddp_children_run_this_trial_only()
    L.seed_everything(plain["seed"], workers=True, verbose=False)
    datamodule, module, trainer, schedule, history = build(plain)
    _refuse_data_or_model(plain, datamodule, module, trainer, ckpt, schedule.total_steps)

    rank_zero = trainer.is_global_zero
    summary = _opening_summary(plain, trainer, datamodule, schedule, run_dir, thread_info, ckpt)
    if rank_zero:  # the run exists from here on: its config and a summary first
        _open_run(plain, module, trainer, run_dir, summary)
    out = _Outcome(trainer=trainer)
    start = time.time()
    try:
        _fit_and_test(plain, trainer, module, datamodule, ckpt, history, out)
        summary["status"] = "completed"
    except TrainingDiverged as e:  # the divergence guard stopped fit: a clean end
        out.diverged = e
        summary["status"] = "diverged"
        summary["diverged_at_step"] = e.step
        summary["divergence_reason"] = e.reason
        log.warning("stablelab: %s; stopped, run recorded as infeasible", e)
    except BaseException as e:
        out.interrupted = _interruption(out.trainer, e)
        if out.interrupted is None:
            summary["status"] = "failed"
            summary["error"] = f"{type(e).__name__}: {e}"
            raise
        summary["status"] = "interrupted"
        summary["interrupted"] = out.interrupted
        summary["resume_command"] = resume_command(run_dir, command)
    finally:
        trainer = out.trainer
        _close_summary(summary, plain, trainer, module, datamodule, ckpt, history, out, start)
        if rank_zero:
            write_summary(run_dir / SUMMARY_FILE, summary)
            report = _write_report(run_dir, figures=plain["plots"] and plain["train"])
            urls = tracking.finish_trackers(trainer, summary, report)
            print("\n".join(console.closing_lines(summary, run_dir, report, urls)), flush=True)
    if torch.cuda.is_available():  # a multirun trains many runs in one process
        torch.cuda.empty_cache()
    launch.release_process_group(trainer)
    if out.interrupted is not None:
        if rank_zero:
            log.warning("stablelab: to resume: %s", summary["resume_command"])
        raise SystemExit(out.interrupted["exit_code"])
    if out.diverged is not None and out.diverged.fail:
        raise out.diverged
    return summary


@dataclasses.dataclass
class _Outcome:
    """What fit and test left behind, for the summary (fit's metrics survive the test)."""

    fit_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    fit_reports: dict[str, Any] | None = None
    diverged: Any = None  # the TrainingDiverged that stopped fit
    interrupted: dict[str, Any] | None = None
    trainer: Any = None  # the Trainer that ran last (a rollback refits in a fresh one)
    tested_final: bool = False  # the test ran on the final weights, not a best checkpoint


def _quiet_libraries() -> None:
    launch.quiet_lightning_handlers()
    console.quiet_third_party()
    # the CSV logger writes into the fresh run dir that Hydra already populated (.hydra/)
    warnings.filterwarnings(
        "ignore", message=r"Experiment logs directory .* exists and is not empty"
    )
    # lightning's pytree helper on torch >= 2.10: a deprecation only Lightning can act on
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
    # evaluating a checkpoint needs none of the callbacks that wrote it
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
    # the evaluation sums are all-reduced by the module itself (sync_dist would reduce twice),
    # and a padded evaluation split is reported precisely (module.eval_duplicates)
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist")
    warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders")
    # Lightning's interval counts updates across epochs (stablelab's runs are step-based):
    # an epoch shorter than the interval loses no log line
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
    )


def _checkpoint_or_refuse(plain: dict[str, Any], run_dir: Path):
    """The checkpoint to resume or evaluate (None: a fresh run); raises ConfigError for
    everything that can refuse the run before anything is built: the checkpoint, the
    machine (devices, strategy, precision)."""
    from stablelab import checkpoints, preflight

    ckpt_file = checkpoints.resolve_path(plain["ckpt_path"], run_dir)
    ckpt = checkpoints.load(ckpt_file) if ckpt_file else None
    if plain["ckpt_path"] == checkpoints.AUTO and ckpt_file is None:
        log.info(
            "stablelab: ckpt_path=auto: no checkpoints/last.ckpt in %s yet, so a fresh run "
            "(to resume a run in place, set hydra.run.dir to that run's directory)",
            run_dir,
        )
    problems = preflight.environment_problems(plain)
    if not preflight.started_by_a_launcher():  # (the API's way in; the CLI's: Preflight)
        occupied = preflight.occupied_problem(
            run_dir, plain["ckpt_path"], plain["train"], key="paths.output_dir"
        )
        problems += [occupied] if occupied else []
    if ckpt is not None and plain["train"]:
        problems += checkpoints.resume_problems(ckpt, plain)
    if problems:
        raise ConfigError(problems)
    return ckpt


def _refuse_data_or_model(plain, datamodule, module, trainer, ckpt, total_steps: int) -> None:
    """Once built: data that cannot fill a batch, a checkpoint of another model, a resume
    from past the end of this run."""
    from stablelab import checkpoints, preflight

    problems = preflight.data_problems(plain, datamodule, trainer.world_size)
    if ckpt is not None:  # (another vocabulary makes another head: say why, not "model")
        vocab = checkpoints.vocabulary_problems(ckpt, datamodule)
        problems += vocab or checkpoints.model_problems(ckpt, module)
    if ckpt is not None and plain["train"] and ckpt.global_step > total_steps:
        problems.append(
            f"max_train_steps = {plain['max_train_steps']}: the run would train "
            f"{total_steps} steps, but ckpt_path = '{ckpt.path}' is at step "
            f"{ckpt.global_step}, past its end (nothing would train); resume with "
            f"max_train_steps >= {ckpt.global_step}, or evaluate it: stablelab eval <ckpt>"
        )
    if problems:
        raise ConfigError(problems)


def _opening_summary(plain, trainer, datamodule, schedule, run_dir, thread_info, ckpt):
    """summary.json as first written (``status: running``): where, what and on what."""
    from stablelab import runinfo

    world = trainer.world_size
    run = {
        "run_dir": str(run_dir.resolve()),
        "world_size": world,
        "global_batch_size": summary_mod.global_batch_size(
            plain["data"].get("batch_size", 0), trainer
        ),
        "total_steps": schedule.total_steps,
        **runinfo.git_state(),
        "versions": runinfo.versions(),
        "machine": runinfo.machine(),
        "threads": thread_info,
        "precision": str(trainer.precision),  # what ran (16-mixed on CPU runs bf16-mixed)
        "argv": sys.argv,
    }
    summary: dict[str, Any] = {"status": "running", "task_name": plain["task_name"], **run}
    sha = getattr(datamodule, "source_sha256", None)
    if sha:
        summary["data_sha256"] = sha
    if ckpt is not None:
        key = "resumed_from" if plain["train"] else "evaluated_checkpoint"
        summary[key] = {"checkpoint": str(ckpt.path.resolve()), "step": ckpt.global_step}
        now = runinfo.numerics(_root_device(trainer), world)
        _note_differences(plain, ckpt, sha, summary[key], now)
        if plain["train"] and not getattr(datamodule, "exact_resume", False):
            summary["resumed_from"]["exact"] = False
            log.warning(
                "stablelab: %s does not declare exact_resume: its training batches after "
                "this resume need not be those an uninterrupted run would see, so the "
                "numbers may differ from one (see README 'Your own model and data')",
                type(datamodule).__name__,
            )
    return summary


def _root_device(trainer) -> Any:
    """The device this process computes on (before fit moves the module there)."""
    try:
        return trainer.strategy.root_device
    except Exception:  # noqa: BLE001 - not yet known: the accelerator's kind
        return "cuda" if type(trainer.accelerator).__name__ == "CUDAAccelerator" else "cpu"


def _note_differences(
    plain, ckpt, sha: str | None, entry: dict[str, Any], now: dict[str, Any] | None = None
) -> None:
    """What differs from the checkpoint: a resume's changed settings, data file and
    numerics (torch, CPU kernels, threads, device, processes: ``changed``, ``exact:
    false``), an evaluation's data file (``data_changed``) and numerics
    (``numerics_changed``: its numbers may differ from the training run's in the last
    bits); with a warning. ``entry``: the summary's ``resumed_from`` /
    ``evaluated_checkpoint``; ``now``: this process's :func:`runinfo.numerics`."""
    from stablelab import checkpoints

    changed = checkpoints.changed_settings(ckpt.cfg, plain) if plain["train"] else {}
    numerics = {
        k: [v, now.get(k)]
        for k, v in (ckpt.numerics or {}).items()
        if now is not None and v != now.get(k)
    }
    if plain["train"]:
        changed.update({f"numerics.{k}": v for k, v in numerics.items()})
    elif numerics:
        entry["numerics_changed"] = numerics
        log.info(
            "stablelab: %s was trained with %s: these numbers may differ from the training "
            "run's in the last bits",
            ckpt.path.name,
            ", ".join(f"{k} {v[0]!r} (now {v[1]!r})" for k, v in numerics.items()),
        )
    if ckpt.data_sha256 and sha and ckpt.data_sha256 != sha:  # the same path, new bytes
        if plain["train"]:
            changed["data (sha256 of the file)"] = [ckpt.data_sha256, sha]
        else:
            entry["data_changed"] = {"trained_on": ckpt.data_sha256, "now": sha}
            log.warning(
                "stablelab: the data file is not the one %s was trained on (sha256 %s, "
                "now %s): these are its numbers on this file, not the training run's",
                ckpt.path.name,
                ckpt.data_sha256[:12],
                sha[:12],
            )
    if changed:
        entry.update(exact=False, changed=changed)
        shown = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in list(changed.items())[:8])
        more = f"; and {len(changed) - 8} more" if len(changed) > 8 else ""
        log.warning(
            "stablelab: resuming with settings that differ from the checkpoint's (%s%s): "
            "the numbers after step %d need not be those an uninterrupted run of either "
            "config would report (summary.json: resumed_from.changed)",
            shown,
            more,
            ckpt.global_step,
        )


RUN_KEYS = ("run_dir", "world_size", "global_batch_size", "total_steps", "git_sha",
            "git_dirty", "versions", "machine", "threads", "precision", "argv")  # fmt: skip


def _open_run(plain, module, trainer, run_dir: Path, summary: dict[str, Any]) -> None:
    """Rank zero: the console's opening lines, config.yaml, the first summary.json, and
    the trackers' hyperparameters."""
    if plain.get("print_config", True):
        print(console.config_tree(plain), flush=True)
    print(console.model_line(module), flush=True)
    total, world, threads = summary["total_steps"], summary["world_size"], summary["threads"]
    print(console.run_line(run_dir, plain, total, world, threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(plain), run_dir / RESOLVED_CONFIG_FILE)
    write_summary(run_dir / SUMMARY_FILE, summary)
    tracking.connect_trackers(trainer)
    run = {k: summary[k] for k in RUN_KEYS if k in summary}
    for lg in trainer.loggers:
        lg.log_hyperparams({**plain, "run": run})


def _fit_and_test(plain, trainer, module, datamodule, ckpt, history, out: _Outcome) -> None:
    """fit (or, ``train=false``, validate the checkpoint), then test the best checkpoint."""
    ckpt_arg = str(ckpt.path) if ckpt is not None else None
    if plain["train"]:
        try:
            trainer = _fit_with_rollbacks(trainer, module, datamodule, ckpt_arg, out)
        finally:  # trainer.test resets callback_metrics and reloads the callbacks'
            # state from the best checkpoint: keep what fit measured
            trainer = out.trainer
            out.fit_metrics = summary_mod.scalars(trainer.callback_metrics)
            out.fit_reports = summary_mod.callback_reports(trainer, history)
        ckpt_cb = trainer.checkpoint_callback
        test_ckpt = (getattr(ckpt_cb, "best_model_path", "") if ckpt_cb else "") or None
        out.tested_final = test_ckpt is None  # (no checkpoint kept the best: these weights)
    else:  # evaluate a checkpoint (or, without one, the initial weights)
        if ckpt is None:
            log.warning("stablelab: train=false without ckpt_path: evaluating the initial weights")
        trainer.validate(
            module, datamodule=datamodule, ckpt_path=ckpt_arg, weights_only=True, verbose=False
        )
        out.fit_metrics = summary_mod.scalars(trainer.callback_metrics)
        test_ckpt = ckpt_arg
    if plain["test"]:
        trainer.test(
            module,
            datamodule=datamodule,
            ckpt_path=test_ckpt,
            weights_only=True,
            verbose=False,  # the closing lines say it
        )


def _fit_with_rollbacks(trainer, module, datamodule, ckpt_arg: str | None, out: _Outcome):
    """``trainer.fit``; when the divergence guard asks for a rollback (its ``rollbacks``
    option, PaLM's practice), fit again from the last checkpoint saved before the
    divergence, with the training data order moved past the diverging batch and
    ``rollback_skip_batches`` more (the batches between the checkpoint and the divergence
    are skipped too), and the
    LR scaled by ``rollback_lr_factor``; each rollback is recorded on the module (and so in
    checkpoints and summary.json). Deterministic: the same run rolls back the same way.
    Each refit runs in a fresh Trainer (the same callbacks and loggers): Lightning's loops
    do not restart cleanly after a fit that raised. Returns the Trainer that ran last."""
    from stablelab.stability import TrainingDiverged

    while True:
        out.trainer = trainer
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_arg, weights_only=True)
            return trainer
        except TrainingDiverged as e:
            ckpt_arg = _rollback(trainer, module, datamodule, e)
            if ckpt_arg is None:
                raise
            trainer = _trainer(*trainer._stablelab_parts)


def _rollback(trainer, module, datamodule, e) -> str | None:
    """Record a rollback and return the checkpoint to fit again from; None when the guard
    did not ask for one or there is no checkpoint from before the divergence."""
    from stablelab import checkpoints

    if e.rollback is None:
        return None
    path = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    if not path or not Path(path).is_file():
        log.warning("stablelab: diverged at step %d; no checkpoint to roll back to", e.step)
        return None
    to_step = checkpoints.load(Path(path)).global_step
    if to_step > e.step:  # (one at e.step holds the weights before the diverging update)
        return None
    after, factor = e.rollback
    # the batches from the checkpoint through the diverging one, and `after` more
    skip = int(e.step) - int(to_step) + 1 + int(after)
    if not hasattr(datamodule, "batch_offset"):
        log.warning(
            "stablelab: %s has no batch_offset: the rollback cannot skip batches",
            type(datamodule).__name__,
        )
        skip = 0
    rb = module.rollback
    rb["log"].append(
        {"diverged_at_step": int(e.step), "reason": str(e.reason), "to_step": int(to_step),
         "skip_batches": int(skip), "lr_factor": float(factor)}
    )  # fmt: skip
    rb["offset"] = int(rb["offset"]) + int(skip)
    rb["lr_scale"] = float(rb["lr_scale"]) * float(factor)
    if skip:
        datamodule.batch_offset = rb["offset"]
    log.warning(
        "stablelab: diverged at step %d (%s): rollback %d, to step %d (%s), skipping %d "
        "batches, LR x %g",
        e.step, e.reason, len(rb["log"]), to_step, path, skip, rb["lr_scale"],
    )  # fmt: skip
    return path


def _close_summary(summary, plain, trainer, module, datamodule, ckpt, history, out, start):
    """The summary's numbers however the run ended (completed, diverged, interrupted,
    failed): steps, time, the best evaluation, test, the callbacks' reports, feasibility."""
    import torch

    metrics = {**out.fit_metrics, **summary_mod.scalars(trainer.callback_metrics)}
    reports = (
        out.fit_reports
        if out.fit_reports is not None
        else summary_mod.callback_reports(trainer, history)
    )
    best, evaluations = reports.pop("_best"), reports.pop("_evaluations")
    if not plain["train"]:  # an evaluation reports its own validation, not the best of the
        # history the checkpoint carries (for last.ckpt of a run whose best came earlier,
        # that record is another step's)
        val = out.fit_metrics.get("val/loss")
        step = ckpt.global_step if ckpt is not None else 0
        best = None if val is None else {
            "val_loss": val, "val_acc": out.fit_metrics.get("val/acc"), "step": step
        }  # fmt: skip
        evaluations = int(best is not None)
    train_loss = out.fit_metrics.get("train/loss")
    summary.update(
        {
            "steps": trainer.global_step,
            "wall_seconds": round(time.time() - start, 3),
            "val_loss": best["val_loss"] if best else None,
            "val_acc": best["val_acc"] if best else None,
            "best_step": best["step"] if best else None,
            "test_acc": metrics.get("test/acc"),
            "test_loss": metrics.get("test/loss"),
            "final_train_loss": train_loss,
            "evaluations": evaluations,
            "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
        }
    )
    if plain["train"]:
        summary.update(reports)
        if out.tested_final and summary["test_loss"] is not None:
            summary["tested_weights"] = "final"  # no best checkpoint was kept
        if getattr(trainer.checkpoint_callback, "monitor", None) == "val/acc":
            summary["best_by"] = "val/acc"  # the best (and tested) evaluation: by accuracy
        if summary["status"] == "completed" and trainer.global_step < summary["total_steps"]:
            summary["stopped_early"] = _stopped_early(trainer)
    else:  # an evaluation: the checkpoint's step; no training to report on (the
        # callbacks' state is the checkpoint's, restored for the test)
        summary["steps"] = ckpt.global_step if ckpt is not None else 0
        summary["best_checkpoint"] = str(ckpt.path) if ckpt is not None else None
    if getattr(module, "eval_subset", None):  # evaluated on part of a split
        summary["eval_subset"] = {k: dict(v) for k, v in module.eval_subset.items()}
    summary.update(summary_mod.task_metrics(summary, datamodule, module))
    if getattr(module, "rollback", None) and module.rollback["log"]:
        summary["rollbacks"] = [dict(r) for r in module.rollback["log"]]
    if getattr(module, "skipper", None) is not None:  # skip_spikes: one host read, here
        summary.update(module.skipper.summary())
    if getattr(module, "eval_duplicates", None):  # examples a padded split counted twice
        summary["eval_duplicates"] = dict(module.eval_duplicates)
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's GPU
        summary["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    summary["feasible"] = bool(
        summary["status"] == "completed"
        and _finite(summary["val_loss"])
        and (_finite(train_loss) or not plain["train"])
    )


def _stopped_early(trainer) -> str:
    """Who ended a fit before max_train_steps (stablelab's own limits refuse a shorter
    run, so a callback set ``trainer.should_stop``): an early-stopping callback's reason,
    else that."""
    from lightning.pytorch.callbacks import EarlyStopping

    for cb in trainer.callbacks:
        reason = getattr(cb, "stopping_reason_message", None)
        if isinstance(cb, EarlyStopping) and reason:
            return f"{type(cb).__name__}: {' '.join(str(reason).split())}"
    return "a callback stopped training (trainer.should_stop)"


def _interruption(trainer, error: BaseException) -> dict[str, Any] | None:
    """What the Interruption callback recorded, if the run was interrupted; without that
    callback (``callbacks=none``), what Lightning's own SIGTERM stop tells."""
    from stablelab.callbacks import Interruption
    from stablelab.callbacks.interruption import describe

    for cb in trainer.callbacks:
        if isinstance(cb, Interruption) and cb.info is not None:
            return cb.info
    return describe(trainer, error)


def resume_command(run_dir: Path, command: list[str] | None = None) -> str:
    """The command that resumes this run in place: this run's own overrides, then
    ``ckpt_path=auto`` (its ``checkpoints/last.ckpt`` if there is one) and its directory."""
    import shlex

    overrides = list(sys.argv[1:]) if command is None else list(command)
    try:
        from hydra.core.hydra_config import HydraConfig

        if command is None and HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except ImportError:  # pragma: no cover
        pass
    keep = [o for o in overrides if not o.startswith(("ckpt_path=", "hydra.run.dir=", "-"))]
    return shlex.join(
        ["stablelab-train", *keep, "ckpt_path=auto", f"hydra.run.dir={run_dir.resolve()}"]
    )


def _write_report(run_dir: Path, figures: bool = True) -> Path | None:
    """The stability report; a report that fails to draw never costs the run its summary."""
    from stablelab.analysis.report import verdict, write_report
    from stablelab.analysis.runs import read_summary

    try:
        path = write_report(run_dir, figures=figures)
    except Exception as e:  # noqa: BLE001 - report it and keep everything else
        log.warning("stablelab: no stability report: %s: %s", type(e).__name__, e)
        return None
    log.info("stability: %s; report: %s", verdict(read_summary(run_dir)), path)
    return path


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from stablelab.stability import TrainingDiverged

    _TASK_STARTED.append(True)
    _release_stderr()
    try:
        _check_sweeper_direction(cfg)
        _check_searchpath()
        summary = train(cfg)
    except ConfigError as e:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # a DDP run's other ranks find it too
            print(f"stablelab-train: {e}", file=sys.stderr)
        from hydra.core.hydra_config import HydraConfig

        if _remove_if_untouched(Path(HydraConfig.get().runtime.output_dir)):
            print("  (its run directory held nothing else and was removed)", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:  # only with fail_on_divergence: true
        print(f"stablelab-train: {e} (fail_on_divergence is set)", file=sys.stderr)
        sys.exit(3)
    return objective(summary, cfg.get("optimized_metric", "val_loss"))


def objective(summary: dict[str, Any], metric: str = "val_loss") -> float:
    """What ``stablelab-train`` returns to a sweeper: ``summary[metric]`` for a completed,
    feasible run; for an infeasible one (diverged, interrupted, no finite value) the worst
    value for the metric's direction (+inf when minimised, -inf when maximised), which
    Optuna records as a complete, bad trial: its sampler learns to avoid the region, the
    search neither crashes nor takes a NaN."""
    from stablelab.config import OBJECTIVES

    worst = float("inf") if OBJECTIVES[metric] == "minimize" else float("-inf")
    value = summary.get(metric)
    if not summary.get("feasible") or value is None or not _finite(value):
        return worst
    return float(value)


def _check_sweeper_direction(cfg: DictConfig) -> None:
    """A sweeper told to minimise a metric that is maximised (or the reverse) would search
    for the worst settings: refuse before anything runs."""
    from hydra.core.hydra_config import HydraConfig

    from stablelab.config import OBJECTIVES

    metric = cfg.get("optimized_metric", "val_loss")
    if metric not in OBJECTIVES or not HydraConfig.initialized():
        return  # (an unknown metric is refused by validate, naming the allowed values)
    direction = HydraConfig.get().sweeper.get("direction")
    if direction is None or isinstance(direction, list | tuple) or OmegaConf.is_list(direction):
        return
    direction = str(getattr(direction, "name", direction)).lower()
    if direction in ("minimize", "maximize") and direction != OBJECTIVES[metric]:
        raise ConfigError(
            [
                f"hydra.sweeper.direction = {direction}: optimized_metric = {metric} is to "
                f"{OBJECTIVES[metric]}; set hydra.sweeper.direction={OBJECTIVES[metric]}"
            ]
        )


def _check_searchpath() -> None:
    """``hydra.searchpath=[file://...]`` naming a folder that does not exist: Hydra skips it
    without a word (``--config-dir`` it refuses)."""
    from hydra.core.hydra_config import HydraConfig

    from stablelab.config import searchpath_problems

    if HydraConfig.initialized():
        problems = searchpath_problems([str(e) for e in HydraConfig.get().searchpath or []])
        if problems:
            raise ConfigError(problems)


_TASK_STARTED: list[bool] = []


def _remove_if_untouched(run_dir: Path) -> bool:
    """Remove a refused run's directory when it holds only what Hydra put there (its
    ``.hydra/`` and its log, with at most Lightning's start-up lines): a refused config
    leaves nothing behind."""
    try:
        run_dir = run_dir.resolve()
        entries = list(run_dir.iterdir())
    except (OSError, ValueError, AttributeError):
        return False
    for p in entries:
        if p.name == ".hydra" or (p.suffix == ".log" and p.is_file()):
            continue
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def _require_search_plugin(argv: list[str]) -> None:
    """``hparams_search=...`` needs Hydra's Optuna sweeper (an optional extra): say how to
    install it, instead of Hydra's "could not load hydra/sweeper/optuna"."""
    import importlib.util

    if not any(a.startswith(("hparams_search=", "+hparams_search=")) for a in argv):
        return
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        print(
            "stablelab-train: hparams_search needs the Optuna sweeper: "
            "pip install 'stablelab[optuna]' (or: pip install hydra-optuna-sweeper)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def main() -> None:
    """The ``stablelab-train`` console script. Exit codes: 0 done (diverged runs too), 2 a
    refused config or command line (nothing trained), 3 diverged with
    ``fail_on_divergence``, 128 + N ended by signal N (130 Ctrl-C, 143 SIGTERM, 138
    SIGUSR1; resumable, see README), 1 any other failure."""
    _require_search_plugin(sys.argv[1:])
    console.plain_warnings("stablelab-train")
    # Optuna's database layer announces each of its plugins at INFO: nothing to act on
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Hydra's messages while it composes are held: for a command line it refuses,
    # stablelab's one line (the allowed keys or options) replaces Hydra's dozen
    held = sys.stderr = console.HeldStream(sys.stderr)
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code == 1 and not _TASK_STARTED:  # Hydra refused the command line
            hint = _composition_hint(sys.argv[1:])
            if hint:
                held.drop()  # (the finally below puts the real stderr back)
                sys.stderr = held.stream
                print(f"stablelab-train: {hint}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        _release_stderr()


def _release_stderr() -> None:
    """Write out what :class:`console.HeldStream` held and put the real stderr back."""
    held = sys.stderr
    if isinstance(held, console.HeldStream):
        held.release()
        sys.stderr = held.stream


def _composition_hint(argv: list[str]) -> str | None:
    """After Hydra refused a command line, stablelab's one line for it: for an unknown key
    the keys beside it and "did you mean" (Hydra's own message suggests ``+key=value``,
    which adds a key nothing reads), for an unknown option the options. None where
    stablelab's composition cannot say (a config folder of the user's own): Hydra's
    message stands."""
    from stablelab.config import compose

    try:
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = get_args_parser().parse_args(argv)
        if args.config_dir or args.config_path or args.config_name:
            return None
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        # a multirun's sweep values compose one job at a time: leave them out
        overrides = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - no hint; Hydra's message stands
        return None
    try:
        compose(overrides)
    except ConfigError as e:
        return e.problems[0] if e.problems else None
    except Exception:  # noqa: BLE001
        return None
    return None


if __name__ == "__main__":
    main()
