"""Checks for the warm-up exercise of lesson 00."""

from __future__ import annotations

import torch

from course_lib.checks.common import call, expect_int, new_generator, randint
from course_lib.checks.guard import Rules, watched
from course_lib.memory import tensor_bytes as reference_tensor_bytes

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool, torch.uint8)


TENSOR_BYTES = Rules("tensor_bytes", references=("course_lib.memory:tensor_bytes",))


def check_tensor_bytes(tensor_bytes, seed: int | None = None) -> None:
    """``tensor_bytes(t)`` on random shapes and every common dtype."""
    tensor_bytes = watched(tensor_bytes, TENSOR_BYTES)
    gen, seed = new_generator(seed)
    for dtype in _DTYPES:
        shape = tuple(randint(gen, 1, 7) for _ in range(randint(gen, 1, 3)))
        t = torch.zeros(shape, dtype=dtype)
        what = f"tensor_bytes(torch.zeros({shape}, dtype={dtype})) (seed {seed})"
        expect_int(call(tensor_bytes, t, what=what), reference_tensor_bytes(t), what)


def check_tensor_bytes_edge_cases(tensor_bytes) -> None:
    """Scalars, empty tensors and views."""
    tensor_bytes = watched(tensor_bytes, TENSOR_BYTES)
    big = torch.zeros(10, 10, dtype=torch.float16)
    cases = [
        ("a 0-d tensor", torch.tensor(3.0)),
        ("an empty tensor", torch.zeros(0, 5)),
        ("a view of one row of a 10x10 float16 matrix", big[0]),
        ("a transposed view", big.t()),
        ("a strided view big[::2, ::5]", big[::2, ::5]),
    ]
    for name, t in cases:
        what = f"tensor_bytes on {name}"
        expect_int(call(tensor_bytes, t, what=what), reference_tensor_bytes(t), what)
