"""Reading run directories (files only, never a live trainer)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


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
