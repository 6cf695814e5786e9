"""course_lib.speculative: greedy speculative decoding gives the target's own output, and the sampling rule keeps p."""

from __future__ import annotations

import pytest
import torch

from course_lib import speculative
from course_lib.kvcache import KVCache, generate
from course_lib.models import load_pretrained, to_hf_llama
from course_lib.pretrain import build_corpus
from course_lib.tokenizer import BOS_ID, EOS_ID, course_tokenizer


@pytest.fixture(scope="module")
def pair():
    return load_pretrained("course-lm"), load_pretrained("course-lm-small")


@pytest.fixture(scope="module")
def prompts():
    tokenizer = course_tokenizer(0)
    texts = sorted(build_corpus(0).heldout_texts, key=len)[-6:]
    return [torch.tensor([[BOS_ID, *tokenizer.encode(text)[:8]]]) for text in texts]


@pytest.mark.parametrize("draft_len", [1, 3, 8])
def test_the_output_is_the_targets_greedy_output(pair, prompts, draft_len):
    target, draft = pair
    for ids in prompts[:3]:
        out, stats = speculative.speculative_generate(target, draft, ids, 40, draft_len=draft_len)
        assert torch.equal(out, generate(target, ids, 40))
        assert stats.generated == 40 and stats.target_passes < 40  # fewer passes than tokens
        assert 0 <= stats.accepted <= stats.drafted and stats.draft_passes == stats.drafted


def test_a_draft_that_is_the_target_is_always_accepted(pair, prompts):
    target, _ = pair
    out, stats = speculative.speculative_generate(target, target, prompts[0], 30, draft_len=4)
    assert stats.acceptance_rate == 1.0 and stats.target_passes == 6  # 5 tokens per pass: 4 drafted and 1 bonus
    assert torch.equal(out, generate(target, prompts[0], 30))


def test_it_stops_at_the_end_of_text_as_generate_does(pair):
    target, draft = pair
    ids = torch.tensor([[BOS_ID, *course_tokenizer(0).encode("48 + 39 =")]])
    out, stats = speculative.speculative_generate(target, draft, ids, 30, draft_len=4, eos_id=EOS_ID)
    assert torch.equal(out, generate(target, ids, 30, eos_id=EOS_ID)) and out[0, -1] == EOS_ID
    assert stats.accepted <= stats.generated


def test_equal_to_transformers_assisted_generation(pair, prompts):
    target, draft = pair
    hf_target, hf_draft = to_hf_llama(target).eval(), to_hf_llama(draft).eval()
    for ids in prompts[:3]:
        ours, _ = speculative.speculative_generate(target, draft, ids, 30, draft_len=4)
        theirs = hf_target.generate(ids, assistant_model=hf_draft, do_sample=False, max_new_tokens=30, min_new_tokens=30,
                                    pad_token_id=0)
        assert torch.equal(ours, theirs)


def test_the_sampling_rule_keeps_the_targets_distribution():
    """Draw from q, accept or resample: the tokens that come out follow p (40,000 draws, 4 tokens; 0.01 is 4 sigma)."""
    gen = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    counts, accepted = torch.zeros(4), 0
    n = 40_000
    drafts = torch.multinomial(q, n, replacement=True, generator=gen)
    for token in drafts.tolist():
        ok, out = speculative.accept_or_resample(p, q, token, gen)
        counts[out] += 1
        accepted += ok
    assert torch.allclose(counts / n, p.float(), atol=0.01)
    assert accepted / n == pytest.approx(float(torch.minimum(p, q).sum()), abs=0.01)  # sum of min(p, q) = 0.6


def test_a_kv_cache_can_be_cut_back():
    cache = KVCache(2)
    for layer in range(2):
        cache.update(layer, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    cache.crop(3)
    assert len(cache) == 3 and cache.keys[1].shape == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="length must be an int from 0 to 3"):
        cache.crop(4)


@pytest.mark.parametrize("kwargs,expected", [
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, r"\(1, prompt_len\) integer tensor"),
    ({"draft_len": 0}, "draft_len should be an int >= 1"),
])
def test_bad_input_names_what_was_expected(pair, kwargs, expected):
    target, draft = pair
    call = {"input_ids": torch.tensor([[BOS_ID, 5]]), "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=expected):
        speculative.speculative_generate(target, draft, **call)
