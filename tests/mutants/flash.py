"""Wrong answers to lesson 05's exercises: the online softmax update, causal tile skipping, the whole tiled forward pass."""

import math

import numpy as np
import torch

# --------------------------------------------------------------------------- online softmax update


def _safe(m_new):
    return torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)


def osu_acc_not_rescaled(m, l, acc, scores, v):
    """Rescales l but forgets to rescale acc."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * torch.exp(m - _safe(m_new)) + p.sum(-1), acc + p @ v


def osu_l_not_rescaled(m, l, acc, scores, v):
    """Rescales acc but forgets to rescale l."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_nothing_rescaled(m, l, acc, scores, v):
    """Adds the new tile without rescaling the old state at all."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l + p.sum(-1), acc + p @ v


def osu_inverted_exponent(m, l, acc, scores, v):
    """Rescales by exp(m_new - m) instead of exp(m - m_new)."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(_safe(m_new) - m)
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_nan_for_masked_rows(m, l, acc, scores, v):
    """Right for finite maxima, but a row with only -inf so far gives exp(-inf - (-inf)) = nan."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - m_new)
    p = torch.exp(scores - m_new.unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_normalised_acc(m, l, acc, scores, v):
    """Divides acc by l inside the step (the output, not the running sum)."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    l_new = l * rescale + p.sum(-1)
    acc_new = acc * rescale.unsqueeze(-1) + p @ v
    return m_new, l_new, acc_new / torch.where(l_new == 0, torch.ones_like(l_new), l_new).unsqueeze(-1)


def osu_tile_max_only(m, l, acc, scores, v):
    """Keeps the tile's maximum as m_new, forgetting the running maximum."""
    m_new = scores.amax(dim=-1)
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_no_max_subtraction(m, l, acc, scores, v):
    """Sums exp(score) itself, not exp(score - m): overflows, and the state is not relative to m."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    p = torch.exp(scores)
    return m_new, l + p.sum(-1), acc + p @ v


def osu_in_place(m, l, acc, scores, v):
    """Right values, but rescales the caller's acc and l in place."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    l.mul_(rescale).add_(p.sum(-1))
    acc.mul_(rescale.unsqueeze(-1)).add_(p @ v)
    return m_new, l, acc


def osu_float32(m, l, acc, scores, v):
    """Always computes and returns float32."""
    m, l, acc, scores, v = (t.float() for t in (m, l, acc, scores, v))
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_exp_separately(m, l, acc, scores, v):
    """Computes exp(m) and exp(scores) separately and divides by exp(m_new): inf / inf = nan for large scores."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    e_new = torch.exp(_safe(m_new))
    rescale = torch.exp(m) / e_new
    p = torch.exp(scores) / e_new.unsqueeze(-1)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_lse_without_max(m, l, acc, scores, v):
    """Sums the tile through log(sum(exp(scores))) without subtracting the maximum first: overflows for large scores."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    lse = torch.log(torch.exp(scores).sum(-1))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + torch.exp(lse - _safe(m_new)), acc * rescale.unsqueeze(-1) + p @ v


def osu_neginf_m_as_zero(m, l, acc, scores, v):
    """Replaces a running maximum of -inf by 0: exp(0 - m_new) overflows (0 * inf = nan) when a first tile's scores are all very negative."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(torch.nan_to_num(m, neginf=0.0) - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_zeros_on_cpu(m, l, acc, scores, v):
    """Right values, but the 0 used for empty rows is torch.zeros(shape) on the CPU: fails for inputs on a GPU."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    shift = torch.where(torch.isneginf(m_new), torch.zeros(m_new.shape, dtype=m_new.dtype), m_new)
    rescale = torch.exp(m - shift)
    p = torch.exp(scores - shift.unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_bmm_with_view(m, l, acc, scores, v):
    """Flattens the batch dims with .view for torch.bmm: fails for non-contiguous inputs (a transposed or sliced v)."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    pv = torch.bmm(p.reshape(-1, *p.shape[-2:]), v.view(-1, *v.shape[-2:])).view(acc.shape)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + pv


def osu_float64_state(m, l, acc, scores, v):
    """Accumulates in float64 for safety and returns float64 for float32 inputs."""
    m, l, acc, scores, v = (t.double() for t in (m, l, acc, scores, v))
    return _update(m, l, acc, scores, v)


def osu_shifts_scores_in_place(m, l, acc, scores, v):
    """Right values, but subtracts the maximum from the caller's scores in place (scores -= m_new)."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    scores -= _safe(m_new).unsqueeze(-1)
    p = torch.exp(scores)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_shift_by_tile_max(m, l, acc, scores, v):
    """Shifts the tile by its own maximum: a tile whose row is all -inf gives -inf - (-inf) = nan, even after finite tiles."""
    tile_max = scores.amax(dim=-1)
    m_new = torch.maximum(m, tile_max)
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - tile_max.unsqueeze(-1)) * torch.exp(tile_max - _safe(m_new)).unsqueeze(-1)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_exp_in_float32(m, l, acc, scores, v):
    """Takes the exponentials in float32 and casts back: right dtype, but float64 inputs lose their precision."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp((m - _safe(m_new)).float()).to(m.dtype)
    p = torch.exp((scores - _safe(m_new).unsqueeze(-1)).float()).to(scores.dtype)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def osu_renamed_arguments(m_prev, l_prev, acc_prev, s, values):
    """Right values, but renames the documented arguments: a call by keyword (m=..., scores=...) fails."""
    return _update(m_prev, l_prev, acc_prev, s, values)


def _update(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


# --------------------------------------------------------------------------- capstone: the whole forward pass


def _ff(q, k, v, block_q=64, block_k=64, causal=False, *, skip="break", mask="diagonal", rescale_acc=True, lse="m+log",
        raw_max=False, work=None):
    """A tiled forward pass with one switch per mistake; the defaults give the right answer."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if work is not None:
        q, k, v = q.to(work), k.to(work), v.to(work)
    n_q, n_k = q.shape[-2], k.shape[-2]
    outs, lses = [], []
    for q_start in range(0, n_q, block_q):
        q_end = min(q_start + block_q, n_q)
        qt = q[..., q_start:q_end, :]
        m = qt.new_full(qt.shape[:-1], float("-inf"))
        l = qt.new_zeros(qt.shape[:-1])
        acc = qt.new_zeros(*qt.shape[:-1], v.shape[-1])
        for k_start in range(0, n_k, block_k):
            k_end = min(k_start + block_k, n_k)
            if causal and skip == "break" and k_start > q_end - 1:
                break
            if causal and skip == "one tile early" and k_end > q_end:
                break
            raw = qt @ k[..., k_start:k_end, :].transpose(-2, -1)
            s = raw * scale
            if causal and (mask == "every tile" or (mask == "diagonal" and k_end - 1 > q_start)):
                seen = torch.arange(k_start, k_end).unsqueeze(0) <= torch.arange(q_start, q_end).unsqueeze(-1)
                s, raw = s.masked_fill(~seen, float("-inf")), raw.masked_fill(~seen, float("-inf"))
            m_new = torch.maximum(m, (raw if raw_max else s).amax(dim=-1))
            shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
            if raw_max:   # exp(scale * (raw - m_raw)): the right weights, but m is the raw scores' maximum
                factor, p = torch.exp(scale * (m - shift)), torch.exp(scale * (raw - shift.unsqueeze(-1)))
            else:
                factor, p = torch.exp(m - shift), torch.exp(s - shift.unsqueeze(-1))
            l = l * factor + p.sum(dim=-1)
            acc = (acc * factor.unsqueeze(-1) if rescale_acc else acc) + p @ v[..., k_start:k_end, :]
            m = m_new
        outs.append(acc / l.unsqueeze(-1))
        lses.append(m if lse == "m" else m + torch.log(l))
    o, lse_out = torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)
    return (o.to(torch.float32), lse_out.to(torch.float32)) if work is not None else (o, lse_out)


def ff_no_causal_skip(q, k, v, block_q=64, block_k=64, causal=False):
    """Right output, but computes every tile above the diagonal too (masked to -inf): twice the work."""
    return _ff(q, k, v, block_q, block_k, causal, skip="none")


def ff_mask_every_tile_no_skip(q, k, v, block_q=64, block_k=64, causal=False):
    """Builds the causal mask for every tile and never skips one: right output, every tile computed."""
    return _ff(q, k, v, block_q, block_k, causal, skip="none", mask="every tile")


def ff_skip_one_tile_early(q, k, v, block_q=64, block_k=64, causal=False):
    """Stops at the first key tile that reaches past the query tile: loses the keys of the diagonal tile."""
    return _ff(q, k, v, block_q, block_k, causal, skip="one tile early")


def ff_acc_not_rescaled(q, k, v, block_q=64, block_k=64, causal=False):
    """Rescales l but forgets to rescale acc when the running maximum grows."""
    return _ff(q, k, v, block_q, block_k, causal, rescale_acc=False)


def ff_lse_is_m(q, k, v, block_q=64, block_k=64, causal=False):
    """Returns lse = m: forgets the + log(l)."""
    return _ff(q, k, v, block_q, block_k, causal, lse="m")


def ff_max_before_scale(q, k, v, block_q=64, block_k=64, causal=False):
    """Takes the running maximum of the unscaled scores and scales inside exp: o right, lse wrong."""
    return _ff(q, k, v, block_q, block_k, causal, raw_max=True)


def ff_mask_diagonal_only_when_full(q, k, v, block_q=64, block_k=64, causal=False):
    """Skips the tiles above the diagonal but never masks the tiles on it."""
    return _ff(q, k, v, block_q, block_k, causal, mask="never")


def ff_float32(q, k, v, block_q=64, block_k=64, causal=False):
    """Works in float32 whatever the input: float64 inputs come back float32 (and rounded)."""
    return _ff(q, k, v, block_q, block_k, causal, work=torch.float32)


def ff_scales_q_in_place(q, k, v, block_q=64, block_k=64, causal=False):
    """Right values, but multiplies the caller's q by the scale in place (and then undoes nothing)."""
    q.mul_(1.0 / math.sqrt(q.shape[-1]))
    return _ff(q, k, v, block_q, block_k, causal)


def ff_block_sizes_swapped(q, k, v, block_q=64, block_k=64, causal=False):
    """Uses block_k for the queries and block_q for the keys: right output, but other tiles than asked."""
    return _ff(q, k, v, block_k, block_q, causal)


# --------------------------------------------------------------------------- causal tile skipping


def skip_k_start_after_q_end(q_start, q_end, k_start):
    """Off by one: misses the tile that starts exactly at q_end."""
    return k_start > q_end


def skip_from_last_query(q_start, q_end, k_start):
    """Off by one the other way: skips the tile whose first key is the tile's last query."""
    return k_start >= q_end - 1


def skip_after_first_query(q_start, q_end, k_start):
    """Compares with the first query: skips diagonal tiles that later queries of the tile still need."""
    return k_start > q_start


def skip_from_first_query(q_start, q_end, k_start):
    """Skips when the first key is at or after the first query."""
    return k_start >= q_start


def skip_never(q_start, q_end, k_start):
    """Never skips: right output, but computes every tile."""
    return False


def skip_when_tile_needs_mask(q_start, q_end, k_start):
    """Confuses skipping with masking: skips the diagonal tiles (assuming square tiles to find the last key)."""
    return k_start + (q_end - q_start) - 1 > q_start


def skip_below_diagonal(q_start, q_end, k_start):
    """Reversed: skips the tiles below the diagonal."""
    return k_start < q_start


def skip_returns_tensor(q_start, q_end, k_start):
    """Right rule, but returns a torch tensor instead of a bool."""
    return torch.tensor(k_start) > q_end - 1


def skip_returns_int(q_start, q_end, k_start):
    """Right rule, but returns 0 or 1 (int(...)) instead of a bool."""
    return int(k_start >= q_end)


def skip_returns_numpy_bool(q_start, q_end, k_start):
    """Right rule, computed with numpy: returns numpy.bool_, not a Python bool."""
    return np.greater_equal(k_start, q_end)


def skip_arguments_reordered(q_start, k_start, q_end):
    """The right comparison, but the parameters in the order (q_start, k_start, q_end)."""
    return k_start >= q_end


def skip_tile_local_index(q_start, q_end, k_start):
    """Compares k_start with the tile's size instead of its last query: k_start >= q_end - q_start."""
    return k_start >= q_end - q_start


def skip_returns_none(q_start, q_end, k_start):
    """Returns True when it skips and falls off the end (None) otherwise."""
    if k_start >= q_end:
        return True


MUTANTS = {
    "test_online_softmax_update": {
        f.__name__: f
        for f in (osu_acc_not_rescaled, osu_l_not_rescaled, osu_nothing_rescaled, osu_inverted_exponent, osu_nan_for_masked_rows,
                  osu_normalised_acc, osu_tile_max_only, osu_no_max_subtraction, osu_in_place, osu_float32,
                  osu_exp_separately, osu_lse_without_max, osu_neginf_m_as_zero, osu_zeros_on_cpu, osu_bmm_with_view,
                  osu_float64_state, osu_shifts_scores_in_place, osu_shift_by_tile_max, osu_renamed_arguments, osu_exp_in_float32)
    },
    "test_flash_forward": {
        f.__name__: f
        for f in (ff_no_causal_skip, ff_mask_every_tile_no_skip, ff_skip_one_tile_early, ff_acc_not_rescaled, ff_lse_is_m,
                  ff_max_before_scale, ff_mask_diagonal_only_when_full, ff_float32, ff_scales_q_in_place, ff_block_sizes_swapped)
    },
    "test_causal_tile_skip": {
        f.__name__: f
        for f in (skip_k_start_after_q_end, skip_from_last_query, skip_after_first_query, skip_from_first_query, skip_never,
                  skip_when_tile_needs_mask, skip_below_diagonal, skip_returns_tensor,
                  skip_returns_int, skip_returns_numpy_bool, skip_arguments_reordered, skip_tile_local_index, skip_returns_none)
    },
}


# --------------------------------------------------------------------------- predict_causal_skipped_fraction


def predict_skipped_half():
    """'About half': forgets that the diagonal tiles are computed."""
    return 0.5


def predict_computed_share():
    """The share of the tiles computed (36 of 64), not skipped."""
    return 36 / 64


def predict_diagonal_share():
    """The share of the tiles on the diagonal (8 of 64)."""
    return 8 / 64


def predict_count_not_share():
    """The number of skipped tiles (28), not their share."""
    return 28


MUTANTS["test_predict_causal_skipped_fraction"] = {
    f.__name__: f for f in (predict_skipped_half, predict_computed_share, predict_diagonal_share, predict_count_not_share)
}
