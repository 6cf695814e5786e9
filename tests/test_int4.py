"""course_lib.int4 (lesson 10): packed int4 weights, their codes from GPTQ and RTN, the PyTorch and Triton products.

As in tests/test_kernels.py: Triton reads ``TRITON_INTERPRET`` once, when it is imported, so on a
machine without CUDA this module sets it before anything imports Triton and the ``interpreter``
tests run here; elsewhere :func:`test_interpreter_in_a_fresh_process` runs them in a child
process, and the ``gpu`` tests compare the compiled kernel. Timing is ``bench/int4_gpu.py``'s job.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before course_lib.int4 imports triton

from course_lib import gptq, int4  # noqa: E402
from course_lib.models import load_pretrained  # noqa: E402
from tests.test_pruning import correlated_inputs, hessian_and_norms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(not int4.available(), reason="Triton is not installed (pip install triton)")


@pytest.fixture
def interpreter():
    if not int4.interpreting():
        pytest.skip("Triton compiles in this process; test_interpreter_in_a_fresh_process runs this test")


@pytest.fixture
def compiled():
    if int4.interpreting():
        pytest.skip("Triton interprets in this process (TRITON_INTERPRET=1 was set before importing it)")


@pytest.fixture(scope="module")
def layer():
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    return w, hessian_and_norms(correlated_inputs())[0]


@pytest.fixture(scope="module")
def course_lm():
    return load_pretrained("course-lm")


def random_weight(out: int, inp: int, group_size: int, seed: int = 0, device="cpu") -> int4.Int4Weight:
    """Codes over all of 0..15, scales of either sign and zeros anywhere: nothing that hides a wrong nibble or group."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out, inp), generator=gen)
    scale = torch.randn(out, inp // group_size, generator=gen) * 0.05
    zero = torch.randint(0, 16, (out, inp // group_size), generator=gen)
    return int4.pack(codes, scale, zero, group_size).to(device)


# --------------------------------------------------------------------------- codes from GPTQ and RTN


@pytest.mark.parametrize("group_size,act_order", [(None, False), (64, False), (None, True)])
def test_gptq_codes_dequantize_to_exactly_what_gptq_returns(layer, group_size, act_order):
    w, hessian = layer
    codes, scale, zero = gptq.gptq_codes(w, hessian, 4, group_size, act_order)
    groups = 256 // (group_size or 256)
    assert codes.dtype == torch.uint8 and codes.shape == (128, 256) and int(codes.max()) <= 15
    assert scale.shape == zero.shape == (128, groups) and torch.equal(zero, zero.round())
    assert torch.equal(gptq.dequantize(codes, scale, zero), gptq.gptq(w, hessian, 4, group_size, act_order))


@pytest.mark.parametrize("bits,group_size", [(4, None), (4, 32), (3, 64)])
def test_rtn_codes_dequantize_to_exactly_what_rtn_returns(layer, bits, group_size):
    w = layer[0]
    codes, scale, zero = gptq.rtn_codes(w, bits, group_size)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** bits - 1
    assert torch.equal(gptq.dequantize(codes, scale, zero).to(w.dtype), gptq.rtn(w, bits, group_size))
    if group_size:  # each group has its own grid: the scale of group g comes from columns g*group_size...
        assert torch.allclose(scale[:, 1:2], gptq.grid(w[:, group_size:2 * group_size], bits)[0].double())


def test_gptq_with_act_order_and_groups_puts_each_group_of_the_permuted_columns_on_its_grid(layer):
    """What gptq_codes refuses, gptq still does: its groups are runs of the columns in act-order."""
    w, hessian = layer
    q = gptq.gptq(w, hessian, 4, 64, act_order=True)
    order = torch.argsort(torch.diag(hessian), descending=True)
    for start in range(0, 256, 64):
        group = q[:, order[start:start + 64]]
        assert max(len(torch.unique(row)) for row in group) <= 16


def test_gptq_codes_refuse_act_order_with_groups(layer):
    with pytest.raises(ValueError, match="act_order with group_size gives groups of the permuted columns"):
        gptq.gptq_codes(*layer, 4, 64, act_order=True)


# --------------------------------------------------------------------------- the format


def test_pack_then_unpack_gives_back_every_code():
    codes = torch.randint(0, 16, (7, 24), generator=torch.Generator().manual_seed(0))
    w = int4.pack(codes, torch.rand(7, 3), torch.randint(0, 16, (7, 3)), 8)
    assert w.packed.dtype == torch.uint8 and w.packed.shape == (7, 12) and (w.out_features, w.in_features) == (7, 24)
    assert w.scale.dtype == torch.float16 and w.zero.dtype == torch.uint8
    assert int4.unpack(w).dtype == torch.uint8 and torch.equal(int4.unpack(w), codes.to(torch.uint8))


def test_input_2j_is_the_low_nibble_and_2j_plus_1_the_high():
    w = int4.pack(torch.tensor([[1, 2, 15, 0]]), torch.ones(1, 1), torch.zeros(1, 1), 4)
    assert w.packed.tolist() == [[0x21, 0x0F]]


def test_dequantize_is_gptqs_output_within_the_float16_rounding_of_the_scales(layer):
    """The only difference: each scale is stored in float16, |s - fp16(s)| <= 2^-11 |s| (2^-25 below 6e-5)."""
    w, hessian = layer
    codes, scale, zero = gptq.gptq_codes(w, hessian, 4, 64)
    ours = int4.dequantize(int4.pack(codes, scale, zero, 64))
    theirs = gptq.gptq(w, hessian, 4, 64)
    steps = (codes.float() - zero.repeat_interleave(64, dim=1)).abs()               # |code - zero| <= 15
    bound = steps * (scale.abs() * 2 ** -11 + 2 ** -25).repeat_interleave(64, dim=1) + 1e-7
    error = (ours - theirs).abs()
    assert (error <= bound).all(), f"max error {error.max():.2e}, largest excess {(error - bound).max():.2e}"
    assert 0 < error.max() <= 15 * scale.abs().max() * 2 ** -11 + 1e-7


def test_quantize_is_rtn_and_gptq_packed(layer):
    w, hessian = layer
    assert torch.allclose(int4.dequantize(int4.quantize(w, 32)), gptq.rtn(w, 4, 32), atol=1e-4, rtol=0)
    assert torch.allclose(int4.dequantize(int4.quantize(w, 64, hessian)), gptq.gptq(w, hessian, 4, 64), atol=1e-4, rtol=0)


def test_int4_matmul_is_x_times_the_dequantized_weights_transposed():
    w = random_weight(24, 64, 16)
    x = torch.randn(2, 3, 64)
    y = int4.int4_matmul(x, w)
    assert y.shape == (2, 3, 24) and y.dtype == torch.float32
    torch.testing.assert_close(y, x @ int4.dequantize(w).T)
    assert int4.int4_matmul(x.half(), w).dtype == torch.float16


def test_nbytes_counts_half_a_byte_per_weight_and_three_bytes_per_group():
    w = random_weight(96, 512, 128)
    assert int4.nbytes(w) == 96 * 512 // 2 + 96 * 4 * (2 + 1)
    assert int4.nbytes(w) / (96 * 512 * 2) == pytest.approx((0.5 + 3 / 128) / 2)


@pytest.mark.parametrize("in_features,group", [(192, 96), (512, 128), (8192, 128), (200, 100), (6, 6), (64, 64)])
def test_the_group_is_the_largest_even_divisor_up_to_128(in_features, group):
    assert int4.group_size_for(in_features) == group


@pytest.mark.parametrize("call,expected", [
    (lambda: int4.pack(torch.full((2, 4), 16), torch.ones(2, 1), torch.zeros(2, 1), 4), r"codes should lie in \[0, 15\]"),
    (lambda: int4.pack(torch.zeros(2, 4), torch.ones(2, 1), torch.zeros(2, 1), 4), "2-D integer tensor"),
    (lambda: int4.pack(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 1), torch.zeros(2, 1), 5), "even number of columns"),
    (lambda: int4.pack(torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 2), torch.zeros(2, 2), 3), "group_size should be an even"),
    (lambda: int4.pack(torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 1), torch.zeros(2, 1), 4), r"scale should be .* shape \(2, 2\)"),
    (lambda: int4.pack(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 1), torch.full((2, 1), 0.5), 4), "whole numbers"),
    (lambda: int4.pack(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 1), 1e6), torch.zeros(2, 1), 4), "fit in float16"),
    (lambda: int4.Int4Weight(torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.uint8), 4),
     "scale should be a 2-D torch.float16"),
    (lambda: int4.int4_matmul(torch.randn(3, 32), random_weight(8, 16, 8)), r"x should have shape \(\.\.\., 16\)"),
    (lambda: int4.int4_matmul(torch.ones(3, 16, dtype=torch.long), random_weight(8, 16, 8)), "floating-point"),
    (lambda: int4.int4_matmul(torch.randn(3, 16), torch.randn(8, 16)), "should be an Int4Weight"),
])
def test_bad_input_names_what_was_expected(call, expected):
    with pytest.raises(ValueError, match=expected):
        call()


# --------------------------------------------------------------------------- a whole model


def test_course_lm_size_in_int4_is_what_its_tensors_add_up_to(course_lm):
    """Block linear layers: in/2 bytes per row plus 3 bytes per group; everything else 2 bytes a weight."""
    layers = {f"{name}.weight": m for name, m in int4.block_linear_layers(course_lm).items()}
    assert len(layers) == 7 * course_lm.config.n_layers
    expected_int4 = expected_fp16 = 0
    for name, p in course_lm.named_parameters():  # the tied embedding once
        expected_fp16 += 2 * p.numel()
        if name in layers:
            out, inp = p.shape
            group = 128 if inp % 128 == 0 else max(g for g in range(2, 129, 2) if inp % g == 0)
            expected_int4 += out * inp // 2 + 3 * out * (inp // group)
        else:
            expected_int4 += 2 * p.numel()
    sizes = int4.size_ratio(course_lm)
    assert (sizes["fp16_bytes"], sizes["int4_bytes"]) == (expected_fp16, expected_int4)
    assert sizes["ratio"] == expected_int4 / expected_fp16
    assert 0.25 < sizes["ratio"] < 0.5  # the embedding stays in float16: less than 4x smaller


def test_course_lm_int4_state_holds_the_rtn_weights(course_lm):
    state = int4.int4_state_dict(course_lm)
    name = "blocks.2.mlp.down_proj"                                    # in_features 512: group 128
    w = int4.Int4Weight(state[f"{name}.packed"], state[f"{name}.scale"], state[f"{name}.zero"], 128)
    weight = course_lm.blocks[2].mlp.down_proj.weight.detach()
    assert torch.allclose(int4.dequantize(w), gptq.rtn(weight, 4, 128), atol=1e-4, rtol=0)
    assert f"{name}.weight" not in state and state["blocks.0.attn_norm.weight"].dtype == torch.float16


def test_course_lm_on_disk_is_its_bytes_plus_the_safetensors_headers(course_lm):
    memory, disk = int4.size_ratio(course_lm), int4.size_on_disk(course_lm)
    for kind in ("fp16", "int4"):  # a header of tensor names, dtypes and shapes: a few kB, no more
        assert memory[f"{kind}_bytes"] < disk[f"{kind}_bytes"] < memory[f"{kind}_bytes"] + 32_000
    assert disk["ratio"] == pytest.approx(memory["ratio"], rel=0.02)


# --------------------------------------------------------------------------- without Triton


def test_int4_imports_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("int4_without_triton", int4.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.available() is False and module.interpreting() is False
    w = module.pack(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 1), torch.zeros(2, 1), 4)
    assert module.int4_matmul(torch.ones(1, 4), w).tolist() == [[0.0, 0.0]]
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        module.int4_matmul_triton(torch.ones(1, 4), w)


def test_the_bench_imports_and_refuses_to_run_without_cuda(monkeypatch, capsys):
    from bench import int4_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert int4_gpu.main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        int4_gpu.run(quick=True)


# --------------------------------------------------------------------------- the interpreter, on the CPU


@needs_triton
def test_interpreter_in_a_fresh_process():
    if int4.interpreting():
        pytest.skip("the interpreter tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-k", "interpreter", "-q", "-p", "no:cacheprovider", "-p", "no:nbval"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout


CPU_CASES = [  # (out, in, group, rows): in 200 and 96 are not multiples of the 32-input tile; out 40, 33 not of 16
    (48, 200, 40, 1),
    (40, 256, 128, 16),
    (33, 96, 96, 5),
    (16, 64, 16, 1),
]


@needs_triton
@pytest.mark.parametrize("out,inp,group,rows", CPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_matches_int4_matmul(interpreter, out, inp, group, rows, dtype):
    w = random_weight(out, inp, group, seed=out)
    x = torch.randn(rows, inp).to(dtype)
    y = int4.int4_matmul_triton(x, w)
    assert y.shape == (rows, out) and y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 4e-3  # float16: the weights rounded to float16 for the product
    torch.testing.assert_close(y.float(), int4.int4_matmul(x.float(), w), atol=tol, rtol=tol)


@needs_triton
def test_interpreter_leading_dims_and_strided_x(interpreter):
    w = random_weight(24, 64, 32)
    x = torch.randn(64, 2, 3).permute(1, 2, 0)  # (2, 3, 64), not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(int4.int4_matmul_triton(x, w), int4.int4_matmul(x, w), atol=1e-5, rtol=1e-5)


@needs_triton
def test_interpreter_reads_no_input_past_in_features(interpreter):
    """x is a view of a longer row whose tail is NaN: a load past input 200 would turn the output into NaN."""
    w = random_weight(16, 200, 40)
    row = torch.full((1, 256), float("nan"))
    row[:, :200] = torch.randn(1, 200)
    x = row[:, :200]                 # one row: contiguous, so the kernel gets this very memory
    assert x.data_ptr() == row.data_ptr() and x.is_contiguous()
    torch.testing.assert_close(int4.int4_matmul_triton(x, w), int4.int4_matmul(x, w), atol=1e-5, rtol=1e-5)


@needs_triton
def test_interpreter_gptq_layer(interpreter, layer):
    weight, hessian = layer
    w = int4.quantize(weight, 64, hessian)
    x = torch.randn(3, 256)
    torch.testing.assert_close(int4.int4_matmul_triton(x, w), int4.int4_matmul(x, w), atol=1e-5, rtol=1e-5)


@needs_triton
def test_interpreter_the_bench_runs_its_kernel_path(interpreter, monkeypatch):
    from bench import int4_gpu

    monkeypatch.setattr(int4_gpu, "time_us", lambda fn: (fn(), 1.0)[1])
    rows = int4_gpu.int4_rows(((48, 256),), (1, 16), device="cpu", dtype=torch.float16)
    assert [r["batch"] for r in rows] == [1, 16] and all(r["max_error"] < 1e-2 for r in rows)
    assert "| 48 x 256 | 16 |" in int4_gpu.int4_table(rows)


@needs_triton
@pytest.mark.parametrize("x_shape,dtype,match", [
    ((17, 64), torch.float32, "1 to 16 rows"),
    ((0, 64), torch.float32, "1 to 16 rows"),
    ((2, 32), torch.float32, r"x should have shape \(\.\.\., 64\)"),
    ((2, 64), torch.bfloat16, "under the interpreter"),
    ((2, 64), torch.float64, "under the interpreter"),
])
def test_interpreter_rejects_bad_inputs_with_clear_errors(interpreter, x_shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        int4.int4_matmul_triton(torch.zeros(x_shape, dtype=dtype), random_weight(16, 64, 32))


# --------------------------------------------------------------------------- compiling, without a GPU


@needs_triton
def test_rejects_cpu_tensors_when_compiling():
    code = (
        "import torch; from course_lib import int4\n"
        "w = int4.pack(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 1), torch.zeros(2, 1), 4)\n"
        "try:\n    int4.int4_matmul_triton(torch.ones(1, 4, dtype=torch.float16), w)\nexcept ValueError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "should be CUDA tensors (or set TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from course_lib.int4 import _int4_matmul_kernel as kernel
names = kernel.arg_names
for x in ("fp16", "bf16"):
    constants = {"GROUP_SIZE": 128, "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256}
    pointers = {"X": "*" + x, "Y": "*" + x, "P": "*u8", "S": "*fp16", "Z": "*u8"}
    signature = {n: pointers.get(n, "constexpr" if n in constants else "i32") for n in names}
    source = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(n),): c for n, c in constants.items()})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3}).asm["ptx"]
    print(x, ptx.count("mma.sync"), ptx.count("ld.global"))
"""


@needs_triton
def test_kernel_compiles_for_an_h100_without_a_gpu():
    """The GPU path, short of running it: the kernel compiles, with tensor-core mma for both 16-bit dtypes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    for line in child.stdout.split("\n")[:2]:
        n_mma, n_loads = map(int, line.split()[1:])
        assert n_mma > 0 and n_loads > 0, line


# --------------------------------------------------------------------------- on a GPU


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out,inp", [(4096, 4096), (1000, 4096), (512, 2000)])
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_gpu_matches_int4_matmul(compiled, dtype, out, inp, rows):
    group = int4.group_size_for(inp)
    w = random_weight(out, inp, group, device="cuda")
    x = torch.randn(rows, inp, device="cuda", dtype=dtype)
    exact = int4.int4_matmul(x.float(), w)
    y = int4.int4_matmul_triton(x, w)
    torch.cuda.synchronize()
    assert y.shape == (rows, out) and y.dtype == dtype and y.is_cuda
    # as close to the float32 product as PyTorch's own matmul with the weights in the same dtype, within a factor of 2
    ours = (y.float() - exact).abs().max().item()
    theirs = ((x @ int4.dequantize(w, dtype).T).float() - exact).abs().max().item()
    assert ours <= 2 * theirs + 4 * torch.finfo(dtype).eps * exact.abs().max().item(), (ours, theirs)


@needs_triton
@pytest.mark.gpu
def test_gpu_rejects_float32_and_too_many_rows(compiled):
    w = random_weight(64, 128, 128, device="cuda")
    with pytest.raises(ValueError, match="float16 or torch.bfloat16 on a GPU"):
        int4.int4_matmul_triton(torch.randn(1, 128, device="cuda"), w)
    with pytest.raises(ValueError, match="1 to 16 rows"):
        int4.int4_matmul_triton(torch.randn(17, 128, device="cuda", dtype=torch.float16), w)
