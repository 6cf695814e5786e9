"""Helpers shared by the exercise checks.

A check calls the learner's function on fresh random inputs and on edge cases and
compares what comes back with the course's reference. It fails with an
``AssertionError`` whose message says what was called, what was expected and what came
back, and the seed that reproduces the inputs.
"""

from __future__ import annotations

import copy
import secrets

import torch


def new_generator(seed: int | None = None) -> tuple[torch.Generator, int]:
    """A CPU ``torch.Generator`` seeded with ``seed``, or with a fresh random seed when ``None``."""
    seed = secrets.randbits(31) if seed is None else int(seed)
    return torch.Generator().manual_seed(seed), seed


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """One integer in ``[low, high]`` (both included) drawn from ``gen``."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def expect_int(got, expected: int, what: str) -> None:
    """Fail unless ``got`` is a Python ``int`` (not a float or a tensor) equal to ``expected``."""
    if type(got) is not int:
        raise AssertionError(f"{what} should return a Python int, got {type(got).__name__} ({got!r}); try int(...)")
    if got != expected:
        raise AssertionError(f"{what} should be {expected:,}, got {got:,}")


def same_contents(a, b) -> bool:
    """Whether ``a`` and ``b`` hold the same data: tensors bit for bit (NaN equals NaN), containers item by item.

    Objects that are neither tensors, numbers, strings nor containers (a model) count as unchanged.
    """
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.device.type == "meta":
            return True
        x, y = (torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())) if a.is_complex() else (a, b)
        if x.is_floating_point():
            x, y = _bytes_of(x), _bytes_of(y)
        return torch.equal(x, y)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_contents(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_contents(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, str, bytes, bool, type(None))):
        return type(a) is type(b) and (a == b or (a != a and b != b))  # nan == nan here
    return True


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t``'s elements in logical order (a fresh, densely packed copy viewed as uint8)."""
    flat = torch.empty(t.numel(), dtype=t.dtype)
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8)


def _snapshot(value):
    """A copy of ``value`` to compare with after the call (tensors cloned, containers copied deeply)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (dict, list, tuple)):
        return copy.deepcopy(value)
    return None


def call(fn, *args, what: str, **kwargs):
    """Call ``fn`` with the arguments as given (views stay views) and fail if it changed one in place.

    Tensors, lists, tuples and dicts (a config) are compared with a copy taken before the call.
    """
    before = [_snapshot(a) for a in args]
    kw_before = {k: _snapshot(a) for k, a in kwargs.items()}
    result = fn(*args, **kwargs)
    for original, after in zip(before, args):
        if original is not None and not same_contents(original, after):
            kind = "tensor" if isinstance(after, torch.Tensor) else type(after).__name__
            raise AssertionError(f"{what} changed its input {kind} in place; compute a new one instead")
    for key, original in kw_before.items():
        if original is not None and not same_contents(original, kwargs[key]):
            raise AssertionError(f"{what} changed its argument {key!r} in place; compute a new one instead")
    return result


def call_explained(fn, *args, what: str, hint: str = "", **kwargs):
    """:func:`call`; an error the answer raises fails the check with a message that names the call (and ``hint``)."""
    try:
        return call(fn, *args, what=what, **kwargs)
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001  (the answer's own error, reported as a failed check)
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}{hint}") from None


def loss_gradients(loss_fn, inputs: list[torch.Tensor], more: tuple = ()) -> dict:
    """A backward pass through ``loss_fn(*inputs, *more)``, reported as data (a driver: it runs where the learner's code runs).

    ``inputs`` are copied into leaves that require gradients (``more``, such as a beta, are passed
    after them as they are). Returns ``{"type": the result's type
    name, "requires_grad": bool, "value": the detached result or None, "grads": one gradient (or
    None) per input}``; the backward pass runs only for a plain scalar tensor that requires grad.
    """
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    got = loss_fn(*leaves, *more)
    report = {"type": type(got).__name__, "requires_grad": False, "value": None, "grads": [None] * len(leaves)}
    if type(got) is torch.Tensor:
        report["requires_grad"], report["value"] = bool(got.requires_grad), got.detach().clone()
        if got.requires_grad and got.numel() == 1:
            got.backward()
            report["grads"] = [None if t.grad is None else t.grad.detach().clone() for t in leaves]
    return report


def beside_answer(fn, driver, *args, what: str):
    """``driver(fn, *args)``, run in the learner's grading sandbox when ``fn`` lives in one; returns what it returned.

    What the answer does in a sandbox cannot be seen from the grader (its gradients, its operators,
    the hooks of its copy of a model): there the driver, a function of ``course_lib.checks``, runs next
    to the answer and only its report, as data, comes back. An error the answer raises fails the
    check with a message that names the call.
    """
    try:
        if hasattr(fn, "through"):  # the grader: the learner's function lives in a sandbox
            return fn.through(f"{driver.__module__}:{driver.__name__}", *args)
        return driver(fn, *args)
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001  (the answer's own error, reported as a failed check)
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}") from None


def call_with_gradients(loss_fn, inputs: list[torch.Tensor], what: str, more: tuple = ()) -> dict:
    """:func:`loss_gradients` of the learner's ``loss_fn``, run beside it (:func:`beside_answer`).

    Gradients cannot travel back from a sandbox (only data does), so there the backward pass
    runs next to the learner's function and only the report comes back.
    """
    return beside_answer(loss_fn, loss_gradients, list(inputs), tuple(more), what=what)


def expect_tensor(got, expected: torch.Tensor, what: str, *, atol: float | None = None, rtol: float | None = None) -> None:
    """Fail unless ``got`` is a plain ``torch.Tensor`` with ``expected``'s dtype, shape, device and values.

    The type is checked exactly, so an object that merely compares equal to anything
    is rejected. Tolerances default to ``torch.testing.assert_close``'s for the dtype.
    """
    if type(got) is not torch.Tensor:
        raise AssertionError(f"{what} should return a torch.Tensor, got {type(got).__name__}")
    if got.dtype != expected.dtype:
        raise AssertionError(f"{what} should return dtype {expected.dtype}, got {got.dtype}")
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{what} should return shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    if got.device != expected.device:
        raise AssertionError(f"{what} should return a tensor on {expected.device}, got {got.device}")
    if expected.dtype == torch.bool or not expected.is_floating_point():
        if not torch.equal(got, expected):
            wrong = (got != expected).nonzero()[:5].tolist()
            raise AssertionError(f"{what} has wrong entries, for example at indices {wrong}.\nexpected:\n{expected}\ngot:\n{got}")
        return
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        raise AssertionError(f"{what} contains nan where the reference has none")
    try:
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    except AssertionError as err:
        raise AssertionError(f"{what} returns wrong values.\n{err}") from None


def on_meta(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same shapes, dtypes and strides on PyTorch's ``meta`` device: tensors without data.

    A CPU has no second device to test "keeps the input's device" with; ``meta`` is one. An
    answer that makes a new tensor without ``device=x.device`` (or calls ``.cpu()``) fails on it
    exactly as it would on a GPU.
    """
    return tuple(torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in tensors)


def expect_same_device(fn, *args, what: str, **kwargs) -> None:
    """Call ``fn`` on ``meta`` copies of the tensors in ``args``; fail if a tensor it returns, or makes, is on another device.

    Copying the inputs' data to the CPU (``.cpu()``, or filling a buffer made without
    ``device=``) fails too: on ``meta`` it raises "Cannot copy out of meta tensor", on a GPU it
    would leave the result on the CPU. An answer that needs the values themselves (``.item()``,
    ``if x.max() == 0``, numpy) cannot run on ``meta``; that is not a mistake, and such an
    answer is not judged here.
    """
    meta = [on_meta(a)[0] if isinstance(a, torch.Tensor) and a.device.type != "meta" else a for a in args]
    try:
        result = fn(*meta, **kwargs)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        text = str(err)
        if "copy out of meta" in text:
            raise AssertionError(
                f"{what} copied its input's data to the CPU (into a tensor made without device=..., or with .cpu()): "
                "keep the input's device, e.g. torch.empty(..., device=x.device) or torch.empty_like(x)"
            ) from None
        if "device" in text and "meta" in text and "cannot be called on meta" not in text and "numpy" not in text:
            raise AssertionError(
                f"{what} mixes devices ({text.splitlines()[0]}): make new tensors on the input's device, "
                "e.g. torch.zeros(..., device=x.device) or torch.zeros_like(x)"
            ) from None
        if isinstance(err, TypeError) and "meta" not in text:
            raise
        return
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    for out in outputs:
        if isinstance(out, torch.Tensor) and out.device.type != "meta":
            raise AssertionError(f"{what} returned a tensor on {out.device} for inputs on another device: keep the input's device")
