"""Lesson 10 on a CUDA GPU: a decoding step's matmul with int4 weights against bfloat16, and 2:4 sparsity against dense.

    python bench/int4_gpu.py --out bench/results/int4-gpu.md [--quick]     # needs CUDA and Triton

1. The course's Triton kernel (``course_lib.int4.int4_matmul_triton``: 4-bit codes, group 128,
   dequantized in registers) against PyTorch's bfloat16 ``x @ w.T``, for x of 1 to 16 rows:
   microseconds (``triton.testing.do_bench``, median), the speedup over bfloat16 and the bytes
   each one reads (weights, scales and zeros, x, the output) per second. Decoding reads every
   weight once per step, so the ratio of bytes, about 3.8, bounds the speedup.
2. PyTorch's 2:4 semi-structured sparse matmul (``torch.sparse.to_sparse_semi_structured``,
   float16: half the weights, plus 2 bits of position each) against dense float16, same shapes.
   Skipped, with the reason, where this PyTorch or GPU does not support it.

Shapes (out, in): 8192 x 8192 (a 70B-class model's attention projection) and 28672 x 8192
(its MLP up projection). Every ratio comes from times measured in this run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib import int4  # noqa: E402

SHAPES = ((8192, 8192), (28672, 8192))   # (out, in)
BATCHES = (1, 2, 4, 8, 16)
GROUP = 128


def time_us(fn) -> float:
    """Median microseconds of ``fn()`` on the GPU (Triton's do_bench: warm-up, cache flushed between runs)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def random_int4(out: int, inp: int, device: str) -> int4.Int4Weight:
    """Random codes, scales and zeros: the time does not depend on the values."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (out, inp), generator=gen, dtype=torch.uint8)
    scale = torch.rand(out, inp // GROUP, generator=gen) * 0.01 + 1e-3
    zero = torch.randint(0, 16, (out, inp // GROUP), generator=gen)
    return int4.pack(codes, scale, zero, GROUP).to(device)


def int4_rows(shapes, batches, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """The int4 kernel against ``x @ w.T`` with the same weights in ``dtype`` (bfloat16 on the GPU)."""
    rows = []
    for out, inp in shapes:
        q = random_int4(out, inp, device)
        w32 = int4.dequantize(q)
        w = w32.to(dtype)                                           # the same weights, in bfloat16
        for batch in batches:
            x = torch.randn(batch, inp, device=device, dtype=dtype)
            exact = x.float() @ w32.T
            error = (int4.int4_matmul_triton(x, q).float() - exact).abs().max().item()
            bf16_us = time_us(lambda: x @ w.T)
            int4_us = time_us(lambda: int4.int4_matmul_triton(x, q))
            activations = 2 * batch * (inp + out)                  # x read, y written, 2 bytes each
            rows.append({"shape": f"{out} x {inp}", "batch": batch, "bf16_us": bf16_us, "int4_us": int4_us,
                         "speedup": bf16_us / int4_us,
                         "bf16_gbs": (w.numel() * 2 + activations) / bf16_us / 1e3,
                         "int4_gbs": (int4.nbytes(q) + activations) / int4_us / 1e3,
                         "max_error": error})
    return rows


def two_four(w: torch.Tensor) -> torch.Tensor:
    """``w`` with the 2 smallest of every 4 consecutive weights of a row set to zero."""
    groups = w.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return (groups * keep).reshape(w.shape)


def sparse_rows(shapes, batches, device: str = "cuda") -> tuple[list[dict], list[str]]:
    """Dense float16 ``F.linear`` against the 2:4 sparse one, and why each case that failed is not supported."""
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError as e:
        return [], [f"ImportError: {e}"]
    rows, reasons = [], []
    for out, inp in shapes:
        w = two_four(torch.randn(out, inp, device=device, dtype=torch.float16) * 0.02)
        try:
            w_sparse = to_sparse_semi_structured(w)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            reasons.append(f"{out} x {inp}: {type(e).__name__}: {_first_line(e)}")
            continue
        for batch in batches:
            x = torch.randn(batch, inp, device=device, dtype=torch.float16)
            try:
                error = (F.linear(x, w_sparse).float() - F.linear(x, w).float()).abs().max().item()
            except (RuntimeError, NotImplementedError, ValueError) as e:
                reasons.append(f"{out} x {inp}, batch {batch}: {type(e).__name__}: {_first_line(e)}")
                continue
            dense_us = time_us(lambda: F.linear(x, w))
            sparse_us = time_us(lambda: F.linear(x, w_sparse))
            rows.append({"shape": f"{out} x {inp}", "batch": batch, "dense_us": dense_us, "sparse_us": sparse_us,
                         "speedup": dense_us / sparse_us, "max_error": error})
    return rows, reasons


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def int4_table(rows: list[dict]) -> str:
    lines = ["| out x in | batch | bf16 x @ w.T (µs) | int4 Triton (µs) | speedup | bf16 GB/s | int4 GB/s | max abs error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['bf16_us']:.1f} | {r['int4_us']:.1f} | {r['speedup']:.2f} | "
                     f"{r['bf16_gbs']:.0f} | {r['int4_gbs']:.0f} | {r['max_error']:.1e} |")
    return "\n".join(lines)


def sparse_table(rows: list[dict]) -> str:
    lines = ["| out x in | batch | dense fp16 (µs) | 2:4 sparse fp16 (µs) | speedup | max abs error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['dense_us']:.1f} | {r['sparse_us']:.1f} | "
                     f"{r['speedup']:.2f} | {r['max_error']:.1e} |")
    return "\n".join(lines)


def requirements_missing() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if not torch.cuda.is_available():
        return "bench/int4_gpu.py needs a CUDA GPU (run it with `make gpu-check` on one); none is visible here"
    if not int4.available():
        return "bench/int4_gpu.py needs Triton: pip install 'triton>=3.6,<3.10'"
    if int4.interpreting():
        return "bench/int4_gpu.py must run without TRITON_INTERPRET=1 (the interpreter does not time GPU kernels)"
    return None


def run(quick: bool = False) -> str:
    """The benchmark's Markdown section; raises RuntimeError without CUDA or Triton."""
    missing = requirements_missing()
    if missing:
        raise RuntimeError(missing)
    shapes, batches = (SHAPES[:1], (1, 16)) if quick else (SHAPES, BATCHES)
    gpu = torch.cuda.get_device_name()
    text = [f"### int4 weights (group {GROUP}) against bfloat16, one decoding matmul on {gpu}\n", int4_table(int4_rows(shapes, batches))]
    rows, reasons = sparse_rows(shapes, batches)
    text.append(f"\n### 2:4 semi-structured sparsity against dense, float16, on {gpu}\n")
    if rows:
        text.append(sparse_table(rows))
    text += [f"\nNot supported here: {reason}" for reason in reasons]
    return "\n".join(text) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--quick", action="store_true", help="one shape, batches 1 and 16")
    args = parser.parse_args(argv)
    missing = requirements_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    text = run(args.quick)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
