"""The CPU thread policy of a run (applied by ``stablelab-train`` in every process).

torch's default intra-op thread count is the machine's core count, whatever share of it the
process may use or how many processes share the node; two runs side by side on 2 cores then
slow each other down several times over. The policy, first match wins:

1. the config key ``threads`` (a positive integer);
2. ``$OMP_NUM_THREADS`` (what the workflows and Lightning's DDP launcher set for their
   processes, and what a user may export);
3. the cores this process may use (``os.sched_getaffinity``: a container's or ``taskset``'s
   limit, where ``os.cpu_count`` would report the whole machine), divided by the number of
   processes this run starts on the node (DDP on CPU: ``trainer.devices``), at least 1.

Inter-op threads: 1 (the models run one op at a time). The chosen values are exported as
``OMP_NUM_THREADS`` for the processes the run starts (DDP ranks), for the duration of the
run only (:func:`applied`: a later run in the same process, a multirun's next trial or a
second ``stablelab.run`` call, chooses for itself), and recorded in ``summary.json``
(``threads``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def local_processes(trainer_cfg: dict[str, Any]) -> int:
    """How many processes a run starts on this node: ``trainer.devices`` for a CPU
    strategy that spawns one process per device (DDP, FSDP); 1 otherwise (a GPU process
    drives its device, its CPU threads feed it)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices.strip().isdigit():  # "2", as Lightning reads it
        devices = int(devices)
    on_cpu = trainer_cfg.get("accelerator", "cpu") == "cpu"
    return devices if on_cpu and isinstance(devices, int) and devices > 0 else 1


def choose(requested: int | None, local: int = 1) -> dict[str, Any]:
    """The policy above, without side effects: {"intra_op", "inter_op", "source"}."""
    if requested is not None:
        return {"intra_op": int(requested), "inter_op": 1, "source": "config threads"}
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return {"intra_op": int(env), "inter_op": 1, "source": "OMP_NUM_THREADS"}
    cores = available_cores()
    return {
        "intra_op": max(1, cores // max(1, local)),
        "inter_op": 1,
        "source": f"{cores} available cores / {local} process(es)",
    }


@contextlib.contextmanager
def applied(requested: int | None, trainer_cfg: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """:func:`apply` for one run: ``$OMP_NUM_THREADS`` is put back as it was afterwards
    (unset if it was unset). Without this the first run's export would become every later
    run's "user-set" count in the same process: a ``threads=1`` trial would pin the next
    trial to 1, and a one-process trial's count would be handed to a DDP trial's ranks."""
    before = os.environ.get("OMP_NUM_THREADS")
    try:
        yield apply(requested, trainer_cfg)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def apply(requested: int | None, trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """Choose and set the thread counts of this process; return what was chosen."""
    import torch

    local = local_processes(trainer_cfg)
    chosen = choose(requested, local)
    cores = available_cores()
    if requested is not None and chosen["intra_op"] * local > cores:
        warnings.warn(
            f"threads = {chosen['intra_op']}: {chosen['intra_op'] * local} threads in all "
            f"({local} process(es)) on the {cores} core(s) this process may use; they will "
            f"slow each other down (leave threads unset for {max(1, cores // local)})",
            stacklevel=2,
        )
    torch.set_num_threads(chosen["intra_op"])
    # allowed once, before any inter-op parallel work has started in this process
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(chosen["inter_op"])
    chosen["inter_op"] = torch.get_num_interop_threads()
    os.environ["OMP_NUM_THREADS"] = str(chosen["intra_op"])  # the ranks this run starts
    return chosen
