"""course_lib.gptq: the grid, round-to-nearest, GPTQ against it, and a whole model quantized."""

from __future__ import annotations

import pytest
import torch

from course_lib import gptq, pruning
from course_lib.models import load_pretrained
from tests.test_pruning import correlated_inputs, hessian_and_norms


@pytest.fixture(scope="module")
def layer():
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    x = correlated_inputs()
    return w, x, hessian_and_norms(x)[0]


def levels_per_row(q: torch.Tensor) -> int:
    return max(len(torch.unique(row)) for row in q)


def test_the_grid_spans_min_to_max_with_zero_on_it():
    w = torch.tensor([[-1.0, 0.5, 2.0], [0.2, 0.4, 0.8], [0.0, 0.0, 0.0]])
    scale, zero = gptq.grid(w, 2)
    assert scale.reshape(-1).tolist() == pytest.approx([1.0, 0.8 / 3, 1.0])
    assert zero.reshape(-1).tolist() == [1.0, 0.0, 0.0]
    assert gptq.round_to_grid(w, scale, zero, 2)[0].tolist() == [-1.0, 0.0, 2.0]  # 0.5 rounds to even, 0


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_rtn_uses_at_most_two_to_the_bits_levels_per_row_within_half_a_step(layer, bits):
    w = layer[0]
    q = gptq.rtn(w, bits)
    scale, _ = gptq.grid(w, bits)
    assert q.dtype == w.dtype and levels_per_row(q) <= 2 ** bits
    assert ((q - w).abs() <= scale / 2 + 1e-6).all()


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_gptq_lands_on_the_same_grid_as_rtn_with_a_smaller_output_error(layer, bits):
    w, x, hessian = layer
    q = gptq.gptq(w, hessian, bits)
    scale, zero = gptq.grid(w, bits)
    assert torch.allclose(gptq.round_to_grid(q, scale, zero, bits), q, atol=1e-6)  # every weight on its row's grid
    errors = {"rtn": pruning.output_error(w, gptq.rtn(w, bits), x), "gptq": pruning.output_error(w, q, x),
              "act_order": pruning.output_error(w, gptq.gptq(w, hessian, bits, act_order=True), x)}
    assert errors["act_order"] < errors["gptq"] < 0.7 * errors["rtn"], errors


def test_gptq_with_white_inputs_is_rtn(layer):
    """With H a multiple of the identity no column can make up for another: GPTQ rounds to nearest."""
    w = layer[0]
    assert torch.allclose(gptq.gptq(w, 2 * torch.eye(256, dtype=torch.float64), 4), gptq.rtn(w, 4), atol=1e-6)


def test_groups_have_their_own_grid_and_lower_error(layer):
    w, x, hessian = layer
    q = gptq.gptq(w, hessian, 4, group_size=64)
    for start in range(0, 256, 64):
        assert levels_per_row(q[:, start:start + 64]) <= 16
    assert pruning.output_error(w, q, x) < pruning.output_error(w, gptq.gptq(w, hessian, 4), x)
    assert pruning.output_error(w, gptq.rtn(w, 4, 64), x) < pruning.output_error(w, gptq.rtn(w, 4), x)


def test_lazy_blocks_give_the_same_weights(layer):
    w, _, hessian = layer
    assert torch.allclose(gptq.gptq(w, hessian, 4, block_size=256), gptq.gptq(w, hessian, 4, block_size=16), atol=1e-5)


def test_a_dead_input_gets_zero_weights(layer):
    w, x, _ = layer
    x = x.clone()
    x[:, 5] = 0
    q = gptq.gptq(w, hessian_and_norms(x)[0], 4)
    assert torch.isfinite(q).all() and (q[:, 5] == 0).all()


def test_quantize_model_puts_every_block_layer_on_its_grid():
    model = load_pretrained("course-lm-small")
    batches = [torch.randint(4, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))]
    for method in ("rtn", "gptq"):
        q = gptq.quantize_model(model, method, 3, batches)
        for layer in pruning.linear_layers(q).values():
            assert levels_per_row(layer.weight) <= 8
        assert torch.equal(q.lm_head.weight, model.lm_head.weight)
        assert not torch.equal(q.blocks[0].mlp.up_proj.weight, model.blocks[0].mlp.up_proj.weight)


@pytest.mark.parametrize("call,expected", [
    (lambda: gptq.rtn(torch.randn(4, 8), 9), "bits should be an int from 2 to 8"),
    (lambda: gptq.rtn(torch.randn(4, 8), 4, group_size=3), "group_size should be None or a positive int dividing"),
    (lambda: gptq.gptq(torch.randn(4, 8), torch.eye(4), 4), r"hessian should have shape \(8, 8\)"),
    (lambda: gptq.grid(torch.randn(8), 4), "2-D floating-point"),
    (lambda: gptq.quantize_model(load_pretrained("course-lm-small"), "gptq", 4), "needs calibration batches"),
])
def test_bad_input_names_what_was_expected(call, expected):
    with pytest.raises(ValueError, match=expected):
        call()
