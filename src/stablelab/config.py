"""Typed, validated configs.

Every config group entry names a ``_target_``; that class's (or function's) own signature is
its schema: the parameter names are the allowed keys, the annotations their types, and
``Annotated[..., Range(...)]`` their allowed values. The root keys have the dataclass
:class:`RootConfig`. :func:`validate` checks a composed config against all of that and
raises one :class:`ConfigError` listing every problem (key, value, what is allowed) before
anything is built or trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import math
import os
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf

# the constraint vocabulary lives in stablelab.constraints (no Hydra there); re-exported
from stablelab.constraints import (  # noqa: E402, F401
    Activation,
    BranchInit,
    ConfigError,
    Layout,
    NonNegFloat,
    NonNegInt,
    NormKind,
    OpenUnit,
    PosFloat,
    PosInt,
    Prob,
    Range,
    ResidualSpec,
    first_line,
    raise_problems,
)
from stablelab.paths import config_dir, group_options


@dataclass
class LossConfig:
    """``loss``: terms added to the training objective (the logged loss is the
    cross-entropy alone, comparable across settings)."""

    # z-loss (PaLM; Wortsman et al. 2023): z_loss x mean over predictions of (log Z)^2,
    # log Z = logsumexp of the output logits; 1e-4 in PaLM and OLMo; 0 = off
    z_loss: NonNegFloat = 0.0


@dataclass
class SkipSpikesConfig:
    """``skip_spikes``: skip the update of a step whose loss or unclipped gradient norm
    is a spike (OLMo-core's rule; :mod:`stablelab.remedies`)."""

    enabled: bool = False
    window: PosInt = 128  # the previous 128 steps ...
    min_history: PosInt = 64  # ... once 64 are known ...
    zscore: PosFloat = 6.0  # ... above 6 standard deviations


@dataclass
class RootConfig:
    """The keys of ``train.yaml`` that are not config groups."""

    task_name: str = "train"
    seed: Annotated[int, Range(ge=0, le=2**32 - 1)] = 42  # numpy's and Lightning's range
    max_train_steps: PosInt = 1500
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    tags: list[str] = field(default_factory=list)
    run_name: str | None = None
    plots: bool = True
    # torch intra-op threads per process; null: $OMP_NUM_THREADS if set, else the cores this
    # process may use (os.sched_getaffinity) divided among the processes on the node
    threads: PosInt | None = None
    # run the model under torch.compile (nn.Module.compile: checkpoints keep their keys)
    compile: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    skip_spikes: SkipSpikesConfig = field(default_factory=SkipSpikesConfig)
    # the summary value a sweeper optimises (stablelab-train's return value; see OBJECTIVES)
    optimized_metric: Literal["val_loss", "val_acc", "val_bpc", "final_train_loss"] = "val_loss"
    print_config: bool = True  # the resolved config as a tree at the start of a run


# What each optimized_metric asks of a sweeper; an infeasible trial (diverged, failed to
# produce the metric, or non-finite) returns the worst value: +inf to minimise, -inf to
# maximise, so a search (Optuna's TPE) learns to avoid its region instead of crashing on a
# NaN or ignoring it.
OBJECTIVES = {
    "val_loss": "minimize",
    "val_acc": "maximize",
    "val_bpc": "minimize",
    "final_train_loss": "minimize",
}


@dataclass
class PathsConfig:
    """``paths``: where data is cached and runs are written."""

    root_dir: str = "."
    data_dir: str = "data"
    log_dir: str = "logs"
    output_dir: str = "."


GROUPS = ("data", "model", "optimizer", "schedule", "clipping", "callbacks", "logger", "trainer")
# Arguments the builder passes at run time: they need no config value.
RUNTIME_ARGS = {
    "data": set(),
    "model": {"input_spec", "num_classes"},
    "optimizer": {"params"},
    "schedule": set(),
    "clipping": set(),
    "trainer": {"max_steps", "callbacks", "logger"},
}
# Names people bring from other frameworks, for "did you mean".
ALIASES = {"learning_rate": "lr", "momentum": "beta1", "warmup": "warmup_steps"}
# Where to set what stablelab sets at run time (named in the refusal of such a key).
RUNTIME_HINTS = {
    "trainer.max_steps": "the run's length is the top-level max_train_steps=N",
    "trainer.callbacks": "add callbacks to the callbacks group: +callbacks.name={_target_: ...}",
    "trainer.logger": "choose loggers with the logger group (logger=csv, wandb, ...)",
    "model.input_spec": "the datamodule's input_spec is passed to the model",
    "model.num_classes": "the datamodule's num_classes is passed to the model",
    "optimizer.params": "the model's parameters are passed to the optimizer",
}
# Groups whose value is a mapping name -> {_target_: ...} (any number of entries).
MULTI_GROUPS = ("callbacks", "logger")
# Targets whose **kwargs are passed on to another callable we can check against.
KWARGS_FORWARDED_TO = {"lightning.pytorch.loggers.wandb.WandbLogger": "wandb.init"}
SPECIAL_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


# --------------------------------------------------------------------------- type checks


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(_fmt(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, tp: Any, problems: list[str]) -> None:
    """Append a problem if ``value`` does not fit annotation ``tp``. Unknown types pass
    (a tensor, a module, ...: not configurable from YAML)."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, str):
        return
    origin = get_origin(tp)
    if origin is Annotated:
        _check_annotated(key, value, tp, problems)
    elif origin is Literal:
        _check_literal(key, value, get_args(tp), problems)
    elif origin in (Union, types.UnionType):
        _check_union(key, value, tp, problems)
    elif origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        _check_sequence(key, value, tp, problems)
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{key} = {_fmt(value)}: expected a mapping with keys {_fields(tp)}")
        else:
            _check_mapping(key, dict(value), _dataclass_params(tp), set(), problems, tp.__name__)
    elif tp in _SCALARS:
        fits, expected = _SCALARS[tp]
        if not fits(value):
            problems.append(f"{key} = {_fmt(value)}: expected {expected}")
        elif tp is float and not math.isfinite(value):  # inf, 1e309, nan: never meant
            problems.append(f"{key} = {_fmt(value)}: must be a finite number")


# the scalar annotations: does the value fit, and what the message says was expected
_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    type(None): (lambda v: v is None, "null"),
}


def _check_annotated(key: str, value: Any, tp: Any, problems: list[str]) -> None:
    """The base type first, then the :class:`Range` constraints on a number."""
    base, *meta = get_args(tp)
    before = len(problems)
    _check_value(key, value, base, problems)
    if len(problems) == before and isinstance(value, int | float):
        for m in meta:
            if isinstance(m, Range) and (msg := m.check(value)):
                problems.append(f"{key} = {_fmt(value)}: {msg}")


def _check_literal(key: str, value: Any, allowed: tuple[Any, ...], problems: list[str]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.append(
            f"{key} = {_fmt(value)}: allowed values are "
            + ", ".join(_fmt(a) for a in allowed)
            + extra
        )


def _check_union(key: str, value: Any, tp: Any, problems: list[str]) -> None:
    """Fits if any alternative fits; else the complaint of the only non-None alternative
    (usually the informative one), or the list of alternatives."""
    alts = get_args(tp)
    non_none = [a for a in alts if a is not type(None)]
    if value is None and len(non_none) < len(alts):
        return
    for alt in non_none:
        trial: list[str] = []
        _check_value(key, value, alt, trial)
        if not trial:
            return
    if len(non_none) == 1:
        _check_value(key, value, non_none[0], problems)
    else:
        problems.append(f"{key} = {_fmt(value)}: expected {_type_name(tp)}")


def _check_sequence(key: str, value: Any, tp: Any, problems: list[str]) -> None:
    if not isinstance(value, list | tuple):
        problems.append(f"{key} = {_fmt(value)}: expected {_type_name(tp)}")
        return
    args = get_args(tp)
    if args:
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", item, args[0], problems)


def _fields(dc: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(dc))


def _dataclass_params(dc: type) -> dict[str, tuple[Any, bool]]:
    hints = typing.get_type_hints(dc, include_extras=True)
    out = {}
    for f in dataclasses.fields(dc):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = (hints.get(f.name, Any), required)
    return out


def _hints(fn: Any, sig: inspect.Signature) -> dict[str, Any]:
    """Evaluated annotations; those that do not evaluate here (TYPE_CHECKING-only names)
    are left out one by one, so the rest are still checked."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    out = {}
    ns = getattr(fn, "__globals__", {})
    for name, p in sig.parameters.items():
        ann = p.annotation
        if ann is inspect.Parameter.empty:
            continue
        try:
            out[name] = eval(ann, ns) if isinstance(ann, str) else ann  # noqa: S307
        except Exception:
            continue
    return out


def _signature_params(fn: Any) -> tuple[dict[str, tuple[Any, bool]], bool]:
    sig = inspect.signature(fn)
    hints = _hints(fn, sig)
    params, var_kw = {}, False
    for name, p in sig.parameters.items():
        if name == "self" or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        params[name] = (hints.get(name, Any), p.default is inspect.Parameter.empty)
    return params, var_kw


def _callable_params(target: Any) -> tuple[dict[str, tuple[Any, bool]], bool]:
    """(name -> (annotation, required)) of a callable's keyword parameters, and whether it
    takes **kwargs that go nowhere we can see (then unknown keys cannot be judged).

    A class whose ``__init__`` forwards ``**kwargs`` to its parent gets the parents'
    parameters too, up the MRO, until an ``__init__`` without ``**kwargs``; a class with
    no ``__init__`` or ``__new__`` but ``object``'s takes no argument at all.
    """
    if not inspect.isclass(target):
        return _signature_params(target)
    params: dict[str, tuple[Any, bool]] = {}
    seen_init = False
    for klass in target.__mro__:
        if klass is object:  # no __init__ of its own anywhere: object's, which takes none
            return params, seen_init
        if "__new__" in vars(klass) and not seen_init:  # namedtuple, int: __new__'s
            return params, True  # arguments, which this does not read
        if "__init__" not in vars(klass):
            continue
        seen_init = True
        own, var_kw = _signature_params(vars(klass)["__init__"])
        first = not params
        for name, (ann, required) in own.items():
            # a parent's required argument may be supplied by the child (save_dir -> root_dir)
            params.setdefault(name, (ann, required and first))
        if not var_kw:
            return params, False
    return params, True


def _check_mapping(
    prefix: str,
    values: dict[str, Any],
    params: dict[str, tuple[Any, bool]],
    provided: set[str],
    problems: list[str],
    what: str,
    var_kw: bool = False,
) -> None:
    for key, value in values.items():
        if key in SPECIAL_KEYS:
            continue
        full = f"{prefix}.{key}" if prefix else key
        if key not in params:
            if var_kw:
                continue
            hint = difflib.get_close_matches(key, list(params), n=1)
            allowed = ", ".join(k for k in params if k not in provided)
            problems.append(
                f"{full}: unknown key for {what}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + (f"; allowed keys: {allowed}" if allowed else "; it takes no keys")
            )
            continue
        if key in provided:
            where = RUNTIME_HINTS.get(full)
            problems.append(
                f"{full}: set by stablelab at run time; remove it from the config"
                + (f" ({where})" if where else "")
            )
            continue
        _check_value(full, value, params[key][0], problems)
    for key, (_, required) in params.items():
        if required and key not in values and key not in provided:
            problems.append(f"{prefix}.{key}: missing required key for {what}")


def _import_target(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ImportError(path)
    try:
        return getattr(importlib.import_module(module), name)
    except AttributeError:
        # nested attribute such as pkg.mod.Class.method
        parent = _import_target(module)
        return getattr(parent, name)


def _choose(group: str) -> str:
    """Error-message hint listing the group's options (read only when there is an error)."""
    name = group.split(".")[0]
    return f" (choose an option of the '{name}' group: {', '.join(group_options(name))})"


def _check_target_entry(
    key: str, entry: Any, provided: set[str], problems: list[str], group: str
) -> None:
    if not isinstance(entry, Mapping):
        problems.append(
            f"{key} = {_fmt(entry)}: expected a mapping with a _target_{_choose(group)}"
        )
        return
    target = entry.get("_target_")
    if not target:
        problems.append(f"{key}: missing _target_{_choose(group)}")
        return
    try:
        fn = _import_target(str(target))
    except (ImportError, AttributeError) as e:
        hint = (
            ""
            if str(target).startswith("stablelab.")
            else ("; is its package installed, or its folder on PYTHONPATH?")
        )
        problems.append(f"{key}._target_ = {target!r}: cannot be imported ({e}){hint}")
        return
    if group == "model":
        from stablelab.contract import model_signature_problems

        problems.extend(model_signature_problems(fn, str(target)))
    params, var_kw = _callable_params(fn)
    forward = KWARGS_FORWARDED_TO.get(f"{fn.__module__}.{fn.__qualname__}")
    if var_kw and forward:  # **kwargs go on to another callable: check against it
        extra, var_kw = _callable_params(_import_target(forward))
        params = {**extra, **params}
    before = len(problems)
    _check_mapping(key, dict(entry), params, provided, problems, f"{target}", var_kw)
    if not var_kw and not str(target).startswith("stablelab."):
        unknown = [k for k in entry if k not in params and k not in SPECIAL_KEYS]
        problems.extend(_stablelab_keys_hint(key, group, unknown))
    hook = getattr(fn, "config_problems", None)
    if len(problems) == before and callable(hook):
        # cross-key rules (e.g. one stride per stage), on the values with defaults filled in
        defaults = _defaults(fn)
        values = {**defaults, **{k: v for k, v in entry.items() if k not in SPECIAL_KEYS}}
        problems.extend(f"{key}.{p}" for p in hook(values))


def _stablelab_keys_hint(key: str, group: str, unknown: list[str]) -> list[str]:
    """Keys that a class of your own does not take but one of stablelab's options of the
    group does: an ``experiment=`` (or another config) set them for stablelab's class. One
    line naming the option and the overrides that drop them (read only on an error)."""
    # two or more: one stray key is more likely a typo of your own (did you mean ...)
    if len(unknown) < 2 or key != group:  # (not the entries of a bundle such as callbacks)
        return []
    owners = [f"{group}={o}" for o, keys in _option_keys(group).items() if set(unknown) <= keys]
    if not owners:
        return []
    drop = " ".join(f"~{key}.{k}" for k in unknown)
    return [
        f"{key}: {', '.join(unknown)} are settings of stablelab's {' / '.join(owners)} (kept "
        f"when only {key}._target_ changes, or set by an experiment=): drop them with {drop}, "
        "or give your class a config file of its own (see README 'Your own model and data')"
    ]


def _option_keys(group: str) -> dict[str, set[str]]:
    """option -> the keys its config file sets, for every option of a group."""
    out: dict[str, set[str]] = {}
    for option in group_options(group):
        try:
            out[option] = {str(k) for k in OmegaConf.load(config_dir() / group / f"{option}.yaml")}
        except Exception:  # noqa: BLE001 - no hint from an unreadable file
            continue
    return out


def _other_option_hint(key: str, group: str, target: str, unknown: list[str]) -> list[str]:
    """Keys that stablelab's chosen class does not take but another option of the same
    group sets: left by an ``experiment=`` tuned for that option when the command line
    chose another (``experiment=shakespeare_char_cpu clipping=agc`` keeps the experiment's
    ``clipping.clip_threshold``). One line naming their options and the overrides that drop
    them (read only on an error)."""
    if not unknown or key != group:
        return []
    options = _option_keys(group)
    theirs = [k for k in unknown if any(k in keys for keys in options.values())]
    if not theirs:
        return []
    owners = [f"{group}={o}" for o, keys in options.items() if keys & set(theirs)]
    drop = " ".join(f"~{key}.{k}" for k in theirs)
    return [
        f"{key}: {', '.join(theirs)} {'is a setting' if len(theirs) == 1 else 'are settings'} "
        f"of {' / '.join(owners)}, not of the chosen {target.rsplit('.', 1)[-1]} (an experiment= "
        f"tuned for another option sets {'it' if len(theirs) == 1 else 'them'}): drop "
        f"{'it' if len(theirs) == 1 else 'them'} with {drop}"
    ]


def _defaults(fn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    klasses = [k for k in fn.__mro__ if "__init__" in vars(k)] if inspect.isclass(fn) else []
    for f in reversed([vars(k)["__init__"] for k in klasses] or [fn]):
        for name, p in inspect.signature(f).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out[name] = p.default
    return out


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a :class:`ConfigError` raised by the target
    (a problem found only when it is built, e.g. a missing text file) through as itself
    instead of wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def _resolution_problem(e: Exception) -> str:
    """One line for a config that does not resolve, naming its key: a value left ``???``
    (required: give it) or an interpolation that does not resolve."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    key = getattr(e, "full_key", None) if isinstance(e, OmegaConfBaseException) else None
    if not key:
        return f"{type(e).__name__}: {e}"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: required and not set; give it on the command line ({key}=...)"
    msg = str(e).strip().split("\n")[0]
    return f"{key}: does not resolve ({type(e).__name__}: {msg})"


def validate(cfg: DictConfig, fast_only: bool = False) -> dict[str, Any]:
    """Check a composed config; return it resolved as plain data. Raises ConfigError.
    ``fast_only``: the first pass only (no torch or Lightning import; see below)."""
    problems: list[str] = []
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as e:  # an interpolation that does not resolve, a ??? left unset
        raise ConfigError([_resolution_problem(e)]) from None
    assert isinstance(container, dict)
    plain: dict[str, Any] = {str(k): v for k, v in container.items()}

    _drop_settings_of_switched_off_entries(plain)
    root_values = {k: v for k, v in plain.items() if k not in GROUPS and k != "paths"}
    root_params = _dataclass_params(RootConfig)
    _check_mapping("", root_values, root_params, set(), problems, "the root config (train.yaml)")

    _check_mapping(
        "paths", plain.get("paths") or {}, _dataclass_params(PathsConfig), set(), problems, "paths"
    )
    # the fast pass: stablelab's own targets read from their source, without importing torch
    # or Lightning, so that most mistakes are refused in about a second
    fast = problems + _static_problems(plain)
    if fast or (fast := _cross_group_problems(plain)):
        raise ConfigError(fast)
    if fast_only:
        return plain
    for group in GROUPS:
        if group not in plain:
            problems.append(
                f"{group}: missing (choose an option: {', '.join(group_options(group))})"
            )
            continue
        entry = plain[group]
        if group in MULTI_GROUPS:
            if entry is None:
                continue
            if not isinstance(entry, Mapping):
                problems.append(
                    f"{group} = {_fmt(entry)}: expected a mapping name -> {{_target_: ...}}"
                )
                continue
            for name, sub in entry.items():
                if sub is None:  # disabled with `callbacks.name=null`
                    continue
                _check_target_entry(f"{group}.{name}", sub, set(), problems, group)
        else:
            _check_target_entry(group, entry, RUNTIME_ARGS[group], problems, group)
    # (the cross-group rules ran in the fast pass: they need the plain values only)
    if not problems:
        problems += _strategy_name_problems(plain.get("trainer") or {})

    if problems:
        raise ConfigError(problems)
    return plain


def _strategy_name_problems(t: dict[str, Any]) -> list[str]:
    """``trainer.strategy`` given by name: one that Lightning has registered (the registry
    holds the plugins' names too, so it is read after Lightning's import)."""
    strategy = t.get("strategy", "auto")
    if not isinstance(strategy, str) or not str(t.get("_target_", "")).startswith("lightning."):
        return []
    from lightning.pytorch.strategies import StrategyRegistry

    names = ["auto", *StrategyRegistry.available_strategies()]
    if strategy.lower() in names:
        return []
    hint = _did_you_mean(strategy.lower(), names)
    # the variants of a name (ddp_find_unused_parameters_true, deepspeed_stage_2, ...) left
    # out of the list, not out of what is allowed
    main = [n for n in names if "_find_unused_" not in n and not n.startswith("deepspeed_")]
    return [
        f"trainer.strategy = {strategy!r}: not a strategy Lightning knows (such as "
        f"{', '.join(main)}, and their variants: {len(names)} names in all, "
        "lightning.pytorch.strategies.StrategyRegistry; or a trainer option: trainer=ddp, "
        f"ddp_cpu, fsdp, ...){hint}"
    ]


def _entry_names(group: str) -> set[str]:
    """The names of the entries stablelab's options of a multi-entry group define
    (``dense_eval``, ``lm_monitor``, ... for ``callbacks``; ``csv``, ``wandb``, ... for
    ``logger``)."""
    return set().union(*_option_keys(group).values()) - {"defaults"}


def _drop_settings_of_switched_off_entries(plain: dict[str, Any]) -> None:
    """An experiment's settings for one of stablelab's callbacks (or loggers) that the
    chosen option leaves out (``experiment=shakespeare_char_cpu callbacks=none``: its
    ``callbacks.dense_eval.subset`` without a ``_target_``) configure nothing: dropped, with
    a warning naming them. An entry of another name without a ``_target_`` stays, and is
    refused as before (a typo, or a callback of yours missing its class)."""
    import warnings

    for group in MULTI_GROUPS:
        entries = plain.get(group)
        if not isinstance(entries, dict):
            continue
        orphans = [
            name for name, sub in entries.items()
            if isinstance(sub, dict) and "_target_" not in sub and sub
        ]  # fmt: skip
        known = _entry_names(group) if orphans else set()
        dropped = [name for name in orphans if name in known]
        for name in dropped:
            del entries[name]
        if dropped:
            one = {"callbacks": "a callback", "logger": "a logger"}[group]
            many = {"callbacks": "callbacks", "logger": "loggers"}[group]
            warnings.warn(
                f"{', '.join(f'{group}.{n}' for n in dropped)}: settings for "
                f"{one if len(dropped) == 1 else many} that the chosen '{group}' option "
                f"leaves out (as {group}=none does): ignored",
                stacklevel=2,
            )


def _static_problems(plain: dict[str, Any]) -> list[str]:
    """The target checks that need no import: every entry whose ``_target_`` is one of
    stablelab's classes or functions readable from source (the rest: the full check)."""
    from stablelab.static_signatures import static_params

    entries: list[tuple[str, Any, set[str]]] = []
    for group in GROUPS:
        entry = plain.get(group)
        if group in MULTI_GROUPS:
            if isinstance(entry, Mapping):
                entries += [(f"{group}.{n}", sub, set()) for n, sub in entry.items()]
        else:
            entries.append((group, entry, RUNTIME_ARGS[group]))
    problems: list[str] = []
    for key, entry, provided in entries:
        target = entry.get("_target_") if isinstance(entry, Mapping) else None
        found = static_params(target) if isinstance(target, str) else None
        if found is not None and isinstance(target, str):
            params, var_kw = found
            _check_mapping(key, dict(entry), params, provided, problems, target, var_kw)
            if not var_kw:
                unknown = [k for k in entry if k not in params and k not in SPECIAL_KEYS]
                problems.extend(_other_option_hint(key, key.split(".")[0], target, unknown))
    return problems


def sharded_strategy(strategy: Any) -> str | None:
    """The name of a sharded (FSDP) strategy in ``trainer.strategy``, else None: the
    strings Lightning registers for FSDP (``fsdp``, ``fsdp_cpu_offload``, ...) or a
    ``_target_`` naming stablelab's ``FSDP2Strategy``, Lightning's ``ModelParallelStrategy``
    (FSDP2) or ``FSDPStrategy`` (FSDP1)."""
    if isinstance(strategy, dict):
        target = str(strategy.get("_target_", ""))
        if target.endswith(("FSDP2Strategy", "ModelParallelStrategy", "FSDPStrategy")):
            return target.rsplit(".", 1)[-1]
        return None
    if isinstance(strategy, str) and strategy.startswith("fsdp"):
        return strategy
    return None


def _trainer_length_problems(t: dict[str, Any]) -> list[str]:
    """Lightning's other limits on a run's length: an epoch or time limit would end the run
    before max_train_steps, reported complete with its LR schedule unfinished; a minimum
    would train past the schedule's end."""
    unfinished = "would stop the run before max_train_steps with its LR schedule unfinished"
    why = {
        "max_epochs": (f"{unfinished}; the run's length is max_train_steps=N (updates), and "
                       "trainer.max_epochs stays -1"),
        "max_time": (f"{unfinished}; for a cluster's time limit, the run checkpoints on "
                     "SIGTERM / SIGUSR1 and resumes exactly (its resume_command); leave "
                     "trainer.max_time null"),
        "min_epochs": ("would train past max_train_steps, beyond the LR schedule's end; "
                       "the run's length is max_train_steps=N: leave it null"),
        "min_steps": ("would train past max_train_steps, beyond the LR schedule's end; "
                      "the run's length is max_train_steps=N: leave it null"),
    }  # fmt: skip
    fix = {"max_epochs": "leave it -1", "min_epochs": "leave it null", "min_steps": "leave it null"}
    out = []
    for key, text in why.items():
        v = t.get(key)
        if key in fix and v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            out.append(
                f"trainer.{key} = {_fmt(v)}: expected an integer; {fix[key]} (the run's "
                "length is max_train_steps=N, in updates)"
            )
        elif v is not None and not (key == "max_epochs" and v == -1):
            out.append(f"trainer.{key} = {_fmt(v)}: {text}")
    return out


# Lightning's accelerator names (its AcceleratorRegistry, plus "auto" and "gpu"); another
# kind of accelerator is given as an object (trainer.accelerator._target_=...)
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")


def _device_count_problem(devices: Any, cpu: bool) -> str | None:
    """Why Lightning would refuse ``trainer.devices`` (its parsers: a CPU takes a number of
    processes; a GPU a count, -1 for all, or device indices as a list or "0,1"), else None."""
    if devices == "auto":
        return None
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices.strip())
    if cpu:
        if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
            return None
        return (
            f"trainer.devices = {_fmt(devices)}: with trainer.accelerator = 'cpu' it is a "
            "number of processes: a count >= 1 or 'auto' (-1 and device indices are for GPUs)"
        )
    if isinstance(devices, str) and "," in devices:
        parts = [x.strip() for x in devices.split(",") if x.strip()]
        devices = [int(x) if x.isdigit() else x for x in parts]
    ok = (
        (isinstance(devices, int) and not isinstance(devices, bool) and devices >= -1
         and devices != 0)
        or (isinstance(devices, list) and devices != []
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices))
    )  # fmt: skip
    if ok:
        return None
    return (
        f"trainer.devices = {_fmt(devices)}: must be a count >= 1, -1 (all), 'auto' or "
        "device indices (a list such as [0,1], or the string '0,1')"
    )


def _accelerator_problems(t: dict[str, Any]) -> list[str]:
    """``trainer.accelerator`` and ``trainer.devices`` as Lightning parses them, refused
    here before the imports rather than by the Trainer after the run directory exists."""
    accel = t.get("accelerator", "auto")
    if isinstance(accel, str) and accel not in ACCELERATORS:
        hint = _did_you_mean(accel.lower(), ACCELERATORS)
        return [
            f"trainer.accelerator = {accel!r}: not one of Lightning's accelerators (choose "
            f"one of: {', '.join(ACCELERATORS)}){hint}"
        ]
    if not isinstance(accel, str | Mapping):
        return [f"trainer.accelerator = {_fmt(accel)}: expected one of {', '.join(ACCELERATORS)}"]
    problem = _device_count_problem(t.get("devices", "auto"), cpu=accel == "cpu")
    return [problem] if problem else []


def _trainer_problems(t: dict[str, Any]) -> list[str]:
    """Trainer arguments whose types Lightning's signature allows but whose values make no
    sense here (or fail only after training started)."""
    out = []
    for key in ("gradient_clip_val", "gradient_clip_algorithm"):
        if t.get(key) is not None:
            out.append(
                f"trainer.{key} = {_fmt(t[key])}: stablelab clips in its own `clipping` group "
                "(which logs the unclipped norm): use clipping=fixed "
                "clipping.clip_threshold=<value> (or percentile / zscore / agc), and leave "
                f"trainer.{key} null"
            )
    out += _trainer_length_problems(t)
    vci = t.get("val_check_interval")
    by_epoch = t.get("check_val_every_n_epoch") is not None  # Lightning's epoch counting
    if isinstance(vci, bool) or (
        isinstance(vci, int | float)
        and not (
            (isinstance(vci, int) and vci >= 1)
            or (by_epoch and isinstance(vci, float) and 0 < vci <= 1)
        )
    ):
        out.append(
            f"trainer.val_check_interval = {_fmt(vci)}: must be a whole number of steps >= 1 "
            "(validation every N updates, counted across epochs; a fraction of an epoch "
            "only with trainer.check_val_every_n_epoch set)"
        )
    out += _accelerator_problems(t)
    for key, low in (
        ("num_nodes", 1),
        ("log_every_n_steps", 1),
        ("accumulate_grad_batches", 1),
        ("num_sanity_val_steps", -1),
    ):
        v = t.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v < low:
            out.append(f"trainer.{key} = {v}: must be >= {low}")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                "overfit_batches"):  # fmt: skip
        v = t.get(key)
        if isinstance(v, bool) or (
            isinstance(v, int | float)
            and not ((isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1))
        ):
            out.append(
                f"trainer.{key} = {_fmt(v)}: must be a number of batches >= 0 or a fraction "
                "in [0.0, 1.0] (1.0: all)"
            )
    return out


def _skip_problems(plain: dict[str, Any]) -> list[str]:
    skip = plain.get("skip_spikes") or {}
    if not skip.get("enabled"):
        return []
    out = []
    if skip.get("min_history", 64) > skip.get("window", 128):
        out.append(
            f"skip_spikes.min_history = {skip.get('min_history')}: must be <= "
            f"skip_spikes.window = {skip.get('window')}"
        )
    target = str((plain.get("optimizer") or {}).get("_target_", ""))
    if not target.startswith("stablelab.optim."):
        out.append(
            f"skip_spikes.enabled = true: needs one of the playbook's update rules (they undo "
            f"a skipped update on the device); optimizer._target_ = {target!r} is not one "
            "(choose an option of the 'optimizer' group)"
        )
    if sharded_strategy((plain.get("trainer") or {}).get("strategy", "")):
        out.append(
            "skip_spikes.enabled = true: not available with a sharded trainer.strategy "
            "(untested on FSDP shards); use one process or DDP"
        )
    return out


def _rollback_problems(plain: dict[str, Any]) -> list[str]:
    stab = (plain.get("callbacks") or {}).get("stability") or {}
    n = stab.get("rollbacks") or 0
    t = plain.get("trainer") or {}
    strategy = t.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    devices, nodes = t.get("devices", 1), t.get("num_nodes", 1)
    many = (isinstance(devices, int) and devices > 1) or (isinstance(nodes, int) and nodes > 1)
    if n and (many or "ddp" in name.lower() or sharded_strategy(strategy)):
        return [
            f"callbacks.stability.rollbacks = {n}: rollbacks run in one process only (a refit "
            "would relaunch the processes); use callbacks.stability.rollbacks=0 with "
            f"trainer.strategy = {_fmt(name)}, or one process"
        ]
    return []


FP16_SMALLEST_NORMAL = 2.0**-14  # 6.1e-05


def _half_precision_problems(plain: dict[str, Any]) -> list[str]:
    """``16-true`` keeps the weights and the optimizer's state in float16: an adaptive
    rule's eps below float16's smallest normal number (1e-8 rounds to 0) and the squared
    gradients that round to 0 make the first update divide by zero (measured: Adam at eps
    1e-8 diverges at step 1; at 1e-4 it trains)."""
    precision = str((plain.get("trainer") or {}).get("precision", ""))
    eps = (plain.get("optimizer") or {}).get("eps")
    if precision not in ("16-true", "16", "half") or not isinstance(eps, int | float):
        return []
    if eps >= FP16_SMALLEST_NORMAL:
        return []
    return [
        f"trainer.precision = {precision!r} with optimizer.eps = {eps:g}: the weights and "
        f"the optimizer's state are float16, where eps is below the smallest normal number "
        f"({FP16_SMALLEST_NORMAL:.2g}) and small squared gradients round to 0, so the first "
        "update divides by (almost) zero; use trainer.precision=16-mixed or bf16-mixed "
        "(float32 weights and state), or optimizer.eps=1e-4"
    ]


def _no_training_problems(plain: dict[str, Any]) -> list[str]:
    """trainer.limit_train_batches = 0 (or 0.0) trains nothing: a run with train=true would
    end "completed" at step 0 of max_train_steps."""
    v = (plain.get("trainer") or {}).get("limit_train_batches")
    if not plain.get("train", True) or isinstance(v, bool) or v != 0:
        return []
    return [
        f"trainer.limit_train_batches = {_fmt(v)}: trains nothing, and the run would end "
        "at step 0 of max_train_steps; to evaluate a checkpoint without training use "
        "train=false ckpt_path=<checkpoint> (or stablelab eval <checkpoint>)"
    ]


# What the best checkpoint may be ranked by: the validation metrics every run logs (the
# loss in bits per character: language models only), each with the mode that ranks it.
MONITORS = {"val/loss": "min", "val/acc": "max", "val/bpc": "min"}


def _checkpoint_monitor_problems(plain: dict[str, Any]) -> list[str]:
    """The checkpoint callback ranks the validations by ``monitor`` in ``mode``; the best
    one is tested and summarised. A metric no validation logs fails only at the first
    validation, after training started; a mode against the metric keeps the worst model
    as "best" (the lowest accuracy) and tests it."""
    mc = (plain.get("callbacks") or {}).get("model_checkpoint")
    if not isinstance(mc, dict) or not str(mc.get("_target_", "")).endswith("ModelCheckpoint"):
        return []
    key = "callbacks.model_checkpoint"
    monitor, mode = mc.get("monitor"), mc.get("mode", "min")
    target = str((plain.get("data") or {}).get("_target_", ""))
    text = target.endswith("CharTextDataModule") or not target.startswith("stablelab.")
    allowed = [m for m in MONITORS if m != "val/bpc" or text]
    if monitor not in allowed:
        return [
            f"{key}.monitor = {'null' if monitor is None else _fmt(monitor)}: the best "
            "checkpoint (tested and summarised) is ranked by a validation metric: one of "
            + ", ".join(allowed)
            + (" (val/bpc: language models)" if "val/bpc" not in allowed else "")
            + f"; for no checkpoint (the test on the final weights): {key}=null"
        ]
    if mode != MONITORS[monitor]:
        return [
            f"{key}.mode = {_fmt(mode)} with monitor = {monitor!r}: would keep the "
            f"{'lowest' if MONITORS[monitor] == 'max' else 'highest'} as the best checkpoint "
            f"and test it; use {key}.mode={MONITORS[monitor]}"
        ]
    return []


def _cross_group_problems(plain: dict[str, Any]) -> list[str]:
    """Rules that span groups."""
    trainer_problems = (
        _trainer_problems(plain.get("trainer") or {})
        + _no_training_problems(plain)
        + _checkpoint_monitor_problems(plain)
        + _skip_problems(plain)
        + _rollback_problems(plain)
        + _half_precision_problems(plain)
    )
    strategy = (plain.get("trainer") or {}).get("strategy", "")
    sharded = sharded_strategy(strategy)
    if sharded is None:
        return trainer_problems
    problems = trainer_problems
    if sharded not in ("FSDP2Strategy", "ModelParallelStrategy"):  # FSDP1: flat shards
        problems.append(
            f"trainer.strategy = {_fmt(sharded)}: Lightning's FSDP1 is not supported (its "
            "gradients are flat shards that stablelab's gradient-norm telemetry and clipping "
            "do not reduce); use trainer=fsdp (FSDP2, stablelab.strategies.FSDP2Strategy)"
        )
    if plain.get("compile"):
        problems.append(
            f"compile = true: not available with trainer.strategy = {_fmt(sharded)} "
            "(stablelab compiles the whole model, FSDP wraps its blocks): use compile=false, "
            "or one process / DDP"
        )
    for name, what in (("sharpness", "Hessian-vector products"), ("noise_scale", "gradients")):
        every = ((plain.get("callbacks") or {}).get(name) or {}).get("every_n_steps")
        if every:
            problems.append(
                f"callbacks.{name}.every_n_steps = {every}: the instrument needs {what} "
                f"through the whole, unsharded model, not available with trainer.strategy = "
                f"{_fmt(sharded)}; use callbacks.{name}.every_n_steps=null, or one process / "
                "DDP"
            )
    # (AGC works on shards: FSDP2 shards along dim 0, so each rank holds whole rows)
    if sharded == "ModelParallelStrategy":  # Lightning's default "auto" is one TP group/node
        tp = strategy.get("tensor_parallel_size", "auto")
        if tp != 1:
            problems.append(
                f"trainer.strategy.tensor_parallel_size = {_fmt(tp)}: stablelab shards "
                "data-parallel only (trainer=fsdp uses stablelab.strategies.FSDP2Strategy); "
                "allowed: 1"
            )
    # (update ratios and AGC work on FSDP2 shards: their norms are reduced over the ranks)
    return problems


# --------------------------------------------------------------------------- resolvers

_RUN_ID: list[str] = []


def run_id() -> str:
    """A short id unique to this process (``$STABLELAB_RUN_ID`` if set).

    Used in run directory names so two runs started in the same second never collide.
    DDP ranks need no copy: Lightning hands its children rank 0's resolved run dir.
    """
    if not _RUN_ID:
        _RUN_ID.append(os.environ.get("STABLELAB_RUN_ID") or uuid.uuid4().hex[:8])
    return _RUN_ID[0]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("stablelab.run_id"):
        OmegaConf.register_new_resolver("stablelab.run_id", run_id)
    if not OmegaConf.has_resolver("stablelab.times"):  # e.g. post_warmup_steps = 2 x warmup
        OmegaConf.register_new_resolver("stablelab.times", lambda a, b: a * b)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``train.yaml`` with Hydra's compose API (no run directory is created).

    ``paths.output_dir`` interpolates Hydra's runtime output dir, which only exists in a
    real ``stablelab-train`` run: set it in ``overrides`` before resolving the config.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from stablelab.paths import config_dir

    register_resolvers()
    problems = searchpath_problems(_searchpath_override(overrides))
    if problems:
        raise ConfigError(problems)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            return hydra_compose("train", overrides=list(overrides))
        except HydraException as e:  # a bad override: a usage error, not a traceback
            keys: list[str] | None = None
            target: Any = None
            elsewhere: list[str] = []
            bad = _unknown_key(e)
            if bad is not None:  # list the keys beside it (the config without it composes)
                rest = [o for o in overrides if o.split("=", 1)[0] != bad]
                with contextlib.suppress(HydraException):
                    root = hydra_compose("train", overrides=rest)
                    parent_key = bad.rpartition(".")[0]
                    parent = (
                        OmegaConf.select(root, parent_key, throw_on_resolution_failure=False)
                        if parent_key
                        else root
                    )
                    if isinstance(parent, DictConfig):
                        keys, target = [str(k) for k in parent], parent.get("_target_")
                    elsewhere = _same_key_elsewhere(root, bad)
                    if not isinstance(parent, DictConfig):  # no 'warmup' in 'warmup.steps'
                        problem = missing_parent_problem(root, bad, overrides, elsewhere)
                        raise ConfigError([problem]) from e
            problem = composition_problem(e, overrides, keys, elsewhere, target)
            raise ConfigError([problem]) from e


def _same_key_elsewhere(root: DictConfig, key: str) -> list[str]:
    """Where else the config has ``key``'s last part: the top level and the groups
    (``model.block_size`` -> ``data.block_size``)."""
    parent, _, leaf = key.rpartition(".")
    found = [leaf] if parent and leaf in root else []
    for name in map(str, root):
        if name != parent and isinstance(root.get(name), DictConfig) and leaf in root[name]:
            found.append(f"{name}.{leaf}")
    return found


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest of ``options``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _given(overrides: Sequence[str], key: str) -> str:
    """The override of ``key`` as it was written (for the ``+key=...`` hint)."""
    return next((o for o in overrides if o.split("=", 1)[0] == key), f"{key}=...")


def _dotted_keys(node: dict, prefix: str = "", depth: int = 2) -> list[str]:
    keys = []
    for k, child in node.items():
        keys.append(f"{prefix}{k}")
        if depth > 1 and isinstance(child, dict):
            keys += _dotted_keys(child, f"{prefix}{k}.", depth - 1)
    return keys


def missing_parent_problem(
    root: DictConfig, key: str, overrides: Sequence[str], elsewhere: Sequence[str]
) -> str:
    """The problem of an override below a key that does not exist either
    (``warmup.steps``) or that holds a value (``optimizer.lr.x``): names that key, lists
    the keys where it was looked for and suggests the closest (the same last part in
    another group, else the nearest dotted key below the part that exists:
    ``warmup.steps`` -> ``schedule.warmup_steps``)."""
    parts = key.split(".")
    depth, node = 0, OmegaConf.to_container(root, resolve=False)
    assert isinstance(node, dict)
    while depth < len(parts) - 1 and parts[depth] in node:
        child = node[parts[depth]]
        depth += 1
        if not isinstance(child, dict):
            held = ".".join(parts[:depth])
            return f"{key}: {held!r} holds a value ({child!r}), not keys; set it with {held}=..."
        node = child
    owner = ".".join(parts[:depth])
    close = difflib.get_close_matches(".".join(parts[depth:]), _dotted_keys(node), n=1)
    suggestion = list(elsewhere[:1]) or [".".join(filter(None, [owner, *close]))] * bool(close)
    mean = f"; did you mean {suggestion[0]!r}?" if suggestion else ""
    where = f"of {owner!r}" if owner else "at the top level"
    given = _given(overrides, key)
    return (
        f"{key}: {'.'.join(parts[: depth + 1])!r} is not a key {where}{mean} (keys {where}: "
        f"{', '.join(map(str, node))}; to add new keys write +{given})"
    )


def _searchpath_override(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The entries of a ``hydra.searchpath=[...]`` override ([] without one, or when it
    does not parse: Hydra's composition then says what is wrong)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    entries: list[str] = []
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+~") != "hydra.searchpath":
            continue
        try:
            value = OverridesParser.create().parse_overrides([o])[0].value()
        except Exception:  # noqa: BLE001 - Hydra's own message follows
            continue
        entries += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return entries


def searchpath_problems(entries: list[str]) -> list[str]:
    """``file://`` entries of Hydra's search path that are not directories: Hydra skips
    them without a word, and the run composes without the configs meant to be there (the
    default experiment trains instead)."""
    return [
        f"hydra.searchpath: {e!r} is not a directory (from {Path.cwd()}); Hydra would skip "
        "it and compose without your configs"
        for e in entries
        if e.startswith("file://") and not Path(e[len("file://") :]).expanduser().is_dir()
    ]


def _unknown_key(e: BaseException) -> str | None:
    first = str(e).strip().split("\n")[0]
    if first.startswith("Could not override '") and first.endswith("'."):
        return first[len("Could not override '") : -2]
    return None


def composition_problem(
    e: BaseException,
    overrides: Sequence[str] = (),
    keys: Sequence[str] | None = None,
    elsewhere: Sequence[str] = (),
    target: Any = None,
) -> str:
    """One line naming the override Hydra could not compose, and what it accepts
    (``keys``: the keys beside an unknown one, where known; ``elsewhere``: the same key in
    other groups)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(e).strip()
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        if group:
            hint = _did_you_mean(name, list(e.options))
            return (
                f"{group} = {name!r}: no such option of the {group!r} config group "
                f"(choose one of: {', '.join(e.options)}){hint}"
            )
    if isinstance(e, OverrideParseException):
        return (
            f"{e.override!r}: not a valid override ({text.splitlines()[0]}; the grammar: "
            "https://hydra.cc/docs/advanced/override_grammar/basic/)"
        )
    key = _unknown_key(e)
    if key is not None:
        given = _given(overrides, key)
        return unknown_key_problem(key, keys or (), given, elsewhere=elsewhere, target=target)
    lines = text.split("Config search path:")[0].split("\n")
    return " ".join(line.strip() for line in lines if line.strip())


def _refuses(target: Any, name: str) -> bool:
    """Whether the class ``target`` names certainly takes no argument ``name`` (read from
    its source; False where that cannot be told without importing it)."""
    from stablelab.static_signatures import static_params

    found = static_params(target) if isinstance(target, str) else None
    return found is not None and not found[1] and name not in found[0]


def unknown_key_problem(  # noqa: PLR0913 - one message, its five sources
    key: str,
    known: Sequence[str],
    given: str,
    owner: str = "",
    elsewhere: Sequence[str] = (),
    target: Any = None,
) -> str:
    """``key: not a key of 'parent'; did you mean ...? (keys of 'parent': ...; to add a new
    key write +given)`` for an override of a key the config lacks; ``known``: the keys
    beside it (may be empty), ``owner``: whose config (``"the checkpoint's "``),
    ``elsewhere``: the same key in other groups (the first is the "did you mean" when
    nothing beside it is close), ``target``: the parent's ``_target_``. Where that class
    takes no such argument but another option of the group sets the key
    (``model.qk_norm`` with model=resnet), the message names that option instead: adding
    the key with ``+`` would only be refused by the class."""
    if key in RUNTIME_HINTS:
        return f"{key}: set by stablelab at run time ({RUNTIME_HINTS[key]})"
    parent, _, leaf = key.rpartition(".")
    where = f"of {owner}{parent!r}" if parent else "at the top level"
    close = [ALIASES[leaf]] if ALIASES.get(leaf) in known else []
    owners = (
        [f"{parent}={o}" for o, keys in _option_keys(parent).items() if leaf in keys]
        if not close and not owner and _refuses(target, leaf)
        else []
    )
    close = close or difflib.get_close_matches(leaf, list(known), n=1)
    if close:
        close = [(parent + "." if parent else "") + close[0]]
    if owners:  # another option's setting: adding it here would be refused by the class
        return (
            f"{key}: not a key of the chosen {parent!r} option; {leaf} is a setting of "
            f"{' / '.join(owners)}: choose {'one of them' if len(owners) > 1 else 'it'} "
            f"({owners[0]} {given})"
        )
    suggestion = (close or list(elsewhere))[:1]
    mean = f"; did you mean {suggestion[0]!r}?" if suggestion else ""
    listed = f"keys {where}: {', '.join(known)}; " if known else ""
    return f"{key}: not a key {where}{mean} ({listed}to add a new key write +{given})"


def checked(
    overrides: list[str] | tuple[str, ...] = (), output_dir: str | os.PathLike[str] = "."
) -> dict[str, Any]:
    """The composed and validated config of ``overrides`` as a plain dict (raises
    :class:`ConfigError` naming the key and the allowed values): what every workflow and
    command checks before it starts anything."""
    return validate(compose([*overrides, f"paths.output_dir={output_dir}"]))
