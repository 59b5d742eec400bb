"""The Python API: ``stablelab.run(overrides=[...])`` trains one experiment and returns its
summary, from a notebook or a script, without Hydra's command line.

It composes ``configs/train.yaml`` with the same overrides ``stablelab-train`` takes, gives
the run a fresh directory (``logs/<task_name>/runs/<time>_<id>/`` under the current
directory, as the CLI does, or ``output_dir``), and calls :func:`stablelab.train.train`.
Runs in one process do not share anything but the data cache: each has its own directory,
W&B run and seed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def compose_run(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_dirs: Sequence[str | Path] = (),
):
    """The composed (unresolved) config of :func:`run`, with its run directory set."""
    from omegaconf import OmegaConf

    from stablelab.config import compose

    _check_arguments(overrides, config_dirs)
    cfg = compose(with_search_path(overrides, config_dirs))
    cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    if output_dir is None:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = f"${{paths.log_dir}}/${{task_name}}/runs/{stamp}_{uuid.uuid4().hex[:8]}"
    else:
        run_dir = str(Path(output_dir).expanduser())
    cfg.paths.output_dir = run_dir
    return cfg


def _check_arguments(overrides: Any, config_dirs: Any) -> None:
    """Lists, not strings (a string is a sequence of one-letter overrides or folders), and
    config folders that exist (Hydra skips a missing one without a word)."""
    from stablelab.config import ConfigError

    for name, value, kinds, example in (
        ("overrides", overrides, str, "['optimizer.lr=1e-3', 'schedule=cosine']"),
        ("config_dirs", config_dirs, str | Path, "['examples/custom/configs']"),
    ):
        if isinstance(value, str | Path) or not all(isinstance(v, kinds) for v in value):
            raise TypeError(f"{name}: a list of strings, e.g. {example}; got {value!r}")
    missing = [str(d) for d in config_dirs if not Path(d).expanduser().is_dir()]
    if missing:
        raise ConfigError(
            [f"config_dirs: {d!r} is not a directory (from {Path.cwd()})" for d in missing]
        )


def with_search_path(overrides: Sequence[str], config_dirs: Sequence[str | Path]) -> list[str]:
    """``overrides`` with your config folders on Hydra's search path (as ``--config-dir``)."""
    if not config_dirs:
        return list(overrides)
    paths = ",".join(f"file://{Path(d).expanduser().resolve()}" for d in config_dirs)
    return [f"hydra.searchpath=[{paths}]", *overrides]


def run(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_dirs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Train one experiment; return its summary (the contents of ``summary.json``).

    ``overrides``: as on the command line (``["optimizer.lr=1e-3", "schedule=cosine"]``).
    ``output_dir``: the run directory (default: a fresh one under ``logs/<task_name>/runs``).
    ``config_dirs``: extra config folders searched for groups (your own ``model/``,
    ``data/``, ``experiment/`` files). Raises :class:`stablelab.config.ConfigError` before
    anything trains when the config is refused; a diverged run returns its summary
    (``status: diverged``).
    """
    from stablelab.train import train

    cfg = compose_run(overrides, output_dir, config_dirs)
    return train(cfg, command=with_search_path(overrides, config_dirs))
