"""Checks that need the machine or the data, run after the config is validated and before
anything trains: each problem is one :class:`~stablelab.config.ConfigError` line naming
the key, its value and what is allowed.

* the machine: the accelerator exists, there are as many devices as asked for, the
  directories the run writes to are writable;
* the data: one training step needs a full global batch from the training split (a batch
  as large as the split trains zero steps and would report an untrained model).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


def writable_problem(key: str, path: str | Path) -> str | None:
    """None if ``path`` (a directory, existing or to be created) can be written to."""
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{key} = '{path}': {probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{key} = '{path}': not writable ({probe} does not allow writing)"
    if probe != p and not started_by_a_launcher():
        # a folder to create: try its first level (permissions say yes to root, and a file
        # system such as /proc refuses anyway), and leave nothing behind (not where peers
        # started at once create the same folders: one could remove what another just made)
        first = p
        while first.parent != probe:
            first = first.parent
        try:
            first.mkdir()
        except FileExistsError:  # made meanwhile by another process: fine
            return None
        except OSError as e:
            return f"{key} = '{path}': cannot be created ({first}: {e.strerror or e})"
        with contextlib.suppress(OSError):  # (not empty: filled meanwhile, so it is needed)
            first.rmdir()
    return None


def started_by_a_launcher() -> bool:
    """True in a process that one of several started together (Lightning's DDP children,
    torchrun, ``srun`` with several tasks): its peers write the same run directory at the
    same time, so what they find there is no other run's."""
    env = os.environ
    return any(k in env for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE")) or (
        env.get("SLURM_NTASKS", "1").isdigit() and int(env.get("SLURM_NTASKS", "1")) > 1
    )


def occupied_problem(
    run_dir: str | Path, ckpt_path: str | None, training: bool, key: str = "hydra.run.dir"
) -> str | None:
    """A directory that holds another run's results (``summary.json``, checkpoints), which
    a new run or an evaluation there would overwrite (its summary, config, CSVs and
    report) and mix checkpoints with; None where it holds none, or for a resume in place
    (``ckpt_path=auto`` or a checkpoint inside it)."""
    from stablelab.analysis.runs import has_summary, read_summary

    run_dir = Path(run_dir)
    ckpts = list((run_dir / "checkpoints").glob("*.ckpt")) if run_dir.is_dir() else []
    if not (has_summary(run_dir) or ckpts):
        return None
    if training and ckpt_path is not None:
        if ckpt_path == "auto":
            return None
        if "://" not in ckpt_path and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
            return None
    held = []
    try:
        s = read_summary(run_dir)
        status = "an unfinished" if s["status"] == "running" else f"a {s['status']}"
        held.append(f"{status} run at step {int(s['steps'])}")
    except (OSError, ValueError, TypeError, KeyError):  # (RunFileError: a damaged one)
        held.append("summary.json" if has_summary(run_dir) else "no summary")
    if ckpts:
        held.append(f"{len(ckpts)} checkpoint(s)")
    what = "a new run" if training else "an evaluation"
    fix = (
        "resume that run in place with ckpt_path=auto, or choose another directory (without "
        f"{key} every run gets a new one)"
        if training
        else "choose another directory"
    )
    return (
        f"{key} = '{run_dir}': holds a run already ({', '.join(held)}); {what} there would "
        f"overwrite its files: {fix}"
    )


WANDB_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")  # wandb.Settings


def wandb_mode_problems(plain: dict[str, Any]) -> list[str]:
    """A ``WANDB_MODE`` W&B does not know, with a W&B logger configured: W&B would
    fail to start the run, and stablelab's fallback would log offline under a misleading
    "could not log online"."""
    loggers = plain.get("logger") or {}
    if not any(
        isinstance(lg, dict) and "WandbLogger" in str(lg.get("_target_", ""))
        for lg in loggers.values()
    ):
        return []
    allowed = ", ".join(WANDB_MODES[:4])
    problems = []
    env = os.environ.get("WANDB_MODE")
    if env is not None and env not in WANDB_MODES:  # (dryrun, run: W&B's older names)
        problems.append(
            f"WANDB_MODE = {env!r} (environment): W&B's modes are {allowed} (unset it for "
            "stablelab's default, offline)"
        )
    return problems  # (logger.wandb.mode is checked against wandb.init's signature)


def environment_problems(plain: dict[str, Any]) -> list[str]:
    problems = wandb_mode_problems(plain)
    paths = plain.get("paths") or {}
    for key in ("data_dir", "log_dir"):
        if paths.get(key) is not None and (p := writable_problem(f"paths.{key}", paths[key])):
            problems.append(p)
    trainer = plain.get("trainer") or {}
    accel = str(trainer.get("accelerator", "auto")).lower()
    if accel in ("gpu", "cuda", "mps", "tpu"):
        import torch

        if accel in ("gpu", "cuda"):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            what = "no CUDA device" if count == 0 else f"{count} CUDA device(s)"
        elif accel == "mps":
            count = 1 if torch.backends.mps.is_available() else 0
            what = "no Apple MPS device"
        else:
            count, what = 0, "no TPU support in this install"
        if count == 0:
            problems.append(
                f"trainer.accelerator = {accel!r}: not available on this machine ({what}); "
                "use trainer=cpu (or trainer.accelerator=cpu)"
            )
        else:
            devices = trainer.get("devices")
            if isinstance(devices, int) and devices > count:
                problems.append(
                    f"trainer.devices = {devices}: this machine has {what}; "
                    f"use at most {count} (or -1 for all)"
                )
            elif isinstance(devices, list) and any(
                not isinstance(d, int) or d >= count or d < 0 for d in devices
            ):
                problems.append(
                    f"trainer.devices = {devices}: device indices must be in 0..{count - 1}"
                )
    return problems


def data_problems(plain: dict[str, Any], datamodule, world_size: int) -> list[str]:
    """A training split smaller than one global batch trains nothing."""
    if not plain.get("train") or not hasattr(datamodule, "split_sizes"):
        return []
    n = datamodule.split_sizes().get("train", 0)
    batch = getattr(datamodule, "batch_size", None)
    if not isinstance(batch, int) or batch * world_size <= n:
        return []
    per = f" x {world_size} processes = {batch * world_size}" if world_size > 1 else ""
    return [
        f"data.batch_size = {batch}{per}: larger than the training split ({n} examples), "
        "so not one training step would run; use a batch size of at most "
        f"{n // world_size} per process (or more data)"
    ]
