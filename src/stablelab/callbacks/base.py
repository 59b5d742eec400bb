"""The shared base of the callbacks that read the per-step device telemetry.

All of them share one :class:`~stablelab.telemetry.StepTelemetry` on the module. The first
one to see ``every`` steps pending flushes it (one device-to-host copy) and hands the rows
to every telemetry callback's :meth:`TelemetryCallback.consume`; callbacks with device
buffers of their own (dense evaluation, update ratios) read them back in the same moment.
What the callbacks report to the loggers during a flush (:meth:`TelemetryCallback.log_step`)
is merged into one ``log_metrics`` call per step and logger (:class:`StepMetrics`). Then each
callback's :meth:`TelemetryCallback.after_flush` runs: that is where the divergence guard
stops a run. A flush also happens before every validation (so a diverged
model is never validated or checkpointed), at the end of training and on an exception.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from stablelab.telemetry import StepTelemetry


def append_csv(path: Path, fieldnames: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a CSV file, writing the header when the file is new."""
    fresh = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        if fresh:
            w.writeheader()
        w.writerows(rows)


class CsvRows:
    """The rows of one CSV file of the run directory, kept in memory and in checkpoints.

    Rows are appended to the file as they come (nothing is lost if the process dies). At
    the start of fit the file is rewritten from the rows in memory: none in a fresh run (a
    stale file from an earlier run in the same directory goes), exactly those the
    checkpoint holds in a resumed one, whether it resumes in place (rows written after the
    checkpoint go) or into a new directory (rows before it come along). The rewrite is
    byte for byte what the appends wrote, so a resumed run ends with the same file as an
    uninterrupted one.
    """

    def __init__(self, filename: str, fields: Sequence[str] = ()) -> None:
        self.filename = filename
        self.fields = list(fields)
        self.rows: list[dict[str, Any]] = []
        # the rows column by column, extended by the rows added since the last checkpoint
        # (rows are never changed once added: the file already holds them); rebuilt when
        # ``rows`` is another list or the fields change
        self._cols: dict[str, tuple[list[Any], set[type], list[int]]] = {}
        self._cols_of: tuple[list[dict[str, Any]], list[str]] | None = None

    def add(self, run_dir: Path | None, rows: list[dict[str, Any]], write: bool) -> None:
        self.rows += rows
        if write and run_dir is not None and rows:
            append_csv(run_dir / self.filename, self.fields, rows)

    def rewrite(self, run_dir: Path) -> None:
        path = run_dir / self.filename
        if not self.rows:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        append_csv(tmp, self.fields, self.rows)
        tmp.replace(path)

    def _columns(self) -> dict[str, tuple[list[Any], set[type], list[int]]]:
        """field -> (its values, their types, the indices of its Nones), up to date."""
        of = self._cols_of
        n = len(next(iter(self._cols.values()))[0]) if self._cols else 0
        if of is None or of[0] is not self.rows or of[1] != self.fields or len(self.rows) < n:
            self._cols, n = {k: ([], set(), []) for k in self.fields}, 0
            self._cols_of = (self.rows, list(self.fields))
        new = self.rows[n:]
        for k, (values, kinds, nones) in self._cols.items():
            add = [r.get(k) for r in new]
            kinds.update(map(type, add))
            nones += [n + i for i, v in enumerate(add) if v is None]
            values += add
        return self._cols

    def state_dict(self) -> dict[str, Any]:
        """The header and the rows column by column (loads with ``weights_only=True``): a
        column of ints, of floats, or of floats and Nones is one tensor (with a mask of the
        Nones); one of text, its non-empty values and their rows; any other a plain list.
        Each checkpoint holds every row so far: one Python list per row, rebuilt at each
        checkpoint, cost 0.3 s and 9 MB per checkpoint of a 100k-step run and grew with the
        run; the columns are kept up to date as rows come and written as bytes. ``tolist``
        gives each value back exactly (float64 holds every Python float), so the rewritten
        file is byte for byte the same."""
        import torch

        columns: dict[str, dict[str, Any]] = {}
        for k, (values, kinds, nones) in self._columns().items():
            if kinds <= {int}:
                columns[k] = {"int": torch.tensor(values, dtype=torch.int64)}
            elif kinds <= {float, type(None)}:
                floats = list(values)
                for i in nones:
                    floats[i] = math.nan
                col = {"float": torch.tensor(floats, dtype=torch.float64)}
                if nones:
                    mask = torch.zeros(len(values), dtype=torch.bool)
                    mask[nones] = True
                    col["none"] = mask
                columns[k] = col
            elif kinds <= {str}:  # mostly empty (the events): the others and where they are
                at = [i for i, v in enumerate(values) if v]
                columns[k] = {
                    "text_at": torch.tensor(at, dtype=torch.int64),
                    "text": [values[i] for i in at],
                }
            else:
                columns[k] = {"list": list(values)}
        return {"fields": list(self.fields), "n": len(self.rows), "columns": columns}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fields = list(state["fields"])
        if "rows" in state:  # a checkpoint written before the columns (2026-12-06)
            self.rows = [dict(zip(self.fields, v, strict=True)) for v in state["rows"]]
            return
        cols = []
        for k in self.fields:
            c = state["columns"][k]
            if "list" in c:
                cols.append(list(c["list"]))
            elif "text" in c:
                text = [""] * int(state["n"])
                for i, v in zip(c["text_at"].tolist(), c["text"], strict=True):
                    text[i] = v
                cols.append(text)
            elif "int" in c:
                cols.append(c["int"].tolist())
            else:
                values = c["float"].tolist()
                if "none" in c:
                    values = [
                        None if n else v for v, n in zip(values, c["none"].tolist(), strict=True)
                    ]
                cols.append(values)
        n = int(state["n"])
        if any(len(c) != n for c in cols):
            raise ValueError(f"{self.filename}: a checkpoint's columns of unequal length")
        self.rows = (
            [dict(zip(self.fields, v, strict=True)) for v in zip(*cols, strict=True)]
            if cols
            else [{} for _ in range(n)]
        )


def telemetry_callbacks(trainer: L.Trainer) -> list[TelemetryCallback]:
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set in Trainer.__init__
    return [cb for cb in callbacks if isinstance(cb, TelemetryCallback)]


class StepMetrics:
    """The metrics the telemetry callbacks report for the steps of one flush, merged so that
    each logger gets one ``log_metrics`` call per step: W&B every step reported, the other
    loggers (CSV, TensorBoard) the steps marked for them. (Each W&B ``run.log`` hands its
    record to W&B's writer thread and waits for it; with every core busy with torch's
    threads a call costs ~0.1 ms of CPU but up to a millisecond of wall time, so a step's
    metrics go in one call, not one per callback.)"""

    def __init__(self) -> None:
        self.wandb: dict[int, dict[str, Any]] = {}
        self.others: dict[int, dict[str, Any]] = {}

    def add(
        self,
        step: int,
        metrics: dict[str, Any],
        others: bool = True,
        wandb_only: Iterable[str] = (),
    ) -> None:
        self.wandb.setdefault(step, {}).update(metrics)
        if others:
            drop = set(wandb_only)
            m = {k: v for k, v in metrics.items() if k not in drop}
            self.others.setdefault(step, {}).update(m)

    def send(self, loggers: Iterable[Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for lg in loggers:
            per_step = self.wandb if isinstance(lg, WandbLogger) else self.others
            for step in sorted(per_step):
                if per_step[step]:
                    lg.log_metrics(per_step[step], step=step)
        self.wandb, self.others = {}, {}


def flush_telemetry(trainer: L.Trainer, pl_module: L.LightningModule, final: bool = False):
    """Read the shared buffer back and dispatch the rows (see the module docstring)."""
    tel: StepTelemetry | None = getattr(pl_module, "telemetry", None)
    rows = tel.flush() if tel is not None else []
    consumers = telemetry_callbacks(trainer)
    out = StepMetrics()
    try:
        for cb in consumers:
            cb._outbox = out
            cb.consume(trainer, pl_module, rows)
    finally:  # what was consumed is logged, even if a later callback failed
        for cb in consumers:
            cb._outbox = None
        if trainer.is_global_zero:
            out.send(trainer.loggers)
    if not final:
        for cb in consumers:
            cb.after_flush(trainer, pl_module)


class TelemetryCallback(L.Callback):
    """Subclasses set ``flush_every`` (None: the trainer's ``log_every_n_steps``) and
    implement :meth:`consume`; :meth:`finish` runs once at the end of fit, even a failed one.
    Callbacks that only ride along with the flushes (``sets_interval = False``) leave the
    interval to the others.
    """

    flush_every: int | None = None
    sets_interval = True
    dir: Path | None = None  # the run directory, known from setup on
    csv: CsvRows | None = None  # the CSV file this callback writes, if any
    _finished = False
    _outbox: StepMetrics | None = None  # during a flush: where log_step puts metrics

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._finished = False
        self.dir = Path(trainer.default_root_dir)
        if getattr(pl_module, "telemetry", None) is None:  # the first of us sets it up
            default = trainer.log_every_n_steps or 1  # type: ignore[attr-defined]
            asks = [
                cb.flush_every or default for cb in telemetry_callbacks(trainer) if cb.sets_interval
            ]
            tel = StepTelemetry(min(asks, default=default))
            pl_module.telemetry = tel  # type: ignore[assignment]  # the module reads it
            if trainer.world_size > 1:
                tel.reduce_loss = lambda t: trainer.strategy.reduce(t, reduce_op="mean")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.telemetry = None  # type: ignore[assignment]  # a later fit: a fresh one

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After a checkpoint was restored (or not): the file holds exactly the restored rows."""
        if self.csv is not None and trainer.is_global_zero:
            self.csv.rewrite(Path(trainer.default_root_dir))

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tel = getattr(pl_module, "telemetry", None)
        if tel is not None and tel.pending >= tel.every:
            flush_telemetry(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            flush_telemetry(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        flush_telemetry(trainer, pl_module, final=True)
        self._finish_once(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.dir is None:
            return  # failed before setup
        flush_telemetry(trainer, pl_module, final=True)  # keep what was measured
        self._finish_once(trainer, pl_module)

    def _finish_once(self, trainer, pl_module) -> None:
        if not self._finished:
            self._finished = True
            self.finish(trainer, pl_module)

    def log_step(
        self,
        trainer: L.Trainer,
        step: int,
        metrics: dict[str, Any],
        others: bool = True,
        wandb_only: Iterable[str] = (),
    ) -> None:
        """Report ``metrics`` of ``step`` to the loggers: to W&B, and to the other loggers
        too unless ``others`` is false (less the keys in ``wandb_only``). In a flush they are
        merged with the other callbacks' metrics of the same step (one call per step and
        logger, sent after every callback consumed); outside one they go at once."""
        if self._outbox is not None:
            self._outbox.add(step, metrics, others, wandb_only)
        elif trainer.is_global_zero:
            one = StepMetrics()
            one.add(step, metrics, others, wandb_only)
            one.send(trainer.loggers)

    # ------------------------------------------------------------------ to implement
    def consume(self, trainer, pl_module, rows: list[dict[str, Any]]) -> None:
        """Rows of the steps since the last flush (possibly none)."""

    def after_flush(self, trainer, pl_module) -> None:
        """After every callback consumed a (non-final) flush."""

    def observe_eval(self, trainer, step: int, val_loss: float) -> list[str]:
        """A dense evaluation point of the every-step phase (from
        :class:`~stablelab.callbacks.DenseEval`); return the kinds of the events it raised."""
        return []

    def finish(self, trainer, pl_module) -> None:
        """Once, at the end of fit (also after a failure): plots, last words."""

    def summary(self) -> dict[str, Any]:
        return {}
