"""Packed int4 weights and the dequantize-and-multiply of decoding (lesson 10).

What lesson 10 teaches here:

- **Two weights per byte.** A 4-bit code takes 16 values, ``0..15``; byte ``j`` of a weight row
  holds the code of input ``2j`` in its low nibble and that of input ``2j + 1`` in its high nibble
  (the layout of lesson 04's :func:`course_lib.quant.pack_int4`, here with unsigned codes).
- **A scale and a zero point per group.** Each run of ``group_size`` inputs of each output row
  (128, as GPTQ and AWQ checkpoints use) has its own grid: ``w ≈ scale * (code - zero)``, with
  ``scale`` in float16 and ``zero`` a whole number ``0..15`` in a byte (:mod:`course_lib.gptq`
  finds the codes: :func:`course_lib.gptq.gptq_codes`, :func:`course_lib.gptq.rtn_codes`).
  Per weight that is ``0.5 + 3 / 128 ≈ 0.52`` bytes instead of bfloat16's 2.
- **Decoding is memory-bound.** One decoding step multiplies the new token's vector, a
  ``(1, in)`` row (a few rows with a small batch), by every weight matrix once: 2 flops per
  weight per row, while the weight itself has to come from memory. A bfloat16 weight gives
  1 flop per byte read; an H100 does about 300 flops in the time it reads one byte. The
  multiplication waits on memory, and its time is the time to read the weights.
- **Dequantize in registers.** So the kernel (:func:`int4_matmul_triton`) reads the packed
  bytes, unpacks the two nibbles and applies the group's scale and zero in registers, and
  multiplies at once, accumulating in float32: the float weights never go to memory. It reads
  about 3.8x fewer bytes than a bfloat16 ``x @ w.T``, and at batch 1 its time can approach a
  quarter of it. With more rows the flops per byte grow, until the multiplication is no
  longer bound by memory and the advantage fades (``bench/int4_gpu.py`` measures it).

:func:`int4_matmul` is the same product in PyTorch, ``x @ dequantize(w).T``: the reference the
kernel is tested against, and what to read first. :func:`size_ratio` and :func:`size_on_disk`
count what a course model weighs when every linear layer of its blocks is stored this way.

Triton is optional, as in :mod:`course_lib.kernels`: this module imports without it. On a GPU
the kernel takes float16 or bfloat16 ``x``; with ``TRITON_INTERPRET=1`` set before
``import triton``, Triton's interpreter runs it on the CPU (float32 or float16 ``x``), slowly.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from course_lib.gptq import dequantize as dequantize_codes
from course_lib.gptq import gptq_codes, rtn_codes

try:
    import triton
    import triton.language as tl
except ImportError:  # the course runs without Triton; see available()
    triton = None
    tl = None

LEVELS = 15                 # codes 0..15
GROUP_SIZE = 128            # inputs per scale and zero point, as most int4 checkpoints
MAX_ROWS = 16               # the kernel is for decoding: 1 to 16 rows of x
GPU_DTYPES = (torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = (torch.float32, torch.float16)  # the interpreter multiplies bfloat16 wrongly
INTERPRETER_BLOCK_N, INTERPRETER_BLOCK_K = 16, 32    # one small tile size under the interpreter


# --------------------------------------------------------------------------- the format


@dataclass
class Int4Weight:
    """A linear layer's weight ``w`` (out, in) in 4 bits: ``w[n, k] ≈ scale[n, g] * (code[n, k] - zero[n, g])``, ``g = k // group_size``.

    Attributes:
        packed: uint8 (out, in / 2); byte ``j`` of row ``n``: ``code[n, 2j]`` in the low nibble,
            ``code[n, 2j + 1]`` in the high nibble.
        scale: float16 (out, in / group_size).
        zero: uint8 (out, in / group_size), whole numbers 0..15.
        group_size: inputs per group, even (both nibbles of a byte share a group), dividing ``in``.
    """

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int

    def __post_init__(self):
        for name, dtype in (("packed", torch.uint8), ("scale", torch.float16), ("zero", torch.uint8)):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != dtype:
                got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} should be a 2-D {dtype} tensor, got {got}")
        _require_group_size(self.group_size, self.in_features)
        groups = (self.out_features, self.in_features // self.group_size)
        if tuple(self.scale.shape) != groups or tuple(self.zero.shape) != groups:
            raise ValueError(f"scale and zero should have shape {groups} (out, in / group_size) for packed of shape "
                             f"{tuple(self.packed.shape)}, got {tuple(self.scale.shape)} and {tuple(self.zero.shape)}")
        if not self.packed.device == self.scale.device == self.zero.device:
            raise ValueError(f"packed, scale and zero should be on one device, got {self.packed.device}, "
                             f"{self.scale.device}, {self.zero.device}")

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @property
    def in_features(self) -> int:
        return 2 * self.packed.shape[1]

    def to(self, device) -> Int4Weight:
        """The same weight on ``device``."""
        return Int4Weight(self.packed.to(device), self.scale.to(device), self.zero.to(device), self.group_size)


def _require_group_size(group_size, in_features: int) -> None:
    if (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 2
            or in_features % group_size):
        raise ValueError(f"group_size should be an even positive int dividing in_features = {in_features}, got {group_size!r}")


def pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> Int4Weight:
    """Codes (out, in) in ``0..15`` (any integer dtype), ``scale`` and ``zero`` (out, in / group_size) -> :class:`Int4Weight`.

    ``in`` must be even; ``scale`` is stored in float16 (rounded, relative error at most 2^-11
    for scales above 6e-5), ``zero`` (whole numbers 0..15) in uint8.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"codes should be a 2-D integer tensor (out, in), got {_describe(codes)}")
    if codes.shape[1] % 2:
        raise ValueError(f"codes should have an even number of columns (two per byte), got shape {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < 0 or codes.max() > LEVELS):
        raise ValueError(f"codes should lie in [0, {LEVELS}], got [{int(codes.min())}, {int(codes.max())}]")
    _require_group_size(group_size, codes.shape[1])
    groups = (codes.shape[0], codes.shape[1] // group_size)
    for name, t in (("scale", scale), ("zero", zero)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != groups:
            raise ValueError(f"{name} should be a tensor of shape {groups} (out, in / group_size), got {_describe(t)}")
    if zero.numel() and (zero.min() < 0 or zero.max() > LEVELS or not torch.equal(zero, zero.round())):
        raise ValueError(f"zero should hold whole numbers in [0, {LEVELS}]")
    scale16 = scale.to(torch.float16)
    if not torch.isfinite(scale16).all():
        raise ValueError("scale should be finite and fit in float16 (|scale| <= 65504)")
    low, high = codes[:, 0::2].to(torch.uint8), codes[:, 1::2].to(torch.uint8)
    return Int4Weight(low | (high << 4), scale16, zero.to(torch.uint8), group_size)


def unpack(w: Int4Weight) -> torch.Tensor:
    """The codes of ``w``: uint8 (out, in) in ``0..15``, the inverse of :func:`pack`."""
    _require_weight(w)
    low, high = w.packed & 0xF, w.packed >> 4
    return torch.stack([low, high], dim=-1).reshape(w.out_features, w.in_features)


def dequantize(w: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weights (out, in): ``scale * (code - zero)`` per group, computed in float32, returned in ``dtype``."""
    _require_weight(w)
    return dequantize_codes(unpack(w), w.scale.float(), w.zero.float()).to(dtype)


def quantize(w: torch.Tensor, group_size: int = GROUP_SIZE, hessian: torch.Tensor | None = None) -> Int4Weight:
    """A float weight (out, in) in 4 bits: round-to-nearest, or GPTQ given the layer's ``hessian`` (in, in)."""
    if hessian is None:
        codes, scale, zero = rtn_codes(w, 4, group_size)
    else:
        codes, scale, zero = gptq_codes(w, hessian, 4, group_size)
    return pack(codes, scale, zero, group_size)


def nbytes(w: Int4Weight) -> int:
    """Bytes that ``w`` holds: the packed codes, the scales and the zero points."""
    _require_weight(w)
    return sum(t.numel() * t.element_size() for t in (w.packed, w.scale, w.zero))


# --------------------------------------------------------------------------- the product, in PyTorch


def int4_matmul(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """``x @ dequantize(w).T``: x (..., in) float -> (..., out) in x's dtype, computed in float32.

    The reference for :func:`int4_matmul_triton`. It writes the whole float matrix to memory
    first, which is what the kernel avoids.
    """
    _require_x(x, w)
    return (x.float() @ dequantize(w).T).to(x.dtype)


def _describe(t) -> str:
    return f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _require_weight(w) -> None:
    if not isinstance(w, Int4Weight):
        raise ValueError(f"w should be an Int4Weight (see int4.pack), got {type(w).__name__}")


def _require_x(x, w: Int4Weight) -> None:
    _require_weight(w)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise ValueError(f"x should be a floating-point tensor (..., in_features), got {_describe(x)}")
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x should have shape (..., {w.in_features}) for w of shape "
                         f"({w.out_features}, {w.in_features}), got {tuple(x.shape)}")
    if x.device != w.packed.device:
        raise ValueError(f"x and w should be on one device, got {x.device} and {w.packed.device}")


# --------------------------------------------------------------------------- a whole model


def group_size_for(in_features: int, largest: int = GROUP_SIZE) -> int:
    """The largest even group size up to ``largest`` that divides ``in_features`` (192 -> 96, 512 -> 128)."""
    return max(g for g in range(2, min(largest, in_features) + 1, 2) if in_features % g == 0)


def block_linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` in ``model.blocks`` of a course DecoderLM, by its name in ``model.state_dict()``."""
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise ValueError(f"model should be a course DecoderLM (with .blocks), got {type(model).__name__}")
    return {f"blocks.{name}": m for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)}


def fp16_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` in float16 (a tied matrix once)."""
    return {name: p.detach().to(torch.float16).contiguous() for name, p in model.named_parameters()}


def int4_state_dict(model: nn.Module, largest_group: int = GROUP_SIZE) -> dict[str, torch.Tensor]:
    """``model``'s parameters with every block linear layer in int4 (round-to-nearest), the rest in float16.

    Layer ``name`` becomes ``name.packed``, ``name.scale`` and ``name.zero`` (an :class:`Int4Weight`),
    its group size :func:`group_size_for` its ``in_features``.
    """
    state = fp16_state_dict(model)
    for name, layer in block_linear_layers(model).items():
        del state[f"{name}.weight"]
        q = quantize(layer.weight.detach(), group_size_for(layer.in_features, largest_group))
        state.update({f"{name}.packed": q.packed, f"{name}.scale": q.scale, f"{name}.zero": q.zero})
    return state


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes held by the tensors of ``state``."""
    return sum(t.numel() * t.element_size() for t in state.values())


def size_ratio(model: nn.Module, largest_group: int = GROUP_SIZE) -> dict:
    """Bytes in memory of ``model`` in float16 and with its block linear layers in int4, and int4 / fp16."""
    fp16, int4 = state_nbytes(fp16_state_dict(model)), state_nbytes(int4_state_dict(model, largest_group))
    return {"fp16_bytes": fp16, "int4_bytes": int4, "ratio": int4 / fp16}


def size_on_disk(model: nn.Module, largest_group: int = GROUP_SIZE) -> dict:
    """As :func:`size_ratio`, for the two states saved with safetensors: file sizes in bytes, and int4 / fp16."""
    with tempfile.TemporaryDirectory() as folder:
        sizes = {}
        for kind, state in (("fp16", fp16_state_dict(model)), ("int4", int4_state_dict(model, largest_group))):
            path = Path(folder) / f"{kind}.safetensors"
            save_file(state, path)
            sizes[f"{kind}_bytes"] = path.stat().st_size
    return {**sizes, "ratio": sizes["int4_bytes"] / sizes["fp16_bytes"]}


# --------------------------------------------------------------------------- the kernel, in Triton


def available() -> bool:
    """Whether Triton is installed (the kernel also needs a CUDA GPU, or ``TRITON_INTERPRET=1``)."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (as :func:`course_lib.kernels.interpreting`)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.cdiv, InterpretedFunction)


if triton is not None:

    @triton.jit
    def _int4_matmul_kernel(
        X, P, S, Z, Y,
        n_rows, n_out, n_in, stride_x, stride_p, stride_g, stride_y,
        GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """One program: ``BLOCK_N`` outputs for all rows of x (at most ``BLOCK_M``), over all inputs, ``BLOCK_K`` at a time.

        X (n_rows, n_in) and Y (n_rows, n_out) float; P (n_out, n_in / 2) uint8; S float16 and
        Z uint8 (n_out, n_in / GROUP_SIZE), ``stride_g`` apart. Byte j of a weight row holds
        inputs 2j (low nibble) and 2j + 1 (high nibble): the low nibbles multiply the even
        inputs of x and the high nibbles the odd ones, so nothing needs reordering.
        """
        outs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)      # the output features of this program
        rows = tl.arange(0, BLOCK_M)                                    # the rows of x (the rest masked)
        n_bytes = n_in // 2
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, n_bytes, BLOCK_K // 2):
            j = start + tl.arange(0, BLOCK_K // 2)                      # bytes j: inputs 2j and 2j + 1
            in_w = (j[:, None] < n_bytes) & (outs[None, :] < n_out)
            byte = tl.load(P + outs[None, :] * stride_p + j[:, None], mask=in_w, other=0)   # (BLOCK_K/2, BLOCK_N), W^T
            group = j // (GROUP_SIZE // 2)                               # both inputs of a byte share a group
            g_ptrs = outs[None, :] * stride_g + group[:, None]
            scale = tl.load(S + g_ptrs, mask=in_w, other=0.0).to(tl.float32)
            zero = tl.load(Z + g_ptrs, mask=in_w, other=0).to(tl.float32)
            w_even = ((byte & 0xF).to(tl.float32) - zero) * scale       # weights of inputs 2j
            w_odd = ((byte >> 4).to(tl.float32) - zero) * scale         # weights of inputs 2j + 1
            in_x = (rows[:, None] < n_rows) & (j[None, :] < n_bytes)
            x_ptrs = X + rows[:, None] * stride_x + 2 * j[None, :]
            x_even = tl.load(x_ptrs, mask=in_x, other=0.0)              # (BLOCK_M, BLOCK_K/2)
            x_odd = tl.load(x_ptrs + 1, mask=in_x, other=0.0)
            acc += tl.dot(x_even, w_even.to(x_even.dtype))              # float32 accumulation
            acc += tl.dot(x_odd, w_odd.to(x_odd.dtype))
        y_mask = (rows[:, None] < n_rows) & (outs[None, :] < n_out)
        tl.store(Y + rows[:, None] * stride_y + outs[None, :], acc.to(Y.dtype.element_ty), mask=y_mask)


def cuda_configs() -> list:
    """The tile sizes, warps and pipeline stages that ``triton.autotune`` tries on a GPU.

    Narrow tiles of outputs (16 to 64) give enough programs to keep every SM reading memory
    when there are few outputs; long tiles of inputs keep many bytes in flight per program.
    """
    return [
        triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k}, num_warps=warps, num_stages=stages)
        for block_n, block_k, warps in ((16, 256, 4), (16, 512, 4), (32, 256, 4), (32, 512, 8), (64, 128, 4), (64, 256, 8))
        for stages in (3, 4)
    ]


if triton is not None:
    # on a GPU, the first call for each (outputs, inputs, group size) times every configuration
    _int4_matmul_autotuned = triton.autotune(configs=cuda_configs(), key=["n_out", "n_in", "GROUP_SIZE"])(_int4_matmul_kernel)


def _check_kernel_inputs(x, w) -> None:
    _require_x(x, w)
    rows = x.numel() // x.shape[-1]
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"x should hold 1 to {MAX_ROWS} rows (decoding), got shape {tuple(x.shape)}: {rows} rows")
    if interpreting():
        if x.dtype not in INTERPRETER_DTYPES:
            raise ValueError(f"x's dtype should be one of {INTERPRETER_DTYPES} under the interpreter, got {x.dtype}")
    else:
        if not x.is_cuda:
            raise ValueError("x and w should be CUDA tensors (or set TRITON_INTERPRET=1 before importing triton to run "
                             f"on the CPU), got {x.device}")
        if x.dtype not in GPU_DTYPES:
            raise ValueError(f"x's dtype should be torch.float16 or torch.bfloat16 on a GPU, got {x.dtype}")


def int4_matmul_triton(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """``x @ dequantize(w).T`` by the Triton kernel, the weights dequantized in registers.

    Args:
        x: (..., in) with 1 to 16 rows in all; float16 or bfloat16 on a CUDA GPU, float32 or
            float16 under ``TRITON_INTERPRET=1``; any strides.
        w: an :class:`Int4Weight` on x's device.
    Returns:
        (..., out) in x's dtype, accumulated in float32.
    """
    if not available():
        raise RuntimeError("Triton is not installed: pip install 'triton>=3.6,<3.10' (see course_lib.kernels)")
    _check_kernel_inputs(x, w)
    rows = x.reshape(-1, w.in_features).contiguous()
    packed, scale, zero = w.packed.contiguous(), w.scale.contiguous(), w.zero.contiguous()
    y = torch.empty(rows.shape[0], w.out_features, dtype=x.dtype, device=x.device)
    args = (rows, packed, scale, zero, y, rows.shape[0], w.out_features, w.in_features,
            rows.stride(0), packed.stride(0), scale.stride(0), y.stride(0))
    if interpreting():
        grid = (triton.cdiv(w.out_features, INTERPRETER_BLOCK_N),)
        _int4_matmul_kernel[grid](*args, GROUP_SIZE=w.group_size, BLOCK_M=MAX_ROWS,
                                  BLOCK_N=INTERPRETER_BLOCK_N, BLOCK_K=INTERPRETER_BLOCK_K)
    else:
        grid = lambda meta: (triton.cdiv(w.out_features, meta["BLOCK_N"]),)  # noqa: E731
        with torch.cuda.device(x.device):
            _int4_matmul_autotuned[grid](*args, GROUP_SIZE=w.group_size, BLOCK_M=MAX_ROWS)
    return y.reshape(*x.shape[:-1], w.out_features)
