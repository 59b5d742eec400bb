"""Reading run directories: every read of a run's files goes through here (files only,
never a live trainer). What a run directory holds: README "Outputs"."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
CONFIG = "config.yaml"


def has_summary(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a run directory (its summary.json exists)."""
    return (Path(run_dir) / SUMMARY).is_file()


class RunFileError(ValueError):
    """A file of a run directory that cannot be read as what stablelab writes there (edited,
    truncated, or not a stablelab run): the message names the file and what is wrong."""


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFileError(f"{path}: not a stablelab summary (not JSON: {e})") from None
    if not isinstance(summary, dict):
        raise RunFileError(
            f"{path}: not a stablelab summary (a JSON {type(summary).__name__}, not an object)"
        )
    return summary


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved config (``config.yaml``, plain data; {} if it has none). Read as
    data only: nothing in it is instantiated here."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # noqa: BLE001 - YAML's and OmegaConf's errors: not a config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFileError(f"{path}: not a readable run config ({first})") from None
    if not isinstance(cfg, dict):
        raise RunFileError(f"{path}: not a run config (a YAML list, not a mapping)")
    return cfg  # type: ignore[return-value]


def read_csv(
    run_dir: str | Path, name: str, columns: Sequence[str] = ("step",)
) -> list[dict[str, str]]:
    """The rows of one of the run's CSV files (``stability.csv``, ``evals.csv``, ...);
    [] when the run has no such file (its callback was off) or an empty one. The header
    must have ``columns`` and every row's ``step`` must be an integer (RunFileError naming
    the file, and the row, otherwise)."""
    path = Path(run_dir) / name
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise RunFileError(f"{path}: not a readable CSV file ({e})") from None
    missing = [c for c in columns if c not in header]
    if header and missing:
        raise RunFileError(
            f"{path}: no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} in its "
            f"header {header[:8]} (an edited or damaged file?)"
        )
    for i, row in enumerate(rows):
        if "step" in row:
            try:
                int(row["step"])
            except (TypeError, ValueError):
                raise RunFileError(
                    f"{path}, row {i + 1}: step {row['step']!r} is not an integer (an edited "
                    "or damaged file?)"
                ) from None
    return rows


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` (those holding a summary.json; W&B's folders are not
    runs), sorted."""
    runs = {p.parent for p in Path(root).rglob(SUMMARY) if "wandb" not in p.parts}
    return sorted(runs)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's best checkpoint if its summary names one that exists, else its
    ``checkpoints/last.ckpt``, else None."""
    run_dir = Path(run_dir)
    if has_summary(run_dir):
        best = read_summary(run_dir).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def read_grad_norms(run_dir: str | Path) -> list[float]:
    """Every step's unclipped global gradient norm, in step order, from grad_norms.csv."""
    path = Path(run_dir) / "grad_norms.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a stablelab run directory with the grad_norm "
            "callback enabled (callbacks=default)?"
        )
    rows = read_csv(run_dir, "grad_norms.csv", ("step", "grad_norm"))
    rows = sorted(rows, key=lambda r: int(r["step"]))
    try:
        return [float(r["grad_norm"]) for r in rows]
    except (KeyError, TypeError, ValueError):
        raise RunFileError(f"{path}: a row without a numeric grad_norm") from None


def finite_grad_norms(run_dir: str | Path):
    """The finite unclipped gradient norms of a run (a float64 numpy array, step order)."""
    import numpy as np

    norms = np.array(read_grad_norms(run_dir), dtype=np.float64)
    return norms[np.isfinite(norms)]


# The most points an LR curve is drawn from: every step up to it; beyond, evenly spaced
# steps and the schedule's boundaries (a 10M-step run took 20 s and 1.7 GB at every step).
MAX_CURVE_POINTS = 20_000


def curve_steps(
    total: int, boundaries: Sequence[int] = (), most: int = MAX_CURVE_POINTS
) -> list[int]:
    """The steps a curve over ``total`` steps is drawn at: all of them when there are at most
    ``most``; else ``most`` evenly spaced ones (first and last included) plus each boundary
    and the step before it (where warmup ends: the ramp's top and the hold's start)."""
    if total <= most:
        return list(range(total))
    even = {round(i * (total - 1) / (most - 1)) for i in range(most)}
    edges = {s for b in boundaries for s in (b - 1, b) if 0 <= s < total}
    return sorted(even | edges)


def lr_curve(
    cfg: dict[str, Any], source: str | None = None, most: int = MAX_CURVE_POINTS
) -> tuple[Any, list[int], list[float]] | None:
    """A config's schedule (built), the steps of its curve (:func:`curve_steps`: every step
    of a run up to ``most`` steps) and the learning rate at each (``optimizer.lr`` times the
    schedule's multiplier). ``source`` names the file the config was read from: then only
    the classes a checkpoint's config may name are built
    (:func:`stablelab.checkpoints.target_problems`), so a crafted ``config.yaml`` runs no
    code. None when it is refused or this version cannot build it."""
    from stablelab.checkpoints import target_problems

    schedule = cfg.get("schedule")
    if source is not None and (
        not isinstance(schedule, dict) or target_problems({"schedule": schedule}, source)
    ):
        return None
    try:
        from hydra.utils import instantiate

        sched = instantiate(schedule)
        base = float(cfg["optimizer"]["lr"])
        W, P = sched.warmup_steps, sched.post_warmup_steps
        steps = curve_steps(sched.total_steps, (W, W + P), most)
        return sched, steps, [base * sched(s) for s in steps]
    except Exception:  # a config this version cannot rebuild
        return None
