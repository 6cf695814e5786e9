"""course_lib.pruning: the masks, SparseGPT, pruning a whole model, and what storage costs."""

from __future__ import annotations

import pytest
import torch

from course_lib import pruning
from course_lib.models import load_pretrained


def correlated_inputs(n: int = 2048, d_in: int = 256, seed: int = 0) -> torch.Tensor:
    """Inputs like a layer's: correlated features whose scales differ 30-fold, in no particular order."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=gen) / d_in ** 0.5 + torch.eye(d_in)
    scales = torch.linspace(0.1, 3, d_in)[torch.randperm(d_in, generator=gen)]
    return torch.randn(n, d_in, generator=gen) @ mix * scales


def hessian_and_norms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    return 2 * x.T @ x / x.shape[0], (x ** 2).sum(0).sqrt()


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(128, 256, generator=gen) * 0.05
    x = correlated_inputs()
    return w, x, *hessian_and_norms(x)


# --------------------------------------------------------------------------- zeros


def test_trained_weights_are_almost_never_exactly_zero():
    rows = pruning.weight_statistics(load_pretrained("course-lm"))
    assert len(rows) == 7 * load_pretrained("course-lm").config.n_layers
    assert all(r["zero"] == 0.0 for r in rows)
    assert all(r["|w|<0.001"] <= r["|w|<0.01"] < 0.5 for r in rows)


def test_zero_shares_counts_exactly():
    w = torch.tensor([0.0, 0.0, 5e-4, -5e-3, 0.1])
    assert pruning.zero_shares(w) == pytest.approx({"zero": 0.4, "|w|<0.001": 0.6, "|w|<0.01": 0.8})


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_magnitude_mask_removes_the_smallest_and_exactly_as_many_as_asked(layer, sparsity):
    w = layer[0]
    keep = pruning.magnitude_mask(w, sparsity)
    assert keep.dtype == torch.bool and keep.shape == w.shape
    assert int((~keep).sum()) == round(w.numel() * sparsity)
    if 0 < sparsity:
        assert w.abs()[keep].min() >= w.abs()[~keep].max()


def test_global_magnitude_uses_one_threshold_for_all_layers():
    small, large = torch.randn(8, 8) * 0.01, torch.randn(8, 8)
    masks = pruning.global_magnitude_masks({"small": small, "large": large}, 0.5)
    removed = int((~masks["small"]).sum() + (~masks["large"]).sum())
    assert removed == 64
    assert (~masks["small"]).sum() > (~masks["large"]).sum()  # the small layer loses more
    kept = torch.cat([small.abs()[masks["small"]], large.abs()[masks["large"]]])
    gone = torch.cat([small.abs()[~masks["small"]], large.abs()[~masks["large"]]])
    assert kept.min() >= gone.max()


def test_two_four_keeps_the_two_largest_of_every_four(layer):
    w = layer[0]
    keep = pruning.n_m_mask(w.abs())
    groups, kept = w.abs().reshape(128, -1, 4), keep.reshape(128, -1, 4)
    assert (kept.sum(-1) == 2).all()
    smallest_kept = torch.where(kept, groups, torch.inf).min(-1).values
    largest_gone = torch.where(~kept, groups, -torch.inf).max(-1).values
    assert (smallest_kept >= largest_gone).all()


def test_wanda_with_equal_input_norms_is_magnitude_pruning_per_row(layer):
    w = layer[0]
    keep = pruning.wanda_mask(w, torch.ones(256), 0.5)
    assert ((~keep).sum(1) == 128).all()  # the same number removed from every row
    for row in range(0, 128, 17):
        assert w[row].abs()[keep[row]].min() >= w[row].abs()[~keep[row]].max()


def test_wanda_weighs_each_weight_by_its_inputs_norm():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 0.1])  # |w| * norm: 10, 2, 3, 0.4
    assert pruning.wanda_scores(w, norms).tolist() == [[10.0, 2.0, 3.0, pytest.approx(0.4)]]
    assert pruning.wanda_mask(w, norms, 0.5).tolist() == [[True, False, True, False]]


# --------------------------------------------------------------------------- SparseGPT


def test_sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs(layer):
    w, x, hessian, norms = layer
    errors = {"magnitude": pruning.output_error(w, w * pruning.magnitude_mask(w, 0.5), x),
              "wanda": pruning.output_error(w, w * pruning.wanda_mask(w, norms, 0.5), x)}
    new_w, keep = pruning.sparsegpt(w, hessian, 0.5)
    errors["sparsegpt"] = pruning.output_error(w, new_w, x)
    assert errors["sparsegpt"] < 0.85 * errors["wanda"] < errors["magnitude"], errors
    assert new_w.dtype == w.dtype and int((~keep).sum()) == w.numel() // 2
    assert torch.equal(new_w == 0, ~keep)  # zero exactly where removed, the kept weights updated
    assert not torch.equal(new_w[keep], w[keep])


def test_sparsegpt_two_four_pattern_and_its_error(layer):
    w, x, hessian, norms = layer
    new_w, keep = pruning.sparsegpt(w, hessian, 0.0, n=2, m=4)
    assert ((new_w.reshape(128, -1, 4) != 0).sum(-1) == 2).all()
    wanda = pruning.output_error(w, w * pruning.n_m_mask(pruning.wanda_scores(w, norms)), x)
    assert pruning.output_error(w, new_w, x) < 0.85 * wanda


def test_sparsegpt_with_white_inputs_is_magnitude_pruning_without_updates(layer):
    """With H a multiple of the identity no weight can make up for another: SparseGPT is magnitude pruning."""
    w = layer[0]
    new_w, keep = pruning.sparsegpt(w, 2 * torch.eye(256, dtype=torch.float64), 0.5, block_size=256)
    assert torch.equal(keep, pruning.magnitude_mask(w, 0.5))
    assert torch.allclose(new_w, w * keep)


def test_sparsegpt_removing_nothing_changes_nothing_and_lazy_blocks_agree(layer):
    w, x, hessian, _ = layer
    assert torch.equal(pruning.sparsegpt(w, hessian, 0.0)[0], w)
    # the lazy-batch update is an exact reordering of the same arithmetic: block widths agree given one mask
    one, keep_one = pruning.sparsegpt(w, hessian, 0.0, n=2, m=4, block_size=256)
    two, keep_two = pruning.sparsegpt(w, hessian, 0.0, n=2, m=4, block_size=16)
    assert torch.equal(keep_one, keep_two) and torch.allclose(one, two, atol=1e-6)


def test_sparsegpt_survives_a_dead_input(layer):
    w, x, _, _ = layer
    x = x.clone()
    x[:, 3] = 0  # an input that is always zero: a zero on the Hessian's diagonal
    new_w, _ = pruning.sparsegpt(w, hessian_and_norms(x)[0], 0.5)
    assert torch.isfinite(new_w).all()


# --------------------------------------------------------------------------- the whole model


@pytest.fixture(scope="module")
def small_model_and_batches():
    model = load_pretrained("course-lm-small")
    gen = torch.Generator().manual_seed(0)
    return model, [torch.randint(4, model.config.vocab_size, (4, 32), generator=gen)]


@pytest.mark.parametrize("method", pruning.METHODS)
def test_prune_model_reaches_the_sparsity_and_leaves_the_original_alone(small_model_and_batches, method):
    model, batches = small_model_and_batches
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = pruning.prune_model(model, method, 0.5, batches)
    assert pruning.sparsity_of(pruned) == pytest.approx(0.5, abs=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)  # the head is not pruned
    two_four = pruning.prune_model(model, method, 0.0, batches, pattern=(2, 4))
    for layer in pruning.linear_layers(two_four.blocks[0]).values():
        assert ((layer.weight.reshape(layer.weight.shape[0], -1, 4) != 0).sum(-1) == 2).all()


# --------------------------------------------------------------------------- storage


def test_csr_bytes_are_what_a_real_csr_tensor_holds_and_exceed_dense_below_two_thirds_sparsity(layer):
    w = layer[0]
    for sparsity in (0.5, 0.7, 0.9):
        pruned = w * pruning.magnitude_mask(w, sparsity)
        csr = pruning.to_csr(pruned)
        nonzeros = int((pruned != 0).sum())
        assert pruning.csr_tensor_bytes(csr) == pruning.csr_bytes(tuple(w.shape), nonzeros)
        assert torch.equal(csr.to_dense(), pruned.half())
        bigger = pruning.csr_tensor_bytes(csr) > pruning.dense_bytes(tuple(w.shape))
        assert bigger == (sparsity < 2 / 3)


def test_two_four_stores_the_kept_half_and_two_bits_each():
    assert pruning.n_m_bytes((64, 64)) == 64 * 64 // 2 * 2 + 64 * 64 // 2 * 2 // 8
    assert pruning.n_m_bytes((64, 64)) / pruning.dense_bytes((64, 64)) == 0.5625


def test_a_dense_tensor_with_zeros_takes_the_same_bytes():
    w = torch.randn(64, 64).half()
    assert pruning.tensor_bytes(w * 0) == pruning.tensor_bytes(w) == pruning.dense_bytes((64, 64))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,expected", [
    (lambda: pruning.magnitude_mask(torch.randn(4), 0.5), "2-D floating-point"),
    (lambda: pruning.magnitude_mask(torch.randn(4, 4), 1.0), r"sparsity should be a number in \[0, 1\)"),
    (lambda: pruning.n_m_mask(torch.randn(4, 6)), "multiple of m=4"),
    (lambda: pruning.n_m_mask(torch.randn(4, 8), 4, 4), "0 < n < m"),
    (lambda: pruning.wanda_scores(torch.randn(4, 8), torch.ones(4)), r"input_norms should have shape \(8,\)"),
    (lambda: pruning.sparsegpt(torch.randn(4, 8), torch.eye(4)), r"hessian should have shape \(8, 8\)"),
    (lambda: pruning.prune_model(load_pretrained("course-lm-small"), "wanda", 0.5), "needs calibration batches"),
    (lambda: pruning.prune_model(load_pretrained("course-lm-small"), "random", 0.5), "method should be one of"),
    (lambda: pruning.weight_statistics(torch.randn(3)), "expected a torch.nn.Module"),
])
def test_bad_input_names_what_was_expected(call, expected):
    with pytest.raises(ValueError, match=expected):
        call()
