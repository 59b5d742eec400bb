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
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

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


_INT64 = (-(2**63), 2**63 - 1)
_CHUNK = 4096  # rows turned into dicts at a time when iterating


class _Column:
    """One field's values, compact while they allow it: every value an ``int`` (int64) in an
    ``array('q')``; floats and Nones in an ``array('d')`` (NaN where a None is, and a byte
    mask of the Nones once there is one); strings in a list; anything else (bools, mixed
    ints and floats) in a plain list. A value that does not fit turns the column into a
    plain list, so every value comes back as it was added: its type, and a float's bits
    (float64 holds every Python float, -0.0 and NaN included)."""

    __slots__ = ("data", "kind", "none")

    def __init__(self) -> None:
        self.kind: str | None = None  # None while empty; "int", "float", "text", "list"
        self.data: Any = []
        self.none: bytearray | None = None

    def __len__(self) -> int:
        return len(self.data)

    def append(self, v: Any) -> None:
        t, kind = type(v), self.kind
        if kind == "float":
            if t is float:
                self.data.append(v)
                if self.none is not None:
                    self.none.append(0)
                return
            if v is None:
                if self.none is None:
                    self.none = bytearray(len(self.data))
                self.data.append(math.nan)
                self.none.append(1)
                return
        elif kind == "int":
            if t is int and _INT64[0] <= v <= _INT64[1]:
                self.data.append(v)
                return
        elif kind == "text":
            if t is str:
                self.data.append(v)
                return
        elif kind == "list":
            self.data.append(v)
            return
        else:  # empty: the first value chooses
            self._start(v)
            return
        self.data, self.kind, self.none = self.values(), "list", None
        self.data.append(v)

    def _start(self, v: Any) -> None:
        t = type(v)
        if t is int and _INT64[0] <= v <= _INT64[1]:
            self.kind, self.data = "int", array("q", [v])
        elif t is float or v is None:
            self.kind, self.data, self.none = "float", array("d"), None
            self.append(v)
        elif t is str:
            self.kind, self.data = "text", [v]
        else:
            self.kind, self.data = "list", [v]

    def extend(self, values: Iterable[Any]) -> None:
        for v in values:
            self.append(v)

    def get(self, i: int) -> Any:
        if self.none is not None and self.none[i]:
            return None
        return self.data[i]

    def values(self, lo: int = 0, hi: int | None = None) -> list[Any]:
        """The values of rows ``lo:hi`` as a list."""
        out = self.data[lo:hi].tolist() if isinstance(self.data, array) else self.data[lo:hi]
        if self.none is not None:
            for i, is_none in enumerate(self.none[lo:hi]):
                if is_none:
                    out[i] = None
        return out

    def state(self) -> dict[str, Any]:
        import torch

        if self.kind in (None, "int"):
            return {"int": _tensor(self.data, torch.int64)}
        if self.kind == "float":
            col = {"float": _tensor(self.data, torch.float64)}
            if self.none is not None and any(self.none):
                col["none"] = _tensor(self.none, torch.bool)
            return col
        if self.kind == "text":  # mostly empty (the events): the others and where they are
            at = [i for i, v in enumerate(self.data) if v]
            return {
                "text_at": torch.tensor(at, dtype=torch.int64),
                "text": [self.data[i] for i in at],
            }
        return {"list": list(self.data)}

    @classmethod
    def from_state(cls, c: dict[str, Any], n: int) -> _Column:
        col = cls()
        if n == 0:
            return col
        if "list" in c:
            col.kind, col.data = "list", list(c["list"])
        elif "text" in c:
            col.kind, col.data = "text", [""] * n
            for i, v in zip(c["text_at"].tolist(), c["text"], strict=True):
                col.data[i] = v
        elif "int" in c:
            col.kind, col.data = "int", _array("q", c["int"])
        else:
            col.kind, col.data = "float", _array("d", c["float"])
            if "none" in c:
                col.none = bytearray(c["none"].contiguous().numpy().tobytes())
        if len(col) != n or (col.none is not None and len(col.none) != n):
            raise ValueError("a checkpoint's columns of unequal length")
        return col


def _tensor(buf: Any, dtype: Any) -> Any:
    """A copy of an array's (or bytearray's) values as a tensor."""
    import torch

    if len(buf) == 0:
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).clone()  # (the view goes at once: buf may grow)


def _array(typecode: str, t: Any) -> array:
    out = array(typecode)
    out.frombytes(t.contiguous().numpy().tobytes())
    return out


class Rows(Sequence[dict[str, Any]]):
    """The rows of a CSV file, held column by column (:class:`_Column`): ~8 bytes a numeric
    value instead of the ~40 of a Python float in a dict of its own (a dict per row of
    grad_norms.csv was ~0.4 KB: 0.4 GB at a million steps; benchmarks/checkpoint_rows.py).
    Reads as a sequence of dicts, each made when it is read: ``rows[-1]["loss"]``,
    ``for r in rows``, ``rows[a:b]``, ``len``, ``==`` with a list of dicts; :meth:`column`
    gives one field's values. A field a row lacks is None (as the CSV writes it: empty); a
    key not among the fields is refused. Rows are appended, never changed
    (:meth:`set_column` replaces a whole field): a dict read from here is a copy."""

    __hash__ = None  # type: ignore[assignment]  # compared by value, and it grows

    def __init__(self, fields: Sequence[str] = (), rows: Iterable[dict[str, Any]] = ()) -> None:
        self.fields = list(fields)
        self._cols = {k: _Column() for k in self.fields}
        self._n = 0
        self.extend(rows)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        known = self._cols.keys()
        for r in rows:
            if not known >= r.keys():
                unknown = sorted(set(r) - set(known))
                raise ValueError(f"rows: fields {unknown} are not among {self.fields}")
        for k, col in self._cols.items():
            col.extend(r.get(k) for r in rows)
        self._n += len(rows)

    def __iadd__(self, rows: Iterable[dict[str, Any]]) -> Rows:
        self.extend(rows)
        return self

    def __len__(self) -> int:
        return self._n

    def _row(self, i: int) -> dict[str, Any]:
        return {k: col.get(i) for k, col in self._cols.items()}

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            lo, hi, step = i.indices(self._n)
            if step != 1:
                return [self._row(j) for j in range(lo, hi, step)]
            return list(self._iter(lo, hi))
        j = i + self._n if i < 0 else i
        if not 0 <= j < self._n:
            raise IndexError("row index out of range")
        return self._row(j)

    def _iter(self, lo: int, hi: int) -> Iterator[dict[str, Any]]:
        fields = self.fields
        for a in range(lo, hi, _CHUNK):
            b = min(a + _CHUNK, hi)
            if not fields:
                yield from ({} for _ in range(a, b))
                continue
            for values in zip(*(c.values(a, b) for c in self._cols.values()), strict=True):
                yield dict(zip(fields, values, strict=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._iter(0, self._n)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == self._n and all(a == b for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        return f"Rows({self._n} rows of {self.fields})"

    def column(self, field: str) -> list[Any]:
        """One field's values, row by row (None where a row had none)."""
        if field not in self._cols:
            raise KeyError(field)
        return self._cols[field].values()

    def set_fields(self, fields: Sequence[str]) -> None:
        """New fields: the values of those kept stay, a new one is None in every row so far."""
        cols = {}
        for k in fields:
            if k in self._cols:
                cols[k] = self._cols[k]
            else:
                cols[k] = _Column()
                cols[k].extend([None] * self._n)
        self.fields, self._cols = list(fields), cols

    def set_column(self, field: str, values: Sequence[Any]) -> None:
        """Replaces one field's values (one a row)."""
        if len(values) != self._n or field not in self._cols:
            raise ValueError(f"set_column({field!r}): {len(values)} values for {self._n} rows")
        col = _Column()
        col.extend(values)
        self._cols[field] = col

    def state_dict(self, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """``fields`` (default: all of them) column by column, as :class:`CsvRows` saves them."""
        fields = self.fields if fields is None else list(fields)
        columns = {k: self._cols[k].state() for k in fields}
        return {"fields": list(fields), "n": self._n, "columns": columns}

    @classmethod
    def from_state(cls, state: dict[str, Any], filename: str = "") -> Rows:
        fields = list(state["fields"])
        if "rows" in state:  # a checkpoint written before the columns (2026-12-06)
            return cls(fields, [dict(zip(fields, v, strict=True)) for v in state["rows"]])
        out, n = cls(fields), int(state["n"])
        try:
            out._cols = {k: _Column.from_state(state["columns"][k], n) for k in fields}
        except ValueError as e:
            raise ValueError(f"{filename}: {e}") from None
        out._n = n
        return out


class CsvRows:
    """The rows of one CSV file of the run directory, kept in memory (:class:`Rows`, column
    by column) and in checkpoints.

    Rows are appended to the file as they come (nothing is lost if the process dies). At
    the start of fit the file is rewritten from the rows in memory: none in a fresh run (a
    stale file from an earlier run in the same directory goes), exactly those the
    checkpoint holds in a resumed one, whether it resumes in place (rows written after the
    checkpoint go) or into a new directory (rows before it come along). The rewrite is
    byte for byte what the appends wrote, so a resumed run ends with the same file as an
    uninterrupted one.
    """

    def __init__(
        self, filename: str, fields: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> None:
        self.filename = filename
        self._fields = list(fields)
        self.extra = list(extra)  # kept in memory only: not written, not checkpointed
        self._rows = Rows([*self._fields, *self.extra])

    @property
    def fields(self) -> list[str]:
        """The fields of the file (and of the checkpoint), in order."""
        return self._fields

    @fields.setter
    def fields(self, fields: Sequence[str]) -> None:
        self._fields = list(fields)
        self._rows.set_fields([*self._fields, *self.extra])

    @property
    def rows(self) -> Rows:
        return self._rows

    @rows.setter
    def rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replaces every row."""
        self._rows = Rows([*self._fields, *self.extra], rows)

    def add(self, run_dir: Path | None, rows: list[dict[str, Any]], write: bool) -> None:
        self._rows.extend(rows)
        if write and run_dir is not None and rows:
            append_csv(run_dir / self.filename, self.fields, rows)

    def rewrite(self, run_dir: Path) -> None:
        path = run_dir / self.filename
        if not self._rows:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        append_csv(tmp, self.fields, self._rows)
        tmp.replace(path)

    def state_dict(self) -> dict[str, Any]:
        """The header and the rows column by column (loads with ``weights_only=True``): a
        column of ints, of floats, or of floats and Nones is one tensor (with a mask of the
        Nones); one of text, its non-empty values and their rows; any other a plain list.
        Each checkpoint holds every row so far; the columns are already in memory, so this
        copies bytes (one Python list per row, rebuilt at each checkpoint, cost 0.3 s and 9 MB
        per checkpoint of a 100k-step run). The values come back exactly, so the rewritten
        file is byte for byte the same."""
        return self._rows.state_dict(self._fields)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The rows of a checkpoint (the ``extra`` fields None: their owner fills them)."""
        rows = Rows.from_state(state, self.filename)
        self._fields = list(rows.fields)
        rows.set_fields([*self._fields, *self.extra])
        self._rows = rows


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
