"""Configs are found both from the editable install (the checkout) and from a built wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, assert_ok


def test_editable_install_reads_checkout_configs():
    out = subprocess.run(
        [sys.executable, "-c", "from stablelab.paths import config_dir; print(config_dir())"],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
    )
    assert Path(out.stdout.strip()) == ROOT / "configs"


def _py(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run this interpreter with ``args``; assert it succeeded."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert_ok(proc)
    return proc


def test_wheel_ships_configs_and_cli_finds_them(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _py(
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(ROOT),
    )
    (wheel,) = wheels.glob("stablelab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for cfg in [
        "stablelab/configs/train.yaml",
        "stablelab/configs/model/resnet.yaml",
        "stablelab/configs/hydra/default.yaml",
        "stablelab/configs/experiment/digits_mlp.yaml",
    ]:
        assert cfg in names
    _py("-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel))
    # the wheel's package shadows the editable one; run from a folder with no checkout
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = _py(
        "-c",
        "import stablelab.paths as p; print(p.__file__); print(p.config_dir())",
        cwd=tmp_path,
        env=env,
    )
    module_file, cfg_dir = where.stdout.split()
    assert module_file.startswith(str(site)) and cfg_dir == str(site / "stablelab" / "configs")
    proc = _py("-m", "stablelab.train", "--cfg", "job", "model=transformer", cwd=tmp_path, env=env)
    assert "_target_: stablelab.models.Transformer" in proc.stdout
