"""What a run prints: the resolved config and the model at the start, stablelab's own
closing lines at the end, and nothing from third parties that a user cannot act on.

* start (``print_config: true``): the resolved config as a tree of its groups, then one
  line for the model (class, parameter count) and one for the run (directory, steps,
  processes, threads);
* end: the run directory, the verdict and where the report is, the best validation and
  the test metrics, and the ``wandb sync`` command for an offline W&B run. W&B's own
  history / summary block is not printed (``WANDB_SILENT`` unless you set it); its run
  holds the same numbers;
* silenced: Lightning's litlogger advertisement and W&B's "anonymous setting" warning
  (Lightning passes ``anonymous`` to ``wandb.init`` even when unset).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ORDER = ("data", "model", "optimizer", "schedule", "clipping", "loss", "callbacks", "logger")


class _DropTips(logging.Filter):
    """Lightning's rank-zero advertisements (the litlogger tip)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.getMessage())


def quiet_third_party() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banner and closing summary block
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in lg.filters):
            lg.addFilter(_DropTips())


def config_tree(plain: dict[str, Any]) -> str:
    """The resolved config, group by group, as a tree (rich if installed, else indented
    YAML), for the console."""

    groups = [g for g in ORDER if g in plain] + [
        k for k in plain if isinstance(plain[k], dict) and k not in ORDER
    ]
    root = {k: v for k, v in plain.items() if not isinstance(v, dict)}
    sections = [("root", root)] + [(g, plain[g]) for g in groups]
    try:
        from rich.console import Console
        from rich.syntax import Syntax
        from rich.tree import Tree
    except ImportError:  # pragma: no cover - rich comes with Lightning
        return "\n".join(f"{name}:\n" + _indent("\n".join(_yaml_lines(v))) for name, v in sections)
    tree = Tree("config", style="bold", guide_style="dim")
    for name, value in sections:
        text = "\n".join(_yaml_lines(value))
        tree.add(name, style="bold").add(Syntax(text, "yaml", theme="ansi_dark"))
    import sys

    # no escape codes in log files
    console = Console(
        width=100, color_system="auto" if sys.stdout.isatty() else None, highlight=False
    )
    with console.capture() as cap:
        console.print(tree)
    return cap.get().rstrip()


def _flow(v: Any) -> str:
    """``v`` as one line of YAML (a scalar, ``[1, 2]`` or ``{a: 1}``)."""
    import yaml

    return yaml.safe_dump([v], default_flow_style=True, width=10**6, sort_keys=False).strip()[1:-1]


def _yaml_lines(d: dict[str, Any], indent: str = "") -> list[str]:
    """Block YAML for mappings, one line for each leaf value or short flat collection."""
    out = []
    for k, v in d.items():
        one = f"{indent}{k}: {_flow(v)}"
        nested = isinstance(v, dict) and any(isinstance(x, dict | list) for x in v.values())
        if isinstance(v, dict) and v and (nested or len(one) > 90):
            out += [f"{indent}{k}:", *_yaml_lines(v, indent + "  ")]
        else:
            out.append(one)
    return out


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def model_line(module) -> str:
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    extra = "" if trainable == total else f" ({trainable:,} trainable)"
    return f"model: {type(module.model).__name__}, {total:,} parameters{extra}"


def run_line(run_dir: Path, plain: dict[str, Any], total_steps: int, world: int, threads) -> str:
    procs = f"{world} processes" if world > 1 else "1 process"
    n = threads.get("intra_op") if isinstance(threads, dict) else threads
    return (
        f"run: {run_dir}  ({total_steps} steps, {procs}, {n} thread{'' if n == 1 else 's'} "
        "per process; "
        f"task {plain.get('task_name')})"
    )


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def _subset(summary: dict[str, Any], split: str) -> str:
    """' (on 1 of 4 batches of the split)' where the evaluation covered part of it."""
    part = (summary.get("eval_subset") or {}).get(split)
    return f" (on {part['batches']} of {part['of']} batches of the split)" if part else ""


def _test_line(summary: dict[str, Any]) -> str:
    """'  test loss 0.04355, accuracy 98.9%' (with the held-out loss of a language model,
    and which weights were tested when they are not the best checkpoint's)."""
    test = f"  test loss {_num(summary['test_loss'])}"
    if summary.get("test_acc") is not None:
        test += f", accuracy {summary['test_acc']:.1%}"
    if summary.get("heldout_loss") is not None:
        test += f"; held-out loss {_num(summary['heldout_loss'])}"
    if summary.get("tested_weights") == "final":
        test += " (the final weights: no best checkpoint was kept)"
    return test + _subset(summary, "test")


def closing_lines(
    summary: dict[str, Any], run_dir: Path, report: Path | None, urls: Sequence[str] = ()
) -> list[str]:
    """stablelab's last words for a run (rank zero); ``urls``: online W&B runs."""
    from stablelab.analysis.report import verdict

    status = summary.get("status")
    lines = [f"stablelab: {status} -> {run_dir}"]
    v = verdict(summary)
    lines.append(f"  verdict: {v}" + (f"  (report: {report.name})" if report else ""))
    if summary.get("val_loss") is not None:
        what = "val loss" if summary.get("evaluated_checkpoint") else "best val loss"
        best = f"  {what} {_num(summary['val_loss'])}"
        if summary.get("val_acc") is not None:
            best += f", accuracy {summary['val_acc']:.1%}"
        if summary.get("best_by") == "val/acc" and summary.get("val_acc") is not None:
            best = (f"  best val accuracy {summary['val_acc']:.1%} (loss "
                    f"{_num(summary['val_loss'])})")  # fmt: skip
        lines.append(best + f" at step {summary.get('best_step')}" + _subset(summary, "val"))
    if summary.get("test_loss") is not None:
        lines.append(_test_line(summary))
    if summary.get("stopped_early"):
        lines.append(
            f"  stopped at step {summary.get('steps')} of {summary.get('total_steps')}, before "
            f"max_train_steps ({summary['stopped_early']}): the LR schedule did not finish"
        )
    resumed = summary.get("resumed_from")
    if isinstance(resumed, dict) and resumed.get("changed"):
        changed = resumed["changed"]
        lines.append(
            f"  resumed from step {resumed.get('step')} with {len(changed)} setting(s) "
            f"changed ({', '.join(list(changed)[:4])}{', ...' if len(changed) > 4 else ''}): "
            "the numbers after it need not be an uninterrupted run's"
        )
    if (summary.get("evaluated_checkpoint") or {}).get("data_changed"):
        lines.append("  evaluated on another data file than the checkpoint was trained on")
    from stablelab.analysis.report import numerics_changed_text

    if numerics := numerics_changed_text(summary):
        lines.append(
            f"  evaluated with {numerics} since training: the last bits may differ from "
            "the training run's"
        )
    if summary.get("resume_command"):
        lines.append(f"  resume: {summary['resume_command']}")
    for url in urls:
        lines.append(f"  W&B: {url}")
    for d in sorted((run_dir / "wandb").glob("offline-run-*")):
        lines.append(f"  W&B (offline): wandb sync {shlex.quote(str(d))}")
    return lines


def plain_warnings(prog: str) -> None:
    """stablelab's own warnings on the console as one line, ``PROG: warning: ...``, not
    Python's ``file:line: UserWarning: ...`` followed by the source line that warned.
    In the other processes of a DDP run on this node (``LOCAL_RANK`` > 0), which compose,
    validate and build the same run again, they are not printed: local rank 0 says each
    once."""
    import os
    import warnings
    from pathlib import Path

    python_format = warnings.formatwarning
    quiet = os.environ.get("LOCAL_RANK", "0") != "0"

    def fmt(message, category, filename, lineno, line=None):
        if "stablelab" in Path(filename).parts:
            return "" if quiet else f"{prog}: warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


class HeldStream:
    """A stand-in for ``sys.stderr`` that holds what is written to it until
    :meth:`release` (then writes it out and passes everything through) or :meth:`drop`
    (forgets it). ``stablelab-train`` holds Hydra's composition messages: where stablelab
    can say the problem in one line (the keys beside an unknown one, the options of a
    group), Hydra's dozen lines before it (its config search path, HYDRA_FULL_ERROR) are
    dropped; anything else is released as it was, in order. A logging handler that
    captured the stand-in while it held keeps working: after release it writes through."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._held: list[str] | None = []

    def write(self, text: str) -> int:
        if self._held is None:
            return self._stream.write(text)
        self._held.append(text)
        return len(text)

    def flush(self) -> None:
        if self._held is None:
            self._stream.flush()

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            self._stream.write("".join(held))
            self._stream.flush()

    def drop(self) -> None:
        self._held = None

    @property
    def stream(self) -> Any:
        """The stream it stands in for."""
        return self._stream

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)
