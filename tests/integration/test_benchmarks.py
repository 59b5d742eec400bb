"""The benchmarks' own correctness (their timings are not tests: see benchmarks/README)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

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


def _wheel(folder: Path, name: str, requires: list[str]) -> None:
    """A minimal wheel: only its METADATA, which is all the closure check reads."""
    import zipfile

    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)


def test_the_wheel_closure_check_names_what_the_gpu_machine_would_lack(tmp_path, capsys):
    """gpu_check.sh --prepare refuses a wheel folder that would stop the offline install:
    the requirement that is neither carried nor on the image is named; requirements that do
    not apply there (another Python, an extra) and different spellings of one name are not."""
    closure = _load("wheel_closure")
    _wheel(tmp_path, "wandb_like", [
        "Typing-Extensions>=4.16", "sniffio", "pydantic_core==2.0",
        'importlib-resources; python_version < "3.9"', 'pytest; extra == "dev"',
    ])  # fmt: skip
    _wheel(tmp_path, "pydantic_core", ["typing_extensions"])
    have = ["typing.extensions", "numpy"]
    assert closure.unmet(tmp_path, "3.12", have) == ["wandb-like needs sniffio"]
    assert closure.main([str(tmp_path), "--python", "3.12", "--have", *have]) == 1
    assert "wandb-like needs sniffio" in capsys.readouterr().err
    _wheel(tmp_path, "sniffio", [])
    assert closure.main([str(tmp_path), "--python", "3.12", "--have", *have]) == 0
    # on Python 3.8 the marker applies, and importlib-resources is then missing
    assert closure.unmet(tmp_path, "3.8", have) == [
        'wandb-like needs importlib-resources; python_version < "3.9"'
    ]


@pytest.mark.slow
def test_the_gpu_check_script_runs_every_step_in_smoke_mode(tmp_path):
    """GPU_CHECK_SMOKE=1 runs gpu_check.sh's steps on the CPU: each step's command line is
    valid and its table lands in gpu_check.md, so a lent GPU's minutes are not lost to the
    script (the smoke run found three such faults before any GPU ran it)."""
    import os
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "PYTHON": sys.executable,
           "GPU_CHECK_WORK": str(tmp_path / "work")}  # fmt: skip
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    report = (out / "gpu_check.md").read_text()
    assert proc.returncode == 0, proc.stderr[-2000:] + report
    assert "failed" not in report, report
    assert "| completed | 4 |" in report  # the recipe's summary row
    assert report.count("ratio within each adjacent pair") == 2  # default and lm tables
    assert "done in" in report
    # what the device tool returns: at most 8 files, none in a sub-folder here
    files = sorted(p.name for p in out.rglob("*"))
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8, files
    assert "shakespeare_char_gpu_summary.json" in files


def test_the_warm_trials_benchmark_runs_a_workflow_both_ways_with_the_same_trials(tmp_path):
    """benchmarks/warm_trials.py on a one-trial sweep: both ways timed, and every trial's
    validation loss compared between them (equal: the same run)."""
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "warm_trials.py"), "--repeats", "1", "--",
         "sweep", "lr", "model=mlp", "max_train_steps=10", "logger=csv", "plots=false",
         "--lrs", "1e-3", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # (its data/ there)
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep lr model=mlp" in proc.stdout and ": 1 trials, 1 repeats" in proc.stdout
    assert "| wall (s) |" in proc.stdout and "| CPU (s) |" in proc.stdout
    assert "every trial's val loss the same both ways: True" in proc.stdout
