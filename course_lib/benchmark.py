"""Measuring speed and memory: timings, peak memory, and the attention benchmarks (lessons 05 and 06).

Every figure the course quotes is measured in the same run as its reference, and quoted as
a ratio to it. The rules, in code:

- :func:`median_ms`: warm up first (the first calls compile kernels, fill caches and, for
  Triton, autotune), then the median of several runs; on a GPU, ``torch.cuda.synchronize()``
  before reading the clock, because kernels run asynchronously.
- :func:`peak_mib`: the peak GPU memory a call allocates *above* what was allocated before
  it (the inputs), from ``torch.cuda.max_memory_allocated``.
- :func:`attention_flops`: ``4 * B * H * L * S * D`` for a forward pass (two matrix
  products of ``2 * L * S * D`` each), half of it when causal.

:func:`attention_benchmark` races attention implementations on one GPU: eager PyTorch
(scores, softmax, product, as in lesson 01), the course's Triton kernel
(:mod:`course_lib.kernels`) and the back-ends of ``torch.nn.functional.scaled_dot_product_attention``
(FlashAttention-2, memory-efficient, cuDNN). :func:`decode_benchmark` times one decode step
of attention against a long KV cache with MHA, GQA and MQA (lesson 06).
:func:`reference_h200` reads the H200 figures that lessons 03-06 quote, with their provenance
and uncertainty, from ``course_lib/assets/reference_h200.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

SDPA_BACKENDS = {
    "SDPA flash (FA2)": "FLASH_ATTENTION",
    "SDPA mem-efficient": "EFFICIENT_ATTENTION",
    "SDPA cuDNN": "CUDNN_ATTENTION",
}


REFERENCE_H200 = Path(__file__).resolve().parent / "assets" / "reference_h200.json"


# --------------------------------------------------------------------------- the reference run's figures


def reference_h200(group: str, path: Path | str | None = None) -> dict:
    """One group of the H200 figures that lessons 03-06 quote, from ``course_lib/assets/reference_h200.json``.

    Returns the group as a dict: ``what`` was measured, ``gpu``, ``torch``, when (``measured``), the
    ``script`` and ``command`` that made it (or that they were not recorded), ``provenance``,
    ``uncertainty``, and the figures, as ``figures`` (name -> value) or ``rows`` (one dict per
    configuration). ``pm`` beside them holds each figure's +- from rounding: half a unit of the last
    digit it was recorded with. An unknown ``group`` raises ``ValueError`` naming the groups.
    Defined in lesson 03.
    """
    groups = json.loads(Path(path or REFERENCE_H200).read_text(encoding="utf-8"))["groups"]
    if group not in groups:
        raise ValueError(f"no reference group {group!r}; the groups are {', '.join(groups)}")
    return groups[group]


# --------------------------------------------------------------------------- timing and memory


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (synchronised on CUDA). Defined in lesson 05."""
    device = torch.device(device)
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object], device: torch.device | str, no_grad: bool = True) -> float:
    """Peak memory allocated by ``fn()`` above what was allocated before (the inputs), in MiB.

    On a GPU from ``torch.cuda.max_memory_allocated``; elsewhere from the tensors ``fn``
    creates (:func:`course_lib.flash.peak_allocated_bytes`), under ``torch.no_grad()`` unless
    ``no_grad=False`` (to measure a backward pass). Defined in lesson 05.
    """
    device = torch.device(device)
    if device.type != "cuda":
        from course_lib.flash import peak_allocated_bytes

        with torch.no_grad() if no_grad else contextlib.nullcontext():
            return peak_allocated_bytes(fn) / 2**20
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    del result
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def attention_flops(batch: int, heads: int, n_q: int, n_k: int, head_dim: int, is_causal: bool = False) -> float:
    """FLOPs of one attention forward pass: ``4 * B * H * L * S * D``, halved when causal. Defined in lesson 05."""
    return 4.0 * batch * heads * n_q * n_k * head_dim / (2 if is_causal else 1)


# --------------------------------------------------------------------------- the contenders


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """Attention as three separate operations, the ``(L, S)`` scores written to memory (lesson 01's way).

    ``q`` ``(B, H, L, D)``, ``k``, ``v`` ``(B, H, S, D)``; returns ``(B, H, L, D)``. Causal is top-left aligned.
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def sdpa_with_backend(backend: str) -> Callable:
    """``F.scaled_dot_product_attention`` restricted to one back-end (a name of ``torch.nn.attention.SDPBackend``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = getattr(SDPBackend, backend)

    def attend(q, k, v, is_causal=False):
        with sdpa_kernel(chosen):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    return attend


def attention_contenders(device: torch.device, backward: bool = False) -> dict[str, Callable]:
    """Name -> ``fn(q, k, v, is_causal)`` for every implementation that can run on ``device``.

    On a GPU the course's tiled PyTorch version (a Python loop over tiles) joins only for the
    backward benchmark, where it is the recomputing reference the Triton backward must beat.
    Defined in lesson 05.
    """
    from course_lib import kernels
    from course_lib.flash import flash_attention

    pytorch_tiles = lambda q, k, v, is_causal=False: flash_attention(  # noqa: E731
        q, k, v, is_causal=is_causal, block_q=128, block_k=128
    )
    contenders: dict[str, Callable] = {"eager": eager_attention}
    if device.type == "cuda":
        if backward:
            contenders["course flash (PyTorch tiles)"] = pytorch_tiles
        if kernels.available() and not kernels.interpreting():
            contenders["course Triton"] = kernels.flash_attention_triton
        contenders.update({name: sdpa_with_backend(backend) for name, backend in SDPA_BACKENDS.items()})
    else:
        contenders["course flash (PyTorch tiles)"] = pytorch_tiles
        contenders["SDPA"] = lambda q, k, v, is_causal=False: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    return contenders


def _batch_heads(head_dim: int, device: torch.device) -> tuple[int, int]:
    """The reference run's sizes: (4, 32) for head dim 64, (2, 16) for 128 on a GPU; small on the CPU."""
    if device.type != "cuda":
        return 1, 4
    return (4, 32) if head_dim <= 64 else (2, 16)


# --------------------------------------------------------------------------- attention forward


def attention_benchmark(
    lengths=(1024, 4096, 16384),
    head_dims=(64, 128),
    causal=(False, True),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    repeats: int = 10,
    progress: bool = True,
    names: tuple[str, ...] | None = None,
    backward: bool = False,
) -> list[dict]:
    """Time and measure every contender of :func:`attention_contenders` (or only ``names``) on self-attention.

    For each length ``N``, head dim ``D`` and causal flag: ``q, k, v`` ``(B, H, N, D)``
    (``B, H`` from the reference run: 4, 32 for ``D = 64``, 2, 16 for ``D = 128``; bfloat16 on
    a GPU, float32 on the CPU). A contender that fails (out of memory, no kernel for this
    GPU) is recorded with its error instead of a time. Returns one dict per (configuration,
    contender): ``n, head_dim, causal, batch, heads, name, ms, tflops, peak_mib, error``.
    With ``backward=True`` each call is a forward and a backward pass (the gradients of q, k
    and v for a random output gradient), counted as 3.5 times the forward FLOPs (the backward
    pass does five matrix products to the forward's two, as FlashAttention-2 counts).
    Defined in lesson 05.
    """
    from tqdm.auto import tqdm

    from course_lib.device import get_device

    device = torch.device(device) if device is not None else get_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    contenders = attention_contenders(device, backward)
    if names is not None:
        unknown = set(names) - set(contenders)
        if unknown:
            raise ValueError(f"names must be among {sorted(contenders)} on {device.type}, got {sorted(unknown)}")
        contenders = {name: contenders[name] for name in names}
    configs = [(n, d, c) for d in head_dims for c in causal for n in lengths]
    rows = []
    for n, d, is_causal in tqdm(configs, desc="attention benchmark", disable=not progress):
        b, h = _batch_heads(d, device)
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype, generator=g).requires_grad_(backward)
                   for _ in range(3))
        do = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=g)
        flops = attention_flops(b, h, n, n, d, is_causal) * (3.5 if backward else 1.0)
        for name, fn in contenders.items():
            row = {"n": n, "head_dim": d, "causal": is_causal, "batch": b, "heads": h, "name": name,
                   "ms": None, "tflops": None, "peak_mib": None, "error": None}
            if backward:
                call = lambda fn=fn: torch.autograd.grad(fn(q, k, v, is_causal=is_causal), (q, k, v), do)  # noqa: E731
            else:
                call = lambda fn=fn: fn(q, k, v, is_causal=is_causal)  # noqa: E731
            try:
                row["peak_mib"] = peak_mib(call, device, no_grad=not backward)
                row["ms"] = median_ms(call, device, warmup=3, repeats=repeats)
                row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:   # OOM, or no kernel for these inputs
                row["error"] = str(error).splitlines()[0][:60]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
    return rows


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def attention_table(rows: list[dict], reference: str | None = None) -> str:
    """Markdown table of :func:`attention_benchmark`'s rows: TFLOP/s and peak MiB per contender, and ratios.

    One line per (length, head dim, causal). The ratio columns divide every contender's
    TFLOP/s by the ``reference`` contender's (default: the course's Triton kernel against
    SDPA's FlashAttention-2 and cuDNN back-ends on a GPU; the tiled PyTorch version against
    eager on the CPU). Defined in lesson 05.
    """
    names = list(dict.fromkeys(r["name"] for r in rows))
    if reference is None:
        reference = "course Triton" if "course Triton" in names else names[-1]
    others = [n for n in names if n != reference]
    by_config: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_config.setdefault((r["head_dim"], r["causal"], r["n"]), {})[r["name"]] = r
    head = ["N", "head dim", "causal", "B, H"] + [f"{n} TFLOP/s" for n in names] + [f"{n} peak MiB" for n in names]
    head += [f"{reference} / {n}" for n in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (d, c, n), by_name in by_config.items():
        first = next(iter(by_name.values()))
        cells = [str(n), str(d), "yes" if c else "no", f"{first['batch']}, {first['heads']}"]
        cells += [_fmt(by_name.get(x, {}).get("tflops"), ".3g") if by_name.get(x, {}).get("error") is None else "fails"
                  for x in names]
        cells += [_fmt(by_name.get(x, {}).get("peak_mib"), ".0f") for x in names]
        ours = by_name.get(reference, {}).get("tflops")
        for x in others:
            theirs = by_name.get(x, {}).get("tflops")
            cells.append("-" if ours is None or theirs is None else f"{ours / theirs:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- decode with a KV cache


def decode_attention_step(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """One decode step of attention: a single new query per sequence against the whole cache.

    ``q`` ``(B, H, 1, D)``; ``k_cache``, ``v_cache`` ``(B, H_kv, T, D)`` with ``H % H_kv == 0``.
    The ``G = H / H_kv`` query heads of a group are stacked as ``G`` rows against their one
    cached key/value head, ``(B, H_kv, G, D) @ (B, H_kv, D, T)``, so each cached head is read
    once, not copied ``G`` times as ``repeat_kv`` would. Returns ``(B, H, 1, D)``.
    Defined in lesson 06.
    """
    b, h, one, d = q.shape
    h_kv = k_cache.shape[1]
    if one != 1 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape or h % h_kv or k_cache.shape[-1] != d:
        raise ValueError(
            f"expected q (B, H, 1, D) and k_cache, v_cache (B, H_kv, T, D) with H divisible by H_kv, "
            f"got q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    grouped = q.reshape(b, h_kv, h // h_kv, d)                                   # (B, H_kv, G, D)
    scores = (grouped @ k_cache.transpose(-2, -1)) * (1.0 / math.sqrt(d))        # (B, H_kv, G, T)
    out = torch.softmax(scores.float(), dim=-1).to(v_cache.dtype) @ v_cache      # (B, H_kv, G, D)
    return out.reshape(b, h, 1, d)


def decode_benchmark(
    kv_heads=(32, 8, 1),
    n_heads: int = 32,
    head_dim: int = 128,
    batch: int = 8,
    context: int = 32768,
    n_layers: int = 32,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    repeats: int = 20,
) -> list[dict]:
    """Time one decode step of one layer's attention for MHA, GQA and MQA against a cache of ``context`` positions.

    The defaults are the reference run's (ANCHORS: a Llama-7B-like layer, batch 8, 32k context,
    bfloat16). Decoding reads the whole cache once per step, so the time should follow the
    cache's bytes: the rows give the cache of all ``n_layers`` layers, the milliseconds of
    one layer's step and the bandwidth that implies (cache bytes of one layer / time).
    Defined in lesson 06.
    """
    from course_lib.device import get_device
    from course_lib.memory import kv_cache_bytes

    device = torch.device(device) if device is not None else get_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    element = torch.finfo(dtype).bits // 8
    rows = []
    for n_kv in kv_heads:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(batch, n_heads, 1, head_dim, device=device, dtype=dtype, generator=g)
        k = torch.randn(batch, n_kv, context, head_dim, device=device, dtype=dtype, generator=g)
        v = torch.randn_like(k)
        ms = median_ms(lambda: decode_attention_step(q, k, v), device, warmup=3, repeats=repeats)
        layer_bytes = kv_cache_bytes(1, n_kv, head_dim, context, batch, element)
        rows.append({
            "kv_heads": n_kv, "n_heads": n_heads, "ms": ms,
            "cache_gib_all_layers": kv_cache_bytes(n_layers, n_kv, head_dim, context, batch, element) / 2**30,
            "gb_per_s": layer_bytes / (ms * 1e-3) / 1e9,
        })
        del q, k, v
    return rows


def decode_table(rows: list[dict]) -> str:
    """Markdown table of :func:`decode_benchmark`'s rows, times as ratios to the first row (MHA). Defined in lesson 06."""
    base = rows[0]["ms"]
    lines = ["| kv heads | KV cache, all layers (GiB) | one decode step, one layer (ms) | time / MHA | cache read (GB/s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        kind = "MHA" if r["kv_heads"] == r["n_heads"] else "MQA" if r["kv_heads"] == 1 else "GQA"
        lines.append(f"| {r['kv_heads']} ({kind}) | {r['cache_gib_all_layers']:.1f} | {r['ms']:.3f} | "
                     f"{r['ms'] / base:.2f} | {r['gb_per_s']:.0f} |")
    return "\n".join(lines)
