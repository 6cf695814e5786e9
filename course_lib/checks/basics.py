"""Checks for the warm-up exercise of lesson 00."""

from __future__ import annotations

import torch

from course_lib.checks.common import call, expect_int, new_generator, randint
from course_lib.checks.guard import Rules, watched
from course_lib.memory import tensor_bytes as reference_tensor_bytes

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool, torch.uint8,
           torch.int16, torch.int32, torch.complex64, torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2)
_LAYOUTS = ("contiguous", "transposed", "strided", "expanded")


def _tensor_in_layout(shape: tuple, dtype: torch.dtype, layout: str) -> tuple[torch.Tensor, str]:
    """A zero tensor of ``shape`` and ``dtype`` that is contiguous or a view (transposed, strided, expanded), and how it was made."""
    if layout == "transposed":
        return torch.zeros(tuple(reversed(shape)), dtype=dtype).permute(*reversed(range(len(shape)))), f"torch.zeros({tuple(reversed(shape))}).permute(...)"
    if layout == "strided":
        big = torch.zeros(tuple(2 * s + 1 for s in shape), dtype=dtype)
        return big[tuple(slice(1, None, 2) for _ in shape)], f"a view [1::2, ...] into torch.zeros({tuple(big.shape)})"
    if layout == "expanded":
        return torch.zeros((1,) + tuple(shape[1:]), dtype=dtype).expand(shape), f"torch.zeros({(1,) + tuple(shape[1:])}).expand({shape})"
    return torch.zeros(shape, dtype=dtype), f"torch.zeros({shape})"


TENSOR_BYTES = Rules("tensor_bytes", references=("course_lib.memory:tensor_bytes",))


def check_tensor_bytes(tensor_bytes, seed: int | None = None) -> None:
    """``tensor_bytes(t)`` on random shapes, every common dtype, contiguous tensors and views."""
    tensor_bytes = watched(tensor_bytes, TENSOR_BYTES)
    gen, seed = new_generator(seed)
    for case, dtype in enumerate(_DTYPES):
        shape = tuple(randint(gen, 1, 7) for _ in range(randint(gen, 1, 3)))
        t, made = _tensor_in_layout(shape, dtype, _LAYOUTS[case % len(_LAYOUTS)])
        what = f"tensor_bytes(t) for t = {made}, dtype={dtype}, shape {shape} (seed {seed})"
        expect_int(call(tensor_bytes, t, what=what), reference_tensor_bytes(t), what)


def check_tensor_bytes_edge_cases(tensor_bytes) -> None:
    """Scalars, empty tensors, views, a tensor that requires grad and less common dtypes."""
    tensor_bytes = watched(tensor_bytes, TENSOR_BYTES)
    big = torch.zeros(10, 10, dtype=torch.float16)
    cases = [
        ("a 0-d tensor", torch.tensor(3.0)),
        ("an empty tensor", torch.zeros(0, 5)),
        ("a view of one row of a 10x10 float16 matrix", big[0]),
        ("a transposed view", big.t()),
        ("a strided view big[::2, ::5]", big[::2, ::5]),
        ("the last row of big, big[9]", big[9]),
        ("an expanded view torch.zeros(3).expand(4, 3) (12 elements, 3 in memory)", torch.zeros(3).expand(4, 3)),
        ("a float32 tensor that requires grad (a parameter's data)", torch.zeros(3, 4, requires_grad=True)),
        ("a complex64 tensor", torch.zeros(2, 3, dtype=torch.complex64)),
        ("an int16 tensor", torch.zeros(5, dtype=torch.int16)),
        ("a float8_e4m3fn tensor", torch.zeros(4, 2, dtype=torch.float8_e4m3fn)),
        ("an empty int32 tensor", torch.zeros(3, 0, dtype=torch.int32)),
    ]
    for name, t in cases:
        what = f"tensor_bytes on {name}"
        expect_int(call(tensor_bytes, t, what=what), reference_tensor_bytes(t), what)
