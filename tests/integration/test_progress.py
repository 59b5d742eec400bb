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


def test_default_plain_lines_never_repeat_a_logged_loss(tmp_path, capfd):
    """60 steps: 5% would be a line every 3 steps, but the loss is logged every 10
    (trainer.log_every_n_steps): a line every 10, each with a fresh loss, written with four
    significant digits (0.3000, not 0.3)."""
    train(compose_cfg([*TINY, "max_train_steps=60", "callbacks.progress_bar.terminal=false"],
                      tmp_path / "run"))  # fmt: skip
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == [f"{s}/60" for s in (10, 20, 30, 40, 50, 60)]
    losses = [re.search(r"  loss (\S+)  ", ln).group(1) for ln in lines]  # type: ignore[union-attr]
    assert len(set(losses)) == len(losses), losses
    assert all(len(x.replace(".", "").lstrip("0")) == 4 for x in losses), losses


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


def test_without_stablelabs_callbacks_lightning_adds_no_bar_and_no_checkpoint(tmp_path):
    """callbacks.progress_bar=null / model_checkpoint=null (or callbacks=none): Lightning would
    add its own bar, counting epochs of a run measured in steps ("Epoch 0/-2"), and its own
    checkpoint, keeping each epoch's end as "best"; the trainer gets neither (Lightning's
    attributes say so), unless trainer.enable_progress_bar / enable_checkpointing is set."""
    from stablelab.config import validate
    from stablelab.train import _trainer

    def trainer(extra):
        args = ["experiment=digits_mlp", "logger=csv", "callbacks=none", *extra]
        plain = validate(compose_cfg(args, tmp_path / "run"))
        return _trainer(plain, [], [], 10)

    t = trainer([])
    assert t.progress_bar_callback is None and t.checkpoint_callback is None
    t = trainer(["+trainer.enable_progress_bar=true", "+trainer.enable_checkpointing=true"])
    assert t.progress_bar_callback is not None and t.checkpoint_callback is not None
