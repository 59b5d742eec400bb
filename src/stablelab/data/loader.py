"""Batch loaders for datasets that fit in memory.

It indexes whole batches out of pre-built tensors (one gather per tensor per batch, no
per-sample ``__getitem__`` and no collate), which on small inputs is many times faster than
``torch.utils.data.DataLoader``. The shuffle order is a pure function of ``(seed, epoch)``,
so a run resumed from a checkpoint at an epoch boundary sees the same batches, and the
global order does not depend on the number of ranks: with ``world_size`` ranks each global
batch of ``batch_size * world_size`` examples is split into contiguous per-rank slices, so a
2-process run sees the same global batches as a 1-process run with twice the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class HeadLoader(Protocol):
    """An evaluation loader that can serve exactly its split's first ``n`` examples (dense
    evaluation on a subset uses it; another loader gives each rank its share of batches)."""

    def head(self, n: int) -> Iterable: ...


class _EpochSampler:
    """Holds the epoch; Lightning calls ``loader.sampler.set_epoch(epoch)`` each epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class StatefulLoader:
    """Lightning's stateful-loader protocol over numbered batches: ``len(self)`` batches an
    epoch, batch ``b`` of the current epoch from :meth:`_batch`; the epoch (set by
    Lightning through ``loader.sampler.set_epoch``) and the batches consumed are saved in
    checkpoints, so a run resumed mid-epoch continues with the next batch."""

    def __init__(self) -> None:
        self.sampler = _EpochSampler()
        self.batch_sampler = None  # Lightning inspects both attributes of a loader
        self._yielded = 0  # batches handed out in the current pass
        self._skip = 0  # batches to skip on the next pass (mid-epoch resume)
        # global batches the data order runs ahead of the steps (a rollback skips the
        # batches around a divergence: stablelab.callbacks.StabilityMonitor's rollbacks);
        # batch b of epoch e is then the order's global batch e * len + b + batch_offset
        self.batch_offset = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def _start_epoch(self) -> None:
        """Called once per pass, before its first batch."""

    def _batch(self, b: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _batch_of_epoch(self, epoch: int, b: int) -> tuple[torch.Tensor, ...]:
        """Batch ``b`` of the order's epoch ``epoch`` (not the current one)."""
        raise NotImplementedError

    def _next(self, b: int) -> tuple[torch.Tensor, ...]:
        if not self.batch_offset:
            return self._batch(b)
        epoch, b = divmod(self.sampler.epoch * len(self) + b + self.batch_offset, len(self))
        return self._batch(b) if epoch == self.sampler.epoch else self._batch_of_epoch(epoch, b)

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches consumed. Lightning's fetcher does not read ahead on a sized
        iterable (it knows the length), so every batch handed out has been consumed."""
        consumed = self._yielded if self._yielded < len(self) else 0
        epoch = self.sampler.epoch + (1 if self._yielded >= len(self) else 0)
        return {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._skip = int(state["consumed"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self._start_epoch()
        start, self._skip = self._skip, 0
        self._yielded = start
        for b in range(start, len(self)):
            self._yielded += 1
            yield self._next(b)


def _rank_slice(chunk: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch; an incomplete last global batch is
    split so that slice sizes differ by at most one (a rank's slice is empty only when the
    chunk has fewer examples than there are ranks)."""
    base, extra = divmod(chunk.numel(), world_size)
    lo = rank * base + min(rank, extra)
    return chunk[lo : lo + base + (rank < extra)]


class InMemoryLoader(StatefulLoader):
    """Iterate ``(x, y)`` batches from in-memory tensors.

    Args:
        tensors: tensors sharing their first dimension (e.g. inputs and labels).
        batch_size: examples per batch on this rank.
        shuffle: reshuffle each epoch with ``torch.randperm(seed + epoch)``.
        drop_last: drop the final incomplete global batch (training: every rank then
            runs the same number of steps).
        rank, world_size: this process's share of each global batch.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("InMemoryLoader needs tensors with the same first dimension")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._order_now = torch.arange(0)

    @property
    def num_examples(self) -> int:
        return self.tensors[0].shape[0]

    def head(self, n: int) -> InMemoryLoader:
        """The first ``n`` examples of this (evaluation) split, in order, shared over the
        ranks as this loader shares them: the :class:`HeadLoader` interface."""
        return InMemoryLoader(
            *(t[:n] for t in self.tensors),
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __len__(self) -> int:
        global_bs = self.batch_size * self.world_size
        n = self.num_examples
        return n // global_bs if self.drop_last else -(-n // global_bs)

    def _order(self, epoch: int | None = None) -> torch.Tensor:
        n = self.num_examples
        if not self.shuffle:
            return torch.arange(n)
        epoch = self.sampler.epoch if epoch is None else epoch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    def _start_epoch(self) -> None:
        self._order_now = self._order()
        self._order_next: tuple[int, torch.Tensor] | None = None

    def _batch(self, b: int, order: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        gbs = self.batch_size * self.world_size
        order = self._order_now if order is None else order
        idx = _rank_slice(order[b * gbs : (b + 1) * gbs], self.rank, self.world_size)
        return tuple(t[idx] for t in self.tensors)

    def _batch_of_epoch(self, epoch: int, b: int) -> tuple[torch.Tensor, ...]:
        cached = getattr(self, "_order_next", None)
        if cached is None or cached[0] != epoch:
            cached = self._order_next = (epoch, self._order(epoch))
        return self._batch(b, cached[1])


class RandomWindowLoader(StatefulLoader):
    """Training batches of a language model: random windows of ``block_size + 1`` tokens
    of one long token sequence, ``x`` the first ``block_size`` and ``y`` the next token of
    each (the window shifted by one).

    The offsets of global batch ``g`` (``g = epoch * len(self) + b``, i.e. the training
    step when every step takes one batch) are drawn from a generator seeded with
    ``(seed, g)`` alone: the order is a pure function of the seed and the step, so resumed
    and multi-process runs see exactly the batches of one uninterrupted process with the
    global batch (each rank takes its contiguous slice, as :class:`InMemoryLoader` does).
    An "epoch" is nominal: about one pass worth of windows, ``tokens // (block_size x
    global batch)`` batches.
    """

    def __init__(
        self,
        data: torch.Tensor,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if data.dim() != 1 or data.numel() < block_size + 1:
            raise ValueError(
                f"need a 1-D token sequence of at least block_size + 1 = {block_size + 1} "
                f"tokens, got shape {tuple(data.shape)}"
            )
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._window = torch.arange(block_size + 1)

    def __len__(self) -> int:
        per_batch = self.block_size * self.batch_size * self.world_size
        return max(1, self.data.numel() // per_batch)

    def offsets(self, g: int) -> torch.Tensor:
        """The start of every window of global batch ``g`` (all ranks)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + g)
        high = self.data.numel() - self.block_size  # a window needs block_size + 1 tokens
        return torch.randint(high, (self.batch_size * self.world_size,), generator=gen)

    def _batch_of_epoch(self, epoch: int, b: int) -> tuple[torch.Tensor, ...]:
        return self._windows(epoch * len(self) + b)

    def _batch(self, b: int) -> tuple[torch.Tensor, ...]:
        return self._windows(self.sampler.epoch * len(self) + b)

    def _windows(self, g: int) -> tuple[torch.Tensor, ...]:
        starts = _rank_slice(self.offsets(g), self.rank, self.world_size)
        windows = self.data[starts[:, None] + self._window]  # one gather: (B, block + 1)
        return windows[:, :-1], windows[:, 1:]
