"""A Hydra callback that refuses an unwritable output location before Hydra creates it, a
run directory that holds another run, and a multirun with a bad job before any job trains.

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
        self._check_occupied(config)

    @staticmethod
    def _check_occupied(config: DictConfig) -> None:
        """A run directory that holds another run (``hydra.run.dir=`` an old run's): refused
        before Hydra writes its ``.hydra/`` and log there (see preflight.occupied_problem)."""
        from stablelab.preflight import occupied_problem, started_by_a_launcher

        if started_by_a_launcher():  # its peers write the same directory at once
            return
        try:
            out = OmegaConf.select(config, "hydra.run.dir", throw_on_missing=True)
            ckpt_path, train = config.get("ckpt_path"), bool(config.get("train", True))
        except Exception:  # noqa: BLE001 - left to the task's own validation
            return
        if not out:
            return
        _refuse(occupied_problem(out, None if ckpt_path is None else str(ckpt_path), train))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
        self._check_sweep_dir(config)
        self._check_jobs(config)

    @staticmethod
    def _check_sweep_dir(config: DictConfig) -> None:
        """``hydra.sweep.dir=`` an earlier sweep's folder: its jobs' directories (0, 1, ...)
        hold runs that the new jobs would overwrite. Refused before any job starts."""
        from stablelab.preflight import occupied_problem

        try:
            out = OmegaConf.select(config, "hydra.sweep.dir", throw_on_missing=True)
        except Exception:  # noqa: BLE001 - left to Hydra
            return
        if not out or not Path(out).is_dir():
            return
        held = sorted(
            p.name for p in Path(out).iterdir() if occupied_problem(p, None, True) is not None
        )
        if held:
            _refuse(
                f"hydra.sweep.dir = '{out}': holds runs already ({', '.join(held[:8])}"
                f"{', ...' if len(held) > 8 else ''}); a new sweep there would overwrite "
                "them: choose another directory (without hydra.sweep.dir every sweep gets "
                "a new one)"
            )

    @staticmethod
    def _check_jobs(config: DictConfig) -> None:
        """Hydra's basic sweeper composes every job before the first runs, but a value
        that composes and is still bad (``optimizer.lr=1e-3,-1``) surfaced only when its
        job started, after the jobs before it had trained. Validate every job's config
        first and refuse the sweep, naming each refused job. (Other sweepers, such as
        Optuna's, choose their values as they go: left to each job.)"""
        jobs = _basic_sweep_jobs(config)
        if len(jobs) < 2:
            return
        refused = _refused_jobs(config, jobs)
        if not refused:
            return
        lines = [
            "stablelab-train: Invalid sweep (nothing was started): "
            f"{sum(map(len, refused.values()))} of {len(jobs)} jobs refused"
        ]
        for problems, which in refused.items():
            if len(which) == 1:
                lines.append(f"  job #{which[0]} ({' '.join(jobs[which[0]])}):")
            elif len(which) == len(jobs):
                lines.append("  every job:")
            else:
                lines.append(f"  jobs {', '.join(f'#{i}' for i in which)}:")
            lines += [f"    - {p}" for p in problems]
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)

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
        _refuse(
            writable_problem("paths.log_dir", log_dir) if inside else writable_problem(key, out)
        )


def _basic_sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of every job of a basic-sweeper multirun, as Hydra's BasicSweeper
    expands them (its ``params`` and the command line); [] for another sweeper, or a sweep
    Hydra itself refuses (Hydra says why)."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not sweeper.endswith(".BasicSweeper"):
        return []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        loader = GlobalHydra.instance().config_loader()
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        given = [f"{k}={v}" for k, v in params.items()]
        given += list(OmegaConf.select(config, "hydra.overrides.task") or [])
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(given)
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001
        return []
    return [list(job) for job in jobs]


def _refused_jobs(config: DictConfig, jobs: list[list[str]]) -> dict[tuple[str, ...], list[int]]:
    """The problems of every job whose config is refused -> those jobs' numbers. The fast
    pass first (no torch or Lightning import: a refusal in a second or two), the full one
    only when every job passed it."""
    from hydra.core.global_hydra import GlobalHydra

    from stablelab.config import ConfigError, validate

    loader = GlobalHydra.instance().config_loader()
    configs: dict[int, DictConfig] = {}
    for i, job in enumerate(jobs):
        try:
            composed = loader.load_sweep_config(config, job)
            cfg = OmegaConf.masked_copy(composed, [str(k) for k in composed if k != "hydra"])
            cfg.paths.output_dir = "."  # (Hydra's job directory: known when it runs)
            configs[i] = cfg
        except Exception:  # noqa: BLE001 - left to the job's own run, which reports it
            continue
    import warnings

    refused: dict[tuple[str, ...], list[int]] = {}
    for fast_only in (True, False):
        for i, cfg in configs.items():
            try:
                with warnings.catch_warnings():  # (each job warns once, when it runs)
                    warnings.simplefilter("ignore")
                    validate(cfg, fast_only=fast_only)
            except ConfigError as e:
                refused.setdefault(tuple(e.problems), []).append(i)
            except Exception:  # noqa: BLE001 - anything else: the job's run reports it
                continue
        if refused:
            break
    return refused


def _refuse(problem: str | None) -> None:
    """Exit 2 with the one-line refusal every refused config gives (nothing to do: None)."""
    if problem:
        print(f"stablelab-train: Invalid config (nothing was started):\n  - {problem}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
