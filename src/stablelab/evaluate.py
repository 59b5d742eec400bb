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

from omegaconf import DictConfig, OmegaConf, open_dict

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

    # overrides of the stored groups apply to the checkpoint's config, the rest to train.yaml
    mine = [o for o in overrides if _root(o) in STORED]
    rest = [o for o in overrides if _root(o) not in STORED]
    # nothing to checkpoint in an evaluation
    cfg = compose(
        ["task_name=eval", "callbacks.model_checkpoint=null", "paths.output_dir=.", *rest]
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
    apply_stored_overrides(cfg, mine)  # the user's own changes to the stored groups win
    if out is None:
        import time

        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        out = str(Path(cfg.paths.log_dir) / "eval" / "runs" / f"{stamp}_{run_id()}")
    cfg.paths.output_dir = str(Path(out).resolve())
    cfg.train, cfg.test, cfg.ckpt_path = False, True, str(path.resolve())
    from stablelab.preflight import occupied_problem

    if occupied := occupied_problem(out, None, False, key="--out"):
        raise ConfigError([occupied])  # (before its eval.log is written there)
    existed = Path(out).exists()
    handlers, refused = _log_to(Path(out)), False
    try:
        return train(cfg)
    except ConfigError:
        refused = True
        raise
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
        if refused and not existed:  # a refused evaluation leaves nothing behind
            from stablelab.train import _remove_if_untouched

            _remove_if_untouched(Path(out))


def _root(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split(".")[0].split("/")[0]


def apply_stored_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Apply ``key.sub=value`` / ``+key.sub=value`` / ``~key.sub`` overrides (Hydra's
    grammar) to the checkpoint's stored groups in ``cfg``; raise ConfigError naming each
    that cannot apply: a group choice (the stored group is the checkpoint's), a key the
    stored config does not have (without ``+``), a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from stablelab.config import composition_problem, unknown_key_problem

    problems: list[str] = []
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (ov,) = parser.parse_overrides([text])
        except HydraException as e:
            problems.append(composition_problem(e, [text]))
            continue
        key = ov.key_or_group
        if "." not in key:
            problems.append(
                f"{text}: stablelab eval takes the {key} config from the checkpoint; change "
                f"its keys ({key}.<key>=...), or compose your own config with "
                "stablelab-train train=false ckpt_path=<checkpoint>"
            )
            continue
        if ov.is_sweep_override():
            problems.append(f"{text}: stablelab eval evaluates one config, not a sweep")
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if not isinstance(node, DictConfig):
            problems.append(f"{key}: the checkpoint's config has no {parent!r} mapping")
            continue
        if ov.is_delete():
            if leaf not in node:
                problems.append(f"{text}: the checkpoint's {parent!r} has no key {leaf!r}")
            else:
                with open_dict(node):
                    del node[leaf]
            continue
        if leaf not in node and not (ov.is_add() or ov.is_force_add()):
            known = [str(k) for k in node]
            problems.append(unknown_key_problem(key, known, text, owner="the checkpoint's "))
            continue
        with open_dict(node):
            node[leaf] = ov.value()
    if problems:
        raise ConfigError(problems)


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
