"""Datamodules for offline data: MNIST-1D (generated), scikit-learn digits, associative recall."""

from stablelab.data.datamodules import (
    DigitsDataModule,
    InMemoryDataModule,
    MNIST1DDataModule,
    SequenceDataModule,
)
from stablelab.data.loader import InMemoryLoader

__all__ = [
    "DigitsDataModule",
    "InMemoryDataModule",
    "InMemoryLoader",
    "MNIST1DDataModule",
    "SequenceDataModule",
]
