"""FSDP2 for stablelab: Lightning's ModelParallelStrategy with every rank in one
data-parallel group (no tensor parallelism). ``StableModule.configure_model`` applies
torch's ``fully_shard`` over that group."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel over all ``devices x num_nodes`` processes.

    Lightning's ``data_parallel_size="auto"`` means one group per node (for 2-D
    parallelism); here the data-parallel size is the world size, fixed when the processes
    are known. ``save_distributed_checkpoint=False`` (default) gathers the full model and
    optimizer state into one checkpoint file on rank 0, loadable under any strategy.
    Works on GPUs (NCCL) and on CPU (gloo, ``trainer=fsdp_cpu``)."""

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
