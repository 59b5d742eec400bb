"""``stablelab-train``: compose -> validate -> build -> fit -> test -> summarize.

``train(cfg)`` is importable and returns the run summary; ``main`` is the thin Hydra CLI
around it. torch and Lightning are imported inside ``train`` so ``--help`` and ``--cfg``
stay fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from stablelab.config import ConfigError, register_resolvers, validate
from stablelab.paths import config_dir

log = logging.getLogger("stablelab")
register_resolvers()

SUMMARY_FILE = "summary.json"
RESOLVED_CONFIG_FILE = "config.yaml"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def build(plain: dict[str, Any]):
    """Instantiate datamodule, module, callbacks, loggers and trainer from a validated
    config (plain data). Returns ``(datamodule, module, trainer, schedule, history)``."""
    from hydra.utils import instantiate

    from stablelab.callbacks.history import EvalHistory
    from stablelab.module import StableModule

    _wandb_defaults(plain)
    datamodule = instantiate(plain["data"])
    module = StableModule(plain, datamodule.input_spec, datamodule.num_classes)
    schedule = module.build_schedule()
    schedule.warn_if_long_warmup()
    history = EvalHistory()
    callbacks = [instantiate(c) for c in (plain["callbacks"] or {}).values() if c] + [history]
    loggers = [instantiate(lg) for lg in (plain["logger"] or {}).values() if lg]
    trainer = instantiate(
        plain["trainer"],
        callbacks=callbacks,
        logger=loggers if loggers else False,
        max_steps=schedule.total_steps,
    )
    return datamodule, module, trainer, schedule, history


def _short(entry: dict[str, Any] | None) -> str:
    return str((entry or {}).get("_target_", "none")).rsplit(".", 1)[-1].lower()


def sweep_group(task_name: str = "train") -> str | None:
    """The name trials of one sweep share: ``$STABLELAB_SWEEP_GROUP`` (set by the
    ``stablelab`` workflows), else ``<task_name>/<sweep directory name>`` in a Hydra
    multirun, else None."""
    if os.environ.get("STABLELAB_SWEEP_GROUP"):
        return os.environ["STABLELAB_SWEEP_GROUP"]
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task_name}/{Path(HydraConfig.get().sweep.dir).name}"
    return None


def _wandb_defaults(plain: dict[str, Any]) -> None:
    """W&B tags name the run's choices (optimizer, schedule, clipping, residual layout) and
    trials of a sweep share a ``group`` unless the config sets one."""
    wb = (plain.get("logger") or {}).get("wandb")
    if not wb:
        return
    residual = (plain.get("model") or {}).get("residual") or {}
    auto = [
        f"optimizer:{_short(plain.get('optimizer'))}",
        f"schedule:{_short(plain.get('schedule'))}",
        f"clipping:{_short(plain.get('clipping'))}",
        f"layout:{residual.get('layout', 'none')}",
        f"branch_init:{residual.get('branch_init', 'default')}",
    ]
    wb["tags"] = list(dict.fromkeys([*(wb.get("tags") or []), *auto]))
    if wb.get("group") is None:
        wb["group"] = sweep_group(plain.get("task_name", "train"))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; return its summary (also written to ``summary.json``).

    Raises :class:`ConfigError` before anything is built if the config is invalid. A run
    that fails part-way still writes its summary (``status: failed``) next to the config,
    metrics and checkpoints it already wrote, then re-raises. A run stopped by the
    divergence guard ends cleanly (``status: diverged``, ``feasible: false``, no test) and
    returns its summary, unless the guard was set to ``fail_on_divergence``: then
    :class:`~stablelab.stability.TrainingDiverged` is raised after everything is written.
    Every run with a run directory ends with its stability report (``report.md``).
    """
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    plain = validate(cfg)
    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks

    import lightning as L
    import torch

    from stablelab import runinfo
    from stablelab.stability import TrainingDiverged

    _quiet_lightning_handlers()
    # the CSV logger writes into the fresh run dir that Hydra already populated (.hydra/)
    warnings.filterwarnings(
        "ignore", message=r"Experiment logs directory .* exists and is not empty"
    )
    # lightning's pytree helper on torch >= 2.10: a deprecation only Lightning can act on
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")

    run_dir = Path(plain["paths"]["output_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    _ddp_children_run_this_trial_only()
    L.seed_everything(plain["seed"], workers=True, verbose=False)
    datamodule, module, trainer, schedule, history = build(plain)
    rank_zero = trainer.is_global_zero

    world = trainer.world_size
    run = {
        "run_dir": str(run_dir.resolve()),
        "world_size": world,
        "global_batch_size": plain["data"].get("batch_size", 0) * world,
        "total_steps": schedule.total_steps,
        **runinfo.git_state(),
        "versions": runinfo.versions(),
        "machine": runinfo.machine(),
        "argv": sys.argv,
    }
    if rank_zero:
        OmegaConf.save(OmegaConf.create(plain), run_dir / RESOLVED_CONFIG_FILE)
        for lg in trainer.loggers:
            lg.log_hyperparams({**plain, "run": run})

    summary: dict[str, Any] = {"status": "running", "task_name": plain["task_name"], **run}
    fit_metrics: dict[str, float] = {}
    fit_reports: dict[str, Any] | None = None
    diverged: TrainingDiverged | None = None
    start = time.time()
    try:
        if plain["train"]:
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=plain["ckpt_path"])
            finally:  # trainer.test resets callback_metrics and reloads the callbacks'
                # state from the best checkpoint: keep what fit measured
                fit_metrics = _scalars(trainer.callback_metrics)
                fit_reports = _callback_reports(trainer, history)
        ckpt_cb = trainer.checkpoint_callback
        best_path = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb else ""
        if plain["test"]:
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None)
        summary["status"] = "completed"
    except TrainingDiverged as e:  # the divergence guard stopped fit: a clean end
        diverged = e
        summary["status"] = "diverged"
        summary["diverged_at_step"] = e.step
        summary["divergence_reason"] = e.reason
        log.warning("stablelab: %s; stopped, run recorded as infeasible", e)
    except BaseException as e:
        summary["status"] = "failed"
        summary["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        metrics = {**fit_metrics, **_scalars(trainer.callback_metrics)}
        reports = fit_reports if fit_reports is not None else _callback_reports(trainer, history)
        best = reports.pop("_best")
        train_loss = fit_metrics.get("train/loss")
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
                "evaluations": reports.pop("_evaluations"),
                "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
            }
        )
        summary.update(reports)
        summary["feasible"] = bool(
            summary["status"] == "completed"
            and _finite(summary["val_loss"])
            and _finite(train_loss)
        )
        report = None
        if rank_zero:
            _write_json(run_dir / SUMMARY_FILE, summary)
            report = _write_report(run_dir, figures=plain["plots"])
            _finish_trackers(trainer, summary, report)
    if torch.cuda.is_available():  # a multirun trains many runs in one process
        torch.cuda.empty_cache()
    _release_process_group(trainer)
    if diverged is not None and diverged.fail:
        raise diverged
    return summary


def _release_process_group(trainer) -> None:
    """Lightning leaves the process group up after fit; the next trial of a multirun in this
    process would reuse it although its peers (this trial's child processes) are gone.
    Tear it down, and remove the variables Lightning's launcher put into this process's
    environment (with LOCAL_RANK set, the next trial's launcher would think an external
    launcher started the processes and start no children)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    launcher = trainer.strategy.launcher
    dist.destroy_process_group()
    if type(launcher).__name__ == "_SubprocessScriptLauncher":
        for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(key, None)


def _ddp_children_run_this_trial_only() -> None:
    """Lightning's DDP launcher starts ranks 1..N-1 by re-running ``sys.argv`` with
    ``hydra.run.dir=<HydraConfig run.dir>``. In a Hydra multirun that would re-run the whole
    sweep in every child (each child its own multirun, trials joining the wrong process
    groups) and point them at the unused run dir. So, in a multirun: the children get this
    trial's overrides only, and this trial's output directory."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    from omegaconf import open_dict, read_write

    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir


def _callback_reports(trainer, history) -> dict[str, Any]:
    """The summary keys of the callbacks that report (telemetry, stability, ...) and the
    evaluation history's best record and count (as ``_best``, ``_evaluations``)."""
    out: dict[str, Any] = {}
    for cb in trainer.callbacks:
        if callable(getattr(cb, "summary", None)):
            out.update(cb.summary())
    return {**out, "_best": history.best(), "_evaluations": len(history.records)}


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


def _quiet_lightning_handlers() -> None:
    """Lightning adds its own console handler when imported before logging is set up;
    under Hydra the root logger already prints, so every line would appear twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()


def _finish_trackers(trainer, summary: dict[str, Any], report: Path | None = None) -> None:
    """Put the summary and the stability report into W&B and close its run (a multirun
    starts many in one process)."""
    from lightning.pytorch.loggers import WandbLogger

    from stablelab.analysis.wandb_offline import finish_and_wait

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            exp = lg.experiment
            exp.summary.update({f"summary/{k}": v for k, v in summary.items() if _scalar(v)})
            if report is not None:
                _report_to_wandb(exp, report)
            finish_and_wait(exp)


def _report_to_wandb(exp, report: Path) -> None:
    import wandb

    from stablelab.analysis.report import FIGURES

    images = {
        f"report/{name.removesuffix('.png')}": wandb.Image(str(report.parent / name))
        for name, _ in FIGURES
        if (report.parent / name).is_file()
    }
    if images:
        exp.log(images)
    # files in the run's own directory are uploaded by `wandb sync` (a copy, not a link:
    # wandb.save would only link it and warn)
    shutil.copyfile(report, Path(exp.dir) / report.name)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _scalar(v: Any) -> bool:
    return isinstance(v, bool | int | float | str) or v is None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from stablelab.stability import TrainingDiverged

    try:
        summary = train(cfg)
    except ConfigError as e:
        print(f"stablelab-train: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:  # only with fail_on_divergence: true
        print(f"stablelab-train: {e} (fail_on_divergence is set)", file=sys.stderr)
        sys.exit(3)
    val = summary.get("val_loss")
    return val if _finite(val) else float("inf")  # the objective a sweeper minimises


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
