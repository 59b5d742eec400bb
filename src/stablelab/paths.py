"""Where stablelab finds its Hydra configs, installed or from a checkout."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The directory holding ``train.yaml`` and the config groups.

    Order: ``$STABLELAB_CONFIG_DIR``; ``stablelab/configs`` inside an installed wheel
    (hatch force-includes the checkout's ``configs/`` there); ``configs/`` of the source
    checkout (editable installs and ``PYTHONPATH=src``).
    """
    candidates = []
    if os.environ.get("STABLELAB_CONFIG_DIR"):
        candidates.append(Path(os.environ["STABLELAB_CONFIG_DIR"]))
    candidates += [_PKG / "configs", _PKG.parents[1] / "configs"]
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError(
        "stablelab configs not found; looked in: " + ", ".join(str(c) for c in candidates)
    )


def group_options(group: str) -> list[str]:
    """The option names of a config group (file stems), sorted."""
    d = config_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
