"""The offline-run reader against a real W&B offline run: what was logged comes back, a log
that W&B has not finished writing (it ends at a block boundary, or inside a chunk) reads
as its complete prefix and is not taken for closed."""

from __future__ import annotations

import shutil
from pathlib import Path

import wandb

from stablelab.analysis import wandb_offline


def test_reader_returns_what_was_logged_and_knows_an_unfinished_log(tmp_path):
    run = wandb.init(project="stablelab-test", dir=str(tmp_path), mode="offline")
    log_file = run.settings.sync_file
    # ~300 rows of ~150 bytes: the log spans two 32 KiB blocks, records cross a boundary
    logged = [{"i": i, "x": i * 0.5, "name": f"row-{i:04d}-" + "x" * 60} for i in range(300)]
    for row in logged:
        run.log(row)
    run.finish()
    assert wandb_offline.wait_closed(log_file, timeout=60)

    hist = wandb_offline.history(log_file)
    assert [{k: h[k] for k in ("i", "x", "name")} for h in hist] == logged
    assert wandb_offline.is_closed(log_file)
    data = Path(log_file).read_bytes()
    assert len(data) > 2 * 32 * 1024

    # what W&B's service has on disk before it closes the stream: whole blocks only
    block = tmp_path / "block.wandb"
    block.write_bytes(data[: 2 * 32 * 1024])
    prefix = [{k: h[k] for k in ("i", "x", "name")} for h in wandb_offline.history(block)]
    assert 0 < len(prefix) < len(logged) and prefix == logged[: len(prefix)]
    assert not wandb_offline.is_closed(block)
    assert not wandb_offline.wait_closed(block, timeout=0.1)

    # a read while the last block is being written: it stops before the partial chunk
    torn = tmp_path / "torn.wandb"
    torn.write_bytes(data[:-5])
    rows = wandb_offline.history(torn)
    assert [h["i"] for h in rows] == [h["i"] for h in hist][: len(rows)]
    assert not wandb_offline.is_closed(torn)

    # and a complete copy is closed
    copy = tmp_path / "copy.wandb"
    shutil.copyfile(log_file, copy)
    assert wandb_offline.wait_closed(copy, timeout=0.1)


def test_a_workflow_trial_is_named_after_its_folder_in_wandb(monkeypatch):
    """Trials of a `stablelab` workflow (STABLELAB_SWEEP_GROUP set) share a group and take
    their folder's name (lr_0.001) instead of a random one; a run_name of the user's is
    kept; outside a workflow the name stays unset (W&B picks one)."""
    from stablelab.tracking import wandb_defaults

    def plain(name=None):
        return {"paths": {"output_dir": "/runs/lr_sweep/lr_0.001"},
                "logger": {"wandb": {"name": name, "group": None}}}  # fmt: skip

    monkeypatch.setenv("STABLELAB_SWEEP_GROUP", "diagnose/lr_sweep")
    p = plain()
    wandb_defaults(p)
    assert p["logger"]["wandb"]["name"] == "lr_0.001"
    assert p["logger"]["wandb"]["group"] == "diagnose/lr_sweep"
    p = plain("mine")
    wandb_defaults(p)
    assert p["logger"]["wandb"]["name"] == "mine"
    monkeypatch.delenv("STABLELAB_SWEEP_GROUP")
    p = plain()
    wandb_defaults(p)
    assert p["logger"]["wandb"]["name"] is None
