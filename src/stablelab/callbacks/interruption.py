"""Interruptions (Ctrl-C, SIGTERM, SLURM's preemption signal) end a run resumably.

On SIGTERM, SIGUSR1 (what SLURM sends before preempting a job, with ``--signal``) or a
first Ctrl-C (SIGINT), training stops at the end of the current step, through Lightning's
own SIGTERM path (under DDP rank 0 forwards the signal to the other ranks and every rank
stops at the same step). Then, before anything else reads the run's state, this callback
saves ``checkpoints/last.ckpt`` at that step (telemetry not yet read back included), so a
resumed run continues exactly where this one stopped. A second Ctrl-C interrupts at once.

``train`` records ``status: interrupted`` with the signal, the step and the command that
resumes the run, and exits with 128 + the signal's number (130 for Ctrl-C, 143 for
SIGTERM, 138 for SIGUSR1), the shell's convention for a process ended by a signal. With
``requeue: true`` (the default) and ``$SLURM_JOB_ID`` set, rank 0 also asks SLURM to
requeue the job (``scontrol requeue``); the requeued job resumes from the checkpoint when
it runs with a fixed ``hydra.run.dir`` and ``ckpt_path=auto`` (see README).

An interruption in the middle of a validation run cannot be checkpointed at a clean point:
then the resume point is the last checkpoint saved before it, and the summary says so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger("stablelab")

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class Interruption(L.Callback):
    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.received: int | None = None  # the first signal's number
        self.info: dict[str, Any] | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning has registered its SIGTERM handler by now: ours note the signal and
        hand over to it (SIGUSR1 and a first SIGINT as if they were SIGTERM)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        self.received = None
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.received is None:
            self.received = signum
            lightning_sigterm = self._previous.get(signal.SIGTERM)
            if callable(lightning_sigterm):  # Lightning: stop after this step
                lightning_sigterm(signal.SIGTERM, frame)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    # ------------------------------------------------------------------ the stop
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore()
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
            return
        mid_eval = bool(trainer.validating or trainer.sanity_checking)
        checkpoint = None
        if isinstance(exception, SIGTERMException) and not mid_eval and trainer.state.fn == "fit":
            ckpt_cb = trainer.checkpoint_callback
            ckpt_dir = getattr(ckpt_cb, "dirpath", None) or Path(trainer.default_root_dir)
            checkpoint = Path(ckpt_dir) / "last.ckpt"
            trainer.save_checkpoint(checkpoint)  # every rank: the strategy writes once
        self.info = info = describe(trainer, exception, self.received, checkpoint)
        if trainer.is_global_zero and info is not None:
            log.warning(
                "stablelab: interrupted by %s at step %d%s",
                info["signal"],
                info["step"],
                f"; checkpoint: {info['checkpoint']}" if info["checkpoint"] else "",
            )
            if self.requeue and os.environ.get("SLURM_JOB_ID"):
                info["requeued"] = _requeue()


def describe(
    trainer, exception: BaseException, signum: int | None = None, saved: Path | None = None
) -> dict[str, Any] | None:
    """``summary.json``'s ``interrupted`` record of a run stopped by a signal (None for any
    other exception): the signal, the exit code (128 + its number), the step, and the
    checkpoint to resume from: ``saved`` at this step, else the last one saved before."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
        return None
    if signum is None:
        signum = signal.SIGINT if isinstance(exception, KeyboardInterrupt) else signal.SIGTERM
    last = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
    checkpoint = saved if saved is not None else (Path(last) if last else None)
    if checkpoint is not None and not checkpoint.is_file():
        checkpoint = None
    found = checkpoint is not None
    step = int(trainer.global_step)
    return {
        "signal": signal.Signals(signum).name,
        "exit_code": 128 + int(signum),
        "step": step,
        "checkpoint": str(checkpoint) if found else None,
        "checkpoint_step": (step if saved is not None else _global_step(checkpoint))
        if checkpoint is not None
        else None,
        "during_validation": bool(trainer.validating or trainer.sanity_checking),
    }


def _global_step(path: Path) -> int | None:
    import torch

    try:
        return int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:  # noqa: BLE001 - a step we cannot read is reported as unknown
        return None


def _requeue() -> bool:
    """``scontrol requeue <job>`` (an array job's task id included)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array and os.environ.get("SLURM_ARRAY_TASK_ID")
        else os.environ["SLURM_JOB_ID"]
    )
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as e:
        log.warning("stablelab: could not requeue SLURM job %s: %s", job, e)
        return False
    if done.returncode != 0:
        log.warning("stablelab: scontrol requeue %s failed: %s", job, done.stderr.strip())
        return False
    log.warning("stablelab: requeued SLURM job %s", job)
    return True
