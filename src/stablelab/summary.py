"""The run summary (``summary.json``): strict JSON written atomically, and what goes into
it from the callbacks, the metrics and the task (language-model numbers)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def global_batch_size(batch_size: Any, trainer) -> int | None:
    """Examples per optimizer update: the per-process batch x processes x accumulated
    batches (None when the batch size is not a number)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        return None
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    return batch_size * trainer.world_size * accumulate


def task_metrics(summary: dict[str, Any], datamodule, module) -> dict[str, Any]:
    """Language modelling: bits per character, and the held-out loss over validation and
    test together (nanoGPT's "val loss": the whole held-out text), from the best
    checkpoint's two evaluations weighted by their characters (only when both covered their
    whole split: see ``eval_subset``); the data's own keys."""
    if getattr(module, "task", None) != "next_token":
        return {}
    out = dict(datamodule.summary()) if callable(getattr(datamodule, "summary", None)) else {}
    val, test = summary.get("val_loss"), summary.get("test_loss")
    for split, loss in (("val", val), ("test", test)):
        if _finite(loss):
            out[f"{split}_bpc"] = float(loss) / math.log(2)  # type: ignore[arg-type]
    whole = not summary.get("eval_subset")  # the held-out text, not part of it
    if (
        whole
        and _finite(val)
        and _finite(test)
        and callable(getattr(datamodule, "split_tokens", None))
    ):
        n = datamodule.split_tokens()
        held = (val * n["val"] + test * n["test"]) / (n["val"] + n["test"])
        out.update(
            heldout_loss=held, heldout_bpc=held / math.log(2), heldout_perplexity=math.exp(held)
        )
    return out


def json_safe(value: Any, where: str = "", nonfinite: dict[str, str] | None = None) -> Any:
    """``value`` with every NaN / inf float replaced by None (strict JSON has neither);
    the replaced keys and their values go into ``nonfinite``."""
    if isinstance(value, float) and not math.isfinite(value):
        if nonfinite is not None:
            nonfinite[where] = str(value)
        return None
    if isinstance(value, dict):
        return {
            k: json_safe(v, f"{where}.{k}" if where else str(k), nonfinite)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [json_safe(v, f"{where}[{i}]", nonfinite) for i, v in enumerate(value)]
    return value


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """``summary.json``, atomically, as strict JSON: a NaN or infinite number (the final
    loss of a diverged run, say) is written as null and named, with its value, under
    ``nonfinite`` (e.g. ``{"final_train_loss": "nan"}``)."""
    nonfinite: dict[str, str] = {}
    data = json_safe({k: v for k, v in summary.items() if k != "nonfinite"}, "", nonfinite)
    if nonfinite:
        data["nonfinite"] = nonfinite
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def callback_reports(trainer, history) -> dict[str, Any]:
    """The summary keys of the callbacks that report (telemetry, stability, ...) and the
    evaluation history's best record and count (as ``_best``, ``_evaluations``)."""
    out: dict[str, Any] = {}
    for cb in trainer.callbacks:
        if callable(getattr(cb, "summary", None)):
            out.update(cb.summary())
    ckpt = trainer.checkpoint_callback  # its best is the tested one: the same ranking
    monitor = getattr(ckpt, "monitor", None) if ckpt is not None else None
    return {**out, "_best": history.best(monitor), "_evaluations": len(history.records)}


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _scalar(v: Any) -> bool:
    return isinstance(v, bool | int | float | str) or v is None
