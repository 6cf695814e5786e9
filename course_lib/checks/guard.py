"""What an exercise forbids, and a watch that sees it while the learner's function runs.

Every exercise names what its answer may not use: the course's own reference for it (the
answer would only wrap it), and shortcuts that skip the point of the exercise
(``torch.softmax`` in the softmax exercise, ``x.to(torch.bfloat16)`` when rounding to bf16 by
hand, numpy or ``struct`` when decoding bits). Those rules are a :class:`Rules`, and
:func:`watched` wraps the learner's function so that every call runs under :func:`watch`.

The watch looks at three levels at once, so that no route around one of them goes unseen:

- Python: ``sys.setprofile`` sees every Python function called (the course's reference,
  numpy's Python code) and every C function called (``torch.softmax``, ``struct.unpack``);
- PyTorch's API: a ``TorchFunctionMode`` sees ``F.softmax``, ``Tensor.softmax``, ...;
- PyTorch's dispatcher: a ``TorchDispatchMode`` sees every ATen operator that runs, whatever
  called it, and the dtype of every tensor made.

Calls that would switch the watch off (``sys.setprofile``, popping PyTorch's mode stacks) are
themselves reported. Lesson 00 explains the rules to learners.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import types
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._python_dispatch import TorchDispatchMode

# Never allowed while an answer runs: switching the watch off, and the checks' own code
# (their internal references). Objects a check hands to the learner's function on purpose
# (a model that counts its calls) are listed in ``Rules.allowed``.
TAMPERING = ("sys.setprofile", "sys.settrace", "threading.setprofile", "threading.settrace")
# These switch PyTorch's modes off. PyTorch's own code uses them (``with torch.device(...)``
# pushes and pops a mode), so they count only when the answer's own code calls them.
MODE_SWITCHES = (
    "torch._C._pop_torch_function_stack", "torch._C._pop_torch_dispatch_stack",
    "torch._C._set_torch_function_mode", "torch._C._unset_torch_function_mode",
    "torch._C._set_dispatch_mode", "torch._C._unset_dispatch_mode",
    "torch.utils._python_dispatch._disable_current_modes", "torch.utils._python_dispatch._pop_mode",
    "torch.utils._python_dispatch._pop_mode_temporarily", "torch.overrides._pop_mode",
    "torch.overrides._pop_mode_temporarily", "torch.overrides._no_torch_function_mode",
)
CHECKS_PACKAGE = "course_lib.checks"
LIBRARY_ROOTS = tuple(sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
                             | {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}))


def _is_library(filename: str) -> bool:
    """Whether code in ``filename`` belongs to Python, an installed package or course_lib (not to the answer)."""
    return filename.startswith(LIBRARY_ROOTS) or filename.startswith("<frozen")


@dataclass(frozen=True)
class Rules:
    """What the answer to one exercise may not use; every entry is a name (a string).

    - ``references``: the course's reference for the exercise, as ``"module:qualname"``
      (``"course_lib.attention:softmax"``); a qualname may be a class (its methods count);
    - ``modules``: modules none of whose functions may run (``"numpy"``, ``"course_lib.quant"``),
      subpackages included;
    - ``functions``: PyTorch functions, as ``torch.overrides.resolve_name`` spells them
      (``"torch.nn.functional.softmax"``, ``"torch.Tensor.softmax"``);
    - ``ops``: ATen operators (``"aten._softmax"``); a name ending in ``*`` is a prefix;
    - ``dtypes``: no tensor of these dtypes may be made (``"bfloat16"``);
    - ``allowed``: ``"module:qualname"`` of the checks' own objects the answer is meant to call;
    - ``why``: one sentence for the learner: what the exercise asks instead.
    """

    exercise: str
    references: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    why: str = ""

    def to_dict(self) -> dict:
        """Plain data (for sending the rules to a grading sandbox)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> Rules:
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()})


# --------------------------------------------------------------------------- resolving names


def _module_file(module: str) -> str | None:
    """The source file of ``module`` (its ``__init__.py`` for a package), or None if it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin not in (None, "built-in", "frozen") else None


def _module_root(module: str) -> str | None:
    """The folder of a package, or the file of a plain module."""
    origin = _module_file(module)
    if origin is None:
        return None
    return os.path.dirname(origin) + os.sep if origin.endswith("__init__.py") else origin


@dataclass
class _Index:
    """The rules turned into what the watch compares with: file names, qualnames, object ids."""

    rules: Rules
    code: dict[tuple[str, str], str] = field(default_factory=dict)  # (file, qualname or class prefix) -> name
    roots: dict[str, str] = field(default_factory=dict)  # folder or file -> module name
    allowed_code: set[tuple[str, str]] = field(default_factory=set)
    c_names: dict[str, str] = field(default_factory=dict)  # "module.qualname" of C functions -> name
    switch_code: set[tuple[str, str]] = field(default_factory=set)  # Python functions that switch modes off
    switch_c_names: set[str] = field(default_factory=set)
    c_modules: tuple[str, ...] = ()
    functions: set[str] = field(default_factory=set)
    ops: set[str] = field(default_factory=set)
    op_prefixes: tuple[str, ...] = ()
    dtypes: set[torch.dtype] = field(default_factory=set)
    checks_root: str = ""
    objects: dict[int, str] = field(default_factory=dict)  # id(reference object) -> name


def _resolve(spec: str):
    """The object named ``"module:qualname"``, or None when it does not exist here."""
    module, _, qualname = spec.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None


@functools.lru_cache(maxsize=64)
def _index(rules: Rules) -> _Index:
    index = _Index(rules)
    for spec in rules.references:
        module, _, qualname = spec.partition(":")
        origin = _module_file(module)
        if origin is not None:
            index.code[(origin, qualname)] = spec
        obj = _resolve(spec)
        if obj is not None:
            index.objects[id(obj)] = spec
            if not hasattr(obj, "__code__"):  # a C function: seen as a c_call
                index.c_names[_c_name(obj)] = spec
    for spec in rules.allowed:
        module, _, qualname = spec.partition(":")
        origin = _module_file(module)
        if origin is not None:
            index.allowed_code.add((origin, qualname))
    for module in rules.modules:
        root = _module_root(module)
        if root is not None:
            index.roots[root] = module
    index.c_modules = tuple(m for m in rules.modules if not m.startswith("course_lib"))
    for name in rules.functions + TAMPERING:
        obj = _resolve_dotted(name)
        if obj is None:
            continue
        if hasattr(obj, "__code__"):
            index.code[(obj.__code__.co_filename, obj.__code__.co_qualname)] = name
        else:
            index.c_names[_c_name(obj)] = name
    for name in MODE_SWITCHES:
        obj = _resolve_dotted(name)
        obj = inspect.unwrap(obj) if obj is not None else None  # a @contextmanager: its own body
        if obj is not None and hasattr(obj, "__code__"):
            index.switch_code.add((obj.__code__.co_filename, obj.__code__.co_qualname))
        elif obj is not None:
            index.switch_c_names.add(_c_name(obj))
    index.functions = set(rules.functions)
    index.ops = {op for op in rules.ops if not op.endswith("*")}
    index.op_prefixes = tuple(op[:-1] for op in rules.ops if op.endswith("*"))
    index.dtypes = {getattr(torch, d) for d in rules.dtypes}
    index.checks_root = _module_root(CHECKS_PACKAGE) or ""
    return index


def _resolve_dotted(name: str):
    """``"torch.nn.functional.softmax"`` -> the object, trying each split into module and attributes."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        obj = _resolve(".".join(parts[:cut]) + ":" + ".".join(parts[cut:]))
        if obj is not None:
            return obj
    return None


def _c_name(fn) -> str:
    """A C function's name as the profiler's ``c_call`` event shows it: ``module.qualname``.

    Tensor methods are ``torch.Tensor.<name>`` whether bound (``x.softmax``) or not.
    """
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "?")
    objclass = getattr(fn, "__objclass__", None)
    if isinstance(owner, torch.Tensor) or (isinstance(objclass, type) and issubclass(objclass, torch._C.TensorBase)):
        return f"torch.Tensor.{name}"
    module = getattr(fn, "__module__", None)
    if module is None and owner is not None:
        module = owner.__name__ if isinstance(owner, types.ModuleType) else type(owner).__module__
    return f"{module}.{getattr(fn, '__qualname__', name)}"


# --------------------------------------------------------------------------- the watch


class _Seen:
    """What the watch saw that the rules forbid: one line per distinct thing, in order."""

    def __init__(self, index: _Index):
        self.index = index
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.lines and len(self.lines) < 20:
            self.lines.append(line)

    def __bool__(self) -> bool:
        return bool(self.lines)

    def message(self, name: str) -> str:
        rules = self.index.rules
        text = f"{name} used what this exercise forbids:\n" + "\n".join(f"  - {line}" for line in self.lines)
        return text + (f"\n{rules.why}" if rules.why else "")


def _profiler(seen: _Seen):
    index = seen.index
    known: dict[tuple[str, str], str | None] = {}

    def classify(filename: str, qualname: str) -> str | None:
        key = (filename, qualname)
        if key not in known:
            known[key] = _classify_code(index, filename, qualname)
        return known[key]

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            found = classify(code.co_filename, code.co_qualname)
            if found and _answer_only(index, code.co_filename) and not _called_by_answer(frame):
                found = None
            if found is None and (code.co_filename, code.co_qualname) in index.switch_code and _called_by_answer(frame):
                found = f"{code.co_qualname}, which would switch off the watch over the answer"
            if found is None and code in _OP_CALLS:  # torch.ops.aten.<op>(...), seen before it reaches the dispatcher
                op = _op_name(frame.f_locals.get("self"))
                if op in index.ops or (index.op_prefixes and op.startswith(index.op_prefixes)):
                    found = f"the operator {op}"
            if found:
                seen.add(found)
        elif event == "c_call":
            if frame.f_code.co_filename == __file__:  # the watch itself, restoring the profiler
                return
            name = _c_name(arg)
            found = index.c_names.get(name)
            if found is not None:
                found = _describe_forbidden(found, index)
            elif index.c_modules and name.startswith(index.c_modules) and not _is_library(frame.f_code.co_filename):
                found = f"{name} (the exercise does not allow {name.split('.')[0].lstrip('_')})"
            elif name in index.switch_c_names and not _is_library(frame.f_code.co_filename):
                found = f"{name}, which would switch off the watch over the answer"
            if found:
                seen.add(found)

    return profile


def _called_by_answer(frame) -> bool:
    """Whether the function running in ``frame`` was called by the answer's own code (through contextlib at most)."""
    caller = frame.f_back
    while caller is not None and caller.f_code.co_filename in (contextlib.__file__, functools.__file__):
        caller = caller.f_back
    return caller is not None and not _is_library(caller.f_code.co_filename)


_OP_CALLS = tuple(getattr(torch._ops, cls).__call__.__code__ for cls in ("OpOverloadPacket", "OpOverload")
                  if hasattr(getattr(torch._ops, cls, None), "__call__") and hasattr(getattr(torch._ops, cls).__call__, "__code__"))


def _op_name(op) -> str:
    """``"aten._softmax"`` for ``torch.ops.aten._softmax`` or one of its overloads."""
    packet = getattr(op, "overloadpacket", op)
    return str(getattr(packet, "_qualified_op_name", "")).replace("::", ".")


def _classify_code(index: _Index, filename: str, qualname: str) -> str | None:
    for (file, prefix) in index.allowed_code:
        if filename == file and (qualname == prefix or qualname.startswith(prefix + ".")):
            return None
    for (file, prefix), name in index.code.items():
        if filename == file and (qualname == prefix or qualname.startswith(prefix + ".")):
            return _describe_forbidden(name, index)
    if index.checks_root and filename.startswith(index.checks_root) and not filename.endswith("guard.py"):
        return f"the checks' own code ({qualname} in course_lib.checks): write your own"
    for root, module in index.roots.items():
        if filename == root or (root.endswith(os.sep) and filename.startswith(root)):
            return f"{module} ({qualname})"
    return None


def _answer_only(index: _Index, filename: str) -> bool:
    """Whether code in ``filename`` counts only when the answer calls it itself.

    A package outside the course (numpy, transformers) may be used by PyTorch or Python on
    their own; only the answer's own calls into it break a rule. The course's modules
    always count.
    """
    return any(filename.startswith(root) and not module.startswith("course_lib") for root, module in index.roots.items())


def _describe_forbidden(name: str, index: _Index) -> str:
    if name in index.rules.references:
        return f"the course's reference {name.replace(':', '.')}: write your own"
    if name in TAMPERING:
        return f"{name}, which would switch off the watch over the answer"
    return name


class _FunctionWatch(TorchFunctionMode):
    """Sees every call of PyTorch's API (``F.softmax``, ``Tensor.to``, ...)."""

    def __init__(self, seen: _Seen):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.seen.index.functions:
            name = _safe_resolve_name(func)
            if name in self.seen.index.functions:
                self.seen.add(name)
        return func(*args, **(kwargs or {}))


def _safe_resolve_name(func) -> str | None:
    try:
        return resolve_name(func)
    except Exception:  # a function PyTorch cannot name
        return None


class _DispatchWatch(TorchDispatchMode):
    """Sees every ATen operator that runs, and the dtype of every tensor it makes."""

    def __init__(self, seen: _Seen):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        index = self.seen.index
        name = f"{func.namespace}.{func.__name__.split('.')[0]}"
        if name in index.ops or (index.op_prefixes and name.startswith(index.op_prefixes)):
            self.seen.add(f"the operator {name}")
        out = func(*args, **(kwargs or {}))
        if index.dtypes:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype in index.dtypes:
                    self.seen.add(f"a {t.dtype} tensor (made by {name})")
        return out


@contextlib.contextmanager
def watch(rules: Rules):
    """Watch the code run inside the ``with`` block; yields a :class:`_Seen` that is true if a rule was broken."""
    seen = _Seen(_index(rules))
    before = sys.getprofile()
    index = seen.index  # a mode that has nothing to look for is left out: it would only slow every operator down
    functions = _FunctionWatch(seen) if index.functions else contextlib.nullcontext()
    dispatch = _DispatchWatch(seen) if index.ops or index.op_prefixes or index.dtypes else contextlib.nullcontext()
    with functions, dispatch:
        sys.setprofile(_profiler(seen))
        try:
            yield seen
        finally:
            sys.setprofile(before)


def refuse_references(fn, rules: Rules, name: str) -> None:
    """Fail when ``fn`` *is* one of the course's references (passed instead of the learner's own function)."""
    found = _index(rules).objects.get(id(fn))
    module = getattr(fn, "__module__", None) or ""
    if found is None and any(module == m or module.startswith(m + ".") for m in rules.modules):
        found = f"{module}:{getattr(fn, '__qualname__', '?')}"
    if found is not None:
        raise AssertionError(f"write your own {name} rather than passing the course's reference {found.replace(':', '.')}")


def watched(fn, rules: Rules):
    """The learner's ``fn``, every call of which runs under :func:`watch` and fails if a rule was broken.

    A function that lives in a grading sandbox (``course_lib.sandbox``) takes the rules along
    and is watched there.
    """
    if hasattr(fn, "with_rules"):
        return fn.with_rules(rules)
    name = getattr(fn, "__name__", rules.exercise)
    refuse_references(fn, rules, rules.exercise)

    def run(*args, **kwargs):
        with watch(rules) as seen:
            try:
                result = fn(*args, **kwargs)
            except Exception:
                if seen:
                    raise AssertionError(seen.message(name)) from None
                raise
        if seen:
            raise AssertionError(seen.message(name))
        return result

    run.__name__ = name
    run.learner_function = fn
    return run
