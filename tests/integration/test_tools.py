"""The ``stablelab`` workflow commands."""

from __future__ import annotations

import math
import subprocess
import sys

from conftest import assert_ok


def _stablelab(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "stablelab.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def test_schedule_plot_writes_png_with_closed_form_values(tmp_path):
    out = tmp_path / "s.png"
    proc = _stablelab(
        [
            "schedule-plot",
            "schedule=cosine",
            "schedule.warmup_steps=100",
            "schedule.post_warmup_steps=200",
            "schedule.final_lr_fraction=0.1",
            "max_train_steps=1000",
            "optimizer.lr=0.5",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert_ok(proc)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = {}
    for line in proc.stdout.splitlines():
        if line.strip().startswith("step"):
            step, lr = line.split(":")
            values[int(step.split()[1])] = float(lr.split("=")[1])
    T = 1000 - 300
    last = 0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (T - 1) / T)))
    assert values[0] == 0 and values[100] == 0.5 and values[300] == 0.5
    assert math.isclose(values[999], last, rel_tol=1e-5)
    assert "above 5%" in proc.stdout  # 100 warmup steps = 10% of 1000


def test_schedule_plot_rejects_bad_config(tmp_path):
    proc = _stablelab(["schedule-plot", "schedule.warmup_steps=-1"], tmp_path)
    assert proc.returncode == 2 and "schedule.warmup_steps = -1: must be >= 0" in proc.stderr
    assert not (tmp_path / "schedule.png").exists()
    # an --out matplotlib cannot write: refused before the work (it was a traceback after)
    from stablelab.cli import main

    assert main(["schedule-plot", "--out", str(tmp_path / "lr.txt")]) == 2
    assert main(["schedule-plot", "--out", str(tmp_path / "lr")]) == 2
    assert not any(tmp_path.iterdir())
