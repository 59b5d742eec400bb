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
