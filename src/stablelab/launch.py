"""Patches where Lightning, Hydra and DDP meet: the process group between the trials of a
multirun, the children Lightning's DDP launcher starts from a Hydra multirun, and
Lightning's console handler under Hydra's logging."""

from __future__ import annotations

import logging
import os
import sys


def release_process_group(trainer) -> None:
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


def ddp_children_run_this_trial_only() -> None:
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
    with read_write(hc), open_dict(hc):  # type: ignore[arg-type]  # a DictConfig at run time
        hc.run.dir = hc.runtime.output_dir


def quiet_lightning_handlers() -> None:
    """Lightning adds its own console handler when imported before logging is set up;
    under Hydra the root logger already prints, so every line would appear twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
