"""course_lib.prompt_tuning: trainable virtual tokens in front of a frozen model, equal to peft's prompt tuning."""

from __future__ import annotations

import copy

import pytest
import torch

from course_lib import models
from course_lib.prompt_tuning import SoftPrompt

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def checkpoint():
    return models.load_pretrained("course-lm-small").double().eval()


def test_soft_prompt_equals_peft_prompt_tuning_on_the_same_vectors(checkpoint):
    """Logits and the prompt's gradient; the two base models differ by rotary rounding (float32 angles), about 3e-6."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    ours = SoftPrompt(copy.deepcopy(checkpoint), 5)
    hf = models.to_hf_llama(checkpoint)
    theirs = get_peft_model(copy.deepcopy(hf), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5))
    theirs_prompt = theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        theirs_prompt.copy_(ours.prompt)
    ids = torch.randint(0, checkpoint.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    ours_logits, theirs_logits = ours(ids), theirs(input_ids=ids).logits
    assert ours_logits.shape == theirs_logits.shape == (2, 15, checkpoint.config.vocab_size)
    with torch.no_grad():
        base_gap = (hf(input_ids=ids).logits - checkpoint(ids)).abs().max()
    assert (ours_logits - theirs_logits).abs().max() <= 3 * base_gap + 1e-12
    targets = torch.randint(0, checkpoint.config.vocab_size, (2, 15), generator=torch.Generator().manual_seed(2))
    models.next_token_loss(ours_logits, targets).backward()
    models.next_token_loss(theirs_logits, targets).backward()
    # peft keeps its prompt in float32 (the copy above rounded it), the course in the model's dtype
    assert theirs_prompt.dtype == torch.float32
    assert torch.allclose(ours.prompt.grad, theirs_prompt.grad.double(), rtol=1e-5, atol=1e-6)
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in theirs.parameters() if p.requires_grad) == 5 * checkpoint.config.d_model


def test_only_the_prompt_trains(checkpoint):
    torch.manual_seed(3)
    tuned = SoftPrompt(copy.deepcopy(checkpoint), 4)
    start = tuned.prompt.detach().clone()
    optimizer = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, checkpoint.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        optimizer.zero_grad()
        logits = tuned(ids)[:, tuned.n_virtual - 1:-1]  # the prompt's last position predicts the first token
        models.next_token_loss(logits, ids).backward()
        optimizer.step()
    assert not torch.equal(tuned.prompt, start)
    for name, p in tuned.model.named_parameters():
        assert torch.equal(p, checkpoint.get_parameter(name)), name


def test_bad_arguments_say_what_was_expected(checkpoint):
    with pytest.raises(ValueError, match="n_virtual"):
        SoftPrompt(copy.deepcopy(checkpoint), 0)
    with pytest.raises(ValueError, match=r"init should have shape \(3, "):
        SoftPrompt(copy.deepcopy(checkpoint), 3, init=torch.zeros(2, checkpoint.config.d_model))
    with pytest.raises(ValueError, match="x should have shape"):
        checkpoint.forward_embeddings(torch.zeros(2, 3))


def test_a_soft_prompt_trains_with_finetune_and_answers_through_generate():
    from course_lib import finetune as ft
    from course_lib.evaluation import complete
    from course_lib.kvcache import generate
    from course_lib.tokenizer import course_tokenizer

    tok = course_tokenizer(0)
    torch.manual_seed(0)
    soft = SoftPrompt(models.load_pretrained("course-lm-small"), n_virtual=4)
    task = ft.instruction_tasks()["one_word"]
    batch = ft.collate(tok, task.train[:32])
    with torch.no_grad():
        before = ft.response_loss(soft, batch).item()
    ft.finetune(soft, tok, task.train, steps=20, lr=3e-2, progress=False)
    with torch.no_grad():
        assert ft.response_loss(soft, batch).item() < before
    ids = torch.tensor([[1, *tok.encode(ft.chat_prompt(task.heldout[0][0]))]])
    cached = generate(soft, ids, 6, eos_id=2)
    assert torch.equal(cached, generate(soft, ids, 6, eos_id=2, use_cache=False))  # the cache holds the prompt once
    assert complete(soft, tok, [ft.chat_prompt(task.heldout[0][0])], max_new_tokens=6)[0] == tok.decode(
        [t for t in cached[0, ids.shape[1]:].tolist() if t != 2][: 6])
