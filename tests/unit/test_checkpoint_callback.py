"""stablelab's ModelCheckpoint against Lightning's documented meaning of ``save_last``: the
last checkpoint holds the last validated step, whether or not that validation improved."""

from __future__ import annotations

import lightning as L
import torch

from stablelab.callbacks import ModelCheckpoint


class Worsening(L.LightningModule):
    """Validation loss = the global step: only the first validation is ever the best."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(100, 1), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(1, 1), batch_size=1)


def test_last_checkpoint_follows_every_validation_not_only_improvements(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_top_k=1,
                           save_last=True, filename="best")  # fmt: skip
    trainer = L.Trainer(
        max_steps=6, val_check_interval=2, callbacks=[ckpt], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    seen = []

    class Spy(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append(torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"])

    trainer.callbacks.append(Spy())  # after the checkpoint callback: sees what it wrote
    trainer.fit(Worsening())
    assert seen == [2, 4, 6]  # Lightning 2.6 alone: [2, 2, 2]
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["global_step"] == 2
    assert ckpt.best_model_path == str(tmp_path / "best.ckpt")


def test_changed_settings_lists_every_number_changing_leaf_and_skips_presentation():
    """The settings a resume compares, on hand-written configs: changed, added and removed
    leaves (nested, lists) with both values; where the run writes, what it logs and how it
    prints are not settings that change a number."""
    from stablelab.checkpoints import changed_settings

    old = {
        "seed": 1,
        "optimizer": {"lr": 0.003, "betas": [0.9, 0.999]},
        "model": {"residual": {"layout": "pre_norm"}, "dropout": 0.0},
        "callbacks": {"kill": {"step": 3}, "progress_bar": {"refresh_rate": 10}},
        "trainer": {"default_root_dir": "/a", "devices": 1},
        "paths": {"output_dir": "/a"},
        "logger": {"csv": {}},
        "task_name": "train",
        "ckpt_path": None,
        "data": {"data_dir": "/x", "batch_size": 128},
    }
    new = {
        "seed": 1,
        "optimizer": {"lr": 0.001, "betas": [0.9, 0.99]},
        "model": {"residual": {"layout": "pre_norm"}, "dropout": 0.0, "bias": False},
        "callbacks": {"progress_bar": {"refresh_rate": 1}},
        "trainer": {"default_root_dir": "/b", "devices": 2},
        "paths": {"output_dir": "/b"},
        "logger": {},
        "task_name": "resumed",
        "ckpt_path": "/a/checkpoints/last.ckpt",
        "data": {"data_dir": "/y", "batch_size": 128},
    }
    assert changed_settings(old, new) == {
        "callbacks.kill.step": [3, None],
        "model.bias": [None, False],
        "optimizer.betas": [[0.9, 0.999], [0.9, 0.99]],
        "optimizer.lr": [0.003, 0.001],
        "trainer.devices": [1, 2],
    }
    assert changed_settings(old, old) == {}
