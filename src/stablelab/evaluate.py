"""``stablelab eval CKPT``: evaluate a checkpoint on the validation and test splits.

The checkpoint's own data, model, optimizer, schedule and clipping config (stored in it)
rebuild the module, after every ``_target_`` in them passed the checks of
:mod:`stablelab.checkpoints` (nothing read from the file runs code); the rest (trainer,
logger, callbacks, paths) is composed from ``train.yaml`` with the given overrides, which
may also change the stored groups (``data.eval_batch_size=...``). The result is a small run
directory, ``logs/eval/runs/<time>_<id>/`` by default: ``config.yaml``, ``summary.json``
(``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``, ``evaluated_checkpoint``) and
``report.md``. ``stablelab-train train=false ckpt_path=CKPT`` does the same with the
config you compose (its model must match the checkpoint's).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stablelab.config import ConfigError

STORED = ("data", "model", "optimizer", "schedule", "clipping")
STORED_ROOT = ("seed", "max_train_steps")


def evaluate(
    checkpoint: str, overrides: Sequence[str] = (), out: str | None = None
) -> dict[str, Any]:
    """Evaluate ``checkpoint``; return the run summary. Raises ConfigError (nothing run)."""
    from stablelab import checkpoints
    from stablelab.config import compose, run_id
    from stablelab.train import train

    path = checkpoints.resolve_path(checkpoint, Path("."), key="checkpoint")
    assert path is not None
    ckpt = checkpoints.load(path, key="checkpoint")
    stored = {k: ckpt.cfg[k] for k in STORED if k in ckpt.cfg}
    checkpoints.check_targets(stored, f"checkpoint {path}")

    # nothing to checkpoint in an evaluation
    cfg = compose(
        ["task_name=eval", "callbacks.model_checkpoint=null", "paths.output_dir=.", *overrides]
    )
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    devices, strategy = trainer.get("devices", 1), str(trainer.get("strategy", "auto"))
    if devices not in (1, "1", [0]) or "ddp" in strategy or "fsdp" in strategy.lower():
        raise ConfigError(
            [
                f"trainer.devices = {devices} / trainer.strategy = {strategy!r}: stablelab "
                "eval runs in one process (trainer=cpu or trainer=gpu)"
            ]
        )
    for key in STORED:
        if key in stored:
            cfg[key] = OmegaConf.create(stored[key])
    if "data_dir" in cfg.data:  # this machine's data cache, not the one it was trained on
        cfg.data.data_dir = "${paths.data_dir}"
    for key in STORED_ROOT:
        if key in ckpt.cfg:
            cfg[key] = ckpt.cfg[key]
    mine = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] in STORED]
    if mine:  # the user's own changes to the stored groups win
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in mine]))
        assert isinstance(merged, DictConfig)
        cfg = merged
    if out is None:
        import time

        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        out = str(Path(cfg.paths.log_dir) / "eval" / "runs" / f"{stamp}_{run_id()}")
    cfg.paths.output_dir = str(Path(out).resolve())
    cfg.train, cfg.test, cfg.ckpt_path = False, True, str(path.resolve())
    handlers = _log_to(Path(out))
    try:
        return train(cfg)
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()


FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def _log_to(run_dir: Path) -> list[logging.Handler]:
    """Console and ``<run dir>/eval.log``, as Hydra sets them up for ``stablelab-train``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    added: list[logging.Handler] = [logging.FileHandler(run_dir / "eval.log")]
    if not root.handlers:
        added.append(logging.StreamHandler(sys.stdout))
    for h in added:
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    return added
