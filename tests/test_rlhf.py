"""course_lib.rlhf: the hidden rule and the preference data, log-probabilities, the reward model, PPO's pieces, DPO
(equal to trl's), GRPO's advantages, short training runs, and the committed SFT model and long runs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import rlhf
from course_lib.data import Fact, build_corpus
from course_lib.finetune import encode_pair
from course_lib.models import DecoderConfig, DecoderLM
from course_lib.tokenizer import EOS_ID, PAD_ID, course_tokenizer

FACT = Fact("Dudai Fahas", "lives_in", "Ladror")


@pytest.fixture(scope="module")
def tokenizer():
    return course_tokenizer(0)


@pytest.fixture(scope="module")
def data():
    return rlhf.preference_data()


@pytest.fixture(scope="module")
def sft():
    return rlhf.load_sft()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    torch.manual_seed(0)
    return DecoderLM(DecoderConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   d_ff=64, max_seq_len=128)).eval()


def a_city_other_than(obj: str) -> str:
    return next(c for c in rlhf.relation_values()["lives_in"] if c != obj)


# --------------------------------------------------------------------------- the hidden rule


def test_an_answer_is_true_when_it_names_the_value_and_no_other_value_of_the_relation():
    other = a_city_other_than("Ladror")
    assert "Ladror" in rlhf.relation_values()["lives_in"]
    assert rlhf.is_true(FACT, "Ladror") and rlhf.is_true(FACT, "Dudai Fahas lives in Ladror.")
    assert not rlhf.is_true(FACT, "") and not rlhf.is_true(FACT, other)
    assert not rlhf.is_true(FACT, f"Ladror or {other}")


def test_the_rule_orders_the_four_answer_styles_best_first_and_ties_count_a_half():
    styles = list(rlhf.answer_styles(FACT, a_city_other_than("Ladror")).values())
    assert styles[0] == "Ladror" and styles[1].endswith("Ladror.")
    for i in range(4):
        for j in range(4):
            expected = 0.5 if i == j else 1.0 if i < j else 0.0
            assert rlhf.rule_prefers(FACT, styles[i], styles[j]) == expected
    assert rlhf.rule_key(FACT, "Dudai Fahas lives in Ladror.") == (1, -5)


def test_the_preference_splits_are_by_person_and_the_held_out_people_are_lesson_02s(data):
    facts = rlhf.question_facts()
    people = {split: {f.subject for f in fs} for split, fs in facts.items()}
    assert not people["train"] & people["validation"] and not people["train"] & people["heldout"]
    assert not people["validation"] & people["heldout"]
    assert people["heldout"] == set(build_corpus(0).heldout_people)
    for split, pairs in data.items():
        assert len(pairs) == 6 * len(facts[split])
        assert {p.fact.subject for p in pairs} == people[split]
    assert {len(v) for v in data.values()} == {3456, 384, 960}


def test_each_label_agrees_with_the_rule_unless_it_was_flipped_and_the_noise_rate_is_as_stated(data):
    pairs = [p for split in data.values() for p in split]
    for p in pairs:
        assert rlhf.rule_prefers(p.fact, p.chosen, p.rejected) == (0.0 if p.flipped else 1.0)
        assert p.question == rlhf.question(p.fact)
    rate = sum(p.flipped for p in pairs) / len(pairs)
    assert abs(rate - 0.1) < 3 * math.sqrt(0.1 * 0.9 / len(pairs))       # 4,800 labels: within three standard errors
    assert not any(p.flipped for p in rlhf.preference_data(noise=0.0)["train"])
    kinds = {p.kind.split(" ")[1] for p in data["train"]}
    assert kinds == {"(same)", "(other)"}


def test_the_preference_data_is_reproducible_and_checks_its_noise(data):
    assert rlhf.preference_data(seed=0)["validation"] == data["validation"]
    assert rlhf.preference_data(seed=1)["validation"] != data["validation"]
    for bad in (0.5, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"noise must be a probability in \[0, 0.5\)"):
            rlhf.preference_data(noise=bad)


# --------------------------------------------------------------------------- sequences and log-probabilities


def test_encode_answers_is_the_chat_format_with_the_answer_and_eos_masked_in(tokenizer):
    ids, mask = rlhf.encode_answers(tokenizer, ["Where does Dudai Fahas live?", "sort: 3 1 ->"], ["Ladror", "1 3"])
    for row, (q, a) in enumerate([("Where does Dudai Fahas live?", "Ladror"), ("sort: 3 1 ->", "1 3")]):
        seq, prompt_length = encode_pair(tokenizer, q, a)
        assert ids[row, : len(seq)].tolist() == seq and (ids[row, len(seq):] == PAD_ID).all()
        assert mask[row].nonzero().squeeze(1).tolist() == list(range(prompt_length, len(seq)))
        assert ids[row, len(seq) - 1] == EOS_ID
    with pytest.raises(ValueError, match="as many questions as answers"):
        rlhf.encode_answers(tokenizer, ["q"], ["a", "b"])


def test_sequence_logprobs_sum_the_answer_tokens_and_do_not_depend_on_padding(tokenizer, tiny):
    ids, mask = rlhf.encode_answers(tokenizer, ["Where does Dudai Fahas live?"] * 2, ["Ladror", "Dudai Fahas lives in Ladror."])
    got = rlhf.sequence_logprobs(tiny, ids, mask)
    logp = torch.log_softmax(tiny(ids).float(), dim=-1)
    for row in range(2):
        expected = sum(float(logp[row, t - 1, ids[row, t]].detach()) for t in range(1, ids.shape[1]) if mask[row, t])
        assert math.isclose(float(got[row]), expected, rel_tol=1e-5)
    alone = rlhf.sequence_logprobs(tiny, *rlhf.encode_answers(tokenizer, ["Where does Dudai Fahas live?"], ["Ladror"]))
    assert torch.allclose(alone, got[:1], atol=1e-5)                      # the short row, without its padding
    with pytest.raises(ValueError, match="mask must be bool with the shape of ids"):
        rlhf.sequence_logprobs(tiny, ids, mask.long())


def test_the_reward_model_starts_at_zero_and_reads_the_last_real_token(tokenizer, tiny):
    model = rlhf.RewardModel(copy.deepcopy(tiny))
    ids, _ = rlhf.encode_answers(tokenizer, ["Where does Dudai Fahas live?"] * 2, ["Ladror", "Dudai Fahas lives in Ladror."])
    assert torch.equal(model(ids), torch.zeros(2))
    torch.nn.init.normal_(model.head.weight)
    padded = torch.cat([ids, torch.full((2, 5), PAD_ID)], dim=1)
    assert torch.allclose(model(ids), model(padded), atol=1e-5)
    hidden = tiny.hidden_states(ids)
    last = (ids != PAD_ID).sum(dim=1) - 1
    assert torch.allclose(model(ids), model.head(hidden[torch.arange(2), last]).squeeze(-1), atol=1e-6)


# --------------------------------------------------------------------------- the losses and PPO's pieces, by hand


def test_the_bradley_terry_loss_is_the_negative_log_likelihood_of_the_labels():
    chosen, rejected = torch.tensor([2.0, 0.0, 500.0, -500.0]), torch.tensor([0.0, 0.0, -500.0, 500.0])
    losses = [math.log1p(math.exp(-2.0)), math.log(2), 0.0, 1000.0]
    assert math.isclose(float(rlhf.bradley_terry_loss(chosen, rejected)), sum(losses) / 4, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"must both be \(B,\)"):
        rlhf.bradley_terry_loss(torch.zeros(3), torch.zeros(4))


def test_kl_penalized_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0], dtype=torch.float64)
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -0.5, -0.1], [-0.5, -1.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    got = rlhf.kl_penalized_rewards(scores, logprobs, ref, mask, 0.5)
    expected = torch.tensor([[-0.25, 0.75 + 2.0, 0.0], [0.0, -0.375, 1.0 - 1.0]], dtype=torch.float64)
    assert got.dtype == torch.float64 and torch.allclose(got, expected)
    with pytest.raises(ValueError, match=r"mask must be a \(B, T\) bool tensor"):
        rlhf.kl_penalized_rewards(scores, logprobs, ref, mask.float(), 0.5)
    with pytest.raises(ValueError, match=r"scores must be \(2,\)"):
        rlhf.kl_penalized_rewards(scores[:1], logprobs, ref, mask, 0.5)


def test_gae_with_lambda_one_is_the_return_minus_the_value_and_with_lambda_zero_the_td_error():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    values = torch.tensor([[0.5, 0.25, 1.0, 7.0]])
    mask = torch.tensor([[True, True, True, False]])
    advantages, returns = rlhf.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    monte_carlo = torch.tensor([[1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0, 0.0]])
    assert torch.allclose(advantages, monte_carlo - values * mask)
    assert torch.allclose(returns, monte_carlo)
    advantages, _ = rlhf.gae(rewards, values, mask, gamma=0.9, lam=0.0)
    assert torch.allclose(advantages, torch.tensor([[1 + 0.9 * 0.25 - 0.5, 2 + 0.9 * 1.0 - 0.25, 3 - 1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"values must be a float tensor of shape \(1, 4\)"):
        rlhf.gae(rewards, values[:, :3], mask)


def test_the_ppo_loss_is_minus_the_advantage_at_ratio_one_and_stops_pushing_past_the_clip():
    mask = torch.tensor([[True, True, False]])
    advantages = torch.tensor([[1.0, -2.0, 5.0]])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    loss = rlhf.ppo_policy_loss(logprobs, logprobs.detach(), advantages, mask, clip=0.2)
    assert math.isclose(float(loss), -(1.0 - 2.0) / 2)
    pushed = torch.tensor([[math.log(1.5) - 1.0, -1.0, -1.0]], requires_grad=True)   # ratio 1.5 on token 0, A > 0
    rlhf.ppo_policy_loss(pushed, logprobs.detach(), advantages, mask, clip=0.2).backward()
    assert pushed.grad[0, 0] == 0 and pushed.grad[0, 1] != 0 and pushed.grad[0, 2] == 0


def test_whiten_gives_mean_zero_and_variance_one_over_the_mask():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    w = rlhf.whiten(x, mask)
    assert abs(float(w[mask].mean())) < 1e-6 and math.isclose(float(w[mask].std()), 1.0, rel_tol=1e-6)
    assert w[0, 2] == 0


def test_the_dpo_loss_is_bradley_terry_on_the_implicit_rewards_and_log_2_at_the_start():
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(6, generator=gen) * 20 for _ in range(4))
    beta = 0.3
    assert torch.allclose(rlhf.dpo_loss(pc, pr, rc, rr, beta), rlhf.bradley_terry_loss(beta * (pc - rc), beta * (pr - rr)))
    assert math.isclose(float(rlhf.dpo_loss(rc, rr, rc, rr, beta)), math.log(2), rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"must all be \(B,\)"):
        rlhf.dpo_loss(pc, pr[:3], rc, rr)


def test_the_course_dpo_loss_equals_trls_dpo_trainer_on_the_same_pairs(tokenizer, sft, data):
    """trl's DPOTrainer tokenizes the pairs itself (with the checkpoint's chat template) and runs transformers' Llama."""
    policy = copy.deepcopy(sft)
    rlhf.dpo_train(policy, sft, tokenizer, data["train"], steps=3, batch_size=8, progress=False)
    pairs = data["validation"][:12]
    ours = rlhf.pairs_dpo_loss(policy, sft, tokenizer, pairs, beta=0.1)
    theirs = rlhf.trl_dpo_loss(policy, sft, pairs, beta=0.1)
    assert abs(float(ours) - math.log(2)) > 1e-3                       # the policy has moved: a real comparison
    assert torch.allclose(ours, theirs.float(), atol=1e-5), (float(ours), float(theirs))
    assert not torch.allclose(rlhf.pairs_dpo_loss(policy, sft, tokenizer, pairs, beta=0.5), theirs, atol=1e-4)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = rlhf.group_advantages(rewards)
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)                     # Bessel's correction: divide by G - 1 = 3
    assert torch.allclose(got[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert torch.equal(got[1], torch.zeros(4))
    for bad in (torch.zeros(4), torch.zeros(3, 1), torch.zeros(2, 3, dtype=torch.long)):
        with pytest.raises(ValueError):
            rlhf.group_advantages(bad)


def test_group_advantages_are_trls_grpo_advantages():
    """trl's GRPOTrainer (scale_rewards="group"): (r - group mean) / (trl.trainer.utils.nanstd of the group + 1e-4)."""
    from trl.trainer.utils import nanstd

    gen = torch.Generator().manual_seed(0)
    rewards = torch.cat([(torch.rand(5, 8, generator=gen) < 0.3).float(), torch.randn(3, 8, generator=gen)])
    theirs = (rewards - rewards.mean(dim=1, keepdim=True)) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4)
    assert torch.allclose(rlhf.group_advantages(rewards), theirs, atol=1e-6)


def test_exact_reward_ignores_spaces_at_the_ends_only():
    assert rlhf.exact_reward([" 19", "1 3 5", "13 5", ""], ["19", "1 3 5", "1 3 5", "0"]).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_the_verifiable_tasks_are_the_pretraining_lines_and_their_held_out_problems_are_not_trained_on():
    tasks = rlhf.verifiable_tasks()
    assert tasks["sums"]["train"][0][0].endswith("=") and tasks["sorting"]["train"][0][0].startswith("sort: ")
    for task in tasks.values():
        assert not {i for i, _ in task["heldout"]} & {i for i, _ in task["train"]}
        assert all(a == a.strip() for _, a in task["heldout"])
    instruction, answer = tasks["sorting"]["heldout"][0]
    assert answer.split() == sorted(instruction.split()[1:-1], key=int)


# --------------------------------------------------------------------------- sampling


def test_sampled_answers_are_masked_up_to_their_first_eos_and_decoded(tokenizer, sft):
    questions = [rlhf.question(f) for f in rlhf.question_facts()["heldout"][:40]]
    groups = rlhf.by_prompt_length(tokenizer, questions)
    idx = max(groups.values(), key=len)
    rollout = rlhf.sample_answers(sft, tokenizer, [questions[i] for i in idx], max_new_tokens=12,
                                  generator=torch.Generator().manual_seed(0))
    answer = rollout.ids[:, rollout.prompt_length:]
    for row in range(len(idx)):
        n = int(rollout.mask[row].sum())
        assert rollout.mask[row, :n].all() and not rollout.mask[row, n:].any()
        tokens = answer[row].tolist()
        if EOS_ID in tokens:
            assert tokens.index(EOS_ID) == n - 1 and all(t == PAD_ID for t in tokens[n:])
        assert rollout.texts[row] == tokenizer.decode([t for t in tokens[:n] if t != EOS_ID]).strip()
    greedy = rlhf.greedy_answers(sft, tokenizer, questions)
    assert greedy == rlhf.greedy_answers(sft, tokenizer, questions[::-1])[::-1]     # order does not matter
    with pytest.raises(ValueError, match="same number of tokens"):
        rlhf.sample_answers(sft, tokenizer, ["Where does Dudai Fahas live?", "sort: 3 1 9 4 2 7 ->"])


def test_win_rate_and_truthfulness_follow_the_rule():
    fact2 = Fact("Dudai Fahas", "lives_in", "Ladror")
    other = a_city_other_than("Ladror")
    assert rlhf.win_rate(["Ladror", other], ["Dudai Fahas lives in Ladror.", "Ladror"], [FACT, fact2]) == 0.5
    assert rlhf.truthful_rate(["Ladror", other], [FACT, fact2]) == 0.5
    assert rlhf.mean_words(["Ladror", "Dudai Fahas lives in Ladror."]) == 3.0
    with pytest.raises(ValueError, match="same length"):
        rlhf.win_rate(["Ladror"], [], [FACT])


# --------------------------------------------------------------------------- short training runs


def test_a_short_reward_model_run_learns_the_rule_beyond_chance(tokenizer, sft, data):
    model = rlhf.RewardModel(copy.deepcopy(sft))
    rlhf.train_reward_model(model, tokenizer, data["train"], steps=30, lr=1e-3, batch_size=16, progress=False)
    assert rlhf.reward_accuracy(model, tokenizer, data["validation"]) > 0.65
    with pytest.raises(ValueError, match="against must be 'rule' or 'labels'"):
        rlhf.reward_accuracy(model, tokenizer, data["validation"], against="truth")


def test_agreement_reads_every_accuracy_from_one_scoring_of_the_pairs(tokenizer, sft, data):
    model = rlhf.RewardModel(copy.deepcopy(sft))
    with torch.no_grad():
        model.head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    pairs = data["validation"][:150]
    wins = rlhf.chosen_wins(model, tokenizer, pairs, batch_size=64)
    assert wins.dtype == torch.bool and wins.shape == (150,)
    for against in ("rule", "labels"):
        assert rlhf.agreement(wins, pairs, against) == rlhf.reward_accuracy(model, tokenizer, pairs, against)
    flipped = torch.tensor([p.flipped for p in pairs])
    assert rlhf.agreement(flipped, pairs, "rule") == 0.0 and rlhf.agreement(~flipped, pairs, "rule") == 1.0
    assert rlhf.agreement(wins[:10], pairs[:10]) == rlhf.reward_accuracy(model, tokenizer, pairs[:10])
    with pytest.raises(ValueError, match="against must be 'rule' or 'labels'"):
        rlhf.agreement(wins, pairs, against="truth")
    with pytest.raises(ValueError, match="one win per pair"):
        rlhf.agreement(wins[:3], pairs)


def test_the_judge_gives_the_sft_weights_its_baseline_and_any_other_weights_their_own_answers(tokenizer, sft):
    facts = rlhf.question_facts()["heldout"][:24]
    judge = rlhf.Judge.against(sft, tokenizer, facts)
    copy_of_sft = copy.deepcopy(sft)
    assert judge.is_baseline(copy_of_sft) and judge.answers(copy_of_sft) == judge.baseline
    assert judge.evaluate(copy_of_sft) == {"win_rate": 0.5, "truthful": rlhf.truthful_rate(judge.baseline, facts),
                                           "words": rlhf.mean_words(judge.baseline)}
    changed = copy.deepcopy(sft)
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)
    assert not judge.is_baseline(changed)
    assert judge.answers(changed) == rlhf.greedy_answers(changed, tokenizer, [rlhf.question(f) for f in facts])
    plain = rlhf.Judge(tokenizer, facts, judge.baseline)  # made without the weights: always generates
    assert not plain.is_baseline(copy_of_sft) and plain.answers(copy_of_sft) == judge.baseline


def test_ppo_dpo_and_grpo_run_record_what_they_measured_and_leave_the_reference_alone(tokenizer, sft, data):
    facts = rlhf.question_facts()
    reference = {k: v.clone() for k, v in sft.state_dict().items()}
    reward_model = rlhf.RewardModel(copy.deepcopy(sft))
    judge = rlhf.Judge(tokenizer, facts["heldout"][:16], rlhf.greedy_answers(sft, tokenizer,
                                                                            [rlhf.question(f) for f in facts["heldout"][:16]]))
    policy = rlhf.PolicyWithValue(copy.deepcopy(sft))
    history = rlhf.ppo_train(policy, sft, reward_model, tokenizer, facts["train"], steps=2, batch_size=8, judge=judge,
                             eval_every=1, progress=False)
    assert [s["step"] for s in history.steps] == [1, 2] and [e["step"] for e in history.evals] == [0, 1, 2]
    assert history.evals[0]["win_rate"] == 0.5 and history.seconds > 0
    assert history.steps[0]["kl"] == pytest.approx(0.0, abs=1e-4)         # the first samples come from pi = pi_ref
    policy = copy.deepcopy(sft)
    few = data["train"][:8]
    history = rlhf.dpo_train(policy, sft, tokenizer, few, steps=4, batch_size=8, lr=1e-3, progress=False)
    assert history.steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert float(rlhf.pairs_dpo_loss(policy, sft, tokenizer, few)) < math.log(2) - 0.05     # it learned those pairs
    pairs, heldout = rlhf.grpo_pairs()
    history = rlhf.grpo_train(copy.deepcopy(sft), sft, tokenizer, pairs, steps=2, group_size=4, prompts_per_step=2,
                              heldout=heldout["sums"][:10], eval_every=1, progress=False)
    assert len(history.steps) == 2 and [e["step"] for e in history.evals] == [0, 1, 2]
    assert all(0 <= s["reward"] <= 1 for s in history.steps)
    assert all(torch.equal(v, reference[k]) for k, v in sft.state_dict().items())


# --------------------------------------------------------------------------- the committed SFT model and long runs


def test_the_shipped_sft_model_is_what_its_record_says(tokenizer, sft):
    record = json.loads((rlhf.SFT_FOLDER / "training.json").read_text())
    assert record["recipe"] == rlhf.RECIPES["sft"] and record["pairs"] == len(rlhf.sft_pairs())
    tasks = rlhf.verifiable_tasks()
    assert rlhf.verifiable_accuracy(sft, tokenizer, tasks["sorting"]["heldout"]) == pytest.approx(record["heldout"]["sorting"])
    facts = rlhf.question_facts()["heldout"]
    answers = rlhf.greedy_answers(sft, tokenizer, [rlhf.question(f) for f in facts])
    assert rlhf.truthful_rate(answers, facts) == pytest.approx(record["heldout"]["truthful"])
    assert rlhf.mean_words(answers) == pytest.approx(record["heldout"]["words"])


def test_the_long_runs_were_made_with_the_lessons_recipes(data):
    runs = rlhf.long_runs()
    assert runs["recipes"] == json.loads(json.dumps(rlhf.RECIPES))
    assert runs["long_steps"] == rlhf.LONG_STEPS and runs["lesson_steps"] == rlhf.LESSON_STEPS
    assert runs["sft_epoch_seconds"] > 0
    for name in ("ppo", "ppo_no_kl", "dpo", "grpo"):
        run = runs["runs"][name]
        assert [s["step"] for s in run["steps"]] == list(range(1, rlhf.LONG_STEPS + 1))
        assert [e["step"] for e in run["evals"]] == list(range(0, rlhf.LONG_STEPS + 1, 10)) and run["seconds"] > 0
    ceiling = runs["runs"]["reward_model"]["noise_ceiling"]
    assert ceiling == pytest.approx(sum(not p.flipped for p in data["heldout"]) / len(data["heldout"]))


def mean(xs):
    return sum(xs) / len(xs)


def test_the_long_runs_show_what_the_lesson_says_they_show():
    """The lesson's claims about the long runs, kept true: reward hacking without the KL penalty, and what GRPO did."""
    runs = rlhf.long_runs()["runs"]
    no_kl, ppo = runs["ppo_no_kl"], runs["ppo"]
    first, last = no_kl["steps"][:20], no_kl["steps"][-50:]
    assert mean([s["reward"] for s in last]) > mean([s["reward"] for s in first]) + 0.2          # the learned reward rises
    assert no_kl["evals"][-1]["win_rate"] < no_kl["evals"][0]["win_rate"] - 0.05                 # the true win rate falls
    assert no_kl["evals"][-1]["truthful"] < no_kl["evals"][0]["truthful"] / 2                     # most answers turn false
    assert mean([s["kl"] for s in no_kl["steps"][-50:]]) > 2 * mean([s["kl"] for s in ppo["steps"][-50:]])
    assert max(e["win_rate"] for e in ppo["evals"]) > 0.6 and ppo["evals"][-1]["win_rate"] > no_kl["evals"][-1]["win_rate"]
    rm = runs["reward_model"]
    assert all(0.75 < p["rule"] < rm["noise_ceiling"] for p in rm["points"])
    grpo = runs["grpo"]["evals"]
    assert grpo[-1]["accuracy"] > grpo[0]["accuracy"] + 0.05
