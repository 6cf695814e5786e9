"""course_lib.kernels (lesson 05): the Triton FlashAttention forward kernel against PyTorch's SDPA.

Triton reads ``TRITON_INTERPRET`` once, when it is imported, and a process then either
interprets kernels on the CPU or compiles them for a GPU. So:

- on a machine without CUDA, this module sets ``TRITON_INTERPRET=1`` before anything
  imports Triton, and the ``interpreter`` tests run here, in this process;
- where that is not possible (a CUDA machine, or Triton imported earlier without the
  variable), :func:`test_interpreter_in_a_fresh_process` runs them in a child process with
  ``TRITON_INTERPRET=1`` and no GPU, and the ``gpu`` tests run the compiled kernel here.

Without Triton every test is skipped, except the one proving that ``course_lib.kernels``
imports without it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before course_lib.kernels imports triton

from course_lib import kernels  # noqa: E402
from course_lib.kernels import flash_attention_triton

needs_triton = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed (pip install triton)")


def _version(package: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version(package).split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ()


# Triton 3.6's interpreter turns kernel arguments into 1-element arrays, which NumPy >= 2.4 no
# longer converts to a loop bound (triton-lang/triton#9171; 3.7.1 works). Compiled kernels are fine.
INTERPRETER_BROKEN = kernels.available() and _version("triton") < (3, 7) and _version("numpy") >= (2, 4)


@pytest.fixture
def interpreter():
    if INTERPRETER_BROKEN:
        pytest.skip("Triton 3.6's interpreter needs NumPy < 2.4 (triton-lang/triton#9171); use Triton >= 3.7 on the CPU")
    if not kernels.interpreting():
        pytest.skip("Triton compiles in this process; test_interpreter_in_a_fresh_process runs this test")


@pytest.fixture
def compiled():
    if kernels.interpreting():
        pytest.skip("Triton interprets in this process (TRITON_INTERPRET=1 was set before importing it)")


def random_qkv(b, h, n_q, n_k, d, dtype, device="cpu"):
    q = torch.randn(b, h, n_q, d, dtype=dtype, device=device)
    k = torch.randn(b, h, n_k, d, dtype=dtype, device=device)
    v = torch.randn(b, h, n_k, d, dtype=dtype, device=device)
    return q, k, v


def reference(q, k, v, is_causal=False, scale=None):
    """SDPA in float32 from the same (possibly low-precision) inputs."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=is_causal, scale=scale)


# --------------------------------------------------------------------------- without Triton


def test_course_lib_imports_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("kernels_without_triton", kernels.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.available() is False and module.interpreting() is False
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        module.flash_attention_triton(q, q, q)


# --------------------------------------------------------------------------- the interpreter, on the CPU


@needs_triton
def test_interpreter_in_a_fresh_process():
    if kernels.interpreting():
        pytest.skip("the interpreter tests run in this process")
    if INTERPRETER_BROKEN:
        pytest.skip("Triton 3.6's interpreter needs NumPy < 2.4 (triton-lang/triton#9171)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-k", "interpreter", "-q", "-p", "no:cacheprovider", "-p", "no:nbval"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout


CPU_CASES = [  # (L, S, head dim): lengths that are and are not multiples of the 16-wide tiles
    (37, 37, 16),
    (64, 64, 16),
    (20, 45, 32),
    (45, 20, 64),
    (1, 17, 32),
]


@needs_triton
@pytest.mark.parametrize("n_q,n_k,d", CPU_CASES)
def test_interpreter_matches_sdpa(interpreter, n_q, n_k, d):
    q, k, v = random_qkv(2, 3, n_q, n_k, d, torch.float32)
    out = flash_attention_triton(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(q, k, v), atol=1e-5, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("n_q,n_k,d", CPU_CASES)
def test_interpreter_matches_sdpa_causal(interpreter, n_q, n_k, d):
    q, k, v = random_qkv(2, 3, n_q, n_k, d, torch.float32)
    out = flash_attention_triton(q, k, v, is_causal=True)
    torch.testing.assert_close(out, reference(q, k, v, is_causal=True), atol=1e-5, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("is_causal", [False, True])
def test_interpreter_float16(interpreter, is_causal):
    q, k, v = random_qkv(1, 2, 40, 40, 32, torch.float16)
    out = flash_attention_triton(q, k, v, is_causal=is_causal)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), reference(q, k, v, is_causal), atol=3e-3, rtol=1e-2)


@needs_triton
def test_interpreter_strided_inputs_and_custom_scale(interpreter):
    # (B, L, H, D) as a projection produces it, viewed as (B, H, L, D) without a copy
    q, k, v = (t.transpose(1, 2) for t in (torch.randn(2, 24, 3, 16) for _ in range(3)))
    assert not q.is_contiguous()
    out = flash_attention_triton(q, k, v, scale=0.3)
    torch.testing.assert_close(out, reference(q, k, v, scale=0.3), atol=1e-5, rtol=1e-4)


@needs_triton
def test_interpreter_never_loads_key_tiles_after_the_diagonal(interpreter):
    q, k, v = random_qkv(1, 2, 16, 64, 16, torch.float32)  # one query tile: keys 16.. are never visible
    poisoned = v.clone()
    poisoned[:, :, 16:] = float("nan")  # a loaded NaN value turns the output into NaN (0 * nan = nan)
    out = flash_attention_triton(q, k, poisoned, is_causal=True)
    assert not out.isnan().any(), "the causal kernel loaded key tiles that start after the last query"
    torch.testing.assert_close(out, reference(q, k[:, :, :16], v[:, :, :16], is_causal=True), atol=1e-5, rtol=1e-4)
    assert flash_attention_triton(q, k, poisoned).isnan().all()  # without causal the tiles are used


@needs_triton
@pytest.mark.parametrize("block_m,block_n", [(32, 16), (64, 16), (16, 16)])
@pytest.mark.parametrize("n_q,n_k", [(70, 70), (50, 90), (90, 50)])
def test_interpreter_unequal_tiles_as_on_a_gpu(interpreter, block_m, block_n, n_q, n_k):
    """The GPU configurations use BLOCK_M = 2 BLOCK_N (128 x 64): the unmasked and masked key loops must meet exactly."""
    q, k, v = random_qkv(1, 2, n_q, n_k, 16, torch.float32)
    for is_causal in (False, True):
        o, lse = torch.empty_like(q), torch.empty(2, n_q)
        grid = (-(-n_q // block_m), 2)
        kernels._attention_forward[grid](
            q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(), 2, n_q, n_k, kernels.LOG2_E / 4.0,
            HEAD_DIM=16, BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=is_causal,
        )
        torch.testing.assert_close(o, reference(q, k, v, is_causal), atol=1e-5, rtol=1e-4)


def _grads(fn, q, k, v, do, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


@needs_triton
@pytest.mark.parametrize("n_q,n_k,d", [(37, 37, 16), (20, 45, 32), (45, 20, 16), (64, 64, 64)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_interpreter_backward_matches_sdpa(interpreter, n_q, n_k, d, is_causal):
    q, k, v = random_qkv(2, 2, n_q, n_k, d, torch.float32)
    do = torch.randn_like(q)
    ours = _grads(flash_attention_triton, q, k, v, do, is_causal=is_causal)
    theirs = _grads(F.scaled_dot_product_attention, q, k, v, do, is_causal=is_causal)
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


@needs_triton
def test_interpreter_backward_strided_inputs_and_custom_scale(interpreter):
    q, k, v = (t.transpose(1, 2) for t in (torch.randn(1, 24, 3, 16) for _ in range(3)))
    do = torch.randn(1, 3, 24, 16).transpose(2, 3).contiguous().transpose(2, 3)     # another layout still
    ours = _grads(flash_attention_triton, q, k, v, do, scale=0.3, is_causal=True)
    theirs = _grads(F.scaled_dot_product_attention, q, k, v, do, scale=0.3, is_causal=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@needs_triton
def test_interpreter_backward_saves_only_q_k_v_o_and_the_log_sum_exp(interpreter):
    q, k, v = (t.requires_grad_() for t in random_qkv(1, 2, 40, 40, 16, torch.float32))
    out = flash_attention_triton(q, k, v)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(1, 2, 40, 16)] * 4 + [(2, 40)]
    lse = torch.logsumexp(q @ k.transpose(-2, -1) / 4.0, dim=-1).reshape(2, 40)
    torch.testing.assert_close(saved[4] / kernels.LOG2_E, lse, atol=1e-5, rtol=1e-5)   # kept in base 2


@needs_triton
def test_interpreter_empty_query(interpreter):
    q, k, v = random_qkv(1, 1, 0, 5, 16, torch.float32)
    assert flash_attention_triton(q, k, v).shape == (1, 1, 0, 16)


@needs_triton
@pytest.mark.parametrize(
    "shapes,dtypes,match",
    [
        (((2, 4, 16), (2, 4, 16), (2, 4, 16)), None, r"must have shape \(B, H, L, D\)"),
        (((1, 2, 4, 16), (1, 3, 4, 16), (1, 3, 4, 16)), None, "must agree"),
        (((1, 2, 4, 16), (1, 2, 5, 16), (1, 2, 6, 16)), None, "must agree"),
        (((1, 2, 4, 16), (1, 2, 5, 32), (1, 2, 5, 32)), None, "same head dim"),
        (((1, 2, 4, 48), (1, 2, 5, 48), (1, 2, 5, 48)), None, "head dim must be one of"),
        (((1, 2, 4, 16), (1, 2, 0, 16), (1, 2, 0, 16)), None, "at least one key"),
        (((1, 2, 4, 16),) * 3, (torch.float32, torch.float16, torch.float32), "share one dtype"),
        (((1, 2, 4, 16),) * 3, (torch.float64,) * 3, "under the interpreter"),
        (((1, 2, 4, 16),) * 3, (torch.bfloat16,) * 3, "under the interpreter"),
    ],
)
def test_interpreter_rejects_bad_inputs_with_clear_errors(interpreter, shapes, dtypes, match):
    dtypes = dtypes or (torch.float32,) * 3
    q, k, v = (torch.randn(s, dtype=dt) for s, dt in zip(shapes, dtypes))
    with pytest.raises(ValueError, match=match):
        flash_attention_triton(q, k, v)


@needs_triton
def test_rejects_cpu_tensors_when_compiling():
    code = (
        "import torch; from course_lib.kernels import flash_attention_triton as f\n"
        "q = torch.randn(1, 1, 4, 16, dtype=torch.float16)\n"
        "try:\n    f(q, q, q)\nexcept ValueError as e:\n    print(e)\n"
    )
    if kernels.interpreting():  # see the error that a compiling process gives, in a fresh one
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        repo = Path(__file__).resolve().parents[1]
        out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        message = out.stdout + out.stderr
    else:
        with pytest.raises(ValueError) as error:
            flash_attention_triton(*(torch.randn(1, 1, 4, 16, dtype=torch.float16),) * 3)
        message = str(error.value)
    assert "must be CUDA tensors (or set TRITON_INTERPRET=1 before importing triton" in message, message


COMPILE_FOR_H100 = """
import torch
from course_lib.kernels import compile_for_gpu
for dtype, head_dim, is_causal in ((torch.float16, 64, True), (torch.bfloat16, 128, False)):
    one = compile_for_gpu(dtype, head_dim, is_causal, num_stages=1)
    three = compile_for_gpu(dtype, head_dim, is_causal, num_stages=3)
    ptx = three.asm["ptx"]
    print(dtype, head_dim, is_causal, ptx.count("wgmma.mma_async"), ptx.count("ex2.approx"), ptx.count("cp.async"),
          one.metadata.shared, three.metadata.shared)
"""


@needs_triton
def test_kernel_compiles_for_an_h100_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.split("\n")[:2]
    for line in lines:
        n_wgmma, n_exp2, n_async, shared_1, shared_3 = map(int, line.split()[-5:])
        assert n_wgmma > 0 and n_exp2 > 0, line          # tensor-core matmuls and base-2 exponentials
        assert n_async > 0 and shared_3 > shared_1, line  # K and V tiles pipelined: asynchronous copies, more buffers


COMPILE_BACKWARD_FOR_H100 = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from course_lib import kernels
for fn, ptrs in ((kernels._attention_backward_dk_dv, ("Q", "K", "V", "DO", "DK", "DV")), (kernels._attention_backward_dq, ("Q", "K", "V", "DO", "DQ"))):
    for d in (64, 128):
        names = fn.arg_names
        consts = {"HEAD_DIM": d, "BLOCK_M": 64, "BLOCK_N": 64, "IS_CAUSAL": True}
        sig = {n: "*bf16" if n in ptrs else "*fp32" if n in ("LSE", "DELTA") else "fp32" if n in ("qk_scale", "sm_scale")
               else "constexpr" if n in consts else "i32" for n in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if sig[n] in ("*bf16", "*fp32", "i32") and n != "n_heads"}
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): c for n, c in consts.items()}, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
        ptx = k.asm["ptx"]
        print(fn.fn.__name__, d, ptx.count("wgmma.mma_async"), ptx.count("ex2.approx"), ptx.count("cp.async"))
"""


@needs_triton
def test_backward_kernels_compile_for_an_h100_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", COMPILE_BACKWARD_FOR_H100], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    lines = [l for l in child.stdout.split("\n") if l.strip()]
    assert len(lines) == 4
    for line in lines:   # tensor cores, base-2 exponentials and pipelined loads in both kernels, head dims 64 and 128
        assert all(int(x) > 0 for x in line.split()[-3:]), line


# --------------------------------------------------------------------------- the compiled kernel, on a GPU


def _max_error(out, exact):
    return (out.float() - exact).abs().max().item()


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("n_q,n_k", [(1024, 1024), (4096, 4096), (1000, 3000), (3000, 1000)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gpu_matches_sdpa(compiled, dtype, d, n_q, n_k, is_causal):
    torch.manual_seed(0)
    q, k, v = random_qkv(2, 4, n_q, n_k, d, dtype, device="cuda")
    exact = reference(q, k, v, is_causal)
    out = flash_attention_triton(q, k, v, is_causal=is_causal)
    torch.cuda.synchronize()
    assert out.shape == q.shape and out.dtype == dtype and out.is_cuda
    ours = _max_error(out, exact)
    theirs = _max_error(F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), exact)
    # as close to the float32 result as PyTorch's own kernel, within rounding of the output
    eps = torch.finfo(dtype).eps
    assert ours <= 2 * theirs + 4 * eps, f"max |error|: Triton {ours:.2e}, SDPA {theirs:.2e}"
    torch.testing.assert_close(out.float(), exact, atol=16 * eps, rtol=16 * eps)


@needs_triton
@pytest.mark.gpu
def test_gpu_rejects_float32(compiled):
    q = torch.randn(1, 1, 64, 64, device="cuda")
    with pytest.raises(ValueError, match="float16 or torch.bfloat16 on a GPU"):
        flash_attention_triton(q, q, q)


@needs_triton
@pytest.mark.gpu
def test_gpu_strided_inputs(compiled):
    q, k, v = (t.transpose(1, 2) for t in (torch.randn(2, 1024, 8, 64, device="cuda", dtype=torch.float16) for _ in range(3)))
    out = flash_attention_triton(q, k, v, is_causal=True)
    torch.testing.assert_close(out.float(), reference(q, k, v, True), atol=8e-3, rtol=8e-3)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_kernel_meets_the_speed_floor(compiled):
    """Lesson 05's target at 4k-16k: at least PyTorch's FlashAttention-2 and 0.7x its cuDNN back-end."""
    from course_lib.benchmark import attention_benchmark

    names = ("course Triton", "SDPA flash (FA2)", "SDPA cuDNN")
    rows = attention_benchmark((4096, 16384), (64, 128), (False, True), names=names, progress=False)
    by = {}
    for r in rows:
        by.setdefault((r["n"], r["head_dim"], r["causal"]), {})[r["name"]] = r["tflops"]
    for config, t in by.items():
        assert t["course Triton"] >= 1.0 * t["SDPA flash (FA2)"], (config, t)
        if t["SDPA cuDNN"] is not None:
            assert t["course Triton"] >= 0.7 * t["SDPA cuDNN"], (config, t)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gpu_backward_matches_sdpa(compiled, dtype, d, is_causal):
    q, k, v = random_qkv(2, 8, 1000, 1000, d, dtype, "cuda")
    do = torch.randn_like(q)
    ours = _grads(flash_attention_triton, q, k, v, do, is_causal=is_causal)
    exact = _grads(F.scaled_dot_product_attention, q.double(), k.double(), v.double(), do.double(), is_causal=is_causal)
    fast = _grads(F.scaled_dot_product_attention, q, k, v, do, is_causal=is_causal)
    for name, a, b, c in zip(("o", "dq", "dk", "dv"), ours, fast, exact):
        # as close to the float64 result as PyTorch's own kernel is, up to a factor of 2
        assert _max_error(a, c) <= 2 * _max_error(b, c) + 1e-3, name
