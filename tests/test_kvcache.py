"""course_lib.kvcache: the KV cache, decode steps, top-k / top-p sampling and generation (lesson 02).

Cached decoding must reproduce full recomputation exactly (up to rounding), and greedy
generation must reproduce Hugging Face's ``LlamaForCausalLM.generate`` after conversion.
"""

from __future__ import annotations


import pytest
import torch

from course_lib.kvcache import KVCache, decode_step, generate, sample_next_token, top_k_filter, top_p_filter
from course_lib.models import DecoderConfig, DecoderLM, to_hf_llama

VOCAB = 97
INF = float("-inf")


def tiny_decoder(seed=0, **overrides) -> DecoderLM:
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=80, max_seq_len=64, init_std=0.3)
    settings.update(overrides)
    torch.manual_seed(seed)
    return DecoderLM(DecoderConfig(**settings)).eval()


def prompt(batch=2, seq=5, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the cache


def test_kv_cache_appends_and_counts():
    cache = KVCache(n_layers=2)
    assert len(cache) == 0 and cache.nbytes() == 0
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    k_all, v_all = cache.update(0, k, v)
    assert torch.equal(k_all, k) and len(cache) == 4
    k2, v2 = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)
    k_all, v_all = cache.update(0, k2, v2)
    assert torch.equal(k_all, torch.cat([k, k2], dim=2)) and torch.equal(v_all, torch.cat([v, v2], dim=2))
    assert len(cache) == 5 and cache.nbytes() == 2 * 3 * 2 * 5 * 8 * 4
    assert "length=5" in repr(cache)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda c: c.update(2, torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)), r"layer must be in \[0, 1\]"),
        (lambda c: c.update(0, torch.randn(1, 2, 1, 8), torch.randn(1, 2, 2, 8)), "k and v must both have shape"),
        (lambda c: c.update(0, torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8)), "do not match the cached ones"),
    ],
)
def test_kv_cache_rejects_mismatches(call, match):
    cache = KVCache(2)
    cache.update(0, torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match=match):
        call(cache)


def test_kv_cache_holds_only_the_kv_heads_under_gqa():
    for n_kv_heads in (4, 2, 1):
        model = tiny_decoder(n_kv_heads=n_kv_heads)
        cache = KVCache(model.config.n_layers)
        decode_step(model, prompt(2, 6), cache)
        assert cache.keys[1].shape == cache.values[1].shape == (2, n_kv_heads, 6, 8)
        assert cache.nbytes() == 2 * 2 * 2 * n_kv_heads * 6 * 8 * 4   # K and V, layers, batch, heads, seq, head_dim, bytes


# --------------------------------------------------------------------------- decode steps


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cached_logits_equal_full_recompute_at_every_step(dtype, atol, n_kv_heads):
    model = tiny_decoder(n_kv_heads=n_kv_heads).to(dtype)
    ids = prompt(2, 16)
    with torch.no_grad():
        full = model(ids)                                            # (2, 16, vocab), no cache
        cache = KVCache(model.config.n_layers)
        logits = decode_step(model, ids[:, :4], cache)               # prefill 4 tokens
        torch.testing.assert_close(logits, full[:, 3], atol=atol, rtol=0)
        for t in range(4, 16):                                       # then one token at a time
            logits = decode_step(model, ids[:, t : t + 1], cache)
            assert len(cache) == t + 1 and logits.shape == (2, VOCAB) and logits.dtype == dtype
            torch.testing.assert_close(logits, full[:, t], atol=atol, rtol=0)


def test_several_new_tokens_per_step_use_a_bottom_right_causal_mask():
    model = tiny_decoder()
    ids = prompt(1, 12)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(2)
        model.blocks[0].attn.record_weights = True
        chunks = [model(ids[:, a:b], cache=cache) for a, b in [(0, 5), (5, 8), (8, 12)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)
    weights = model.blocks[0].attn.attention_weights                 # last chunk: queries 8..11, keys 0..11
    assert weights.shape == (1, 4, 4, 12)
    assert (weights[..., 0, 9:] == 0).all() and (weights[..., 0, :9] > 0).all()
    assert (weights[..., 3, :] > 0).all()
    assert model.blocks[1].attn.attention_weights is None, "not recorded unless asked"


def test_decode_step_rejects_bad_input_and_positions_past_the_end():
    model = tiny_decoder(max_seq_len=8)
    with pytest.raises(ValueError, match=r"integer tensor \(batch, new\)"):
        decode_step(model, torch.tensor([1, 2]), KVCache(2))
    with pytest.raises(ValueError, match="cache must be a KVCache"):
        decode_step(model, prompt(1, 2), cache=[])
    cache = KVCache(2)
    decode_step(model, prompt(1, 8), cache)
    with pytest.raises(ValueError, match="exceed max_seq_len=8"):
        decode_step(model, prompt(1, 1), cache)


# --------------------------------------------------------------------------- top-k and top-p


def test_top_k_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.0, 0.0, 1.0, -1.0]])
    assert top_k_filter(logits, 2).tolist() == [[INF, 3.0, 2.0, INF], [0.0, 0.0, 1.0, INF]]   # a tie at the k-th is kept
    assert top_k_filter(logits, 1).tolist() == [[INF, 3.0, INF, INF], [INF, INF, 1.0, INF]]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_by_hand():
    probs = torch.tensor([0.5, 0.05, 0.3, 0.15])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()   # noqa: E731
    assert kept(0.4) == [True, False, False, False]      # 0.5 >= 0.4 already
    assert kept(0.5) == [True, False, False, False]      # exactly p is enough
    assert kept(0.6) == [True, False, True, False]       # 0.5 + 0.3
    assert kept(0.9) == [True, False, True, True]        # 0.5 + 0.3 + 0.15 = 0.95
    assert kept(0.97) == [True, True, True, True]
    assert kept(1e-6) == [True, False, False, False]     # the top token is always kept
    assert kept(1.0) == [True, True, True, True]
    filtered = top_p_filter(logits, 0.6)
    assert torch.equal(filtered[torch.isfinite(filtered)], logits[[0, 2]]), "kept logits are untouched"


@pytest.mark.parametrize("k", [1, 3, 10, 50, 200])
def test_top_k_matches_transformers(k):
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(k)) * 3
    assert torch.equal(top_k_filter(logits, k), TopKLogitsWarper(top_k=k)(None, logits))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(6, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(int(p * 100))) * 3
    assert torch.equal(top_p_filter(logits, p), TopPLogitsWarper(top_p=p)(None, logits))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: top_k_filter(torch.randn(2, 5), 0), "k must be an int >= 1"),
        (lambda: top_k_filter(torch.arange(5), 2), "floating-point tensor"),
        (lambda: top_p_filter(torch.randn(2, 5), 0.0), r"p must be a number in \(0, 1\]"),
        (lambda: top_p_filter(torch.randn(2, 5), 1.5), r"p must be a number in \(0, 1\]"),
        (lambda: sample_next_token(torch.randn(5)), r"shape \(batch, vocab\)"),
        (lambda: sample_next_token(torch.randn(2, 5), temperature=-1.0), "temperature must be a number >= 0"),
    ],
)
def test_filters_and_sampling_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- sampling


def test_sample_next_token_greedy_cases_and_seeding():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_p=1e-9), logits.argmax(-1))
    draw = lambda seed: sample_next_token(logits, 1.3, generator=torch.Generator().manual_seed(seed))   # noqa: E731
    assert torch.equal(draw(4), draw(4)) and not torch.equal(draw(4), draw(5))
    assert draw(4).dtype == torch.long and draw(4).shape == (8,)


def test_sample_next_token_follows_the_filtered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n, g = 40_000, torch.Generator().manual_seed(0)
    tokens = sample_next_token(logits.expand(n, 5), temperature=0.7, top_k=3, generator=g)
    freq = torch.bincount(tokens, minlength=5).double() / n
    expected = torch.softmax(top_k_filter(logits / 0.7, 3), -1).double()
    assert freq[3:].sum() == 0, "filtered tokens are never drawn"
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
    tokens = sample_next_token(logits.expand(n, 5), top_p=0.8, generator=g)
    assert set(tokens.unique().tolist()) == {0, 1, 2}                  # probabilities .563 + .207 < 0.8 <= .563 + .207 + .126


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_greedy_generation_cached_equals_uncached(n_kv_heads):
    model = tiny_decoder(n_kv_heads=n_kv_heads)
    cached = generate(model, prompt(3, 4), 20)
    assert cached.shape == (3, 24) and cached.dtype == torch.long
    assert torch.equal(cached[:, :4], prompt(3, 4))
    assert torch.equal(cached, generate(model, prompt(3, 4), 20, use_cache=False))


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.8, top_k=10), dict(temperature=1.5, top_p=0.9)])
def test_seeded_sampling_cached_equals_uncached(settings):
    model = tiny_decoder().double()                                 # float64: no near-tie can flip a draw
    run = lambda use_cache: generate(                               # noqa: E731
        model, prompt(3, 4), 20, "sample", generator=torch.Generator().manual_seed(0), use_cache=use_cache, **settings
    )
    cached = run(True)
    assert torch.equal(cached, run(False))
    assert not torch.equal(cached, generate(model, prompt(3, 4), 20)), "sampling should differ from greedy here"


@pytest.mark.parametrize("n_kv_heads,tie", [(2, False), (1, True), (4, True)])
def test_greedy_generation_equals_transformers(n_kv_heads, tie):
    model = tiny_decoder(n_kv_heads=n_kv_heads, tie_embeddings=tie)
    hf = to_hf_llama(model)
    ids = prompt(3, 6)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, pad_token_id=0)
    assert torch.equal(generate(model, ids, 24), theirs)


def test_generation_stops_at_eos_and_pads_like_transformers():
    model = tiny_decoder()
    ids = prompt(3, 6)
    free = generate(model, ids, 24)
    eos = free[0, 9].item()                                         # a token sequence 0 produces
    ours = generate(model, ids, 24, eos_id=eos)
    hf = to_hf_llama(model)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(ours, theirs)
    first = free[0, 6:].tolist().index(eos) + 6
    assert ours[0, : first + 1].tolist() == free[0, : first + 1].tolist() and (ours[0, first:] == eos).all()


def test_generate_rejects_bad_arguments():
    model = tiny_decoder()
    with pytest.raises(ValueError, match="strategy must be 'greedy' or 'sample'"):
        generate(model, prompt(), 3, strategy="beam")
    with pytest.raises(ValueError, match=r"non-empty integer tensor \(batch, prompt_len\)"):
        generate(model, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        generate(model, prompt(), -1)
    assert torch.equal(generate(model, prompt(), 0), prompt())


# --------------------------------------------------------------------------- lesson 06: bytes read per token

from course_lib.kvcache import bytes_read  # noqa: E402


def test_bytes_read_counts_the_inputs_of_each_operation():
    x, w = torch.randn(3, 100), torch.randn(50, 100)
    assert bytes_read(lambda: x @ w.T) == (300 + 5000) * 4
    big = torch.randn(1000)
    assert bytes_read(lambda: big.expand(64, 1000).sum()) == 4000        # a broadcast view covers its source once
    total, by_op = bytes_read(lambda: torch.cat([x, x]).sum(), by_op=True)
    assert by_op["cat"] == 2 * 1200 and by_op["sum"] == 2400 and total == 4800


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_decoding_reads_the_weights_once_and_the_cache(n_kv):
    """Each new token reads every weight once and each cached key and value twice (copy, attend), GQA included."""
    model = tiny_decoder(n_kv_heads=n_kv, max_seq_len=128)
    config = model.config
    weights = sum(p.numel() * 4 for n, p in model.named_parameters() if "embed" not in n)   # the embedding row is gathered
    reads = {}
    for context in (20, 60):
        cache = KVCache(config.n_layers)
        with torch.no_grad():
            decode_step(model, torch.randint(0, VOCAB, (1, context)), cache)
            reads[context] = bytes_read(lambda: decode_step(model, torch.tensor([[5]]), cache), by_op=True)
    assert reads[20][0] > weights
    per_position = {op: (reads[60][1].get(op, 0) - reads[20][1].get(op, 0)) / 40 for op in reads[60][1]}
    cache_per_position = 2 * config.n_layers * n_kv * config.head_dim * 4
    probabilities_per_position = config.n_layers * config.n_heads * 4
    assert per_position["cat"] == cache_per_position                 # the cache grows by copying the old one
    assert per_position["bmm"] == cache_per_position + probabilities_per_position   # q K^T and P V read K and V once
    other = sum(per_position.values()) - per_position["cat"] - per_position["bmm"]
    assert other <= 12 * probabilities_per_position                   # softmax and mask: one row of scores per head


# --------------------------------------------------------------------------- lesson 06: cache size from a config

from course_lib.kvcache import PUBLISHED_CONFIGS, kv_cache_bytes_from_config  # noqa: E402


def test_kv_cache_bytes_from_published_configs():
    gib = lambda name, seq: kv_cache_bytes_from_config(PUBLISHED_CONFIGS[name], seq) / 2**30  # noqa: E731
    assert gib("Llama-2-7B", 4096) == 2.0            # 2 * 32 * 32 * 128 * 4096 * 2 bytes
    assert gib("Llama-3-8B", 4096) == 0.5            # GQA-8: a quarter
    assert gib("Gemma-7B", 8192) == 2 * 28 * 16 * 256 * 8192 * 2 / 2**30   # head_dim 256, not 3072 / 16
    assert kv_cache_bytes_from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}, 10, 3, 4) \
        == 2 * 2 * 4 * 16 * 10 * 3 * 4               # no num_key_value_heads: MHA
    with pytest.raises(ValueError, match="num_hidden_layers"):
        kv_cache_bytes_from_config({"hidden_size": 64}, 10)


def test_kv_cache_bytes_from_config_is_what_transformers_allocates():
    transformers = pytest.importorskip("transformers")
    for extra in ({"num_key_value_heads": 2}, {"num_key_value_heads": 1, "head_dim": 24}, {}):
        config = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96,
                  "vocab_size": 50, **extra}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
        with torch.no_grad():
            cache = model(torch.zeros(2, 11, dtype=torch.long), use_cache=True).past_key_values
        allocated = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        assert kv_cache_bytes_from_config(config, seq_len=11, batch_size=2, bytes_per_value=4) == allocated
