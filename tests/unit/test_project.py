"""Project hygiene: one version, a license that matches, the dependency floors honest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
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
    test = make.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "$(XDIST)" in test and "XDIST      = -n $(TEST_JOBS) --dist loadfile" in make
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "cacheprovider" not in cfg["tool"]["pytest"]["ini_options"]["addopts"]
    assert cfg["tool"]["mypy"]["files"] == ["src/stablelab"]
    assert {"C901", "PLR0912", "PLR0915"} <= set(cfg["tool"]["ruff"]["lint"]["select"])


@pytest.mark.skipif(
    not os.environ.get("PYTEST_XDIST_WORKER"), reason="runs under make test's xdist workers"
)
def test_an_xdist_worker_keeps_to_one_core_and_its_runs_take_one_thread():
    """make test's workers (tests/conftest.py) each keep to a core of their own, and a run
    they start inherits it: the thread policy gives it one thread, not the machine's cores."""
    assert len(os.sched_getaffinity(0)) == 1
    code = "from stablelab import threads; print(threads.choose(None)['intra_op'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "1", out.stderr


def _warn_as_rank(local_rank: str | None) -> str:
    """stderr of a process that installs stablelab's console warnings and warns from
    stablelab's config module, as DDP local rank N."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "LOCAL_RANK"}
    if local_rank is not None:
        env["LOCAL_RANK"] = local_rank
    code = (  # the warning as stablelab's config checks raise it (attributed to their file)
        "from stablelab.console import plain_warnings; plain_warnings('stablelab-train')\n"
        "import warnings, stablelab.config as c\n"
        "warnings.warn_explicit('warmup_steps=50 is 50% of max_train_steps=100', UserWarning,"
        " c.__file__, 1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_config_warnings_are_printed_once_per_node_not_by_every_ddp_rank():
    """Lightning's DDP launcher starts the other ranks as copies of the command, which
    compose, validate and build the run again: their warnings would print once per rank."""
    line = "stablelab-train: warning: warmup_steps=50 is 50% of max_train_steps=100"
    assert _warn_as_rank(None).count(line) == 1
    assert _warn_as_rank("0").count(line) == 1
    assert _warn_as_rank("1") == ""


def test_held_stderr_keeps_order_drops_on_request_and_passes_through_after_release():
    """stablelab-train holds Hydra's composition messages (console.HeldStream): released,
    they come out in order, before what follows; dropped, they never do; a logging handler
    that captured the stand-in while it held writes through after the release."""
    import io
    import logging

    from stablelab.console import HeldStream

    real = io.StringIO()
    held = HeldStream(real)
    handler = logging.StreamHandler(held)  # e.g. created by a Hydra callback while held
    log = logging.getLogger("stablelab.test_held")
    log.propagate, log.handlers = False, [handler]
    held.write("one\n")
    log.warning("two")
    assert real.getvalue() == ""  # nothing yet
    held.release()
    log.warning("three")
    held.write("four\n")
    assert real.getvalue() == "one\ntwo\nthree\nfour\n"
    dropped = io.StringIO()
    other = HeldStream(dropped)
    other.write("Hydra's dozen lines\n")
    other.drop()
    other.write("stablelab's line\n")
    assert dropped.getvalue() == "stablelab's line\n" and other.stream is dropped
