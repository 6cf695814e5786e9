"""Wrong answers to lesson 10's exercises: mask_2_4, wanda_scores, gptq_column_step, distillation_loss, accept_or_resample, quantize_layer (the capstone)."""

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- mask_2_4


def _require_2_4(w):
    if w.dim() != 2 or w.shape[1] % 4:
        raise ValueError(f"w should be (out, in) with in a multiple of 4, got shape {tuple(w.shape)}")


def _top_in_groups(scores, n=2, largest=True):
    groups = scores.reshape(scores.shape[0], -1, 4) if scores.numel() else scores.reshape(0, 0, 4)
    kept = groups.topk(n, dim=-1, largest=largest).indices
    return torch.zeros(groups.shape, dtype=torch.bool, device=scores.device).scatter(-1, kept, True).reshape(scores.shape)


def mask_signed(w):
    """Keeps the 2 largest w, not |w|: large negative weights are dropped."""
    _require_2_4(w)
    return _top_in_groups(w)


def mask_smallest(w):
    """Keeps the 2 smallest |w| of each group."""
    _require_2_4(w)
    return _top_in_groups(w.abs(), largest=False)


def mask_groups_down_columns(w):
    """Groups of 4 consecutive entries of a column (along dim 0) instead of a row."""
    _require_2_4(w)
    return _top_in_groups(w.abs().t().contiguous()).t()


def mask_half_of_each_row(w):
    """Keeps the largest half of each whole row: 50% sparse, but not 2:4."""
    _require_2_4(w)
    kept = w.abs().topk(w.shape[1] // 2, dim=1).indices
    return torch.zeros(w.shape, dtype=torch.bool, device=w.device).scatter(1, kept, True)


def mask_as_float(w):
    """Right positions, returned as a float mask of 0s and 1s."""
    _require_2_4(w)
    return _top_in_groups(w.abs()).to(w.dtype)


def mask_one_per_group(w):
    """Keeps 1 weight per group of 4 (75% sparse)."""
    _require_2_4(w)
    return _top_in_groups(w.abs(), n=1)


def mask_without_value_error(w):
    """Right masks, but no ValueError: a row length not a multiple of 4 fails inside reshape with a RuntimeError."""
    return _top_in_groups(w.abs())


def mask_threshold_by_mean(w):
    """Keeps the weights above their group's mean |w|: 2 per group only when the group is balanced."""
    _require_2_4(w)
    groups = w.abs().reshape(w.shape[0], w.shape[1] // 4, 4)
    return (groups > groups.mean(-1, keepdim=True)).reshape(w.shape)


def mask_on_cpu(w):
    """Builds the mask with torch.zeros(...) made on the CPU whatever w's device."""
    _require_2_4(w)
    groups = w.abs().reshape(w.shape[0], w.shape[1] // 4, 4)
    kept = groups.topk(2, dim=-1).indices
    return torch.zeros(groups.shape, dtype=torch.bool).scatter(-1, kept.cpu(), True).reshape(w.shape)


# --------------------------------------------------------------------------- wanda_scores


def wanda_squared_norm(w, x):
    """Forgets the square root: |w| times the sum of squares."""
    return w.abs() * (x ** 2).sum(dim=0)


def wanda_signed(w, x):
    """w instead of |w|."""
    return w * torch.linalg.vector_norm(x, dim=0)


def wanda_norm_over_features(w, x):
    """The norm over dim 1 (one per token) instead of over the tokens."""
    return w.abs() * torch.linalg.vector_norm(x, dim=1)


def wanda_norms_down_rows(w, x):
    """Broadcasts the input norms along the wrong axis: norms[:, None] scales row i, not column j."""
    return w.abs() * torch.linalg.vector_norm(x, dim=0)[:, None]


def wanda_rms(w, x):
    """sqrt(mean x^2): the root mean square, not the L2 norm."""
    return w.abs() * x.pow(2).mean(dim=0).sqrt()


def wanda_weight_norm(w, x):
    """The norm of w's columns instead of the inputs'."""
    return w.abs() * torch.linalg.vector_norm(w, dim=0)


def wanda_l1_norm(w, x):
    """The L1 norm sum |x| instead of the L2 norm."""
    return w.abs() * x.abs().sum(dim=0)


def wanda_in_float32(w, x):
    """Always computes (and returns) float32."""
    return w.float().abs() * torch.linalg.vector_norm(x.float(), dim=0)


# --------------------------------------------------------------------------- gptq_column_step


def _step(w, u, i, scale, zero, bits, *, rounding=torch.round, clamp=True, divide=True, sign=-1.0, spread="row",
          with_zero=True, codes_out=False, error_after=False, replace=True):
    w = w.clone()
    zero_used = zero if with_zero else torch.zeros_like(zero)
    codes = rounding(w[:, i:i + 1] / scale) + zero_used
    if clamp:
        codes = torch.clamp(codes, 0, 2 ** bits - 1)
    q = scale * (codes - zero_used)
    if error_after:
        w[:, i:i + 1] = q
    error = (w[:, i:i + 1] - q) / (u[i, i] if divide else 1)
    if spread == "row":
        w[:, i + 1:] += sign * error * u[i:i + 1, i + 1:]
    elif spread == "column":
        w[:, i + 1:] += sign * error * u[i + 1:, i][None, :]
    elif spread == "backwards":
        w[:, :i] += sign * error * u[:i, i][None, :]
    if replace:
        w[:, i:i + 1] = codes if codes_out else q
    return w


def gptq_no_clamp(w, u, i, scale, zero, bits):
    """Does not clamp the codes to [0, 2^bits - 1]: weights beyond the grid get codes off it."""
    return _step(w, u, i, scale, zero, bits, clamp=False)


def gptq_round_half_up(w, u, i, scale, zero, bits):
    """floor(x + 0.5): rounds exact halves up, where torch.round sends them to the even neighbour."""
    return _step(w, u, i, scale, zero, bits, rounding=lambda x: torch.floor(x + 0.5))


def gptq_round_half_away(w, u, i, scale, zero, bits):
    """Rounds exact halves away from zero (Python 2's round, C's round)."""
    return _step(w, u, i, scale, zero, bits, rounding=lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5))


def gptq_no_division_by_diagonal(w, u, i, scale, zero, bits):
    """Forgets to divide the error by u[i, i]."""
    return _step(w, u, i, scale, zero, bits, divide=False)


def gptq_wrong_sign(w, u, i, scale, zero, bits):
    """Adds err * u[i, j] to the later columns instead of subtracting it."""
    return _step(w, u, i, scale, zero, bits, sign=1.0)


def gptq_column_of_u(w, u, i, scale, zero, bits):
    """Reads column i of u (u[j, i], zero below the diagonal) instead of row i."""
    return _step(w, u, i, scale, zero, bits, spread="column")


def gptq_updates_earlier_columns(w, u, i, scale, zero, bits):
    """Spreads the error over the columns before i (through u[j, i], j < i) instead of after it."""
    return _step(w, u, i, scale, zero, bits, spread="backwards")


def gptq_without_zero_point(w, u, i, scale, zero, bits):
    """Ignores the zero point: code = clamp(round(w / scale)), value = scale * code."""
    return _step(w, u, i, scale, zero, bits, with_zero=False)


def gptq_returns_codes(w, u, i, scale, zero, bits):
    """Puts the integer codes in column i instead of the rounded values."""
    return _step(w, u, i, scale, zero, bits, codes_out=True)


def gptq_error_after_rounding(w, u, i, scale, zero, bits):
    """Overwrites column i with q before computing the error: the error is 0, nothing is spread."""
    return _step(w, u, i, scale, zero, bits, error_after=True)


def gptq_keeps_column(w, u, i, scale, zero, bits):
    """Spreads the error but leaves column i unrounded."""
    return _step(w, u, i, scale, zero, bits, replace=False)


def gptq_in_place(w, u, i, scale, zero, bits):
    """Right values, written into w itself."""
    codes = torch.clamp(torch.round(w[:, i:i + 1] / scale) + zero, 0, 2 ** bits - 1)
    q = scale * (codes - zero)
    error = (w[:, i:i + 1] - q) / u[i, i]
    w[:, i + 1:] -= error * u[i:i + 1, i + 1:]
    w[:, i:i + 1] = q
    return w


# --------------------------------------------------------------------------- distillation_loss


def _distill(student_logits, teacher_logits, labels, temperature, alpha, *, t_squared=True, reverse=False,
             soften_teacher=True, soften_ce=False, reduce="mean", swap_alpha=False, unstable=False, kl_mean=False):
    vocab = student_logits.shape[-1]
    keep = labels.reshape(-1) != -100
    student = student_logits.reshape(-1, vocab)[keep]
    teacher = teacher_logits.reshape(-1, vocab)[keep]
    log = (lambda z: torch.log(torch.softmax(z, dim=-1))) if unstable else (lambda z: F.log_softmax(z, dim=-1))
    log_s = log(student / temperature)
    log_t = log(teacher / (temperature if soften_teacher else 1.0))
    if kl_mean:
        soft = F.kl_div(log_s, log_t, reduction="mean", log_target=True)
    else:
        kl = ((log_s.exp() * (log_s - log_t)) if reverse else (log_t.exp() * (log_t - log_s))).sum(-1)
        soft = kl.sum() if reduce == "sum" else kl.mean()
    hard = F.cross_entropy(student / (temperature if soften_ce else 1.0), labels.reshape(-1)[keep], reduction=reduce)
    a_soft, a_hard = (1 - alpha, alpha) if swap_alpha else (alpha, 1 - alpha)
    return a_soft * (temperature ** 2 if t_squared else 1.0) * soft + a_hard * hard


def distill_no_t_squared(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Forgets the T^2 factor on the KL term."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, t_squared=False)


def distill_kl_reversed(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """KL(student || teacher) instead of KL(teacher || student)."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, reverse=True)


def distill_teacher_not_softened(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Divides only the student's logits by T."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, soften_teacher=False)


def distill_ce_softened(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """The cross-entropy on student / T as well."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, soften_ce=True)


def distill_ignored_positions_averaged(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Zeroes the cross-entropy at label -100 (with where) but averages both terms over every position."""
    vocab = student_logits.shape[-1]
    student, teacher, y = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), labels.reshape(-1)
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    soft = (log_t.exp() * (log_t - log_s)).sum(-1)
    ce = F.cross_entropy(student, y.clamp(min=0), reduction="none")
    hard = torch.where(y != -100, ce, torch.zeros_like(ce))
    return (alpha * temperature ** 2 * soft + (1 - alpha) * hard).mean()


def distill_summed(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Sums over the positions instead of averaging."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, reduce="sum")


def distill_alpha_swapped(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """alpha on the cross-entropy and 1 - alpha on the KL term."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, swap_alpha=True)


def distill_log_of_softmax(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """log(softmax(x)): log(0) = -inf for logits in the thousands, and 0 * -inf = nan."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, unstable=True)


def distill_kl_div_mean(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """F.kl_div(..., reduction='mean'): divides the KL by the vocabulary size as well."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha, kl_mean=True)


def distill_default_temperature_1(student_logits, teacher_logits, labels, temperature=1.0, alpha=0.5):
    """Right formula, but temperature defaults to 1 instead of 2."""
    return _distill(student_logits, teacher_logits, labels, temperature, alpha)


def distill_in_float32(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Always computes (and returns) float32."""
    return _distill(student_logits.float(), teacher_logits.float(), labels, temperature, alpha)


def distill_as_float(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Returns a Python float: nothing to backpropagate."""
    return float(_distill(student_logits, teacher_logits, labels, temperature, alpha))


# --------------------------------------------------------------------------- accept_or_resample


def _one_hot(p, token):
    distribution = torch.zeros_like(p)
    distribution[token] = 1
    return distribution


def _residual(p, q):
    residual = (p - q).clamp(min=0)
    return residual / residual.sum()


def accept_inverted_ratio(p, q, token, u):
    """Accepts when u < q / p: the ratio upside down."""
    if u * p[token] < q[token]:
        return True, _one_hot(p, token)
    return False, _residual(p, q)


def accept_residual_q_minus_p(p, q, token, u):
    """Resamples from max(q - p, 0): where the draft wants more, not the target."""
    if u * q[token] < p[token]:
        return True, _one_hot(p, token)
    residual = (q - p).clamp(min=0)
    return False, residual / residual.sum()


def accept_residual_not_normalised(p, q, token, u):
    """max(p - q, 0) without dividing by its sum."""
    if u * q[token] < p[token]:
        return True, _one_hot(p, token)
    return False, (p - q).clamp(min=0)


def accept_resample_from_p(p, q, token, u):
    """On a rejection, resamples from p itself."""
    if u * q[token] < p[token]:
        return True, _one_hot(p, token)
    return False, p.clone()


def accept_ignores_u(p, q, token, u):
    """Accepts exactly when p[token] >= q[token], whatever u."""
    if p[token] >= q[token]:
        return True, _one_hot(p, token)
    return False, _residual(p, q)


def accept_tensor_bool(p, q, token, u):
    """Returns accepted as a 0-dim bool tensor, not a Python bool."""
    accepted = u * q[token] < p[token]
    return accepted, _one_hot(p, token) if accepted else _residual(p, q)


def accept_less_or_equal(p, q, token, u):
    """u <= p / q: accepts at the exact threshold, and a token the target never says when u = 0."""
    if u * q[token] <= p[token]:
        return True, _one_hot(p, token)
    return False, _residual(p, q)


def accept_residual_argmax(p, q, token, u):
    """On a rejection, a one-hot at the residual's most likely token (greedy) instead of the distribution."""
    if u * q[token] < p[token]:
        return True, _one_hot(p, token)
    return False, _one_hot(p, int((p - q).argmax()))


def accept_float32_one_hot(p, q, token, u):
    """Builds the one-hot with torch.zeros(vocab): float32 whatever p's dtype."""
    if u * q[token] < p[token]:
        distribution = torch.zeros(p.shape[0])
        distribution[token] = 1
        return True, distribution
    return False, _residual(p, q)



# --------------------------------------------------------------------------- quantize_layer (the capstone)


def _quantize(w, hessian, bits, *, levels=None, sign=-1.0, damp=0.01, of_inverse=True, spread=True, codes=False, fix_dead=True,
              check=True):
    """GPTQ on one layer, with one thing changed by the arguments; the solution with the defaults."""
    if check:
        if w.dim() != 2 or tuple(hessian.shape) != (w.shape[1], w.shape[1]) or not (isinstance(bits, int) and 2 <= bits <= 8):
            raise ValueError("w should be (out, in), hessian (in, in), bits from 2 to 8")
    w = w.detach().float().clone()
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    if fix_dead:
        h[dead, dead] = 1.0
        w[:, dead] = 0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h)) if of_inverse else h
    u = torch.linalg.cholesky(inverse, upper=True).float()
    top = (levels or 2 ** bits) - 1
    low, high = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
    scale = (high - low) / top
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-low / scale)
    out = torch.empty_like(w)
    for i in range(w.shape[1]):
        c = torch.clamp(torch.round(w[:, i:i + 1] / scale) + zero, 0, top)
        q = scale * (c - zero)
        if spread:
            w[:, i + 1:] += sign * (w[:, i:i + 1] - q) / u[i, i] * u[i:i + 1, i + 1:]
        out[:, i:i + 1] = c if codes else q
    return out


def quantize_round_to_nearest(w, hessian, bits):
    """Round to nearest on the row's grid: the Hessian is not used, no error is spread."""
    return _quantize(w, hessian, bits, spread=False)


def quantize_wrong_sign(w, hessian, bits):
    """Spreads each rounding error with the wrong sign: the later columns drift the wrong way."""
    return _quantize(w, hessian, bits, sign=1.0)


def quantize_factor_of_hessian(w, hessian, bits):
    """Spreads the error with the Cholesky factor of H instead of H^-1."""
    return _quantize(w, hessian, bits, of_inverse=False)


def quantize_twice_the_levels(w, hessian, bits):
    """A grid of 2^(bits+1) levels: one bit more than allowed."""
    return _quantize(w, hessian, bits, levels=2 ** (bits + 1))


def quantize_returns_codes(w, hessian, bits):
    """Returns the integer codes instead of the rounded weights."""
    return _quantize(w, hessian, bits, codes=True)


def quantize_returns_weights(w, hessian, bits):
    """Returns the weights unrounded."""
    if w.dim() != 2 or tuple(hessian.shape) != (w.shape[1], w.shape[1]) or not (isinstance(bits, int) and 2 <= bits <= 8):
        raise ValueError("w should be (out, in), hessian (in, in), bits from 2 to 8")
    return w.detach().float().clone()


def quantize_no_damping(w, hessian, bits):
    """No damping and no care for dead inputs: a singular Hessian breaks the Cholesky factorization."""
    return _quantize(w, hessian, bits, damp=0.0, fix_dead=False)


def quantize_in_float64(w, hessian, bits):
    """Right values, returned in float64."""
    return _quantize(w, hessian, bits).double()


def quantize_without_value_error(w, hessian, bits):
    """Right results, but bits=9 is quantized and a wrong hessian fails inside torch with a RuntimeError."""
    return _quantize(w, hessian, bits, check=False)


def quantize_in_place(w, hessian, bits):
    """Right results, but the learner's weights are overwritten with them."""
    q = _quantize(w, hessian, bits)
    w.copy_(q) if w.dtype == q.dtype else None
    return q


MUTANTS = {
    "test_mask_2_4": {
        f.__name__: f
        for f in (mask_signed, mask_smallest, mask_groups_down_columns, mask_half_of_each_row, mask_as_float,
                  mask_one_per_group, mask_without_value_error, mask_threshold_by_mean, mask_on_cpu)
    },
    "test_wanda_scores": {
        f.__name__: f
        for f in (wanda_squared_norm, wanda_signed, wanda_norm_over_features, wanda_norms_down_rows, wanda_rms,
                  wanda_weight_norm, wanda_l1_norm, wanda_in_float32)
    },
    "test_gptq_column_step": {
        f.__name__: f
        for f in (gptq_no_clamp, gptq_round_half_up, gptq_round_half_away, gptq_no_division_by_diagonal, gptq_wrong_sign,
                  gptq_column_of_u, gptq_updates_earlier_columns, gptq_without_zero_point, gptq_returns_codes,
                  gptq_error_after_rounding, gptq_keeps_column, gptq_in_place)
    },
    "test_distillation_loss": {
        f.__name__: f
        for f in (distill_no_t_squared, distill_kl_reversed, distill_teacher_not_softened, distill_ce_softened,
                  distill_ignored_positions_averaged, distill_summed, distill_alpha_swapped, distill_log_of_softmax,
                  distill_kl_div_mean, distill_default_temperature_1, distill_in_float32, distill_as_float)
    },
    "test_accept_or_resample": {
        f.__name__: f
        for f in (accept_inverted_ratio, accept_residual_q_minus_p, accept_residual_not_normalised, accept_resample_from_p,
                  accept_ignores_u, accept_tensor_bool, accept_less_or_equal, accept_residual_argmax, accept_float32_one_hot)
    },
    "test_quantize_layer": {
        f.__name__: f
        for f in (quantize_round_to_nearest, quantize_wrong_sign, quantize_factor_of_hessian, quantize_twice_the_levels,
                  quantize_returns_codes, quantize_returns_weights, quantize_no_damping, quantize_in_float64,
                  quantize_without_value_error, quantize_in_place)
    },
}
