"""The benchmarks' own correctness (their timings are not tests: see benchmarks/README)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_bare_loop_reads_the_default_experiments_data(data_dir):
    """vs_bare_loop's MNIST-1D (its own reading of the generator's cache and split) is the
    data the default experiment trains, validates and tests on, example for example."""
    from stablelab.data import MNIST1DDataModule

    dm = MNIST1DDataModule(data_dir=str(data_dir))
    dm.setup()
    bare = _load("vs_bare_loop").mnist1d_arrays(Path(data_dir))
    for split in ("train", "val", "test"):
        x, y = dm._tensors[split]
        np.testing.assert_array_equal(bare[split][0], x.squeeze(1).numpy())
        np.testing.assert_array_equal(bare[split][1], y.numpy())


def test_the_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", ROOT / "benchmarks" / "gpu_check.sh"]).returncode == 0
