"""stablelab: find, measure and fix training instability (Lightning + Hydra).

Importing the package is cheap: torch and Lightning are imported lazily by the modules
that need them, so ``stablelab-train --help`` and ``--cfg job`` stay fast.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

try:
    __version__ = _version("stablelab")  # single-sourced: pyproject.toml's [project] version
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"


def run(overrides=(), output_dir=None, config_dirs=()) -> dict[str, Any]:
    """Train one experiment from Python and return its summary: see :func:`stablelab.api.run`.

    >>> import stablelab
    >>> summary = stablelab.run(["optimizer.lr=1e-3", "max_train_steps=300"])
    >>> summary["val_loss"], summary["run_dir"]
    """
    from stablelab.api import run as _run

    return _run(overrides, output_dir, config_dirs)


__all__ = ["__version__", "run"]
