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


def test_wheel_ships_configs_and_cli_finds_them(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert_ok(build)
    (wheel,) = wheels.glob("stablelab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for cfg in [
        "stablelab/configs/train.yaml",
        "stablelab/configs/model/resnet.yaml",
        "stablelab/configs/hydra/default.yaml",
        "stablelab/configs/experiment/digits_mlp.yaml",
    ]:
        assert cfg in names
    site = tmp_path / "site"
    inst = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert_ok(inst)
    # the wheel's package shadows the editable one; run from a folder with no checkout
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import stablelab.paths as p; print(p.__file__); print(p.config_dir())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert_ok(where)
    module_file, cfg_dir = where.stdout.split()
    assert module_file.startswith(str(site)) and cfg_dir == str(site / "stablelab" / "configs")
    proc = subprocess.run(
        [sys.executable, "-m", "stablelab.train", "--cfg", "job", "model=transformer"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert_ok(proc)
    assert "_target_: stablelab.models.Transformer" in proc.stdout
