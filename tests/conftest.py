"""Shared fixtures: a session-wide data cache, offline W&B, Hydra compose and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (make test's `-n 2` on a machine with >= 2 cores) each worker keeps to
# one core of its own before torch is imported, and what it starts inherits that: the
# thread policy (stablelab.threads) then gives every run one thread, where two workers of
# 2-thread runs would slow each other down several times over.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cores[int(_WORKER[2:]) % len(_cores)]})
# A suite started in the background of a non-interactive shell (`nohup make test &`, some CI
# runners) inherits SIGINT ignored, and so would every process it starts: the Ctrl-C tests
# would then test nothing (a child that ignores SIGINT runs on). Back to the default, which
# exec hands on to the children as "default": each Python child raises KeyboardInterrupt.
if hasattr(signal, "SIGINT") and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
from omegaconf import DictConfig  # noqa: E402 (after the pinning above)

from stablelab.config import compose  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py

# quiet, offline, no progress bars: flags for every CLI run in the tests
QUIET = ["callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


def set_test_env(mp: pytest.MonkeyPatch, data_dir: Path) -> None:
    mp.setenv("STABLELAB_DATA_DIR", str(data_dir))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("PYTHONUNBUFFERED", "1")
    mp.delenv("STABLELAB_RUN_ID", raising=False)
    # CLI runs in subprocesses (and their DDP ranks) import tests/helpers.py callbacks
    mp.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _env(monkeypatch, data_dir):
    set_test_env(monkeypatch, data_dir)


@pytest.fixture(scope="module")
def module_env(data_dir):
    """The same environment for module-scoped fixtures (they run before ``_env``)."""
    with pytest.MonkeyPatch.context() as mp:
        set_test_env(mp, data_dir)
        yield


def compose_cfg(overrides: list[str], output_dir: Path | str) -> DictConfig:
    """Compose configs/train.yaml (Hydra's compose API) writing into ``output_dir``."""
    return compose([f"paths.output_dir={output_dir}", *overrides])


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m stablelab.train ARGS`` in a subprocess, from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "stablelab.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}"
