"""Signatures of stablelab's own config targets, read from their source without importing
them (so without torch or Lightning): the first, fast pass of config validation.

A refused config should be refused in a second, not after the 5-10 s that importing torch
and Lightning take on a small machine. :func:`static_params` reads a target's parameters
and their annotations from the package's source files with :mod:`ast`, following
re-exports (``from stablelab.models.nets import ResNet1D``) and type aliases (``NormKind =
Literal[...]``, ``PosInt = Annotated[int, Range(gt=0)]``). Annotations are evaluated by a
small interpreter that knows names, attributes, subscripts, ``|`` and calls of
:class:`stablelab.constraints.Range` only; nothing read from a file is executed. Whatever it
cannot read (a target outside stablelab, a class whose ``__init__`` forwards ``**kwargs``,
an annotation made of other things) is left to the full check, which imports the target.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent  # .../stablelab
_UNKNOWN = object()


class _External:
    """A name imported from outside stablelab (``from typing import Literal``)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


def _module_file(module: str) -> Path | None:
    """The source file of ``stablelab.x.y`` (a module or a package's __init__)."""
    parts = module.split(".")
    if parts[0] != "stablelab":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _absolute(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom in ``module`` names."""
    if node.level == 0:
        return node.module
    base = module.split(".")
    path = _module_file(module)
    if path is not None and path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, node.module] if node.module else base)


def _definition(module: str, name: str, depth: int = 0) -> tuple[str, Any] | None:
    """(module, node) defining ``name`` in ``module``: a class, function or assignment,
    following ``from X import name`` within stablelab."""
    path = _module_file(module)
    if path is None or depth > 10:
        return None
    for node in _tree(path).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            return module, node
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.value is not None
        ):
            return module, node.value
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id == name:
                    return module, node.value
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, node)
                    if source is None:
                        return None
                    if source.startswith("stablelab"):
                        return _definition(source, alias.name, depth + 1)
                    return source, _External(source, alias.name)
    return None


def _evaluate(module: str, node: Any, depth: int = 0) -> Any:
    """The value of an annotation expression, or _UNKNOWN: one handler per node type."""
    if depth > 20:
        return _UNKNOWN
    if isinstance(node, ast.Constant):
        return node.value
    handler = _HANDLERS.get(type(node))
    return _UNKNOWN if handler is None else handler(module, node, depth + 1)


def _ev_external(module: str, node: _External, depth: int) -> Any:
    if node.module in ("typing", "typing_extensions"):
        return getattr(typing, node.name, _UNKNOWN)
    if node.module == "collections.abc":
        return getattr(collections.abc, node.name, _UNKNOWN)
    return _UNKNOWN


def _ev_name(module: str, node: ast.Name, depth: int) -> Any:
    if node.id in ("int", "float", "str", "bool", "list", "dict", "tuple", "type"):
        return getattr(builtins, node.id)
    if node.id == "None":
        return None
    found = _definition(module, node.id)
    if found is None:
        return getattr(typing, node.id, _UNKNOWN) if node.id in typing.__all__ else _UNKNOWN
    where, value = found
    if isinstance(value, ast.ClassDef | ast.FunctionDef):
        if where in ("stablelab.constraints", "stablelab.config"):  # free of torch
            import stablelab.constraints

            return getattr(stablelab.constraints, value.name, _UNKNOWN)
        return _UNKNOWN  # a class of ours elsewhere (a module, ...): the full check
    return _evaluate(where, value, depth)


def _ev_attribute(module: str, node: ast.Attribute, depth: int) -> Any:
    if isinstance(node.value, ast.Name) and node.value.id == "typing":
        return getattr(typing, node.attr, _UNKNOWN)
    return _UNKNOWN


def _ev_items(module: str, node: ast.Tuple | ast.List, depth: int) -> Any:
    items = [_evaluate(module, e, depth) for e in node.elts]
    return _UNKNOWN if any(i is _UNKNOWN for i in items) else tuple(items)


def _ev_subscript(module: str, node: ast.Subscript, depth: int) -> Any:
    base, index = _evaluate(module, node.value, depth), _evaluate(module, node.slice, depth)
    if base is _UNKNOWN or index is _UNKNOWN:
        return _UNKNOWN
    try:
        return base[index]
    except TypeError:
        return _UNKNOWN


def _ev_binop(module: str, node: ast.BinOp, depth: int) -> Any:
    if not isinstance(node.op, ast.BitOr):  # only X | Y
        return _UNKNOWN
    left, right = _evaluate(module, node.left, depth), _evaluate(module, node.right, depth)
    if left is _UNKNOWN or right is _UNKNOWN:
        return _UNKNOWN
    try:
        return typing.Union[left, right]  # noqa: UP007
    except TypeError:
        return _UNKNOWN


def _ev_call(module: str, node: ast.Call, depth: int) -> Any:
    """Only ``Range(gt=..., le=...)`` with number keywords."""
    from stablelab.constraints import Range

    if node.args or _evaluate(module, node.func, depth) is not Range:
        return _UNKNOWN
    if not all(k.arg for k in node.keywords):  # a **mapping
        return _UNKNOWN
    kwargs = {str(k.arg): _evaluate(module, k.value, depth) for k in node.keywords}
    if all(isinstance(v, int | float) for v in kwargs.values()):
        return Range(**kwargs)
    return _UNKNOWN


def _ev_unary(module: str, node: ast.UnaryOp, depth: int) -> Any:
    v = _evaluate(module, node.operand, depth)
    return -v if isinstance(node.op, ast.USub) and isinstance(v, int | float) else _UNKNOWN


_HANDLERS: dict[type, Callable[[str, Any, int], Any]] = {
    _External: _ev_external,
    ast.Name: _ev_name,
    ast.Attribute: _ev_attribute,
    ast.Tuple: _ev_items,
    ast.List: _ev_items,
    ast.Subscript: _ev_subscript,
    ast.BinOp: _ev_binop,
    ast.Call: _ev_call,
    ast.UnaryOp: _ev_unary,
}


def _function_params(module: str, fn: ast.FunctionDef, skip_first: bool):
    a = fn.args
    positional = [*a.posonlyargs, *a.args][1 if skip_first else 0 :]
    required_pos = len(positional) - len(a.defaults)
    params: dict[str, tuple[Any, bool]] = {}
    for i, arg in enumerate(positional):
        params[arg.arg] = (_annotation(module, arg), i < required_pos)
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params[arg.arg] = (_annotation(module, arg), default is None)
    return params, a.kwarg is not None


def _annotation(module: str, arg: ast.arg) -> Any:
    if arg.annotation is None:
        return Any
    value = _evaluate(module, arg.annotation)
    return Any if value is _UNKNOWN else value


def static_params(target: str) -> tuple[dict[str, tuple[Any, bool]], bool] | None:
    """(name -> (annotation, required), takes **kwargs) of ``target`` read from source, as
    :func:`stablelab.config._callable_params` would give them; None when it cannot tell
    without importing (then the full check decides)."""
    module, _, name = target.rpartition(".")
    try:
        found = _definition(module, name)
    except (OSError, SyntaxError):
        return None
    if found is None:
        return None
    where, node = found
    if isinstance(node, ast.FunctionDef):
        return _function_params(where, node, skip_first=False)
    if not isinstance(node, ast.ClassDef):
        return None
    return _class_params(where, node)


def _method(node: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _class_params(module: str, node: ast.ClassDef, depth: int = 0):
    """As config._callable_params walks the MRO: each ``__init__`` from the class up, until
    one without ``**kwargs``; single inheritance within stablelab only."""
    params: dict[str, tuple[Any, bool]] = {}
    seen_init = False
    while depth < 10:
        depth += 1
        if node.decorator_list:  # @dataclass and the like write an __init__ we cannot see
            return None
        if not seen_init and _method(node, "__new__") is not None:
            return None  # __new__'s arguments: the full check
        init = _method(node, "__init__")
        if init is not None:
            seen_init = True
            own, var_kw = _function_params(module, init, skip_first=True)
            first = not params
            for name, (ann, required) in own.items():
                params.setdefault(name, (ann, required and first))
            if not var_kw:
                return params, False
        if not node.bases:  # object: its __init__ takes nothing; forwarded **kwargs end
            return params, seen_init  # nowhere we can see
        if len(node.bases) > 1 or not isinstance(node.bases[0], ast.Name):
            return None
        parent = _definition(module, node.bases[0].id)
        if parent is None or not isinstance(parent[1], ast.ClassDef):
            return None  # a base outside stablelab (torch, Lightning): the full check
        module, node = parent
    return None
