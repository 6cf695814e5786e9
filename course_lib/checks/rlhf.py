"""Checks for the exercises of lesson 09 (RLHF, DPO, GRPO).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs and on
edge cases, compares what comes back with a float64 formula written here, and raises
``AssertionError`` with an explanation when something is off. ``seed`` reproduces a failing run.

The capstone, :func:`check_aligned_policy`, gives the learner's function the SFT model and
labelled comparisons (no facts, no rule), loads the weights that come back into a fresh
model, and measures its answers to questions about people no comparison mentions, with the
hidden rule; :func:`check_aligned_policy_keeps_skills` then asks the same policy sorting
problems drawn at grading time (alignment must not cost the model its other skills).
"""

from __future__ import annotations

import copy
import math

import torch

from course_lib.checks.common import call_explained, call_with_gradients, expect_same_device, expect_tensor, new_generator, randint
from course_lib.checks.guard import Rules, watched

BRADLEY_TERRY = Rules(
    "bradley_terry_loss", references=("course_lib.rlhf:bradley_terry_loss", "course_lib.rlhf:dpo_loss"),
    modules=("course_lib.rlhf", "trl"),
    why="The exercise is to write the Bradley-Terry loss yourself.",
)
KL_REWARDS = Rules(
    "kl_penalized_rewards", references=("course_lib.rlhf:kl_penalized_rewards",), modules=("course_lib.rlhf", "trl"),
    why="The exercise is to build the per-token rewards yourself.",
)
GAE = Rules(
    "gae", references=("course_lib.rlhf:gae",), modules=("course_lib.rlhf", "trl"),
    why="The exercise is to compute generalized advantage estimates yourself.",
)
DPO_LOSS = Rules(
    "dpo_loss", references=("course_lib.rlhf:dpo_loss", "course_lib.rlhf:bradley_terry_loss"),
    modules=("course_lib.rlhf", "trl"),
    why="The exercise is to write the DPO loss yourself.",
)
GROUP_ADVANTAGES = Rules(
    "group_advantages", references=("course_lib.rlhf:group_advantages",), modules=("course_lib.rlhf", "trl"),
    why="The exercise is to normalise the rewards within each group yourself.",
)
_BY_KEYWORD = "; keep the parameter names of the signature in the docstring"
_STABLE = ("; for large differences use torch.nn.functional.logsigmoid (or softplus): log(sigmoid(x)) "
           "underflows to log(0) = -inf")


def _tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}


def _log_sigmoid64(x: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(x)`` in float64 without overflow: ``-log(1 + exp(-x))``, written two ways by sign."""
    x = x.double()
    return torch.where(x >= 0, -torch.log1p(torch.exp(-x.clamp(min=0))), x - torch.log1p(torch.exp(x.clamp(max=0))))


def _expect_gradients(loss_fn, inputs: list[torch.Tensor], reference, what: str, more: tuple = ()) -> None:
    """The learner's loss must be differentiable, with the reference's gradients with respect to every input."""
    report = call_with_gradients(loss_fn, inputs, what, more)
    if not isinstance(report, dict) or report.get("type") != "Tensor" or not report.get("requires_grad"):
        raise AssertionError(f"{what} should return a tensor that gradients flow through (a training loss); "
                             "do not detach it or convert it to a number")
    theirs = [t.detach().double().requires_grad_(True) for t in inputs]
    reference(*theirs).backward()
    grads = report.get("grads")
    for i, t in enumerate(theirs):
        m = grads[i] if isinstance(grads, list) and i < len(grads) else None
        if type(m) is not torch.Tensor or m.shape != t.grad.shape or not torch.allclose(m.double(), t.grad, rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{what}: the gradient with respect to input {i} is wrong "
                                 f"(expected {t.grad.tolist()}, got {m.tolist() if type(m) is torch.Tensor else m})")


# --------------------------------------------------------------------------- the Bradley-Terry loss


def _bt_reference(chosen, rejected):
    return -_log_sigmoid64(chosen.double() - rejected.double()).mean()


def _bt_hint(got, chosen, rejected) -> str:
    if type(got) is not torch.Tensor or got.numel() != 1:
        return ""
    if not torch.isfinite(got).all():
        return "\nHint: " + _STABLE.lstrip("; ") + "."
    c, r = chosen.double(), rejected.double()
    wrong = {"the difference is the wrong way round: it is chosen - rejected": -_log_sigmoid64(r - c).mean(),
             "the loss is summed over the batch; take the mean": -_log_sigmoid64(c - r).sum(),
             "the sign is wrong: minimise -log sigmoid(chosen - rejected)": _log_sigmoid64(c - r).mean()}
    for text, candidate in wrong.items():
        if math.isclose(float(got), float(candidate), rel_tol=1e-4, abs_tol=1e-6):
            return f"\nHint: {text}."
    return ""


def check_bradley_terry_loss(bradley_terry_loss, seed: int | None = None, n_cases: int = 12) -> None:
    """``bradley_terry_loss(chosen_scores, rejected_scores)``: ``mean(-log sigmoid(chosen - rejected))``, a scalar.

    Random batches in float32 and float64 (the loss in the scores' dtype), a batch of one, equal
    scores (log 2), differences of hundreds either way (no inf, no nan), the gradients, a call by
    keyword, the inputs left as they were and their device kept.
    """
    bradley_terry_loss = watched(bradley_terry_loss, BRADLEY_TERRY)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        dtype = (torch.float32, torch.float64)[i % 2]
        b = randint(gen, 1, 40)
        scale = (0.5, 3.0, 10.0)[i % 3]
        cases.append((torch.randn(b, generator=gen, dtype=torch.float64).mul(scale).to(dtype),
                      torch.randn(b, generator=gen, dtype=torch.float64).mul(scale).to(dtype), f"random batch of {b}, {dtype}"))
    same = torch.randn(5, generator=gen)
    cases.append((same, same.clone(), "equal scores (the loss is log 2)"))
    cases.append((torch.tensor([150.0, -300.0, 2.0]), torch.tensor([-150.0, 300.0, 1.0]),
                  "differences of +300 and -600 (exp overflows; the loss must stay finite)"))
    cases.append((torch.tensor([0.7]), torch.tensor([-0.2]), "a batch of one"))
    for chosen, rejected, label in cases:
        what = f"bradley_terry_loss(chosen_scores, rejected_scores) for {label} (seed {seed})"
        got = call_explained(bradley_terry_loss, chosen, rejected, what=what, hint=_STABLE)
        try:
            expect_tensor(got, _bt_reference(chosen, rejected).to(chosen.dtype), what, **_tolerance(chosen.dtype))
        except AssertionError as err:
            raise AssertionError(str(err) + _bt_hint(got, chosen, rejected)) from None
    chosen, rejected = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    _expect_gradients(bradley_terry_loss, [chosen, rejected], _bt_reference,
                      f"bradley_terry_loss's gradients (seed {seed})")
    what = f"bradley_terry_loss(chosen_scores=..., rejected_scores=...) by keyword (seed {seed})"
    got = call_explained(bradley_terry_loss, what=what, hint=_BY_KEYWORD, chosen_scores=chosen, rejected_scores=rejected)
    expect_tensor(got, _bt_reference(chosen, rejected).float(), what, **_tolerance(torch.float32))
    expect_same_device(bradley_terry_loss, chosen, rejected, what="bradley_terry_loss on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- per-token rewards with a KL penalty


def _prefix_mask(gen, b: int, t: int) -> torch.Tensor:
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    return torch.arange(t)[None, :] < lengths[:, None]


def _kl_reference(scores, logprobs, ref_logprobs, mask, beta):
    m = mask.double()
    rewards = -beta * (logprobs.double() - ref_logprobs.double()) * m
    last = mask.long().sum(dim=1) - 1
    rewards[torch.arange(mask.shape[0]), last] += scores.double()
    return rewards


def _kl_hint(got, scores, logprobs, ref_logprobs, mask, beta) -> str:
    if type(got) is not torch.Tensor or got.shape != mask.shape:
        return ""
    m = mask.double()
    kl = -beta * (logprobs.double() - ref_logprobs.double()) * m
    wrong = {
        "the KL term has the wrong sign: the reward is -beta * (logprobs - ref_logprobs)":
            _kl_reference(scores, logprobs, ref_logprobs, mask, -beta),
        "the score goes on the last answer token (the last True of the mask), not on the last column":
            kl + torch.nn.functional.pad(scores.double()[:, None], (mask.shape[1] - 1, 0)),
        "the score goes on the last answer token, not the first": kl + torch.nn.functional.pad(scores.double()[:, None],
                                                                                              (0, mask.shape[1] - 1)),
        "the penalty applies to answer tokens only: zero where the mask is False":
            -beta * (logprobs.double() - ref_logprobs.double()) + (_kl_reference(scores, logprobs, ref_logprobs, mask, beta) - kl),
    }
    for text, candidate in wrong.items():
        if torch.allclose(got.double(), candidate, rtol=1e-4, atol=1e-5):
            return f"\nHint: {text}."
    return ""


def check_kl_penalized_rewards(kl_penalized_rewards, seed: int | None = None, n_cases: int = 12) -> None:
    """``kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, beta)``: ``-beta * (logprobs - ref_logprobs)`` on
    each answer token, plus ``scores`` on each row's last answer token; zero where ``mask`` is False.

    Random batches and answer lengths (one token; the whole row, an answer cut at the length
    limit), float32 and float64, ``beta = 0``, nonzero log-probabilities where the mask is False
    (they must not leak), a call by keyword, the inputs left as they were and their device kept.
    """
    kl_penalized_rewards = watched(kl_penalized_rewards, KL_REWARDS)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        dtype = (torch.float32, torch.float64)[i % 2]
        b, t = randint(gen, 1, 6), randint(gen, 1, 9)
        mask = _prefix_mask(gen, b, t)
        if i % 3 == 0:
            mask[0] = True                                           # an answer cut at the length limit
        beta = (0.1, 0.0, 0.05, 1.0)[i % 4]
        logprobs = -torch.rand(b, t, generator=gen, dtype=torch.float64).mul(5).to(dtype)
        ref_logprobs = -torch.rand(b, t, generator=gen, dtype=torch.float64).mul(5).to(dtype)
        scores = torch.randn(b, generator=gen, dtype=torch.float64).to(dtype)
        cases.append((scores, logprobs, ref_logprobs, mask, beta, f"{b} answers of up to {t} tokens, beta={beta}, {dtype}"))
    mask = torch.tensor([[True, False, False], [True, True, True]])
    cases.append((torch.tensor([2.0, -1.0]), torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]]),
                  torch.tensor([[-1.5, -0.5, -0.1], [-0.5, -1.0, -2.0]]), mask, 0.5,
                  "a one-token answer and an answer that fills the row"))
    for scores, logprobs, ref_logprobs, mask, beta, label in cases:
        what = f"kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, beta) for {label} (seed {seed})"
        got = call_explained(kl_penalized_rewards, scores, logprobs, ref_logprobs, mask, beta, what=what)
        expected = _kl_reference(scores, logprobs, ref_logprobs, mask, beta).to(logprobs.dtype)
        try:
            expect_tensor(got, expected, what, **_tolerance(logprobs.dtype))
        except AssertionError as err:
            raise AssertionError(f"{err}\nmask:\n{mask.int()}" + _kl_hint(got, scores, logprobs, ref_logprobs, mask, beta)) from None
    scores, logprobs, ref_logprobs, mask, beta, _ = cases[0]
    what = f"kl_penalized_rewards(scores=..., logprobs=..., ref_logprobs=..., mask=..., beta=...) by keyword (seed {seed})"
    got = call_explained(kl_penalized_rewards, what=what, hint=_BY_KEYWORD, scores=scores, logprobs=logprobs,
                         ref_logprobs=ref_logprobs, mask=mask, beta=beta)
    expect_tensor(got, _kl_reference(scores, logprobs, ref_logprobs, mask, beta).to(logprobs.dtype), what,
                  **_tolerance(logprobs.dtype))
    expect_same_device(kl_penalized_rewards, scores.float(), logprobs.float(), ref_logprobs.float(), mask, beta,
                       what="kl_penalized_rewards on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- generalized advantage estimation


def _gae_reference(rewards, values, mask, gamma, lam, bootstrap_from_padding=False):
    """A plain loop in float64, one answer at a time. ``bootstrap_from_padding``: the usual mistake of reading the
    value after the last token from the padding instead of taking 0 (for the hint)."""
    advantages = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            inside = t + 1 < (rewards.shape[1] if bootstrap_from_padding else n)
            next_value = float(values[b, t + 1]) if inside else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            advantages[b, t] = running
    returns = (advantages + values.double()) * mask
    return advantages, returns


def _gae_hint(got, rewards, values, mask, gamma, lam) -> str:
    if not isinstance(got, tuple) or len(got) != 2 or type(got[0]) is not torch.Tensor or got[0].shape != mask.shape:
        return ""
    adv = got[0].double()
    wrong = {
        "lambda is missing: A_t = delta_t + gamma * lam * A_{t+1}": _gae_reference(rewards, values, mask, gamma, 1.0)[0],
        "gamma is missing from the recursion: A_t = delta_t + gamma * lam * A_{t+1}":
            _gae_reference(rewards, values, mask, 1.0, lam)[0] if gamma != 1 else None,
        "only delta_t came back: add gamma * lam * A_{t+1}, summing backwards": _gae_reference(rewards, values, mask, gamma, 0.0)[0],
    }
    for text, candidate in wrong.items():
        if candidate is not None and torch.allclose(adv, candidate, rtol=1e-4, atol=1e-5):
            return f"\nHint: {text}."
    if not mask.all() and any(torch.allclose(adv * mask, candidate * mask, rtol=1e-4, atol=1e-5) for candidate in (
            _gae_reference(rewards, values, torch.ones_like(mask), gamma, lam)[0],
            _gae_reference(rewards, values, mask, gamma, lam, bootstrap_from_padding=True)[0])):
        return "\nHint: the value after an answer's last token is 0: do not read values (or rewards) where the mask is False."
    return ""


def check_gae(gae, seed: int | None = None, n_cases: int = 12) -> None:
    """``gae(rewards, values, mask, gamma, lam)`` -> ``(advantages, returns)``: generalized advantage estimation.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` (V after an answer's last token is 0), ``A_t = delta_t +
    gamma lam A_{t+1}``, ``returns = A + V``; zero where ``mask`` is False. Random answers of
    different lengths (one token; the whole row), ``lam`` 0, 0.95 and 1, ``gamma`` 1 and below 1,
    rewards and values that are not zero where the mask is False (they must be ignored), float32 and
    float64, a call by keyword, the inputs left as they were and their device kept.
    """
    gae = watched(gae, GAE)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        dtype = (torch.float32, torch.float64)[i % 2]
        b, t = randint(gen, 1, 5), randint(gen, 1, 8)
        mask = _prefix_mask(gen, b, t)
        gamma, lam = ((1.0, 0.95), (0.9, 0.95), (1.0, 0.0), (1.0, 1.0), (0.99, 0.5))[i % 5]
        rewards = torch.randn(b, t, generator=gen, dtype=torch.float64).to(dtype)
        values = torch.randn(b, t, generator=gen, dtype=torch.float64).to(dtype)
        cases.append((rewards, values, mask, gamma, lam, f"{b} answers of up to {t} tokens, gamma={gamma}, lam={lam}, {dtype}"))
    cases.append((torch.tensor([[0.0, 0.0, 1.0], [2.0, 5.0, 5.0]]), torch.tensor([[0.5, 0.2, 0.1], [1.0, 9.0, 9.0]]),
                  torch.tensor([[True, True, True], [True, False, False]]), 1.0, 0.95,
                  "an answer that fills the row and a one-token answer followed by padding holding 5s and 9s"))
    for rewards, values, mask, gamma, lam, label in cases:
        what = f"gae(rewards, values, mask, gamma={gamma}, lam={lam}) for {label} (seed {seed})"
        got = call_explained(gae, rewards, values, mask, gamma, lam, what=what)
        expected = _gae_reference(rewards, values, mask, gamma, lam)
        try:
            if not isinstance(got, tuple) or len(got) != 2:
                raise AssertionError(f"{what} should return a tuple (advantages, returns), got {type(got).__name__}")
            expect_tensor(got[0], expected[0].to(rewards.dtype), what + ", advantages", **_tolerance(rewards.dtype))
            expect_tensor(got[1], expected[1].to(rewards.dtype), what + ", returns", **_tolerance(rewards.dtype))
        except AssertionError as err:
            raise AssertionError(f"{err}\nmask:\n{mask.int()}" + _gae_hint(got, rewards, values, mask, gamma, lam)) from None
    rewards, values, mask, gamma, lam, _ = cases[0]
    what = f"gae(rewards=..., values=..., mask=..., gamma=..., lam=...) by keyword (seed {seed})"
    got = call_explained(gae, what=what, hint=_BY_KEYWORD, rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam)
    if not isinstance(got, tuple) or len(got) != 2:
        raise AssertionError(f"{what} should return a tuple (advantages, returns)")
    expect_tensor(got[0], _gae_reference(rewards, values, mask, gamma, lam)[0].to(rewards.dtype), what, **_tolerance(rewards.dtype))

    def advantages_only(*args):
        return gae(*args)[0]

    expect_same_device(advantages_only, rewards.float(), values.float(), mask, gamma, lam,
                       what="gae on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- the DPO loss


def _dpo_reference(pc, pr, rc, rr, beta):
    return -_log_sigmoid64(beta * ((pc.double() - rc.double()) - (pr.double() - rr.double()))).mean()


def _dpo_hint(got, pc, pr, rc, rr, beta) -> str:
    if type(got) is not torch.Tensor or got.numel() != 1:
        return ""
    if not torch.isfinite(got).all():
        return "\nHint: " + _STABLE.lstrip("; ") + "."
    wrong = {
        "beta multiplies the difference of the two log-ratios inside the sigmoid": _dpo_reference(pc, pr, rc, rr, 1.0),
        "the log-ratios are policy - reference (the reference is subtracted, not added)":
            -_log_sigmoid64(beta * ((pc.double() + rc.double()) - (pr.double() + rr.double()))).mean(),
        "the chosen and rejected answers are swapped": _dpo_reference(pr, pc, rr, rc, beta),
        "the loss is summed over the batch; take the mean": _dpo_reference(pc, pr, rc, rr, beta) * pc.numel(),
        "the reference model is missing: DPO compares log-ratios to the reference":
            -_log_sigmoid64(beta * (pc.double() - pr.double())).mean(),
    }
    for text, candidate in wrong.items():
        if math.isclose(float(got), float(candidate), rel_tol=1e-4, abs_tol=1e-6):
            return f"\nHint: {text}."
    return ""


def check_dpo_loss(dpo_loss, seed: int | None = None, n_cases: int = 12) -> None:
    """``dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)``:
    ``mean(-log sigmoid(beta * ((pc - rc) - (pr - rr))))``, a scalar.

    Random batches of answer log-probabilities (tens to thousands below zero) in float32 and
    float64, several betas, the policy equal to the reference (log 2), margins of thousands (no inf,
    no nan), a batch of one, the gradients, a call by keyword, the inputs left as they were and
    their device kept.
    """
    dpo_loss = watched(dpo_loss, DPO_LOSS)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        dtype = (torch.float32, torch.float64)[i % 2]
        b = randint(gen, 1, 24)
        scale = (5.0, 30.0, 200.0)[i % 3]
        logps = [-torch.rand(b, generator=gen, dtype=torch.float64).mul(scale).to(dtype) for _ in range(4)]
        beta = (0.1, 0.5, 0.01, 1.0)[i % 4]
        cases.append((*logps, beta, f"a batch of {b}, log-probabilities down to -{scale:g}, beta={beta}, {dtype}"))
    ref_c, ref_r = -torch.rand(4, generator=gen) * 20, -torch.rand(4, generator=gen) * 20
    cases.append((ref_c.clone(), ref_r.clone(), ref_c, ref_r, 0.1, "the policy equal to the reference (the loss is log 2)"))
    cases.append((torch.tensor([-1.0, -5000.0]), torch.tensor([-5000.0, -1.0]), torch.tensor([-3.0, -3.0]),
                  torch.tensor([-3.0, -3.0]), 1.0, "log-ratio margins of +5000 and -5000 (the loss must stay finite)"))
    cases.append((torch.tensor([-2.0]), torch.tensor([-4.0]), torch.tensor([-2.5]), torch.tensor([-3.0]), 0.1, "a batch of one"))
    for pc, pr, rc, rr, beta, label in cases:
        what = f"dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) for {label} (seed {seed})"
        got = call_explained(dpo_loss, pc, pr, rc, rr, beta, what=what, hint=_STABLE)
        try:
            expect_tensor(got, _dpo_reference(pc, pr, rc, rr, beta).to(pc.dtype), what, **_tolerance(pc.dtype))
        except AssertionError as err:
            raise AssertionError(str(err) + _dpo_hint(got, pc, pr, rc, rr, beta)) from None
    pc, pr, rc, rr = (-torch.rand(5, generator=gen) * 10 for _ in range(4))
    _expect_gradients(dpo_loss, [pc, pr, rc, rr], lambda a, b, c, d: _dpo_reference(a, b, c, d, 0.3),
                      f"dpo_loss's gradients, beta=0.3 (seed {seed})", more=(0.3,))
    what = ("dpo_loss(policy_chosen_logps=..., policy_rejected_logps=..., ref_chosen_logps=..., ref_rejected_logps=..., "
            f"beta=...) by keyword (seed {seed})")
    got = call_explained(dpo_loss, what=what, hint=_BY_KEYWORD, policy_chosen_logps=pc, policy_rejected_logps=pr,
                         ref_chosen_logps=rc, ref_rejected_logps=rr, beta=0.3)
    expect_tensor(got, _dpo_reference(pc, pr, rc, rr, 0.3).float(), what, **_tolerance(torch.float32))
    expect_same_device(dpo_loss, pc, pr, rc, rr, 0.3, what="dpo_loss on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- group-relative advantages


def _group_reference(rewards, eps):
    r = rewards.double()
    return (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)


def _group_hint(got, rewards, eps) -> str:
    if type(got) is not torch.Tensor or got.shape != rewards.shape:
        return ""
    r = rewards.double()
    wrong = {
        "the standard deviation is torch.std's, with Bessel's correction (divide by G - 1)":
            (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True, correction=0) + eps),
        "normalise within each group (each row), not over the whole batch": (r - r.mean()) / (r.std() + eps),
        "divide by the group's standard deviation as well": r - r.mean(dim=1, keepdim=True),
    }
    for text, candidate in wrong.items():
        if torch.allclose(got.double(), candidate, rtol=1e-4, atol=1e-5):
            return f"\nHint: {text}."
    return ""


def check_group_advantages(group_advantages, seed: int | None = None, n_cases: int = 12) -> None:
    """``group_advantages(rewards, eps=1e-4)``: ``(r - mean) / (std + eps)`` within each row (group), ``torch.std``'s
    standard deviation (Bessel's correction).

    Random groups of 2 to 16 answers, exact-match rewards (0 or 1) and real-valued ones, float32 and
    float64, groups whose answers all scored the same (advantages 0, no nan), a single group, a
    different ``eps``, a call by keyword, the input left as it was and its device kept.
    """
    group_advantages = watched(group_advantages, GROUP_ADVANTAGES)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        dtype = (torch.float32, torch.float64)[i % 2]
        n, g = randint(gen, 1, 6), randint(gen, 2, 16)
        if i % 3 == 0:
            rewards = torch.randn(n, g, generator=gen, dtype=torch.float64).mul(3).to(dtype)
        else:
            rewards = (torch.rand(n, g, generator=gen) < 0.4).to(dtype)
        cases.append((rewards, 1e-4, f"{n} groups of {g}, {dtype}"))
    cases.append((torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), 1e-4,
                  "groups all right, all wrong, and one right of four"))
    cases.append((torch.tensor([[0.0, 1.0]]), 1e-4, "a single group of two"))
    cases.append((torch.tensor([[2.0, 4.0, 9.0]]), 0.5, "eps=0.5"))
    for rewards, eps, label in cases:
        what = f"group_advantages(rewards, eps={eps}) for {label} (seed {seed})"
        got = call_explained(group_advantages, rewards, eps, what=what)
        try:
            expect_tensor(got, _group_reference(rewards, eps).to(rewards.dtype), what, **_tolerance(rewards.dtype))
        except AssertionError as err:
            raise AssertionError(f"{err}\nrewards:\n{rewards}" + _group_hint(got, rewards, eps)) from None
    rewards = (torch.rand(3, 8, generator=gen) < 0.5).float()
    what = f"group_advantages(rewards) with the default eps (seed {seed})"
    expect_tensor(call_explained(group_advantages, rewards, what=what), _group_reference(rewards, 1e-4).float(), what,
                  **_tolerance(torch.float32))
    what = f"group_advantages(rewards=..., eps=...) by keyword (seed {seed})"
    got = call_explained(group_advantages, what=what, hint=_BY_KEYWORD, rewards=rewards, eps=1e-3)
    expect_tensor(got, _group_reference(rewards, 1e-3).float(), what, **_tolerance(torch.float32))
    expect_same_device(group_advantages, rewards, 1e-4, what="group_advantages on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- the capstone: align_policy

#: What the capstone asks of the aligned policy on the held-out people.
MIN_WIN_RATE = 0.55
MAX_TRUTH_LOSS = 0.05


def _policy_model(weights, what: str):
    """A fresh DecoderLM of the SFT model's shape holding the learner's weights, or an AssertionError that says why not.

    The weights come as a state dict: a model cannot travel back from a grading sandbox, its tensors can.
    """
    from course_lib import rlhf
    from course_lib.models import DecoderLM

    sft = rlhf.load_sft()
    if not isinstance(weights, dict):
        raise AssertionError(f"{what} should return the aligned policy's weights, policy.state_dict() (a dict of "
                             f"tensors), got {type(weights).__name__}")
    expected = sft.state_dict()
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise AssertionError(f"{what}: the weights should be the SFT model's parameters (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}); return policy.state_dict() of a copy of sft_model")
    for name, value in weights.items():
        if type(value) is not torch.Tensor or value.dtype != torch.float32 or value.shape != expected[name].shape \
                or not torch.isfinite(value).all():
            raise AssertionError(f"{what}: {name!r} should be a finite float32 tensor of shape "
                                 f"{tuple(expected[name].shape)}")
    fresh = DecoderLM(sft.config)
    fresh.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
    return fresh.eval(), sft


def check_aligned_policy(align_policy, seed: int | None = 0, noise: float = 0.1) -> tuple:
    """``align_policy(sft_model, tokenizer, comparisons) -> weights``: align the SFT model with the annotators' taste.

    ``comparisons`` are ``(question, chosen, rejected)`` tuples about the training people,
    labelled by the hidden rule with ``noise`` of the labels flipped (drawn from ``seed``).
    ``sft_model`` is a fresh copy of the lesson's SFT model (change it or copy it). The weights that
    come back (the policy's ``state_dict()``) are loaded into a fresh model, asked, greedily,
    every question about the held-out people, whom no comparison mentions. It passes when the rule
    prefers its answers to the SFT model's at least ``MIN_WIN_RATE`` of the time (ties count a
    half) and it loses at most ``MAX_TRUTH_LOSS`` of the SFT model's true answers. Returns
    ``(weights, measurements)``: the weights for :func:`check_aligned_policy_keeps_skills`.

    Not watched: the capstone may use the whole library (``course_lib.rlhf`` is meant for it), and
    the watch would make its training many times slower. The comparisons carry no facts and no
    flags; an answer that reads the world's facts (``course_lib.data``) instead of learning from
    the comparisons is for the instructor's reading of the code to find.
    """
    from course_lib import rlhf
    from course_lib.tokenizer import course_tokenizer

    _, seed = new_generator(seed)
    data = rlhf.preference_data(noise=noise, seed=seed)
    comparisons = [(p.question, p.chosen, p.rejected) for p in data["train"]]
    tokenizer = course_tokenizer(0)
    what = f"align_policy(sft_model, tokenizer, comparisons) ({len(comparisons):,} comparisons drawn with seed {seed})"
    weights = call_explained(align_policy, rlhf.load_sft(), copy.deepcopy(tokenizer), comparisons, what=what)
    model, sft = _policy_model(weights, what)
    facts = rlhf.question_facts()["heldout"]
    judge = rlhf.Judge.against(sft, tokenizer, facts)
    result = judge.evaluate(model)
    sft_truthful = rlhf.truthful_rate(judge.baseline, facts)
    result["sft_truthful"] = sft_truthful
    if result["truthful"] < sft_truthful - MAX_TRUTH_LOSS:
        raise AssertionError(
            f"{what}: the policy's answers are true {result['truthful']:.0%} of the time on the held-out people, the SFT "
            f"model's {sft_truthful:.0%}; at most {MAX_TRUTH_LOSS:.0%} may be lost (mean length {result['words']:.1f} "
            "words). Being short has paid more than being right: keep the policy closer to the SFT model (a larger "
            "beta, fewer steps or a smaller learning rate), and check that chosen and rejected are not swapped.")
    if result["win_rate"] < MIN_WIN_RATE:
        raise AssertionError(
            f"{what}: the rule prefers the policy's answers to the SFT model's {result['win_rate']:.1%} of the time "
            f"(mean length {result['words']:.1f} words); at least {MIN_WIN_RATE:.0%} is needed. Train longer or with a "
            "larger learning rate.")
    return weights, result


#: How much of the SFT model's sorting skill the aligned policy may lose.
MAX_SKILL_LOSS = 0.10


def check_aligned_policy_keeps_skills(weights, seed: int | None = None, n_problems: int = 100) -> dict:
    """The policy's weights that :func:`check_aligned_policy` passed, asked ``n_problems`` held-out sorting problems drawn now
    (fresh with ``seed=None``) next to the SFT model: it passes when its exact-match accuracy is at most
    ``MAX_SKILL_LOSS`` below the SFT model's on the same problems. Returns both accuracies."""
    import random

    from course_lib import rlhf
    from course_lib.tokenizer import course_tokenizer

    _, seed = new_generator(seed)
    what = f"the policy of align_policy, on {n_problems} sorting problems drawn with seed {seed}"
    model, sft = _policy_model(weights, what)
    heldout = rlhf.verifiable_tasks(n_heldout=10_000)["sorting"]["heldout"]
    problems = random.Random(f"check/skills/{seed}").sample(heldout, min(n_problems, len(heldout)))
    tokenizer = course_tokenizer(0)
    result = {"policy": rlhf.verifiable_accuracy(model, tokenizer, problems),
              "sft": rlhf.verifiable_accuracy(sft, tokenizer, problems)}
    if result["policy"] < result["sft"] - MAX_SKILL_LOSS:
        instruction, answer = problems[0]
        raise AssertionError(
            f"{what}: the policy sorts {result['policy']:.0%} of them exactly, the SFT model {result['sft']:.0%}; at most "
            f"{MAX_SKILL_LOSS:.0%} may be lost (for example {instruction!r} should give {answer!r}). Alignment on questions "
            "has overwritten another skill: keep the policy closer to the SFT model.")
    return result
