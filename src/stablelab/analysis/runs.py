"""Reading run directories: every read of a run's files goes through here (files only,
never a live trainer). What a run directory holds: README "Outputs"."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
CONFIG = "config.yaml"


def has_summary(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a run directory (its summary.json exists)."""
    return (Path(run_dir) / SUMMARY).is_file()


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved config (``config.yaml``, plain data; {} if it has none). Read as
    data only: nothing in it is instantiated here."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def read_csv(run_dir: str | Path, name: str) -> list[dict[str, str]]:
    """The rows of one of the run's CSV files (``stability.csv``, ``evals.csv``, ...);
    [] when the run has no such file (its callback was off)."""
    path = Path(run_dir) / name
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


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
    with path.open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["step"]))
    return [float(r["grad_norm"]) for r in rows]
