"""Wrong answers to lesson 05's exercises: the online softmax update, one forward tile step, causal tile skipping."""

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


# --------------------------------------------------------------------------- one forward tile step


def _update(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def _masked(scores, mask, fill=float("-inf")):
    return scores if mask is None else scores.masked_fill(~mask, fill)


def fts_no_scale(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Forgets to multiply the scores by scale."""
    return _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1), mask), v_tile)


def fts_default_scale(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Ignores the scale argument and uses 1/sqrt(E)."""
    scores = q_tile @ k_tile.transpose(-2, -1) / math.sqrt(q_tile.shape[-1])
    return _update(m, l, acc, _masked(scores, mask), v_tile)


def fts_divides_by_scale(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Divides by scale (as if it were sqrt(E))."""
    return _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1) / scale, mask), v_tile)


def fts_mask_inverted(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Treats True as 'blocked'."""
    scores = q_tile @ k_tile.transpose(-2, -1) * scale
    return _update(m, l, acc, scores if mask is None else scores.masked_fill(mask, float("-inf")), v_tile)


def fts_mask_with_zero(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Sets masked scores to 0 instead of -inf: they still get weight exp(0 - m)."""
    return _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask, 0.0), v_tile)


def fts_mask_after_update(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Computes the maximum and exp over all scores and zeroes the masked probabilities afterwards."""
    scores = q_tile @ k_tile.transpose(-2, -1) * scale
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    if mask is not None:
        p = p * mask
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v_tile


def fts_ignores_mask(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Never applies the mask."""
    return _update(m, l, acc, q_tile @ k_tile.transpose(-2, -1) * scale, v_tile)


def fts_acc_not_rescaled(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Forgets to rescale acc when the maximum grows."""
    scores = _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask)
    m_new = torch.maximum(m, scores.amax(dim=-1))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * torch.exp(m - _safe(m_new)) + p.sum(-1), acc + p @ v_tile


def fts_nan_for_masked_rows(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """A query that sees no key so far gets nan (exp(-inf - (-inf)))."""
    scores = _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask)
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - m_new)
    p = torch.exp(scores - m_new.unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v_tile


def fts_normalised(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Returns acc / l as the running acc."""
    m_new, l_new, acc_new = _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask), v_tile)
    return m_new, l_new, acc_new / torch.where(l_new == 0, torch.ones_like(l_new), l_new).unsqueeze(-1)


def fts_exp_separately(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """exp(scores) / exp(m_new) instead of exp(scores - m_new): inf / inf = nan for scores in the hundreds."""
    scores = _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask)
    m_new = torch.maximum(m, scores.amax(dim=-1))
    e_new = torch.exp(_safe(m_new))
    rescale = torch.exp(m) / e_new
    p = torch.exp(scores) / e_new.unsqueeze(-1)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v_tile


def fts_neginf_m_as_zero(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Replaces m = -inf by 0 before rescaling: exp(-m_new) overflows to inf and 0 * inf = nan when a first tile's scores are all very negative."""
    scores = _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask)
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(torch.nan_to_num(m, neginf=0.0) - _safe(m_new))
    p = torch.exp(scores - _safe(m_new).unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v_tile


def fts_fill_made_on_cpu(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Right values, but masks with torch.where(mask, s, torch.full(s.shape, -inf)): the fill lives on the CPU."""
    scores = q_tile @ k_tile.transpose(-2, -1) * scale
    if mask is not None:
        scores = torch.where(mask, scores, torch.full(scores.shape, float("-inf"), dtype=scores.dtype))
    return _update(m, l, acc, scores, v_tile)


def fts_default_mask_on_cpu(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Right values, but mask=None becomes torch.ones(Bq, Bk, dtype=torch.bool) on the CPU."""
    if mask is None:
        mask = torch.ones(q_tile.shape[-2], k_tile.shape[-2], dtype=torch.bool)
    return _update(m, l, acc, (q_tile @ k_tile.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf")), v_tile)


def fts_bmm_with_view(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Flattens the batch dims with .view for torch.bmm: fails for non-contiguous tiles (a transposed or sliced k)."""
    q3 = q_tile.view(-1, *q_tile.shape[-2:])
    k3 = k_tile.view(-1, *k_tile.shape[-2:])
    scores = torch.bmm(q3, k3.transpose(1, 2)).view(*q_tile.shape[:-1], k_tile.shape[-2]) * scale
    return _update(m, l, acc, _masked(scores, mask), v_tile)


def fts_scales_q_in_place(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Right values, but scales the caller's queries in place (q_tile *= scale)."""
    q_tile *= scale
    return _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1), mask), v_tile)


def fts_mask_finfo_min(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Masks with the dtype's lowest finite value instead of -inf: a query that may see no key gets weight 1 on every key."""
    return _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask, torch.finfo(q_tile.dtype).min), v_tile)


def fts_float32_scores(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Computes the scores and the state in float32 (.float()): float64 inputs come back as float32."""
    scores = _masked((q_tile @ k_tile.transpose(-2, -1)).float() * scale, mask)
    return _update(m.float(), l.float(), acc.float(), scores, v_tile.float())


def fts_scores_in_float32(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Computes the scores in float32 and casts them back: right dtype, but float64 inputs lose their precision."""
    scores = (q_tile.float() @ k_tile.float().transpose(-2, -1) * scale).to(q_tile.dtype)
    return _update(m, l, acc, _masked(scores, mask), v_tile)


def fts_mask_scale_swapped(q_tile, k_tile, v_tile, m, l, acc, mask=None, scale=1.0):
    """Puts mask before scale in the signature: a positional call forward_tile_step(..., scale, mask) mixes them up."""
    return _update(m, l, acc, _masked(q_tile @ k_tile.transpose(-2, -1) * scale, mask), v_tile)

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
    "test_forward_tile_step": {
        f.__name__: f
        for f in (fts_no_scale, fts_default_scale, fts_divides_by_scale, fts_mask_inverted, fts_mask_with_zero, fts_mask_after_update,
                  fts_ignores_mask, fts_acc_not_rescaled, fts_nan_for_masked_rows, fts_normalised,
                  fts_exp_separately, fts_neginf_m_as_zero, fts_fill_made_on_cpu, fts_default_mask_on_cpu, fts_bmm_with_view,
                  fts_scales_q_in_place, fts_mask_finfo_min, fts_float32_scores, fts_mask_scale_swapped, fts_scores_in_float32)
    },
    "test_causal_tile_skip": {
        f.__name__: f
        for f in (skip_k_start_after_q_end, skip_from_last_query, skip_after_first_query, skip_from_first_query, skip_never,
                  skip_when_tile_needs_mask, skip_below_diagonal, skip_returns_tensor,
                  skip_returns_int, skip_returns_numpy_bool, skip_arguments_reordered, skip_tile_local_index, skip_returns_none)
    },
}
