"""What a run records about where it ran: git commit, package versions, machine."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = (
    "stablelab",
    "torch",
    "lightning",
    "hydra-core",
    "omegaconf",
    "wandb",
    "torchmetrics",
    "numpy",
    "mnist1d",
    "scikit-learn",
)


def git_state(where: str | Path | None = None) -> dict[str, object]:
    """``{"git_sha": ..., "git_dirty": ...}`` of the repository around ``where`` (None
    outside a git checkout)."""
    cwd = str(where or Path.cwd())
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return {"git_sha": None, "git_dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, object]:
    info: dict[str, object] = {"platform": platform.platform(), "hostname": platform.node()}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        info["num_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info
