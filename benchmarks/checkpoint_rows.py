"""What a long run's telemetry rows cost in its checkpoints: columns against a list of rows.

    python benchmarks/checkpoint_rows.py [--steps 100000] [--every 1000] [--repeats 3]

Every checkpoint of a run holds every CSV row so far (grad_norms.csv gets one a step), so
that a resumed run rewrites its files exactly. This builds ``--steps`` rows shaped like
grad_norms.csv's (an int step, six floats, an empty-or-text event column, Nones where the
clip threshold is off) and times, against the format used before 2026-12-06 (one Python
list per row, rebuilt at each checkpoint):

- one checkpoint at the end: ``state_dict`` + ``torch.save`` to memory, its size (cold:
  the columns built from nothing, as after a resume; warm: already up to date, as in a run);
- loading it: ``torch.load(weights_only=True)`` + ``load_state_dict``;
- the whole run's checkpointing: a checkpoint every ``--every`` rows as they come (the
  columns are extended incrementally; the old format rebuilt every list each time).

Medians over ``--repeats``. Single-threaded; quote the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
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


def old_state(rows: CsvRows) -> dict[str, Any]:
    """The format before columns: the header and one list per row."""
    listed = [[r.get(k) for k in rows.fields] for r in rows.rows]
    return {"fields": list(rows.fields), "rows": listed}


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

    def filled() -> CsvRows:
        c = CsvRows("grad_norms.csv", FIELDS)
        c.rows = list(all_rows)
        return c

    results = {}
    for name, state_of in (("columns", lambda c: c.state_dict()), ("row lists", old_state)):
        c = filled()
        state_of(c)  # warm: the columns built once (a run extends them as rows come)
        t_save, blob = timed(lambda c=c, f=state_of: save(f(c)), args.repeats)
        if name == "columns":  # the first call above built the columns; time a cold one too
            t_cold, _ = timed(lambda: save(filled().state_dict()), args.repeats)
        else:
            t_cold = t_save

        def load(blob=blob) -> CsvRows:
            back = CsvRows("grad_norms.csv")
            back.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
            return back

        t_load, back = timed(load, args.repeats)
        if back.rows != all_rows:  # nan never occurs here, so == is exact
            raise SystemExit(f"{name}: the rows did not come back exactly")

        def run(f=state_of) -> None:
            c = CsvRows("grad_norms.csv", FIELDS)
            for i in range(0, args.steps, args.every):
                c.add(None, all_rows[i : i + args.every], write=False)
                save(f(c))

        t_run, _ = timed(run, args.repeats)
        results[name] = (t_cold, t_save, len(blob), t_load, t_run)

    n_ckpt = -(-args.steps // args.every)
    print(f"{args.steps:,} rows of {len(FIELDS)} fields; {n_ckpt} checkpoints in the run\n")
    print(
        "| format | last checkpoint, cold (s) | warm (s) | size (MB) | load (s) "
        f"| all {n_ckpt} checkpoints (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, (cold, warm, size, load, run) in results.items():
        print(f"| {name} | {cold:.3f} | {warm:.3f} | {size / 1e6:.1f} | {load:.3f} | {run:.2f} |")
    new, old = results["columns"], results["row lists"]
    print(
        f"\nrow lists / columns: last checkpoint {old[1] / new[1]:.1f}x,"
        f" load {old[3] / new[3]:.1f}x, whole run {old[4] / new[4]:.1f}x"
    )


if __name__ == "__main__":
    main()
