"""What a run records about where it ran: git commit, package versions, machine."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)


def git_state(where: str | Path | None = None) -> dict[str, object]:
    """``{"git_sha": ..., "git_dirty": ...}`` of the checkout stablelab runs from: the git
    repository that tracks this package's own source (an editable install or
    ``PYTHONPATH=src``), wherever the run was launched from. None for both when stablelab is
    an installed package (a wheel, even one inside some other repository's virtual
    environment): then ``versions["stablelab"]`` says which release ran. ``where``: look
    at the repository around that file or directory instead."""
    here = Path(where) if where is not None else Path(__file__).resolve()
    cwd = here if here.is_dir() else here.parent
    none: dict[str, object] = {"git_sha": None, "git_dirty": None}
    try:
        if where is None:  # is this very file part of the repository's tracked source?
            tracked = _git(["ls-files", "--error-unmatch", here.name], cwd)
            if tracked.returncode != 0:
                return none
        sha = _git(["rev-parse", "HEAD"], cwd)
        if sha.returncode != 0:
            return none
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return none


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The kernel set torch dispatches to on this CPU (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def machine() -> dict[str, object]:
    """Where a run ran. ``cpu_capability`` is the kernel set torch dispatches to on this CPU
    (AVX2, AVX512, ...): two machines with different ones round float32 differently, so the
    same seed gives other numbers (a run at the edge of stability can even end otherwise)."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_model(),
    }
    try:
        import torch

        info["cpu_capability"] = cpu_capability()
        info["cuda"] = torch.cuda.is_available()
        info["num_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def numerics(device: Any = None, world_size: int = 1) -> dict[str, object]:
    """What the bits of a run's numbers depend on beyond its config and data: torch's
    version, the CPU kernels it dispatches to, the intra-op thread count (a CPU reduction
    splits by thread: 1 and 2 threads differ from the first update on), the device and the
    number of processes. Stored in every checkpoint; a resume on other values says that
    its numbers need not be an uninterrupted run's."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = str(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else str(dev.type)
    return {
        "torch": str(torch.__version__),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": name,
        "world_size": int(world_size),
    }
