"""Wrong answers to lesson 09's exercises: bradley_terry_loss, kl_penalized_rewards, gae, dpo_loss, group_advantages,
align_policy."""

import copy

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- bradley_terry_loss


def bt_swapped(chosen_scores, rejected_scores):
    """rejected - chosen: prefers the rejected answers."""
    return -F.logsigmoid(rejected_scores - chosen_scores).mean()


def bt_summed(chosen_scores, rejected_scores):
    """Sums over the batch instead of averaging."""
    return -F.logsigmoid(chosen_scores - rejected_scores).sum()


def bt_unstable(chosen_scores, rejected_scores):
    """log(sigmoid(x)): -inf once sigmoid underflows to 0 (a difference of -600)."""
    return -torch.log(torch.sigmoid(chosen_scores - rejected_scores)).mean()


def bt_maximised(chosen_scores, rejected_scores):
    """Forgets the minus sign: the log-likelihood, not its negative."""
    return F.logsigmoid(chosen_scores - rejected_scores).mean()


def bt_probability(chosen_scores, rejected_scores):
    """1 - P(chosen wins): a loss that goes the right way but is not the likelihood."""
    return (1 - torch.sigmoid(chosen_scores - rejected_scores)).mean()


def bt_as_float(chosen_scores, rejected_scores):
    """Returns a Python float: nothing to backpropagate."""
    return float(-F.logsigmoid(chosen_scores - rejected_scores).mean())


def bt_in_float32(chosen_scores, rejected_scores):
    """Always computes (and returns) float32."""
    return -F.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean()


# --------------------------------------------------------------------------- kl_penalized_rewards


def _last(mask):
    return mask.long().sum(dim=1) - 1


def _rows(mask):
    return torch.arange(mask.shape[0], device=mask.device)


def kl_wrong_sign(scores, logprobs, ref_logprobs, mask, beta):
    """Rewards moving away from the reference: +beta * (logprobs - ref_logprobs)."""
    rewards = beta * (logprobs - ref_logprobs) * mask
    rewards[_rows(mask), _last(mask)] += scores
    return rewards


def kl_score_on_last_column(scores, logprobs, ref_logprobs, mask, beta):
    """The score on column T - 1, wherever the answer ended."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    rewards[:, -1] += scores
    return rewards


def kl_score_on_first_token(scores, logprobs, ref_logprobs, mask, beta):
    """The score on the first answer token."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    rewards[:, 0] += scores
    return rewards


def kl_penalty_on_padding(scores, logprobs, ref_logprobs, mask, beta):
    """The KL penalty on every column, padding included."""
    rewards = -beta * (logprobs - ref_logprobs)
    rewards[_rows(mask), _last(mask)] += scores
    return rewards


def kl_score_on_every_token(scores, logprobs, ref_logprobs, mask, beta):
    """The whole answer's score given to each of its tokens."""
    return (-beta * (logprobs - ref_logprobs) + scores[:, None]) * mask


def kl_absolute(scores, logprobs, ref_logprobs, mask, beta):
    """|log pi - log pi_ref|: a penalty that is never a bonus, unlike the estimator."""
    rewards = -beta * (logprobs - ref_logprobs).abs() * mask
    rewards[_rows(mask), _last(mask)] += scores
    return rewards


def kl_in_place(scores, logprobs, ref_logprobs, mask, beta):
    """Right values, built in logprobs' own storage."""
    rewards = logprobs.sub_(ref_logprobs).mul_(-beta).mul_(mask)
    rewards[_rows(mask), _last(mask)] += scores
    return rewards


def kl_rows_on_cpu(scores, logprobs, ref_logprobs, mask, beta):
    """Indexes with a row index made on the CPU whatever the inputs' device."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = mask.long().sum(dim=1).cpu() - 1
    rewards = rewards.cpu()
    rewards[torch.arange(mask.shape[0]), last] += scores.cpu()
    return rewards


# --------------------------------------------------------------------------- gae


def _gae(rewards, values, mask, gamma, lam, use_mask_for_values=True, recursion_gamma=None):
    m = mask.to(rewards.dtype)
    rewards = rewards * m
    values = values * m if use_mask_for_values else values
    recursion_gamma = gamma if recursion_gamma is None else recursion_gamma
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + recursion_gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def gae_without_lambda(rewards, values, mask, gamma, lam):
    """Ignores lambda (always 1): the Monte-Carlo advantage."""
    return _gae(rewards, values, mask, gamma, 1.0)


def gae_td_error_only(rewards, values, mask, gamma, lam):
    """Only delta_t: the recursion is missing."""
    return _gae(rewards, values, mask, gamma, 0.0)


def gae_without_gamma_in_recursion(rewards, values, mask, gamma, lam):
    """A_t = delta_t + lam * A_{t+1}: gamma only inside delta."""
    return _gae(rewards, values, mask, gamma, lam, recursion_gamma=1.0)


def gae_reads_values_in_padding(rewards, values, mask, gamma, lam):
    """Bootstraps from the value in the padding after the last token instead of 0."""
    return _gae(rewards, values, mask, gamma, lam, use_mask_for_values=False)


def gae_forwards(rewards, values, mask, gamma, lam):
    """Sums from the start of the answer instead of from its end."""
    m = mask.to(rewards.dtype)
    rewards, values = rewards * m, values * m
    advantages = torch.zeros_like(rewards)
    previous = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1]):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(previous)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        previous = (delta + gamma * lam * previous) * m[:, t]
        advantages[:, t] = previous
    return advantages, (advantages + values) * m


def gae_returns_are_advantages(rewards, values, mask, gamma, lam):
    """Returns the advantages twice: the value head's target forgets + V."""
    advantages, _ = _gae(rewards, values, mask, gamma, lam)
    return advantages, advantages


def gae_one_list(rewards, values, mask, gamma, lam):
    """Returns (returns, advantages): the two in the wrong order."""
    advantages, returns = _gae(rewards, values, mask, gamma, lam)
    return returns, advantages


# --------------------------------------------------------------------------- dpo_loss


def dpo_beta_outside(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """beta multiplies the loss instead of the margin inside the sigmoid."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -beta * F.logsigmoid(margin).mean()


def dpo_without_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Forgets beta."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(margin).mean()


def dpo_reference_added(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Adds the reference's log-probabilities instead of subtracting them."""
    margin = (policy_chosen_logps + ref_chosen_logps) - (policy_rejected_logps + ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean()


def dpo_swapped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Rejected minus chosen."""
    margin = (policy_rejected_logps - ref_rejected_logps) - (policy_chosen_logps - ref_chosen_logps)
    return -F.logsigmoid(beta * margin).mean()


def dpo_without_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Forgets the reference model."""
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean()


def dpo_unstable(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """log(sigmoid(x)): -inf for a margin of -5000."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -torch.log(torch.sigmoid(beta * margin)).mean()


def dpo_summed(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Sums over the batch."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).sum()


def dpo_detached(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Right value, detached from the graph: DPO would not train."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean().detach()


# --------------------------------------------------------------------------- group_advantages


def group_population_std(rewards, eps=1e-4):
    """Divides by the population standard deviation (G, not G - 1)."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True, correction=0) + eps)


def group_whole_batch(rewards, eps=1e-4):
    """Normalises over the whole batch, not within each group."""
    return (rewards - rewards.mean()) / (rewards.std() + eps)


def group_centred_only(rewards, eps=1e-4):
    """Subtracts the group mean but does not divide by the standard deviation."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def group_without_eps(rewards, eps=1e-4):
    """No eps: a group whose answers all scored the same gets 0 / 0 = nan."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / rewards.std(dim=1, keepdim=True)


def group_over_columns(rewards, eps=1e-4):
    """Normalises each column (across prompts) instead of each row."""
    return (rewards - rewards.mean(dim=0, keepdim=True)) / (rewards.std(dim=0, keepdim=True) + eps)


def group_eps_in_the_square_root(rewards, eps=1e-4):
    """sqrt(var + eps) instead of std + eps."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / torch.sqrt(rewards.var(dim=1, keepdim=True) + eps)


def group_in_place(rewards, eps=1e-4):
    """Right values, written into the rewards themselves."""
    std = rewards.std(dim=1, keepdim=True)
    return rewards.sub_(rewards.mean(dim=1, keepdim=True)).div_(std + eps)


# --------------------------------------------------------------------------- align_policy


def _dpo(sft_model, tokenizer, comparisons, steps=30, lr=1e-4):
    from course_lib import rlhf

    policy = copy.deepcopy(sft_model)
    rlhf.dpo_train(policy, sft_model, tokenizer, comparisons, steps=steps, beta=0.1, lr=lr, batch_size=16, progress=False)
    return policy


def align_nothing(sft_model, tokenizer, comparisons):
    """Returns the SFT model's weights unchanged: a win rate of exactly 50%."""
    return sft_model.state_dict()


def align_swapped(sft_model, tokenizer, comparisons):
    """Reads the comparisons as (question, rejected, chosen): learns the opposite taste."""
    return _dpo(sft_model, tokenizer, [(q, r, c) for q, c, r in comparisons]).state_dict()


def align_too_far(sft_model, tokenizer, comparisons):
    """Three times the learning rate, five times the steps: short answers, many of them false (reward hacking)."""
    return _dpo(sft_model, tokenizer, comparisons, steps=150, lr=3e-4).state_dict()


def align_returns_model(sft_model, tokenizer, comparisons):
    """Returns the model, not its weights (a model cannot travel back from the grading sandbox)."""
    return _dpo(sft_model, tokenizer, comparisons)


def align_nan_weights(sft_model, tokenizer, comparisons):
    """A training that diverged: nan in a weight."""
    policy = copy.deepcopy(sft_model)
    with torch.no_grad():
        policy.lm_head.weight[0, 0] = float("nan")
    return policy.state_dict()


def align_other_model(sft_model, tokenizer, comparisons):
    """A different checkpoint's weights (course-lm, not the SFT model's shape)."""
    from course_lib.models import load_pretrained

    return load_pretrained("course-lm").state_dict()


MUTANTS = {
    "test_bradley_terry_loss": {
        f.__name__: f
        for f in (bt_swapped, bt_summed, bt_unstable, bt_maximised, bt_probability, bt_as_float, bt_in_float32)
    },
    "test_kl_penalized_rewards": {
        f.__name__: f
        for f in (kl_wrong_sign, kl_score_on_last_column, kl_score_on_first_token, kl_penalty_on_padding,
                  kl_score_on_every_token, kl_absolute, kl_in_place, kl_rows_on_cpu)
    },
    "test_gae": {
        f.__name__: f
        for f in (gae_without_lambda, gae_td_error_only, gae_without_gamma_in_recursion, gae_reads_values_in_padding,
                  gae_forwards, gae_returns_are_advantages, gae_one_list)
    },
    "test_dpo_loss": {
        f.__name__: f
        for f in (dpo_beta_outside, dpo_without_beta, dpo_reference_added, dpo_swapped, dpo_without_reference,
                  dpo_unstable, dpo_summed, dpo_detached)
    },
    "test_group_advantages": {
        f.__name__: f
        for f in (group_population_std, group_whole_batch, group_centred_only, group_without_eps, group_over_columns,
                  group_eps_in_the_square_root, group_in_place)
    },
    "test_align_policy": {
        f.__name__: f
        for f in (align_nothing, align_swapped, align_too_far, align_returns_model, align_nan_weights,
                  align_other_model)
    },
}
