"""Datamodules for offline data: MNIST-1D (generated), scikit-learn digits, associative
recall, your own arrays (.npz), and character-level text (Tiny Shakespeare, shipped; or any
local text file)."""

from stablelab.data.datamodules import (
    DigitsDataModule,
    InMemoryDataModule,
    MNIST1DDataModule,
    NpzDataModule,
    SequenceDataModule,
)
from stablelab.data.loader import InMemoryLoader, RandomWindowLoader
from stablelab.data.text import CharTextDataModule

__all__ = [
    "CharTextDataModule",
    "DigitsDataModule",
    "InMemoryDataModule",
    "InMemoryLoader",
    "MNIST1DDataModule",
    "NpzDataModule",
    "RandomWindowLoader",
    "SequenceDataModule",
]
