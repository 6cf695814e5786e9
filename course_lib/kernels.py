"""FlashAttention in Triton: a forward kernel and the two kernels of its backward pass (lesson 05).

One program computes one tile of ``BLOCK_M`` queries of one (batch, head): it loads the
query tile once, walks over the key/value tiles of ``BLOCK_N`` keys with the online
softmax of :mod:`course_lib.flash`, and writes ``acc / l``. The scores never leave the
chip. What makes it fast:

- base 2: ``exp(x) = exp2(x * log2(e))``, and ``exp2`` is the GPU's native instruction, so
  ``log2(e)`` is folded into the score scale once and the kernel calls ``exp2`` only;
- causal attention stops the loop at the diagonal: key tiles that start after the tile's
  last query are never loaded (``course_lib.flash.causal_tile_skip``), and the query tiles
  with the most work are started first;
- two loops over the key tiles, compiled separately: the tiles that every query of the
  tile sees, with no mask at all (most of them), then the few on the diagonal or past the
  last key, with bounds checks and the causal mask (``course_lib.flash.causal_tile_needs_mask``).

The forward kernel also stores each row's log-sum-exp. The backward pass
(:class:`TritonFlashAttention`, FlashAttention-2's) recomputes every tile of probabilities
from it, as :mod:`course_lib.flash` does in PyTorch, in two kernels: one program per key tile
accumulates dK and dV over the query tiles that see it; one program per query tile
accumulates dQ over its key tiles. Neither writes an ``N x N`` matrix.

Triton is optional: ``course_lib`` imports without it and :func:`available` says whether
it is installed. The kernel uses plain pointer arithmetic only (no block pointers, no TMA
descriptors), so it runs on Triton 3.6 (the version PyTorch 2.11's CUDA build ships)
through 3.9 (which removed ``tl.make_block_ptr``), and on the CPU in Triton's interpreter.
The course pins 3.7.1, the version PyTorch 2.13.0's CUDA build requires.

On a GPU: float16 or bfloat16, the tile sizes picked by ``triton.autotune``. With the
environment variable ``TRITON_INTERPRET=1`` set *before* ``import triton`` (Triton reads it
once, when it is imported), the interpreter runs the same kernel on the CPU with numpy
(float32 and float16; its ``tl.dot`` gets bfloat16 wrong), with one small fixed tile size;
slow, for checking only. A process interprets or compiles, not both.

Triton 3.6's interpreter needs NumPy < 2.4: it passes kernel arguments as 1-element arrays,
which NumPy 2.4 no longer turns into a loop bound (triton-lang/triton#9171; 3.7.1 and
later are fixed). Its compiled kernels are not affected.
"""

from __future__ import annotations

import contextlib
import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the course runs without Triton; see available()
    triton = None
    tl = None

HEAD_DIMS = (16, 32, 64, 128)
GPU_DTYPES = (torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = (torch.float32, torch.float16)  # the interpreter multiplies bfloat16 wrongly
INTERPRETER_BLOCK = 16  # BLOCK_M = BLOCK_N under the interpreter
LOG2_E = math.log2(math.e)


def available() -> bool:
    """Whether Triton is installed (the kernel also needs a CUDA GPU, or ``TRITON_INTERPRET=1``). Defined in lesson 05."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter.

    True when ``TRITON_INTERPRET=1`` was set before ``import triton``: Triton's own library
    functions (``tl.cdiv`` among them) were then made interpreted functions. Setting the
    variable later changes nothing. Defined in lesson 05.
    """
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.cdiv, InterpretedFunction)


# --------------------------------------------------------------------------- the kernel

if triton is not None:

    @triton.jit
    def _fold_key_tiles(
        q, m, l, acc, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        rows, start_key, end_key, n_k, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr,
    ):
        """Fold the key tiles ``start_key, start_key + BLOCK_N, ... < end_key`` into (m, l, acc).

        ``MASKED`` is a compile-time flag: the tiles far below the diagonal and inside the keys
        are folded without any mask (most of them); only the last partial tile and the tiles on
        the diagonal pay for bounds checks and the causal mask.
        """
        cols = tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        for start in range(start_key, end_key, BLOCK_N):
            keys = start + cols
            k_ptrs = K + keys[None, :] * stride_kn + dims[:, None] * stride_kd     # K^T tile, (HEAD_DIM, BLOCK_N)
            v_ptrs = V + keys[:, None] * stride_vn + dims[None, :] * stride_vd     # V tile, (BLOCK_N, HEAD_DIM)
            if MASKED:
                k = tl.load(k_ptrs, mask=keys[None, :] < n_k, other=0.0)
            else:
                k = tl.load(k_ptrs)
            s = tl.dot(q, k) * qk_scale                              # (BLOCK_M, BLOCK_N), times log2(e)
            if MASKED:
                allowed = keys[None, :] < n_k
                if IS_CAUSAL:
                    allowed = allowed & (keys[None, :] <= rows[:, None])
                s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            rescale = tl.exp2(m - m_new)                             # exp(m_old - m_new) in base 2
            p = tl.exp2(s - m_new[:, None])
            l = l * rescale + tl.sum(p, 1)
            if MASKED:
                v = tl.load(v_ptrs, mask=keys[:, None] < n_k, other=0.0)
            else:
                v = tl.load(v_ptrs)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        return m, l, acc

    @triton.jit
    def _attention_forward(
        Q, K, V, O, LSE,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        n_heads, n_q, n_k, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
    ):
        tile_m = tl.program_id(0)                      # which tile of queries
        if IS_CAUSAL:  # the longest rows first: the tiles near the end see the most keys
            tile_m = tl.num_programs(0) - 1 - tile_m
        batch = (tl.program_id(1) // n_heads).to(tl.int64)   # which (batch, head); 64-bit offsets
        head = (tl.program_id(1) % n_heads).to(tl.int64)
        rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        Q += batch * stride_qb + head * stride_qh
        K += batch * stride_kb + head * stride_kh
        V += batch * stride_vb + head * stride_vh
        O += batch * stride_ob + head * stride_oh

        q = tl.load(Q + rows[:, None] * stride_qm + dims[None, :] * stride_qd, mask=rows[:, None] < n_q, other=0.0)
        m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)   # running max (base 2)
        l = tl.zeros([BLOCK_M], dtype=tl.float32)                   # running sum
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)      # running output

        # keys [0, full) need no mask; keys [full, end) need bounds checks or the causal mask
        end = n_k
        visible = n_k
        if IS_CAUSAL:  # causal_tile_skip: key tiles that start after this tile's last query are never loaded
            end = tl.minimum(n_k, (tile_m + 1) * BLOCK_M)
            visible = tl.minimum(end, tile_m * BLOCK_M)      # keys every query of the tile sees
        full = (visible // BLOCK_N) * BLOCK_N
        m, l, acc = _fold_key_tiles(q, m, l, acc, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
                                    rows, 0, full, n_k, qk_scale, HEAD_DIM, BLOCK_N, False, IS_CAUSAL)
        m, l, acc = _fold_key_tiles(q, m, l, acc, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
                                    rows, full, end, n_k, qk_scale, HEAD_DIM, BLOCK_N, True, IS_CAUSAL)
        acc = acc / l[:, None]
        tl.store(O + rows[:, None] * stride_om + dims[None, :] * stride_od, acc.to(O.dtype.element_ty), mask=rows[:, None] < n_q)
        # the log-sum-exp of each row, in base 2, for the backward pass: LSE is (B * H, n_q) float32
        tl.store(LSE + tl.program_id(1).to(tl.int64) * n_q + rows, m + tl.log2(l), mask=rows < n_q)

    # ----------------------------------------------------------------------- backward (FlashAttention-2)

    @triton.jit
    def _scores_to_probabilities(q, k, lse, rows, keys, n_q, n_k, qk_scale, IS_CAUSAL: tl.constexpr):
        """P = exp2(q k^T * qk_scale - lse) for one tile, 0 where masked or out of bounds: (BLOCK_M, BLOCK_N)."""
        s = tl.dot(q, tl.trans(k)) * qk_scale
        allowed = (rows[:, None] < n_q) & (keys[None, :] < n_k)
        if IS_CAUSAL:
            allowed = allowed & (keys[None, :] <= rows[:, None])
        return tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)

    @triton.jit
    def _attention_backward_dk_dv(
        Q, K, V, DO, DK, DV, LSE, DELTA,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
        n_heads, n_q, n_k, qk_scale, sm_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
    ):
        """One program per (key tile, batch x head): dK and dV of its keys, summed over the query tiles.

        Q, DO are (B, H, n_q, D) and K, V, DK, DV (B, H, n_k, D), contiguous in D; LSE and
        DELTA = rowsum(dO * O) are (B * H, n_q) float32.
        """
        batch = (tl.program_id(1) // n_heads).to(tl.int64)
        head = (tl.program_id(1) % n_heads).to(tl.int64)
        keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        q_offset = batch * stride_qb + head * stride_qh
        k_offset = batch * stride_kb + head * stride_kh
        row_offset = tl.program_id(1).to(tl.int64) * n_q
        kv_ptrs = keys[:, None] * stride_kn + dims[None, :]
        k = tl.load(K + k_offset + kv_ptrs, mask=keys[:, None] < n_k, other=0.0)
        v = tl.load(V + k_offset + kv_ptrs, mask=keys[:, None] < n_k, other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        start = 0
        if IS_CAUSAL:  # queries before this key tile's first key never see it: skip their tiles
            start = (tl.program_id(0) * BLOCK_N // BLOCK_M) * BLOCK_M
        for q_start in range(start, n_q, BLOCK_M):
            rows = q_start + tl.arange(0, BLOCK_M)
            q_ptrs = rows[:, None] * stride_qm + dims[None, :]
            q = tl.load(Q + q_offset + q_ptrs, mask=rows[:, None] < n_q, other=0.0)
            do = tl.load(DO + q_offset + q_ptrs, mask=rows[:, None] < n_q, other=0.0)
            lse = tl.load(LSE + row_offset + rows, mask=rows < n_q, other=0.0)
            delta = tl.load(DELTA + row_offset + rows, mask=rows < n_q, other=0.0)
            p = _scores_to_probabilities(q, k, lse, rows, keys, n_q, n_k, qk_scale, IS_CAUSAL)   # (BLOCK_M, BLOCK_N)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)                   # dV = P^T dO
            dp = tl.dot(do, tl.trans(v))                                 # dP = dO V^T
            ds = p * (dp - delta[:, None])                               # dS = P (dP - D)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)                    # dK = dS^T Q (times the scale, below)
        tl.store(DK + k_offset + kv_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=keys[:, None] < n_k)
        tl.store(DV + k_offset + kv_ptrs, dv.to(DV.dtype.element_ty), mask=keys[:, None] < n_k)

    @triton.jit
    def _attention_backward_dq(
        Q, K, V, DO, DQ, LSE, DELTA,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
        n_heads, n_q, n_k, qk_scale, sm_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
    ):
        """One program per (query tile, batch x head): dQ of its queries, summed over the key tiles."""
        batch = (tl.program_id(1) // n_heads).to(tl.int64)
        head = (tl.program_id(1) % n_heads).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        q_offset = batch * stride_qb + head * stride_qh
        k_offset = batch * stride_kb + head * stride_kh
        row_offset = tl.program_id(1).to(tl.int64) * n_q
        q_ptrs = rows[:, None] * stride_qm + dims[None, :]
        q = tl.load(Q + q_offset + q_ptrs, mask=rows[:, None] < n_q, other=0.0)
        do = tl.load(DO + q_offset + q_ptrs, mask=rows[:, None] < n_q, other=0.0)
        lse = tl.load(LSE + row_offset + rows, mask=rows < n_q, other=0.0)
        delta = tl.load(DELTA + row_offset + rows, mask=rows < n_q, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        end = n_k
        if IS_CAUSAL:  # causal_tile_skip, as in the forward pass
            end = tl.minimum(n_k, (tl.program_id(0) + 1) * BLOCK_M)
        for k_start in range(0, end, BLOCK_N):
            keys = k_start + tl.arange(0, BLOCK_N)
            kv_ptrs = keys[:, None] * stride_kn + dims[None, :]
            k = tl.load(K + k_offset + kv_ptrs, mask=keys[:, None] < n_k, other=0.0)
            v = tl.load(V + k_offset + kv_ptrs, mask=keys[:, None] < n_k, other=0.0)
            p = _scores_to_probabilities(q, k, lse, rows, keys, n_q, n_k, qk_scale, IS_CAUSAL)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)                              # dQ = dS K (times the scale, below)
        tl.store(DQ + q_offset + q_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=rows[:, None] < n_q)


def cuda_configs() -> list:
    """The tile sizes, warps and pipeline stages that ``triton.autotune`` tries on a GPU. Defined in lesson 05."""
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m, block_n, warps in ((128, 128, 8), (128, 64, 8), (128, 64, 4), (128, 32, 4), (64, 64, 4))
        for stages in (2, 3, 4)
    ]


if triton is not None:
    # on a GPU, the first call for each (lengths, head dim, causal, dtype) times every configuration
    _attention_forward_autotuned = triton.autotune(configs=cuda_configs(), key=["n_q", "n_k", "HEAD_DIM", "IS_CAUSAL"])(
        _attention_forward
    )


def compile_for_gpu(
    dtype: torch.dtype = torch.float16,
    head_dim: int = 64,
    is_causal: bool = False,
    block_m: int = 128,
    block_n: int = 64,
    num_warps: int = 8,
    num_stages: int = 3,
    capability: int = 90,
):
    """Compile the kernel for an NVIDIA GPU of compute ``capability`` (90: H100/H200) without one.

    Triton ships its own ``ptxas``, so this runs on any machine, in a process that does not
    interpret (``TRITON_INTERPRET`` unset when Triton was imported). The arguments are
    specialised as Triton's just-in-time compiler specialises them for contiguous
    ``(B, H, N, D)`` inputs whose lengths are multiples of 16: pointers and strides divisible
    by 16, the last stride equal to 1. Without those facts the compiler cannot prove that a row
    of a tile is 16 aligned bytes, and so neither loads it with wide vector loads nor
    pipelines the loads (``num_stages``) through shared memory with asynchronous copies.

    Returns Triton's compiled kernel: ``.asm["ptx"]`` is the PTX text (look for ``wgmma``, the
    H100 tensor-core instruction, ``ex2.approx``, the base-2 exponential, and ``cp.async``, the
    asynchronous copies of pipelined loads) and ``.metadata.shared`` the bytes of shared memory
    per program. Defined in lesson 05.
    """
    if not available():
        raise RuntimeError("Triton is not installed: pip install 'triton>=3.6,<3.10'")
    if interpreting():
        raise RuntimeError("this process interprets kernels (TRITON_INTERPRET=1): compile in a fresh process without it")
    if dtype not in GPU_DTYPES or head_dim not in HEAD_DIMS:
        raise ValueError(f"dtype must be one of {GPU_DTYPES} and head_dim one of {HEAD_DIMS}, got {dtype}, {head_dim}")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointer = "*fp16" if dtype == torch.float16 else "*bf16"
    names = _attention_forward.arg_names
    unit_strides = {"stride_qd", "stride_kd", "stride_vd", "stride_od"}
    constants = {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n, "IS_CAUSAL": bool(is_causal),
                 **{name: 1 for name in unit_strides}}
    signature = {
        name: pointer if name in ("Q", "K", "V", "O") else "*fp32" if name == "LSE" else "fp32" if name == "qk_scale"
        else "constexpr" if name in constants else "i32"
        for name in names
    }
    divisible = [n for n in names if signature[n] != "constexpr" and n not in ("qk_scale", "n_heads")]
    source = ASTSource(
        fn=_attention_forward,
        signature=signature,
        constexprs={(names.index(n),): c for n, c in constants.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in divisible},
    )
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps, "num_stages": num_stages})


# --------------------------------------------------------------------------- the entry point


def _check_inputs(q, k, v, scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D), got {tuple(t.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape != v.shape:
        raise ValueError(
            f"q (B, H, L, D), k and v (B, H, S, D) must agree, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k and v must have the same head dim D, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head dim must be one of {HEAD_DIMS}, got {q.shape[-1]}")
    if k.shape[2] == 0:
        raise ValueError(f"k and v must hold at least one key position (S >= 1), got k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if interpreting():
        if q.dtype not in INTERPRETER_DTYPES:
            raise ValueError(f"dtype must be one of {INTERPRETER_DTYPES} under the interpreter, got {q.dtype}")
    else:
        if not q.is_cuda:
            raise ValueError(
                "q, k and v must be CUDA tensors (or set TRITON_INTERPRET=1 before importing triton to run "
                f"on the CPU), got {q.device}"
            )
        if q.dtype not in GPU_DTYPES:
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16 on a GPU, got {q.dtype}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"scale must be None or a number, got {type(scale).__name__}")


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float):
    """Launch the forward kernel: ``(o (B, H, L, D), lse (B * H, L) float32, base 2)``."""
    batch, n_heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(batch * n_heads, n_q, device=q.device, dtype=torch.float32)
    if n_q == 0:
        return o, lse
    args = (
        q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        n_heads, n_q, n_k, scale * LOG2_E,
    )
    grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), batch * n_heads)  # noqa: E731
    if interpreting():
        block = INTERPRETER_BLOCK
        _attention_forward[grid](*args, HEAD_DIM=head_dim, BLOCK_M=block, BLOCK_N=block, IS_CAUSAL=bool(is_causal))
    else:
        with torch.cuda.device(q.device):
            _attention_forward_autotuned[grid](*args, HEAD_DIM=head_dim, IS_CAUSAL=bool(is_causal))
    return o, lse


BACKWARD_BLOCK = 64       # tiles of 64 queries x 64 keys in the backward kernels on a GPU
BACKWARD_WARPS = 4


def _backward(do, q, k, v, o, lse, is_causal: bool, scale: float):
    """Launch the two backward kernels (FlashAttention-2): ``(dq, dk, dv)``, recomputing P from ``lse``."""
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    batch, n_heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    delta = (do.float() * o.float()).sum(-1).reshape(batch * n_heads, n_q)   # D_i = sum_c dO_ic O_ic
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    strides = (*q.stride()[:3], *k.stride()[:3])
    sizes = (n_heads, n_q, n_k, scale * LOG2_E, scale)
    block = INTERPRETER_BLOCK if interpreting() else BACKWARD_BLOCK
    options = {} if interpreting() else {"num_warps": BACKWARD_WARPS, "num_stages": 2}
    constants = dict(HEAD_DIM=head_dim, BLOCK_M=block, BLOCK_N=block, IS_CAUSAL=bool(is_causal), **options)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _attention_backward_dk_dv[(triton.cdiv(n_k, block), batch * n_heads)](
            q, k, v, do, dk, dv, lse, delta, *strides, *sizes, **constants)
        _attention_backward_dq[(triton.cdiv(n_q, block), batch * n_heads)](
            q, k, v, do, dq, lse, delta, *strides, *sizes, **constants)
    return dq, dk, dv


class TritonFlashAttention(torch.autograd.Function):
    """The Triton kernels as one differentiable operation: forward saves q, k, v, o and the log-sum-exp only.

    Backward recomputes each tile of probabilities from the log-sum-exp, as
    :class:`course_lib.flash.FlashAttentionFunction` does in PyTorch, in two kernels: one
    program per key tile for dK and dV, one per query tile for dQ (FlashAttention-2).
    Defined in lesson 05.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal: bool, scale: float):
        o, lse = _forward(q, k, v, is_causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.is_causal, ctx.scale = is_causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, ctx.is_causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q @ k^T * scale) @ v`` by the Triton FlashAttention kernels, forward and backward.

    Args:
        q: ``(B, H, L, D)``; k, v: ``(B, H, S, D)``; one dtype: float16 or bfloat16 on a
            CUDA GPU; float32 or float16 under ``TRITON_INTERPRET=1``; ``D`` in ``HEAD_DIMS``
            (16, 32, 64, 128); any lengths ``L`` and ``S >= 1``; any strides.
        is_causal: query ``i`` sees keys ``j <= i`` (top left, as PyTorch).
        scale: factor on the scores; default ``1 / sqrt(D)``.
    Returns:
        ``(B, H, L, D)`` in q's dtype, as ``torch.nn.functional.scaled_dot_product_attention``;
        differentiable with respect to q, k and v (:class:`TritonFlashAttention`).

    Defined in lesson 05.
    """
    if not available():
        raise RuntimeError("Triton is not installed: pip install 'triton>=3.6,<3.10' (see course_lib.kernels)")
    _check_inputs(q, k, v, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return TritonFlashAttention.apply(q, k, v, bool(is_causal), scale)
