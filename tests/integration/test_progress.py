"""The run's progress output (stablelab.callbacks.RunProgress) as a user reads it."""

from __future__ import annotations

import re

from conftest import compose_cfg
from stablelab.train import train

TINY = ["experiment=digits_mlp", "schedule=constant", "logger=csv", "plots=false", "test=false",
        "trainer.val_check_interval=20", "callbacks.dense_eval.every_step_until=0"]  # fmt: skip


def test_plain_lines_count_the_runs_steps_when_not_on_a_terminal(tmp_path, capfd):
    """Not a terminal: no carriage returns; one line every plain_every steps of the whole
    run (not per epoch), with the loss, the LR, the last validation loss and an ETA."""
    train(compose_cfg([*TINY, "max_train_steps=60", "callbacks.progress_bar.plain_every=15",
                       "callbacks.progress_bar.terminal=false"], tmp_path / "run"))  # fmt: skip
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["15/60", "30/60", "45/60", "60/60"]
    assert lines[0].startswith("step 15/60 (25%)  loss ") and "ETA" in lines[0]
    assert " lr 0.05 " in lines[0]  # the experiment's constant LR
    assert re.search(r"elapsed \d+:\d\d  ETA \d+:\d\d$", lines[0])
    assert "val" not in lines[0] and " val " in lines[1]  # the first validation is at 20
    assert "trained to step 60 in" in err


def test_the_bar_on_a_terminal_and_nothing_at_refresh_rate_zero(tmp_path, capfd):
    train(compose_cfg([*TINY, "max_train_steps=30", "callbacks.progress_bar.terminal=true"],
                      tmp_path / "bar"))  # fmt: skip
    err = capfd.readouterr().err
    assert "train: 100%" in err and "30/30" in err and "\r" in err  # one bar, redrawn
    assert "step 30/30 (" not in err  # no plain lines
    train(compose_cfg([*TINY, "max_train_steps=30", "callbacks.progress_bar.refresh_rate=0"],
                      tmp_path / "quiet"))  # fmt: skip
    err = capfd.readouterr().err
    assert "train:" not in err and "step 30/30" not in err and "trained to step" not in err
