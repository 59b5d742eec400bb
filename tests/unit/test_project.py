"""Project hygiene: one version, a license that matches, the dependency floors honest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

import stablelab

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_single_sourced_from_pyproject():
    version = PYPROJECT["project"]["version"]
    assert stablelab.__version__ == version
    out = subprocess.run(
        [sys.executable, "-m", "stablelab.cli", "--version"], capture_output=True, text=True
    ).stdout
    assert out.strip() == f"stablelab {version}"
    assert re.search(rf"^## \[{re.escape(version)}\]", (ROOT / "CHANGELOG.md").read_text(), re.M)


def test_license_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_wandb_floor_has_the_api_we_use():
    """The floor in pyproject is at least as new as what the code needs, and the installed
    W&B accepts it (the offline reader's format is guarded by test_wandb_offline.py, which
    reads runs the installed W&B really wrote)."""
    from importlib.metadata import version

    import wandb
    from packaging.version import Version

    floor = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("wandb"))
    floor = Version(floor.split(">=")[1].split(",")[0].split()[0].strip('"'))
    assert floor >= Version("0.19.10")
    assert Version(version("wandb")) >= floor
    assert wandb.Settings(reinit="finish_previous").reinit == "finish_previous"


def test_ci_runs_the_quality_gates_and_the_tests():
    """.ci/run: `make lint` (ruff with the complexity limits, the format check, mypy) and
    `make test`, in that order; pytest's cache is on (`--lf` works); `make test-unit`."""
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.startswith("make")]
    assert ci == ["make lint", "make test"]
    make = (ROOT / "Makefile").read_text()
    lint = make.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint and "ruff format --check" in lint and "mypy" in lint
    assert "\ntest-unit:" in make
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "cacheprovider" not in cfg["tool"]["pytest"]["ini_options"]["addopts"]
    assert cfg["tool"]["mypy"]["files"] == ["src/stablelab"]
    assert {"C901", "PLR0912", "PLR0915"} <= set(cfg["tool"]["ruff"]["lint"]["select"])
