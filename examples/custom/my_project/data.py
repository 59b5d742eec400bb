"""A datamodule of your own: a standard LightningDataModule with torch DataLoaders.

The contract (stablelab.contract): ``input_spec`` and ``num_classes`` set in ``__init__``,
loaders that yield ``(x, y)`` batches. This one generates its data (noisy waveforms: the
class is the wave's shape) so that the example runs offline.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

SHAPES = ("sine", "square", "triangle", "sawtooth")


def make_waves(n: int, length: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` waveforms of ``length`` samples with random frequency, phase and amplitude,
    plus Gaussian noise; the label is the shape."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(SHAPES), n)
    t = np.arange(length)[None, :] / length
    freq = rng.uniform(1.5, 4.0, (n, 1))
    phase = rng.uniform(0, 1, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    u = (freq * t + phase) % 1.0  # position within the period
    waves = np.stack(
        [np.sin(2 * np.pi * u), np.sign(np.sin(2 * np.pi * u)), 4 * np.abs(u - 0.5) - 1, 2 * u - 1]
    )
    x = amp * waves[y, np.arange(n)] + noise * rng.normal(size=(n, length))
    return x.astype(np.float32), y.astype(np.int64)


class WavesDataModule(L.LightningDataModule):
    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 500,
        num_test: int = 1000,
        length: int = 64,
        noise: float = 0.3,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.length, self.noise, self.seed = length, noise, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        # the contract: what the model builder needs to know
        self.input_spec = {
            "task": "classification",
            "kind": "real",
            "length": length,
            "channels": 1,
            "vocab_size": 0,
        }
        self.num_classes = len(SHAPES)
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for i, (split, n) in enumerate(self.sizes.items()):
            x, y = make_waves(n, self.length, self.noise, self.seed + i)
            self.splits[split] = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.splits["train"], batch_size=self.batch_size, shuffle=True, drop_last=True,
            generator=g,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.eval_batch_size)
