"""A Hydra callback that refuses an unwritable output location before Hydra creates it.

Hydra makes the run (or sweep) directory before the task starts; when the place is not
writable it fails with a bare ``PermissionError`` traceback. :class:`Preflight` checks
first and stops with exit code 2 and one line naming the key (``paths.log_dir``, or
``hydra.run.dir`` / ``hydra.sweep.dir`` when set outside it), as every refused config does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        from stablelab.preflight import writable_problem

        try:
            out = OmegaConf.select(config, key, throw_on_missing=True)
            log_dir = OmegaConf.select(config, "paths.log_dir")
        except Exception:  # noqa: BLE001 - left to Hydra and the task's own validation
            return
        if not out:
            return
        inside = log_dir is not None and Path(out).absolute().is_relative_to(
            Path(log_dir).absolute()
        )
        problem = (
            writable_problem("paths.log_dir", log_dir) if inside else writable_problem(key, out)
        )
        if problem:
            print(
                f"stablelab-train: Invalid config (nothing was started):\n  - {problem}",
                file=sys.stderr,
            )
            sys.exit(2)
