"""course_lib.finetune: the chat template (equal to transformers'), the tasks, the response-only loss, SFT, memory."""

from __future__ import annotations

import pytest
import torch

from course_lib import finetune as ft
from course_lib import lora
from course_lib.data import build_corpus
from course_lib.memory import count_params
from course_lib.models import DecoderConfig, DecoderLM, load_pretrained
from course_lib.pretrain import ASSETS
from course_lib.tokenizer import EOS_ID, PAD_ID, course_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Reverse: 5 3 9"}],
    [{"role": "user", "content": "Reverse: 5 3 9"}, {"role": "assistant", "content": "9 3 5"}],
    [{"role": "user", "content": "Where does Zorbin Kalu live? Answer in one word."}, {"role": "assistant", "content": "Quenta"},
     {"role": "user", "content": "Translate: the dog sees a cat"}, {"role": "assistant", "content": "lo gor na miro vidat"}],
]


@pytest.fixture(scope="module")
def tokenizer():
    return course_tokenizer(0)


@pytest.fixture(scope="module")
def tasks():
    return ft.instruction_tasks()


@pytest.mark.parametrize("name", ["course-lm", "course-lm-small", "course-lm-mha"])
def test_the_checkpoints_tokenizers_hold_the_chat_template_and_transformers_renders_it_as_the_course(name, tokenizer):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(ASSETS / name)
    assert theirs.chat_template == ft.CHAT_TEMPLATE
    for messages in CONVERSATIONS:
        for generation in (False, True):
            text = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            assert text == ft.chat_text(messages, add_generation_prompt=generation)
            ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)["input_ids"]
            assert ids == tokenizer.encode(text)
    with pytest.raises(Exception, match="roles must be user or assistant"):
        theirs.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)
    with pytest.raises(ValueError, match="roles must be 'user' or 'assistant'"):
        ft.chat_text([{"role": "system", "content": "x"}])


def test_one_training_example_is_the_chat_text_and_its_prompt_is_the_generation_prompt(tokenizer):
    ids, n_prompt = ft.encode_pair(tokenizer, "Reverse: 5 3 9", "9 3 5")
    assert ids == tokenizer.encode(ft.chat_text(CONVERSATIONS[1]))
    assert ids[:n_prompt] == tokenizer.encode(ft.chat_text(CONVERSATIONS[0], add_generation_prompt=True))
    assert tokenizer.decode(ids[n_prompt:]) == " 9 3 5<eos>" and ids[-1] == EOS_ID


def test_the_tasks_are_new_to_the_checkpoints_and_their_held_out_pairs_are_not_trained_on(tasks):
    corpus = build_corpus(0)
    pretraining = "\n".join(corpus.train_texts)
    assert set(tasks) == {"one_word", "translate", "reverse"}
    for task in tasks.values():
        instructions = {i for i, _ in task.train}
        assert task.train and task.heldout and not instructions & {i for i, _ in task.heldout}
        for instruction, _ in task.train[:50] + task.heldout:
            assert instruction not in pretraining
    assert "Answer in one word." not in pretraining and "Reverse:" not in pretraining and "Translate:" not in pretraining
    held_people = set(corpus.heldout_people)
    assert all(any(p in i for p in held_people) for i, _ in tasks["one_word"].heldout)
    assert not any(p in i for i, _ in tasks["one_word"].train for p in held_people)
    for instruction, response in tasks["reverse"].train + tasks["reverse"].heldout:
        assert response.split() == instruction.removeprefix("Reverse: ").split()[::-1]


def test_mask_prompt_keeps_exactly_the_response_tokens():
    ids = torch.tensor([[1, 5, 6, 7, 8, 2, 0], [1, 5, 9, 2, 0, 0, 0]])
    labels = ft.mask_prompt(ids, torch.tensor([3, 2]), torch.tensor([6, 4]))
    assert labels.tolist() == [[-100, -100, -100, 7, 8, 2, -100], [-100, -100, 9, 2, -100, -100, -100]]
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq\) int64"):
        ft.mask_prompt(ids.float(), torch.tensor([3, 2]), torch.tensor([6, 4]))
    with pytest.raises(ValueError, match=r"prompt_lengths must be \(2,\) int64"):
        ft.mask_prompt(ids, torch.tensor([3]), torch.tensor([6, 4]))


def test_collate_pads_on_the_right_and_labels_only_the_responses(tokenizer, tasks):
    pairs = tasks["reverse"].train[:3] + tasks["one_word"].train[:2]
    input_ids, labels = ft.collate(tokenizer, pairs)
    for row, (instruction, response) in enumerate(pairs):
        ids, n_prompt = ft.encode_pair(tokenizer, instruction, response)
        assert input_ids[row, : len(ids)].tolist() == ids and (input_ids[row, len(ids):] == PAD_ID).all()
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == ids[n_prompt:] and tokenizer.decode(kept) == f" {response}<eos>"


def test_the_response_loss_is_the_mean_cross_entropy_of_the_response_tokens_alone(tokenizer, tasks):
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig(vocab_size=1024, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64))
    pairs = tasks["reverse"].train[:4]
    batch = ft.collate(tokenizer, pairs)
    logp = torch.log_softmax(model(batch[0]).double(), dim=-1)
    terms = []
    for instruction, response in pairs:
        ids, n_prompt = ft.encode_pair(tokenizer, instruction, response)
        row = [i for i, _ in enumerate(pairs) if pairs[i] == (instruction, response)][0]
        terms += [-logp[row, t - 1, ids[t]] for t in range(n_prompt, len(ids))]
    expected = torch.stack(terms).mean()
    assert torch.allclose(ft.response_loss(model, batch).double(), expected, rtol=1e-5)


def test_finetune_trains_only_what_requires_gradients_and_lowers_the_loss(tokenizer, tasks):
    model = load_pretrained("course-lm-small")
    lora.inject_lora(model, r=4, alpha=8, targets=lora.LLAMA_TARGETS)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    batch = ft.collate(tokenizer, tasks["reverse"].train[:64])
    with torch.no_grad():
        before = ft.response_loss(model, batch).item()
    history = ft.finetune(model, tokenizer, tasks["reverse"].train, steps=30, lr=1e-2, progress=False)
    with torch.no_grad():
        after = ft.response_loss(model, batch).item()
    assert len(history.train_loss) == 30 and after < 0.8 * before
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    with pytest.raises(ValueError, match="no parameter of the model requires gradients"):
        ft.finetune(load_pretrained("course-lm-small").requires_grad_(False), tokenizer, tasks["reverse"].train, steps=1)


def test_task_accuracy_counts_exact_answers_in_the_chat_format(tokenizer, tasks):
    from course_lib.evaluation import complete

    model = load_pretrained("course-lm-small")
    instructions = [i for i, _ in tasks["one_word"].heldout[:5]]
    said = complete(model, tokenizer, [ft.chat_prompt(i) for i in instructions], max_new_tokens=8)
    pairs = [(i, s.removeprefix(" ")) for i, s in zip(instructions, said)]
    assert ft.task_accuracy(model, tokenizer, pairs, max_new_tokens=8) == 1.0
    pairs[0] = (pairs[0][0], pairs[0][1] + "x")
    assert ft.task_accuracy(model, tokenizer, pairs, max_new_tokens=8) == 0.8
    assert ft.task_accuracy(model, tokenizer, tasks["reverse"].heldout[:20]) == 0.0  # a new task: the base cannot do it


def test_the_forgetting_curve_starts_from_the_untouched_model(tokenizer, tasks):
    model = load_pretrained("course-lm-small")
    before = ft.original_skills(model, tokenizer, n=10)
    lora.inject_lora(model, r=2, alpha=4)
    points = ft.forgetting_curve(model, tokenizer, tasks["reverse"], lr=1e-3, chunks=1, steps_per_chunk=2, n_original=10)
    assert [p["step"] for p in points] == [0, 2]
    assert {k: points[0][k] for k in before} == before and points[0]["task"] == 0.0


def test_published_model_sizes_and_the_memory_of_full_lora_and_qlora():
    assert count_params(ft.LLAMA_7B) == 6_738_415_616 and count_params(ft.LLAMA_65B) == 65_285_660_672
    for shape in (ft.LLAMA_7B, ft.LLAMA_65B):
        full = ft.finetuning_model_states(shape, "full")
        assert full["total"] == 16 * count_params(shape)
        lo, q = ft.finetuning_model_states(shape, "lora", r=16), ft.finetuning_model_states(shape, "qlora", r=16)
        assert lo["trainable"] == q["trainable"] == lora.lora_parameter_count(ft.projection_shapes(shape), 16)
        assert lo["gradients"] == 4 * lo["trainable"] and lo["optimizer_states"] == 8 * lo["trainable"]
        assert q["weights"] < lo["weights"] / 3
    gib = 2**30
    assert ft.finetuning_model_states(ft.LLAMA_65B, "qlora")["total"] < 48 * gib < ft.finetuning_model_states(ft.LLAMA_65B, "lora")["total"]
    with pytest.raises(ValueError, match="method must be"):
        ft.finetuning_model_states(ft.LLAMA_7B, "prefix")
    with pytest.raises(ValueError, match="targets must be among"):
        ft.projection_shapes(ft.LLAMA_7B, ("w_q",))


def test_projection_shapes_count_what_inject_lora_adds_to_a_real_model():
    from course_lib.memory import ModelShape

    config = DecoderConfig(vocab_size=300, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=80)
    shape = ModelShape(vocab_size=300, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=80)
    for targets in (("q_proj", "v_proj"), lora.LLAMA_TARGETS):
        model = DecoderLM(config)
        lora.inject_lora(model, r=3, alpha=6, targets=targets)
        assert lora.trainable_parameters(model) == lora.lora_parameter_count(ft.projection_shapes(shape, targets), 3)


def test_the_display_helpers_read_the_committed_measurements_and_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = ft.forgetting_sweep()
    start = sweep["runs"][0]["points"][0]
    assert ft.skills_lost(start, start) == 0.0
    assert ft.skills_lost({"qa": start["qa"] - 0.2, "arithmetic": start["arithmetic"]}, start) == pytest.approx(0.1)
    table = ft.memory_table({"LLaMA-65B": ft.LLAMA_65B}, r=16)
    rows = [line for line in table.splitlines() if line.startswith("| LLaMA-65B")]
    assert [r.split("|")[-2].strip() for r in rows] == ["no", "no", "yes"]  # only QLoRA's model states fit 48 GB
    steps = ft.gpu_results()["steps"]
    assert [s["method"] for s in steps] == ["full", "lora", "qlora"]
    assert steps[1]["peak_bytes"] < steps[0]["peak_bytes"] and steps[1]["trainable"] < steps[0]["trainable"] / 50
    assert "| full |" in ft.gpu_step_table() and "| 1.00 |" in ft.gpu_step_table()
    fig, axes = plt.subplots(1, 3)
    ft.draw_lora(axes[0])
    ft.draw_lora(axes[1], merged=True)
    ft.plot_forgetting(sweep, axes[2], extra_points=[{"label": "here", "lost": 0.5, "task": 0.8}])
    assert len(axes[2].lines) == len(sweep["runs"]) + 1
    plt.close(fig)
