"""Reading checkpoints without trusting them.

Nothing read from a checkpoint runs code:

* a checkpoint is loaded with ``torch.load(weights_only=True)`` only (tensors and plain
  Python data; a pickled object is refused by torch before anything in it runs);
* URLs are refused (Lightning would load them with ``weights_only=False``);
* a config stored in a checkpoint names classes by ``_target_``: before anything is built
  from it, every ``_target_`` must be a class defined in stablelab (or in a package the
  user trusts explicitly: ``$STABLELAB_TRUSTED_TARGETS``, comma-separated prefixes such
  as ``mypkg.``), and, for the trainer and its callbacks and loggers, a class of
  Lightning's own modules. ``builtins.open``, ``os.system``, ``stablelab.train.os.system``
  and the like are refused with an error naming the key.

The checks here run before a run starts; each problem is a :class:`ConfigError` line that
names the key (``ckpt_path``) and the file.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablelab.config import ConfigError, first_line

AUTO = "auto"  # ckpt_path=auto: <run dir>/checkpoints/last.ckpt if it exists, else start fresh

# Where the classes a checkpoint's config may name live, per top-level key: the module
# prefix a _target_ must start with and the object's __module__ must start with too.
STABLELAB = ("stablelab.",)
ALLOWED_TARGETS: dict[str, tuple[str, ...]] = {
    "data": STABLELAB,
    "model": STABLELAB,
    "optimizer": STABLELAB,
    "schedule": STABLELAB,
    "clipping": STABLELAB,
    "trainer": ("lightning.pytorch.", "stablelab."),
    "callbacks": ("lightning.pytorch.callbacks.", "stablelab."),
    "logger": ("lightning.pytorch.loggers.",),
}


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: the message names the key and the file."""


@dataclass
class Checkpoint:
    path: Path
    global_step: int
    cfg: dict[str, Any]  # the resolved config it was trained with (untrusted data)
    state_dict: dict[str, Any]
    optimizer_states: list[dict[str, Any]]
    input_spec: dict[str, Any] | None = None  # the data's description the model was built on
    data_sha256: str | None = None  # of the data file it was trained on (data.path), if any
    numerics: dict[str, Any] | None = None  # torch, threads, device it ran on (runinfo.numerics)


def is_url(path: str) -> bool:
    return "://" in path


def resolve_path(ckpt_path: str | None, run_dir: Path, key: str = "ckpt_path") -> Path | None:
    """The checkpoint file to use, or None for a fresh run. ``auto``: the run directory's
    own ``checkpoints/last.ckpt`` if there is one (a requeued or re-launched job resumes
    in place), else None. A URL or a missing file is refused."""
    if ckpt_path is None:
        return None
    if ckpt_path == AUTO:
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    if is_url(ckpt_path):
        raise CheckpointError(
            [
                f"{key} = {ckpt_path!r}: URLs are refused (Lightning would unpickle them "
                "with weights_only=False, which can run code); download the file and "
                "pass its path"
            ]
        )
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise CheckpointError([f"{key} = {ckpt_path!r}: no such file"])
    if not path.is_file():
        raise CheckpointError([f"{key} = {ckpt_path!r}: not a file (a directory?)"])
    return path


def _unpickling_detail(e: BaseException) -> str:
    """What torch's weights-only loader met (``: it names posix.system``), without torch's
    advice to load the file with ``weights_only=False``, which would run it."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f": it names {found.group(1)}" if found else ""


def load(path: Path, key: str = "ckpt_path") -> Checkpoint:
    """Load a stablelab checkpoint as plain data (``weights_only=True``; memory-mapped)."""
    import pickle

    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            [
                f"{key} = '{path}': holds pickled Python objects, not plain data; refused "
                f"without running them (stablelab checkpoints hold tensors and plain data "
                f"only){_unpickling_detail(e)}"
            ]
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, not a torch file
        raise CheckpointError(
            [
                f"{key} = '{path}': not a readable PyTorch checkpoint (truncated or "
                f"corrupt?): {first_line(e)}"
            ]
        ) from None
    if not isinstance(raw, Mapping) or "state_dict" not in raw:
        raise CheckpointError(
            [f"{key} = '{path}': not a Lightning checkpoint (no state_dict in it)"]
        )
    hp = raw.get("hyper_parameters") or {}
    cfg = hp.get("cfg") if isinstance(hp, Mapping) else None
    if not isinstance(cfg, Mapping):
        raise CheckpointError(
            [f"{key} = '{path}': not a stablelab checkpoint (no config in its hyperparameters)"]
        )
    return Checkpoint(
        path=path,
        global_step=int(raw.get("global_step", 0)),
        cfg=dict(cfg),
        state_dict=dict(raw["state_dict"]),
        optimizer_states=list(raw.get("optimizer_states") or []),
        input_spec=dict(spec) if isinstance(spec := hp.get("input_spec"), Mapping) else None,
        data_sha256=sha if isinstance(sha := raw.get("data_sha256"), str) else None,
        numerics=dict(num) if isinstance(num := raw.get("numerics"), Mapping) else None,
    )


def resume_problems(ckpt: Checkpoint, plain: dict[str, Any], key: str = "ckpt_path") -> list[str]:
    """Why this config cannot resume training from ``ckpt`` (the optimizer state must be
    the same update rule's)."""
    stored, mine = ckpt.cfg.get("optimizer") or {}, plain.get("optimizer") or {}
    old, new = stored.get("_target_"), mine.get("_target_")
    if ckpt.optimizer_states and old != new:
        return [
            f"{key} = '{ckpt.path}': the checkpoint's optimizer is {old}, this config's "
            f"is {new}; resuming needs the same update rule (optimizer=... as when it was "
            "trained), or evaluate it with train=false"
        ]

    def groups(opt: Mapping[str, Any]) -> tuple[bool, bool]:  # how the tensors are grouped
        decays = bool(opt.get("weight_decay"))
        return decays, decays and bool(opt.get("decay_norms_and_biases", False))

    if ckpt.optimizer_states and groups(stored) != groups(mine):
        return [
            f"optimizer.weight_decay = {mine.get('weight_decay')} / "
            f"optimizer.decay_norms_and_biases = {mine.get('decay_norms_and_biases')}: the "
            f"checkpoint '{ckpt.path}' was trained with {stored.get('weight_decay')} / "
            f"{stored.get('decay_norms_and_biases')}, which groups the tensors differently "
            "(decay on or off, norms and biases in or out); a resume keeps the grouping: "
            "change the decay's size only, or start a new run"
        ]
    return []


# settings that change no number of a run (where it writes, what it prints, how it is
# labelled and launched); every other leaf of the config is compared on resume
_PRESENTATION = (
    "task_name", "run_name", "tags", "train", "test", "ckpt_path", "threads", "print_config",
    "plots", "optimized_metric", "logger", "paths", "hydra", "data.data_dir",
    "data.num_workers", "callbacks.interruption", "callbacks.progress_bar",
    "callbacks.model_checkpoint.dirpath", "trainer.default_root_dir",
    "trainer.enable_model_summary", "trainer.enable_progress_bar", "trainer.logger",
)  # fmt: skip


def _leaves(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{where}.{k}" if where else str(k))
    else:
        yield where, list(node) if isinstance(node, list | tuple) else node


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{dotted key: [checkpoint's value, this config's value]}`` for every setting that
    differs between a checkpoint's stored config and the config resuming from it, but
    for those that change no number (:data:`_PRESENTATION`). A key only one side has
    shows ``None`` on the other."""
    a, b = dict(_leaves(old)), dict(_leaves(new))
    out: dict[str, list[Any]] = {}
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in _PRESENTATION):
            continue
        if a.get(key) != b.get(key):
            out[key] = [a.get(key), b.get(key)]
    return out


def vocabulary_problems(ckpt: Checkpoint, datamodule, key: str = "ckpt_path") -> list[str]:
    """A language model's checkpoint and a text whose characters give another vocabulary
    (the file changed since training): every character would map to another token."""
    theirs = (ckpt.input_spec or {}).get("vocab")
    mine = (getattr(datamodule, "input_spec", None) or {}).get("vocab")
    if not isinstance(theirs, str) or not isinstance(mine, str) or theirs == mine:
        return []
    gone, new = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
    diff = "; ".join(
        f"{what} {''.join(chars)[:20]!r}"
        for what, chars in (("without", gone), ("with", new))
        if chars
    )
    path = getattr(datamodule, "path", None)
    where = f"data.path = {path!r}" if path is not None else "data"
    return [
        f"{where}: its training part gives another character vocabulary ({len(mine)} "
        f"characters) than {key} = '{ckpt.path}' was trained with ({len(theirs)}; this "
        f"text is {diff or 'in another order'}): every character would map to another "
        "token. Use the text it was trained on (the file changed since?)"
    ]


def model_problems(ckpt: Checkpoint, module, key: str = "ckpt_path") -> list[str]:
    """Why the checkpoint's weights do not fit ``module`` (names and shapes)."""
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(getattr(v, "shape", ())) for k, v in ckpt.state_dict.items()}
    missing = sorted(set(mine) - set(theirs))
    extra = sorted(set(theirs) - set(mine))
    shapes = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
    if not (missing or extra or shapes):
        return []
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors differ in shape (e.g. {k}: {theirs[k]} vs {mine[k]})")
    if missing:
        parts.append(f"{len(missing)} of this model's tensors are not in it (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} of its tensors are not in this model (e.g. {extra[0]})")
    return [
        f"{key} = '{ckpt.path}': a checkpoint of another model: "
        + "; ".join(parts)
        + ". Use the model and data config it was trained with (stablelab eval CKPT does)"
    ]


# ---------------------------------------------------------------------- _target_ checks
def _trusted_prefixes() -> tuple[str, ...]:
    extra = os.environ.get("STABLELAB_TRUSTED_TARGETS", "")
    return tuple(p.strip() for p in extra.split(",") if p.strip())


def _targets(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "_target_":
                yield where, v
            else:
                yield from _targets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _targets(v, f"{where}[{i}]")


def target_problems(cfg: Mapping[str, Any], source: str) -> list[str]:
    """Every ``_target_`` in a config read from a file (``source`` names it) that may not
    be instantiated: see the module docstring. Imports a module only when its name is
    allowed, so a crafted name imports nothing."""
    problems = []
    trusted = _trusted_prefixes()
    for where, target in _targets(cfg, ""):
        group = where.split(".", 1)[0].split("[", 1)[0]
        allowed = ALLOWED_TARGETS.get(group, STABLELAB) + trusted
        why = _refusal(target, allowed)
        if why:
            problems.append(
                f"{where}._target_ = {target!r} in {source}: {why}; refused, nothing was "
                f"built (allowed: classes of {', '.join(allowed)}; trust your own package "
                f"with STABLELAB_TRUSTED_TARGETS={_package(target)}.)"
            )
    return problems


def _package(target: Any) -> str:
    return str(target).split(".", 1)[0] if isinstance(target, str) else "mypkg"


def _refusal(target: Any, allowed: tuple[str, ...]) -> str | None:
    if not isinstance(target, str) or not target.replace(".", "").replace("_", "").isalnum():
        return "not a dotted class name"
    prefix = next((p for p in allowed if target.startswith(p)), None)
    if prefix is None:
        return "outside the allowed packages"
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        # pkg.mod.Class.attr or pkg.mod.os.system: walk attributes from the longest module
        obj = _walk(target)
        if obj is None:
            return "cannot be imported"
    if not inspect.isclass(obj):
        return "not a class"
    home, package = str(getattr(obj, "__module__", "")), prefix.rstrip(".")
    if not (home == package or home.startswith(package + ".")):
        return f"defined in {home}, not in {package}"
    return None


def _walk(target: str) -> Any:
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


def check_targets(cfg: Mapping[str, Any], source: str) -> None:
    problems = target_problems(cfg, source)
    if problems:
        raise CheckpointError(problems)
