"""``InjectSpikes``: make chosen training batches blow the loss up, to see what a remedy
does with a spike (the ``spike_remedies`` study; tests of your own remedies).

A batch is chosen by its place in the data order, not by the step: with stablelab's loaders
that is ``epoch x batches per epoch + batch index + batch_offset``, so a rollback that
skips batches (``callbacks.stability.rollbacks``) skips the bad batch as it would skip bad
data. On those batches the model's output is multiplied by ``factor`` (negative: the
likeliest class becomes the least likely, a loss of hundreds of nats): the forward and
backward of a corrupt batch, nothing else changed. Off unless configured; never in a
default config.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L


class InjectSpikes(L.Callback):
    def __init__(self, batches: Sequence[int] = (), factor: float = -100.0) -> None:
        self.batches = {int(b) for b in batches}
        self.factor = factor
        self.injected: list[int] = []  # steps at which a spike was injected
        self._hook = None

    @staticmethod
    def data_index(trainer, batch_idx: int) -> int:
        loader = trainer.train_dataloader
        offset = int(getattr(loader, "batch_offset", 0) or 0)
        return trainer.current_epoch * int(trainer.num_training_batches) + batch_idx + offset

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._remove()
        if self.batches and self.data_index(trainer, batch_idx) in self.batches:
            self.injected.append(int(trainer.global_step))
            self._hook = pl_module.model.register_forward_hook(lambda m, a, out: out * self.factor)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._remove()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._remove()  # (a callback before this one may end the batch: the guard)

    def _remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
