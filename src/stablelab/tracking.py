"""The training side of experiment tracking (W&B): the run's tags and sweep group, starting
the run before training (falling back to offline when W&B cannot log online), and closing it
with the summary and the stability report, waiting until its log is complete on disk.
(:mod:`stablelab.analysis.wandb_offline` only reads what these wrote.)
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from stablelab.constraints import first_line

log = logging.getLogger("stablelab")


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


def wandb_defaults(plain: dict[str, Any]) -> None:
    """W&B tags name the run's choices (optimizer, schedule, clipping, residual layout),
    trials of a sweep share a ``group`` unless the config sets one, and a workflow's trial
    is named after its folder unless ``run_name`` is set."""
    wb = (plain.get("logger") or {}).get("wandb")
    if not wb:
        return
    residual = (plain.get("model") or {}).get("residual")
    residual = residual if isinstance(residual, dict) else {}
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
    if wb.get("name") is None and os.environ.get("STABLELAB_SWEEP_GROUP"):
        # a trial of a `stablelab` workflow: its folder's name (lr_0.001, warmup_100,
        # probe_lr_0.02) reads better in the group than a random one
        out = (plain.get("paths") or {}).get("output_dir")
        if out:
            wb["name"] = Path(str(out)).name


def connect_trackers(trainer) -> None:
    """Start the W&B run now (rank 0), so a W&B problem shows before training. W&B set to
    log online without a reachable server (no network, a firewall, a wrong
    ``WANDB_BASE_URL``) or without credentials falls back to offline with one warning,
    instead of failing after minutes of retries: ``wandb sync`` uploads the run later."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger) or lg._experiment is not None:
            continue
        if lg._wandb_init.get("anonymous") is None:  # W&B warns about the key, even unset
            lg._wandb_init.pop("anonymous", None)
        mode = str(lg._wandb_init.get("mode") or os.environ.get("WANDB_MODE") or "online")
        why = _wandb_unreachable() if mode in ("online", "run", "shared") else None
        if why is None:
            try:
                _ = lg.experiment
                continue
            except Exception as e:  # noqa: BLE001 - any failure to start: go offline
                why = first_line(e)
                lg._experiment = None
        log.warning(
            "stablelab: W&B could not log online (%s); logging offline to %s/wandb instead: "
            "upload it later with `wandb sync`",
            why,
            lg.save_dir,
        )
        lg._wandb_init["mode"] = "offline"
        _ = lg.experiment


def _wandb_unreachable(timeout: float = 5.0) -> str | None:
    """Why W&B's server cannot be reached (a TCP connection to it), or None."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} unreachable: {e}"


def finish_trackers(trainer, summary: dict[str, Any], report: Path | None = None) -> list[str]:
    """Put the summary and the stability report into W&B and close its run (a multirun
    starts many in one process). A disabled run (``WANDB_MODE=disabled``) is just closed.
    Returns the web addresses of the online runs."""
    from lightning.pytorch.loggers import WandbLogger

    from stablelab.summary import _scalar, json_safe

    urls = []
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            exp = lg.experiment
            if getattr(exp, "disabled", False):
                exp.finish()
                continue
            if not getattr(exp, "offline", True) and getattr(exp, "url", None):
                urls.append(str(exp.url))
            safe = json_safe(summary)
            exp.summary.update({f"summary/{k}": v for k, v in safe.items() if _scalar(v)})
            if report is not None:
                _report_to_wandb(exp, report)
            finish_and_wait(exp)
    return urls


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


def finish_and_wait(run, timeout: float = 30.0) -> bool:
    """``run.finish()``, then wait until the run's log is complete on disk (see
    :mod:`stablelab.analysis.wandb_offline`), so that what the run logged is there when this
    returns: for a reader, for ``wandb sync`` started right away, for a job killed just
    after. Returns whether the log is complete: False (with a warning naming the file) if
    W&B took longer than ``timeout`` seconds, False without one for a run that writes no
    log (``mode="disabled"``)."""
    from stablelab.analysis.wandb_offline import wait_closed

    try:
        path = Path(run.settings.sync_file)
    except Exception:  # noqa: BLE001 - a disabled run has no log
        path = None
    run.finish()
    if path is None or not path.is_file():
        return False
    if wait_closed(path, timeout):
        return True
    warnings.warn(
        f"W&B had not finished writing {path} after {timeout:.0f} s: its last records may "
        "appear later, or be missing if this process is killed now",
        stacklevel=2,
    )
    return False


def log_diagnosis(result: dict[str, Any], out_dir: Path, report: Path) -> None:
    """``stablelab diagnose``'s W&B run (offline unless WANDB_MODE says otherwise): the
    workflow's plots as images, its findings in the summary, diagnosis.md in the files."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    images = {
        "diagnose/axis_plot": out_dir / "lr_sweep" / "axis_plot.png",
        "diagnose/curves_above_lr_star": out_dir / "lr_sweep" / "curves_above_lr_star.png",
        "diagnose/warmup_curves": out_dir / "warmup" / "warmup_curves.png",
    }
    if result.get("probe"):
        images["diagnose/probe_loss"] = Path(result["probe"]["run_dir"]) / "loss.png"
    run = wandb.init(
        dir=str(out_dir),
        project="stablelab",
        job_type="diagnose",
        config={"lrs": result["lrs"]},
        reinit="finish_previous",
    )
    try:
        run.log({k: wandb.Image(str(p)) for k, p in images.items() if p.is_file()})
        wu = result.get("warmup") or {}
        run.summary.update(
            {
                "lr_star": result["sweep"]["lr_star"],
                "edge_of_feasibility": result["sweep"]["edge_of_feasibility"],
                "unstable_base_learning_rate": result["sweep"]["unstable_base_learning_rate"],
                "lr_sensitivity": result["sweep"].get("lr_sensitivity"),
                "probe_unstable": (result.get("probe") or {}).get("unstable"),
                "warmup_steps": wu.get("warmup_steps"),
                "clip_threshold": result.get("clip_threshold"),
                "first_fix": result["first_fix"],
            }
        )
        shutil.copyfile(report, Path(run.dir) / report.name)
    finally:
        finish_and_wait(run)
