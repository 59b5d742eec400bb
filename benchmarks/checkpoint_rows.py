"""What a long run's telemetry rows cost in memory and in its checkpoints: columns against dicts.

    python benchmarks/checkpoint_rows.py [--steps 100000] [--every 1000] [--repeats 3]

Every checkpoint of a run holds every CSV row so far (grad_norms.csv gets one a step), so
that a resumed run rewrites its files exactly, and the rows stay in memory for the plots and
the summary. This builds ``--steps`` rows shaped like grad_norms.csv's (an int step, six
floats, an empty-or-text event column, Nones where the clip threshold is off) and measures
stablelab's ``CsvRows`` (rows held column by column in typed arrays since 2026-12-06, the
checkpoint a tensor per column) against the format before (a dict per row in memory, a
Python list per row in each checkpoint):

- memory: what holding the rows takes (tracemalloc, the rows added a flush at a time);
- one checkpoint at the end: ``state_dict`` + ``torch.save`` to memory, its size;
- loading it: ``torch.load(weights_only=True)`` + ``load_state_dict``;
- the whole run's checkpointing: a checkpoint every ``--every`` rows as they come.

Medians over ``--repeats``. Single-threaded; quote the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from stablelab.callbacks.base import CsvRows  # noqa: E402

FIELDS = ["step", "loss", "grad_norm", "grad_norm_clipped", "clipped", "clip_threshold", "event"]


def make_rows(n: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 4, generator=g, dtype=torch.float64).tolist()
    return [
        {
            "step": i,
            "loss": a,
            "grad_norm": b,
            "grad_norm_clipped": min(b, 0.9),
            "clipped": float(b > 0.9),
            "clip_threshold": None if i % 2 else 0.9,
            "event": "spike" if c > 0.999 else "",
        }
        for i, (a, b, c, _) in enumerate(x)
    ]


class DictRows:
    """The format before 2026-12-06: a dict per row, a list per row in each checkpoint."""

    def __init__(self, fields: list[str]) -> None:
        self.fields, self.rows = list(fields), []

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows

    def state_dict(self) -> dict[str, Any]:
        return {"fields": self.fields, "rows": [[r.get(k) for k in self.fields] for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fields = list(state["fields"])
        self.rows = [dict(zip(self.fields, v, strict=True)) for v in state["rows"]]


class Columns:
    """stablelab's CsvRows, with the same three calls."""

    def __init__(self, fields: list[str]) -> None:
        self.csv = CsvRows("grad_norms.csv", fields)

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.csv.add(None, rows, write=False)

    def state_dict(self) -> dict[str, Any]:
        return self.csv.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.csv.load_state_dict(state)

    @property
    def rows(self) -> Any:
        return self.csv.rows


def fresh(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New dicts of new number objects, as the telemetry's ``tolist`` makes them."""
    return [{k: v + 0 if type(v) in (int, float) else v for k, v in r.items()} for r in rows]


def held_bytes(kind, rows: list[dict[str, Any]], every: int) -> int:
    """What holding ``rows`` takes, added a flush at a time as fresh objects (the dicts of a
    flush are garbage once added, unless kept)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    table = kind(FIELDS)
    for i in range(0, len(rows), every):
        table.add(fresh(rows[i : i + every]))
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del table
    return size


def save(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def timed(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=1_000, help="rows between checkpoints")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    all_rows = make_rows(args.steps)

    results = {}
    for name, kind in (("columns", Columns), ("dicts, row lists (before)", DictRows)):
        memory = held_bytes(kind, all_rows, args.every)
        full = kind(FIELDS)
        full.add([dict(r) for r in all_rows])
        t_save, blob = timed(lambda full=full: save(full.state_dict()), args.repeats)

        def load(blob=blob, kind=kind):
            back = kind([])
            back.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
            return back

        t_load, back = timed(load, args.repeats)
        if back.rows != all_rows:  # nan never occurs here, so == is exact
            raise SystemExit(f"{name}: the rows did not come back exactly")

        def run(kind=kind) -> None:
            c = kind(FIELDS)
            for i in range(0, args.steps, args.every):
                c.add([dict(r) for r in all_rows[i : i + args.every]])
                save(c.state_dict())

        t_run, _ = timed(run, args.repeats)
        results[name] = (memory, t_save, len(blob), t_load, t_run)

    n_ckpt = -(-args.steps // args.every)
    print(f"{args.steps:,} rows of {len(FIELDS)} fields; {n_ckpt} checkpoints in the run\n")
    print(
        "| format | in memory (MB) | bytes a row | last checkpoint (s) | size (MB) | load (s) "
        f"| all {n_ckpt} checkpoints (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (mem, save_s, size, load_s, run_s) in results.items():
        print(
            f"| {name} | {mem / 1e6:.1f} | {mem / args.steps:.0f} | {save_s:.3f} "
            f"| {size / 1e6:.1f} | {load_s:.3f} | {run_s:.2f} |"
        )
    new, old = results["columns"], results["dicts, row lists (before)"]
    print(
        f"\nbefore / columns: memory {old[0] / new[0]:.1f}x, last checkpoint "
        f"{old[1] / new[1]:.1f}x, load {old[3] / new[3]:.1f}x, whole run {old[4] / new[4]:.1f}x"
    )


if __name__ == "__main__":
    main()
