"""Checkpoints that resume into exactly the run an uninterrupted one would have written.

* :class:`ModelCheckpoint`: Lightning's, plus: ``last.ckpt`` is written after *every*
  validation (Lightning >= 2.6 writes it only when a top-k checkpoint is saved at the same
  step: with ``save_top_k=1`` a validation that does not improve left ``last.ckpt`` at the
  last improvement, so a killed run resumed from further back than it needed and a finished
  run's ``last.ckpt`` was not its last step); and resuming into a *new* run directory takes
  the best checkpoint(s) along (copied from the old directory), so the new run keeps
  comparing against, and finally tests, the same best checkpoint as an uninterrupted run.
  Lightning alone forgets the best score when the directory changes, and the first
  validation after the resume becomes "best", however bad.
* :class:`MetricsFile`: ``metrics.csv`` (Lightning's CSV logger) survives an interruption:
  every checkpoint holds the file as written so far, and a resumed run starts from exactly
  that file (in place: the rows logged after the checkpoint go; in a new directory: the
  rows before it come along).

Both keep plain data only (paths, scores, text): checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

log = logging.getLogger("stablelab")


class ModelCheckpoint(_LightningModelCheckpoint):
    """:class:`lightning.pytorch.callbacks.ModelCheckpoint`, resumable into a new directory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_problems: list[str] = []
        self._resumed_from: Path | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        skip = self._should_skip_saving_checkpoint(trainer)
        super().on_validation_end(trainer, pl_module)
        if (
            self.save_last
            and not skip
            and not self._should_save_on_train_epoch_end(trainer)
            and self._last_global_step_saved != trainer.global_step  # no top-k save now
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # (before load_state_dict) where the checkpoint being restored lies: its sibling
        # files are the best checkpoints when the run directory was copied or moved
        path = trainer.ckpt_path
        self._resumed_from = Path(path) if path and Path(path).is_file() else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old is None or self.dirpath is None or _same(old, self.dirpath):
            super().load_state_dict(state_dict)
            return
        # resumed into a new run directory: bring the best checkpoints here, then restore
        # the record with the paths rewritten (Lightning keeps them only in the same dir)
        new_dir = Path(self.dirpath)
        moved: dict[str, str] = {}
        for path in dict(state_dict.get("best_k_models") or {}):
            name = Path(path).name
            dst = new_dir / name
            near = [self._resumed_from.parent / name] if self._resumed_from else []
            src = next((p for p in [*near, Path(path)] if p.is_file()), None)
            if dst.is_file():
                moved[path] = str(dst)
            elif src is not None:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                moved[path] = str(dst)
            else:
                self.resume_problems.append(
                    f"the best checkpoint {path} of the run resumed from is gone: this run "
                    "cannot test the checkpoint an uninterrupted run would have; its best "
                    "checkpoint is the best of the steps after the resume"
                )
        if self.resume_problems:
            for p in self.resume_problems:
                log.warning("stablelab: %s", p)
            return  # as Lightning does: start a fresh record in the new directory

        def here(p: str | None) -> str:
            return moved.get(p, str(new_dir / Path(p).name)) if p else p or ""

        state = dict(state_dict)
        state["dirpath"] = self.dirpath
        state["best_k_models"] = {here(p): v for p, v in state_dict["best_k_models"].items()}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = here(state_dict.get(key))
        super().load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        return {"resume_problems": self.resume_problems} if self.resume_problems else {}


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _read_exact(path: Path) -> str:
    with path.open(newline="") as f:  # no newline translation
        return f.read()


def _csv_loggers(trainer: L.Trainer) -> list[CSVLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]


class MetricsFile(L.Callback):
    """Keeps ``metrics.csv`` exact through a resume (see the module docstring)."""

    KEY = "metrics_csv"

    def __init__(self) -> None:
        self._restored: str | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        loggers = _csv_loggers(trainer)
        if not (loggers and trainer.is_global_zero):
            return
        lg = loggers[0]
        lg.save()  # flush what is buffered: the file then holds every row logged so far
        path = Path(lg.experiment.metrics_file_path)
        checkpoint[self.KEY] = _read_exact(path) if path.is_file() else ""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get(self.KEY)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        text, self._restored = self._restored, None
        loggers = _csv_loggers(trainer)
        if text is None or not (loggers and trainer.is_global_zero):
            return  # a fresh run: Lightning's logger starts the file anew
        writer = loggers[0].experiment
        path = Path(writer.metrics_file_path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:  # the csv module's \r\n line ends, as they were
            f.write(text)
        tmp.replace(path)
        # the logger appends to the file and rewrites its header when new columns come:
        # it must know the columns already there
        header = next(csv.reader([text.splitlines()[0]]), []) if text else []
        writer.metrics_keys = sorted(set(header) | set(writer.metrics_keys))
