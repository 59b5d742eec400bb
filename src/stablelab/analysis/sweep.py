"""Sweep analysis from run directories: the playbook's LR sweep and warmup sweep verdicts.

A sweep directory is any directory holding run directories (a Hydra multirun, or the
directory a ``stablelab sweep`` / ``diagnose`` command wrote); every ``summary.json`` under
it (W&B folders excluded) is one trial, its ``config.yaml`` says which hyperparameters it
ran with.

A trial is *infeasible* when it diverged or failed (``feasible: false`` in its summary) or
made no progress: its best validation loss is not below its first training loss (the
playbook's "abnormally high loss").

* :func:`select_lr_star`: lr* is the feasible trial with the lowest best validation loss.
* :func:`edge_of_feasibility`: "lr* sits at the edge of feasibility" when the next larger
  LR in the sweep is infeasible or unstable (the playbook's Figure 7a).
* :func:`unstable_base_learning_rate`: the smallest LR that is infeasible or unstable.
* :func:`warmup_grid`: the warmup sweep's grid capped at 10% of ``max_train_steps``.
* :func:`smallest_stable_warmup`: the warmup sweep's answer, with the 5% advice.
* :func:`lr_sensitivity`: Wortsman et al. (2023)'s LR sensitivity of a sweep: the mean over
  the swept LRs of min(final loss, loss at init) - the best final loss, a diverged or
  infeasible trial counted at its loss at init. 0 when every LR reaches the best loss; the
  larger, the more the result depends on hitting the right LR.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIELDS = [
    "run_dir",
    "lr",
    "warmup_steps",
    "status",
    "feasible",
    "unstable",
    "diverged_at_step",
    "first_instability_step",
    "val_loss",
    "final_val_loss",
    "initial_loss",
    "lr_sensitivity",
    "best_step",
    "test_acc",
    "steps",
    "total_steps",
    "loss_spikes",
    "grad_norm_spikes",
    "val_loss_rises",
    "max_loss_rise",
    "recommended_clip_threshold",
]


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run directories under ``sweep_dir`` (see :func:`stablelab.analysis.runs.find_runs`)."""
    from stablelab.analysis.runs import find_runs as _find

    return _find(sweep_dir)


# a trial in one of these states did not finish: neither feasible nor infeasible
UNFINISHED = ("interrupted", "running")


def load_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per trial (the FIELDS), sorted by LR then warmup."""
    import warnings

    from stablelab.analysis.runs import RunFileError, read_config, read_summary

    rows = []
    for run in find_runs(sweep_dir):
        try:
            s = read_summary(run)
            cfg = read_config(run)
            row = {k: s.get(k) for k in FIELDS}
            row["error"] = s.get("error")  # (a failed trial's: for the verdict, not the CSV)
            row["lr"] = float((cfg.get("optimizer") or {}).get("lr", math.nan))
            row["warmup_steps"] = int((cfg.get("schedule") or {}).get("warmup_steps") or 0)
            row["final_val_loss"] = _last_val_loss(run)
        except (RunFileError, TypeError, ValueError, AttributeError) as e:
            warnings.warn(f"left out of the sweep: {run}: {e}", stacklevel=2)
            continue
        if s.get("status") in UNFINISHED:  # stopped by a signal or killed: not a result
            warnings.warn(
                f"left out of the sweep: {run}: {s.get('status')} at step {s.get('steps')} "
                "(not infeasible: it did not finish; resume it with its resume_command, "
                "then analyse again)",
                stacklevel=2,
            )
            continue
        row["run_dir"] = str(run)
        row["feasible"] = bool(s.get("feasible"))
        row["unstable"] = bool(s.get("unstable"))
        row["_unmonitored"] = s.get("unstable") is None  # no stability monitor ran
        l0, val = s.get("initial_loss"), s.get("val_loss")
        if row["feasible"] and l0 is not None and val is not None and val >= l0:
            # the playbook's "abnormally high loss": never got below where it started
            row["feasible"], row["status"] = False, "no progress"
        rows.append(row)
    add_lr_sensitivity(rows, "warmup_steps")  # the LR axis at each warmup length
    return sorted(rows, key=lambda r: (r["lr"], r["warmup_steps"]))


def add_lr_sensitivity(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """Set each row's ``lr_sensitivity`` to that of its LR sweep: the rows that share the
    values of ``keys`` (e.g. the warmup length, the variant). A group with a single
    learning rate is no LR axis: None."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    for group in groups.values():
        sens = lr_sensitivity(group) if len({r["lr"] for r in group}) > 1 else None
        for r in group:
            r["lr_sensitivity"] = sens
    return rows


def _last_val_loss(run: Path) -> float | None:
    """The last validation's loss (evals.csv): the final weights' (the last update is
    always validated)."""
    from stablelab.analysis.report import _csv, _f

    rows = _csv(run / "evals.csv")
    last = _f(rows[-1].get("val_loss")) if rows else math.nan
    return None if math.isnan(last) else last


# What a sweep varies (its axes: the LR, the warmup and the hold that follows the warmup
# in sweep=warmup), and what else a trial's result depends on: every other value of these
# config entries must match for the LR axis to compare like with like.
SWEPT = frozenset({"optimizer.lr", "schedule.warmup_steps", "schedule.post_warmup_steps"})
COMPARED = (
    "data", "model", "optimizer", "schedule", "clipping", "loss", "skip_spikes",
    "max_train_steps", "seed", "trainer.precision", "trainer.accumulate_grad_batches",
    "trainer.devices", "trainer.num_nodes",  # the global batch: data.batch_size x these
)  # fmt: skip
# Trials on different data have losses that do not compare at all: not one sweep.
DATA_IDENTITY = ("data._target_", "data.path")


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> the value as JSON text (comparable, hashable)."""
    import json

    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree, sort_keys=True, default=str)}


def config_differences(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The config entries (of :data:`COMPARED`, outside :data:`SWEPT`) whose values differ
    between the trials: key -> {value: number of trials}. Read from each trial's
    ``config.yaml``; an entry a trial lacks counts as ``null``. Each row gets its own
    values of those entries as ``row["also"]`` (key -> value) for the report's table."""
    import json

    from stablelab.analysis.runs import RunFileError, read_config

    flats = []
    for r in rows:
        try:
            cfg = read_config(r["run_dir"])
        except RunFileError:  # (load_trials read it: only a file changed since)
            cfg = {}
        flat: dict[str, str] = {}
        for key in COMPARED:
            node: Any = cfg
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            flat.update(_flat(node, key + "."))
        flats.append(flat)
    keys = sorted({k for f in flats for k in f} - SWEPT)
    out: dict[str, dict[str, int]] = {}
    for k in keys:
        counts: dict[str, int] = {}
        for f in flats:
            v = f.get(k, "null")
            counts[v] = counts.get(v, 0) + 1
        if len(counts) > 1:
            out[k] = counts
    for r, f in zip(rows, flats, strict=True):
        r["also"] = {k: json.loads(f.get(k, "null")) for k in out}
    return out


def _values(counts: dict[str, int], most: int = 3) -> str:
    """'a (4 trials), b (2 trials), ... 3 more' for a refusal."""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{v} ({n} trial{'s' if n > 1 else ''})" for v, n in ranked[:most])
    return text + (f", and {len(ranked) - most} more" if len(ranked) > most else "")


def check_one_sweep(sweep_dir: Path, diff: dict[str, dict[str, int]]) -> None:
    """ValueError when the trials ran on different data (their losses do not compare: not
    one sweep, e.g. a folder holding several sweeps or unrelated runs)."""
    mixed = [k for k in DATA_IDENTITY if k in diff]
    if mixed:
        which = "; ".join(f"{k}: {_values(diff[k])}" for k in mixed)
        raise ValueError(
            f"the runs under {sweep_dir} are not one sweep: they trained on different data "
            f"({which}), so their losses do not compare. Give the directory of one sweep "
            "(a multirun's <time> folder, or a `stablelab sweep` --out folder)"
        )


def also_varied(diff: dict[str, dict[str, int]]) -> str:
    """The entries besides the swept ones that differ, in one line ('' if none)."""
    return ", ".join(f"{k} ({len(v)} values)" for k, v in diff.items())


def _also_varied_lines(result: dict[str, Any]) -> list[str]:
    if not result.get("also_varied"):
        return []
    return [
        f"Besides the learning rate and warmup, the trials differ in: {result['also_varied']}. "
        "Every trial is one point, whatever those values: expected for a search's nuisance "
        "hyperparameters; for a second axis you study, analyse each of its values' trials "
        "separately.",
        "",
    ]


def _by_warmup(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["warmup_steps"], []).append(r)
    return out


def _finite_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def lr_sensitivity(rows: list[dict[str, Any]]) -> float | None:
    """Wortsman et al. (2023), "Small-scale proxies for large-scale Transformer training
    instabilities": E_lr[min(loss(lr), loss_init) - min_lr' loss(lr')] over the trials
    ``rows`` (one per LR; each with ``final_val_loss``, ``initial_loss``, ``feasible``).
    loss(lr) is the trial's final validation loss; a trial that is infeasible (diverged,
    failed, no progress) or has no finite final loss counts at its loss at init, so the
    number is finite whatever diverged. loss_init: the trial's first training loss (the
    same weights for every LR of a seed); where a trial has none, the median of the others.
    None when no trial has a loss at init."""
    inits = [r["initial_loss"] for r in rows if _finite_number(r.get("initial_loss"))]
    if not rows or not inits:
        return None
    fallback = sorted(inits)[len(inits) // 2]
    capped = []
    for r in rows:
        init = r["initial_loss"] if _finite_number(r.get("initial_loss")) else fallback
        final = r.get("final_val_loss")
        ok = r.get("feasible") and _finite_number(final)
        capped.append(min(final, init) if ok else init)
    best = min(capped)
    return sum(c - best for c in capped) / len(capped)


def write_summary_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV, ``run_dir`` relative to the CSV's folder (the sweep can move); the
    config entries the trials also differ in (``row["also"]``) as more columns."""
    import os

    path = Path(path)
    also = list(dict.fromkeys(k for r in rows for k in r.get("also") or {}))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*FIELDS, *also], extrasaction="ignore")
        w.writeheader()
        w.writerows(
            {**r, **(r.get("also") or {}), "run_dir": os.path.relpath(r["run_dir"], path.parent)}
            for r in rows
        )
    return path


def bad(row: dict[str, Any]) -> bool:
    """Infeasible (diverged, failed, non-finite loss) or unstable."""
    return not row["feasible"] or row["unstable"]


def select_lr_star(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The feasible trial with the lowest best validation loss (ties: the smaller LR)."""
    ok = [r for r in rows if r["feasible"] and r["val_loss"] is not None]
    return min(ok, key=lambda r: (r["val_loss"], r["lr"])) if ok else None


def next_larger(rows: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """The trials at the smallest LR above ``lr`` (several if seeds or warmups differ)."""
    above = sorted({r["lr"] for r in rows if r["lr"] > lr})
    return [r for r in rows if above and r["lr"] == above[0]]


def edge_of_feasibility(rows: list[dict[str, Any]], star: dict[str, Any] | None) -> bool | None:
    """True when the next larger LR is infeasible or unstable; None when lr* is the
    largest LR tried (the sweep does not say: extend it upwards)."""
    if star is None:
        return None
    nxt = next_larger(rows, star["lr"])
    if not nxt:
        return None
    return any(bad(r) for r in nxt)


def unstable_base_learning_rate(rows: list[dict[str, Any]]) -> float | None:
    """The smallest LR with an infeasible or unstable trial."""
    lrs = [r["lr"] for r in rows if bad(r)]
    return min(lrs) if lrs else None


def warmup_grid(
    max_train_steps: int, grid: Sequence[int] = (10, 1000, 10000, 100000), cap_fraction: float = 0.1
) -> list[int]:
    """The grid values allowed by the playbook's cap (10% of ``max_train_steps``); when the
    cap cuts the grid, the cap itself is added as the largest value tried."""
    cap = int(cap_fraction * max_train_steps)
    kept = sorted({int(w) for w in grid if 0 < w <= cap})
    if cap > 0 and any(w > cap for w in grid) and (not kept or kept[-1] < cap):
        kept.append(cap)
    return kept


def smallest_stable_warmup(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The warmup trial with the smallest ``warmup_steps`` that is feasible and stable."""
    ok = [r for r in rows if not bad(r)]
    return min(ok, key=lambda r: r["warmup_steps"]) if ok else None


def warmup_advice(warmup_steps: int, max_train_steps: int) -> str:
    """The playbook's advice for a found warmup."""
    frac = warmup_steps / max_train_steps
    text = (
        f"prepend {warmup_steps} warmup steps to the baseline schedule "
        f"(`schedule.warmup_steps={warmup_steps} schedule.extend_max_train_steps=true`: "
        f"{max_train_steps} + {warmup_steps} = {max_train_steps + warmup_steps} steps) and compare "
        "with the baseline by the best checkpoint"
    )
    if frac > 0.05:
        text += (
            f"; it is {frac:.0%} of max_train_steps, more than the playbook's 5%: lengthen "
            "training (increase max_train_steps) to account for it"
        )
    return text


# ---------------------------------------------------------------------- plots
def plot_axis(
    rows: list[dict[str, Any]],
    path: str | Path,
    star: dict | None = None,
    sensitivity: float | None = None,
) -> Path:
    """The hyperparameter axis plot (playbook Figure 7a): best validation loss vs base LR
    (log x); unstable-but-feasible trials hollow, infeasible trials as red crosses on the
    top edge, lr* starred; the sweep's LR sensitivity in the title."""
    from stablelab.analysis.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    feas = [r for r in rows if r["feasible"] and r["val_loss"] is not None]
    ax.plot([r["lr"] for r in feas], [r["val_loss"] for r in feas], color="C0", lw=1, alpha=0.5)
    stable = [r for r in feas if not r["unstable"]]
    shaky = [r for r in feas if r["unstable"]]
    ax.scatter(
        [r["lr"] for r in stable],
        [r["val_loss"] for r in stable],
        color="C0",
        zorder=3,
        label="feasible",
    )
    if shaky:
        ax.scatter(
            [r["lr"] for r in shaky],
            [r["val_loss"] for r in shaky],
            facecolors="none",
            edgecolors="C1",
            s=60,
            lw=1.5,
            zorder=3,
            label="feasible, unstable",
        )
    infeasible = [r for r in rows if not r["feasible"]]
    ax.set_xscale("log")
    if feas:
        lo = min(r["val_loss"] for r in feas)
        hi = max(r["val_loss"] for r in feas)
        top = hi + 0.15 * (hi - lo if hi > lo else max(hi, 1e-3))
    else:
        top = 1.0
    if infeasible:
        ax.scatter(
            [r["lr"] for r in infeasible],
            [top] * len(infeasible),
            marker="x",
            color="C3",
            s=70,
            zorder=3,
            label="infeasible (diverged / NaN)",
        )
    if star is not None:
        ax.scatter(
            [star["lr"]],
            [star["val_loss"]],
            marker="*",
            s=250,
            color="gold",
            edgecolors="k",
            zorder=4,
            label=f"lr* = {star['lr']:.3g}",
        )
    ax.set_xlabel("base learning rate")
    ax.set_ylabel("best validation loss")
    title = "hyperparameter axis plot"
    if sensitivity is not None:
        title += f"   (LR sensitivity {sensitivity:.3g})"
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_curves(
    rows: list[dict[str, Any]],
    path: str | Path,
    label: str = "lr",
    title: str = "training loss",
    star: float | None = None,
) -> Path:
    """Training-loss curves (EMA from stability.csv; the logged loss from metrics.csv for
    a trial without one) of the given trials (playbook Figure 7b: LRs just above lr*,
    ``star``: lr*'s, marked in the legend); divergence marked with an x. Trials with
    neither file: the plot says so instead of showing empty axes."""
    from stablelab.analysis.plots import _integer_ticks, _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    positive, drawn, raw = True, 0, 0
    for i, r in enumerate(rows):
        pts, is_raw = _loss_curve(Path(r["run_dir"]))
        value = r["lr"] if label == "lr" else r["warmup_steps"]
        name = f"{label} {value:.3g}" if label == "lr" else f"warmup {value}"
        name += " (lr*)" if label == "lr" and star is not None and value == star else ""
        if pts:
            drawn, raw = drawn + 1, raw + is_raw
            positive &= min(v for _, v in pts) > 0
            ax.plot(*zip(*pts, strict=True), lw=1.3, color=f"C{i}", label=name)
        if r["diverged_at_step"] is not None and pts:
            ax.scatter([pts[-1][0]], [pts[-1][1]], marker="x", color=f"C{i}", s=80)
    if positive and drawn:
        ax.set_yscale("log")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("step")
    ax.set_ylabel(
        "training loss" if not drawn else "training loss (EMA)" if not raw else
        "training loss (logged)" if raw == drawn else "training loss (EMA; logged where no EMA)"
    )  # fmt: skip
    ax.set_title(
        title + (" (x: diverged)" if any(r["diverged_at_step"] is not None for r in rows) else "")
    )
    ax.grid(alpha=0.3, which="both")
    if drawn:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(
            0.5, 0.5,
            "no training-loss curve: these trials wrote neither stability.csv\n"
            "(callbacks.stability) nor a training loss in metrics.csv (logger=csv)",
            ha="center", va="center", transform=ax.transAxes, fontsize=10,
        )  # fmt: skip
    return _save(fig, path)


def _loss_curve(run_dir: Path) -> tuple[list[tuple[int, float]], bool]:
    """A trial's training-loss curve: the stability monitor's EMA, else the loss the CSV
    logger wrote (every ``log_every_n_steps``); finite points only; whether it is the latter."""
    from stablelab.analysis.report import _csv, _f

    stab = _csv(run_dir / "stability.csv")
    if stab:
        pts = [(int(x["step"]), _f(x["loss_ema"])) for x in stab]
        return [(s, v) for s, v in pts if math.isfinite(v)], False
    logged = [
        (int(x["step"]), _f(x.get("train/loss")))
        for x in _csv(run_dir / "metrics.csv")
        if x.get("train/loss") not in (None, "")
    ]
    return [(s, v) for s, v in logged if math.isfinite(v)], True


# ---------------------------------------------------------------------- analyze
def is_warmup_sweep(rows: list[dict[str, Any]]) -> bool:
    """One learning rate, several warmup lengths: the playbook's warmup sweep (what
    ``stablelab sweep warmup`` and ``-m sweep=warmup`` run), not an LR sweep."""
    lrs = {r["lr"] for r in rows}
    return len(rows) > 1 and len(lrs) == 1 and len({r["warmup_steps"] for r in rows}) > 1


def render_warmup_sweep(rows: list[dict[str, Any]], verdict: str, also: str = "") -> str:
    """A warmup sweep's sweep_report.md: the verdict, what else differs between the trials
    (``also``, from :func:`also_varied`), one row per warmup, the curves."""
    table = [
        "| warmup_steps | feasible | unstable | best val loss |",
        "|---|---|---|---|",
        *[
            f"| {r['warmup_steps']} | {'yes' if r['feasible'] else 'no'} | "
            f"{'yes' if r['unstable'] else 'no'} | "
            f"{'-' if r['val_loss'] is None else format(r['val_loss'], '.4g')} |"
            for r in sorted(rows, key=lambda r: r["warmup_steps"])
        ],
    ]
    return "\n".join(
        ["# Warmup sweep", "", f"**{verdict}**", "", *_also_varied_lines({"also_varied": also}),
         *table, "",
         "![warmup curves](warmup_curves.png)", ""]
    )  # fmt: skip


def write_warmup_sweep(
    sweep_dir: str | Path, rows: list[dict[str, Any]], verdict: str, also: str = ""
) -> None:
    """A warmup sweep's files: sweep_summary.csv, warmup_curves.png, sweep_report.md."""
    sweep_dir = Path(sweep_dir)
    write_summary_csv(rows, sweep_dir / "sweep_summary.csv")
    lrs = sorted({r["lr"] for r in rows})
    at = f"lr {lrs[0]:.3g}" if len(lrs) == 1 else "lr " + ", ".join(f"{x:.3g}" for x in lrs)
    title = f"warmup sweep at {at}: training loss"
    plot_curves(rows, sweep_dir / "warmup_curves.png", label="warmup", title=title)
    (sweep_dir / "sweep_report.md").write_text(render_warmup_sweep(rows, verdict, also))


def analyze_warmup_sweep(
    sweep_dir: Path, rows: list[dict[str, Any]], also: str = ""
) -> dict[str, Any]:
    """The smallest warmup of a warmup sweep that trains stably and the playbook's advice
    for it; writes the sweep's files."""
    lr = rows[0]["lr"]
    tried = sorted({r["warmup_steps"] for r in rows})
    best = smallest_stable_warmup(rows)
    steps = int(rows[0].get("total_steps") or 0)
    if best is None:
        verdict = (
            f"warmup sweep at lr {lr:g}: no warmup in {tried} trains stably; try a smaller "
            "learning rate, clipping, or longer training"
        )
    else:
        advice = warmup_advice(best["warmup_steps"], steps) if steps else ""
        verdict = (
            f"warmup sweep at lr {lr:g}: the smallest warmup that trains stably is "
            f"{best['warmup_steps']} steps" + (f": {advice}" if advice else "")
        )
    verdict += unmonitored_note(rows)
    write_warmup_sweep(sweep_dir, rows, verdict, also)
    return {
        "kind": "warmup",
        "trials": len(rows),
        "lr": lr,
        "warmup_steps": best["warmup_steps"] if best else None,
        "rows": rows,
        "verdict": verdict,
        "also_varied": also,
    }


def analyze_lr_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """Write sweep_summary.csv, axis_plot.png, curves_above_lr_star.png and
    sweep_report.md into ``sweep_dir``; return the findings."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / "summary.json").is_file():
        raise ValueError(
            f"{sweep_dir} is one run's directory (it holds summary.json): give the sweep's "
            f"directory, whose trials are run directories (for one run: stablelab report "
            f"{sweep_dir})"
        )
    rows = load_trials(sweep_dir)
    if not rows:
        found = len(list(find_runs(sweep_dir)))
        raise FileNotFoundError(
            f"no finished trial under {sweep_dir} ({found} run(s) there, left out as warned above)"
            if found
            else f"no run directories (summary.json) under {sweep_dir}"
        )
    diff = config_differences(rows)
    check_one_sweep(sweep_dir, diff)
    if is_warmup_sweep(rows):
        return analyze_warmup_sweep(sweep_dir, rows, also_varied(diff))
    write_summary_csv(rows, sweep_dir / "sweep_summary.csv")
    star = select_lr_star(rows)
    edge = edge_of_feasibility(rows, star)
    by_warmup = {w: g[0]["lr_sensitivity"] for w, g in sorted(_by_warmup(rows).items())}
    sensitivity = next(iter(by_warmup.values())) if len(by_warmup) == 1 else None
    plot_axis(rows, sweep_dir / "axis_plot.png", star, sensitivity)
    curves = None
    if star is not None:
        above = sorted({r["lr"] for r in rows if r["lr"] > star["lr"]})[:2]
        shown = [star] + [r for r in rows if r["lr"] in above]
        curves = plot_curves(
            shown,
            sweep_dir / "curves_above_lr_star.png",
            title=f"training loss at lr* = {star['lr']:.3g} and the next larger LRs",
            star=star["lr"],
        )
    result = {
        "trials": len(rows),
        "lr_star": star["lr"] if star else None,
        "lr_star_val_loss": star["val_loss"] if star else None,
        "lr_star_run": star["run_dir"] if star else None,
        "edge_of_feasibility": edge,
        "unstable_base_learning_rate": unstable_base_learning_rate(rows),
        "lr_sensitivity": sensitivity,
        "lr_sensitivity_by_warmup": by_warmup,
        "infeasible": sum(not r["feasible"] for r in rows),
        "unstable": sum(r["unstable"] for r in rows),
        "rows": rows,
        "curves": str(curves) if curves else None,
        "also_varied": also_varied(diff),
    }
    result["verdict"] = lr_verdict(result) + unmonitored_note(rows)
    (sweep_dir / "sweep_report.md").write_text(render_lr_sweep(result))
    return result


def _error_line(row: dict[str, Any]) -> str:
    """A failed trial's error in one line: the first problem of a refusal, else the first
    line of the message."""
    text = str(row.get("error") or "an error (see its report.md)")
    problems = [x.strip()[2:] for x in text.splitlines() if x.strip().startswith("- ")]
    return problems[0] if problems else text.splitlines()[0]


def _no_feasible_verdict(rows: list[dict[str, Any]]) -> str:
    """Why no trial is feasible, in the playbook's terms: diverged trials call for lower
    LRs, trials that made no progress for a longer run or larger LRs, and trials that failed
    (an error, the same at every LR) for the error to be fixed."""
    failed = [r for r in rows if r.get("status") == "failed"]
    stuck = [r for r in rows if r.get("status") == "no progress"]
    diverged = len(rows) - len(failed) - len(stuck)
    if rows and len(failed) == len(rows):
        return (
            "no feasible trial: every trial failed before it could tell anything about the "
            f"learning rate: {_error_line(failed[0])} (each trial's report.md and log say more)"
        )
    if not stuck and not failed:
        return "no feasible trial: every LR diverged; sweep lower learning rates"
    at = ", ".join(f"{r['lr']:.4g}" for r in stuck)
    why = f"made no progress (best validation loss not below the first training loss) at lr {at}"
    if stuck and len(stuck) == len(rows):
        return (
            f"no feasible trial: every LR {why}: train longer (max_train_steps) or sweep "
            "larger learning rates"
        )
    parts = [f"{diverged} diverged"] if diverged else []
    parts += [f"{len(stuck)} {why}"] if stuck else []
    parts += [f"{len(failed)} failed ({_error_line(failed[0])})"] if failed else []
    advice = ["train longer, or sweep learning rates between them"] if stuck and diverged else []
    advice += ["sweep lower learning rates"] if diverged and not stuck else []
    advice += ["fix the failure"] if failed else []
    return f"no feasible trial: {'; '.join(parts)}: {', and '.join(advice)}"


def unmonitored_note(rows: list[dict[str, Any]]) -> str:
    """What the verdict cannot know: trials that ran without the stability monitor
    (``callbacks.stability=null``) have no divergence or instability measured."""
    n = sum(bool(r.get("_unmonitored")) for r in rows)
    if not n:
        return ""
    return (
        f". NOTE: {n} of {len(rows)} trial(s) ran without the stability monitor "
        "(callbacks.stability): their divergence and instability were not measured, so "
        "'feasible' and 'stable' there only mean that training finished"
    )


def lr_verdict(result: dict[str, Any]) -> str:
    star, edge = result["lr_star"], result["edge_of_feasibility"]
    if star is None:
        return _no_feasible_verdict(result.get("rows") or [])
    if edge is None:
        return (
            f"lr* = {star:.4g} is the largest LR tried: extend the sweep upwards to find "
            "the edge of feasibility"
        )
    if edge:
        return (
            f"lr* = {star:.4g} sits at the edge of feasibility: the next larger LR is "
            "infeasible or unstable, so instability may be what limits the learning rate; "
            "fixing it (warmup, clipping) may allow a larger LR and a better result"
        )
    return (
        f"lr* = {star:.4g} is not at the edge of feasibility: the next larger LR trains "
        "stably but worse, so instability is not what limits the learning rate"
    )


def render_lr_sweep(result: dict[str, Any]) -> str:
    def f(x):
        if x is None:
            return "-"
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = [
        "# LR sweep",
        "",
        f"**{result['verdict']}**",
        "",
        f"{result['trials']} trials, {result['infeasible']} infeasible, "
        f"{result['unstable']} unstable; unstable_base_learning_rate (smallest infeasible "
        f"or unstable LR) = {f(result['unstable_base_learning_rate'])}.",
        "",
        *_sensitivity_lines(result),
        *_also_varied_lines(result),
    ]
    rows = result["rows"]
    # the other axes of a search (its warmup, a clip threshold): a column each, up to four
    extra = ["warmup_steps"] if len({r["warmup_steps"] for r in rows}) > 1 else []
    extra += [k for k in (rows[0].get("also") or {}) if k != "data.shuffle_seed"][: 4 - len(extra)]
    head = ["lr", *extra, "status", "feasible", "unstable", "best val loss",
            "first instability", "diverged at"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        star = (
            " (lr*)"
            if r["lr"] == result["lr_star"] and r["run_dir"] == result["lr_star_run"]
            else ""
        )
        also = {"warmup_steps": r["warmup_steps"], **(r.get("also") or {})}
        cells = "".join(f" {f(also.get(k))} |" for k in extra)
        lines.append(
            f"| {r['lr']:.4g}{star} |{cells} {r['status']} | {'yes' if r['feasible'] else 'no'} | "
            f"{'yes' if r['unstable'] else 'no'} | {f(r['val_loss'])} | "
            f"{f(r['first_instability_step'])} | {f(r['diverged_at_step'])} |"
        )
    lines += ["", "![hyperparameter axis plot](axis_plot.png)", ""]
    if result["curves"]:
        lines += ["![training loss at lr* and just above](curves_above_lr_star.png)", ""]
    lines += ["Per-trial reports: `<trial>/report.md`. Table: `sweep_summary.csv`.", ""]
    return "\n".join(lines)


def _sensitivity_lines(result: dict[str, Any]) -> list[str]:
    by = {w: v for w, v in (result.get("lr_sensitivity_by_warmup") or {}).items() if v is not None}
    if not by:
        return []
    what = (
        f"**{next(iter(by.values())):.4g}**"
        if len(by) == 1
        else ", ".join(f"{v:.4g} (warmup {w})" for w, v in by.items())
    )
    return [
        f"LR sensitivity (Wortsman et al. 2023): {what}: the mean over the LRs of min(final "
        "val loss, loss at init) - the best final val loss, a diverged or infeasible trial "
        "counted at its loss at init (0: every LR as good as the best; lower is more robust).",
        "",
    ]


# ---------------------------------------------------------------------- shared by studies
def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Rows of dicts as CSV (columns from the first row)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def draw_lr_series(
    ax,
    rows: list[dict[str, Any]],
    label: str,
    color: str,
    marker: str = "o",
    bad_y: float = 2.5,
    key: str = "val_loss",
) -> None:
    """One series of trials on a loss-vs-LR axis (``key``: the best validation loss by
    default): feasible trials joined by a line, unstable ones ringed, infeasible ones as
    crosses at ``bad_y``."""
    rows = sorted(rows, key=lambda r: r["lr"])
    ok = [(r["lr"], r[key]) for r in rows if r["feasible"]]
    if ok:
        ax.plot(*zip(*ok, strict=True), marker=marker, color=color, label=label)
    shaky = [(r["lr"], r[key]) for r in rows if r["feasible"] and r["unstable"]]
    if shaky:
        ax.scatter(*zip(*shaky, strict=True), s=120, facecolors="none", edgecolors=color, lw=1.5)
    bad = [r["lr"] for r in rows if not r["feasible"]]
    if bad:
        ax.scatter(bad, [bad_y] * len(bad), marker="x", color=color, s=60)


def style_lr_axis(ax, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("base learning rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
