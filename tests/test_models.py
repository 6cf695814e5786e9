"""course_lib.models: decoder-only, encoder-only and encoder-decoder Transformers (lesson 02).

The Llama-style decoder is checked against Hugging Face's ``LlamaForCausalLM`` in both
directions; the encoder and the encoder-decoder against their definitions (padding
invariance, causality, BERT's 80/10/10 rule, T5's span corruption).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import models
from course_lib.models import (
    DIFFERENCES,
    DecoderConfig,
    DecoderLM,
    EncoderClassifier,
    EncoderConfig,
    EncoderDecoderModel,
    EncoderForMaskedLM,
    EncoderModel,
    MaskedLMHead,
    RMSNorm,
    Seq2SeqConfig,
    apply_rope,
    available_pretrained,
    from_hf_llama,
    from_llama_config,
    generate_seq2seq,
    llama_name_map,
    load_pretrained,
    mlm_mask,
    next_token_loss,
    rope_cos_sin,
    save_pretrained,
    shift_right,
    span_corruption,
    to_hf_llama,
    to_llama_config,
    undo_span_corruption,
)

transformers = pytest.importorskip("transformers")

VOCAB = 97


def tiny_decoder(seed=0, **overrides) -> DecoderLM:
    """A 2-layer model with large enough weights that the logits are of order 1-10."""
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=80, max_seq_len=64, init_std=0.3)
    settings.update(overrides)
    torch.manual_seed(seed)
    return DecoderLM(DecoderConfig(**settings)).eval()


def random_ids(batch=3, seq=13, vocab=VOCAB, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- decoder: pieces


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(d_model=30), "divisible by n_heads"),
        (dict(n_kv_heads=3), "divisible by n_kv_heads"),
        (dict(d_model=12, n_heads=4), "must be even"),
        (dict(n_layers=0), "n_layers must be a positive int"),
        (dict(vocab_size=10.0), "vocab_size must be a positive int"),
        (dict(eos_id=300), "eos_id must be None or in"),
    ],
)
def test_decoder_config_rejects_bad_settings(overrides, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig(**overrides)


def test_rmsnorm_is_the_formula_and_matches_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(2, 5, 16)
    norm = RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    theirs = LlamaRMSNorm(16, eps=1e-6)
    theirs.weight.data.copy_(norm.weight.data)
    torch.testing.assert_close(norm(x), theirs(x), atol=0, rtol=0)


def test_rope_matches_llama_rotary_embedding():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = to_llama_config(DecoderConfig(d_model=64, n_heads=4, rope_theta=500.0))
    positions = torch.arange(3, 20)
    q, k = torch.randn(2, 4, 17, 16), torch.randn(2, 4, 17, 16)
    cos_hf, sin_hf = LlamaRotaryEmbedding(config)(q, positions[None])
    cos, sin = rope_cos_sin(positions, 16, theta=500.0)
    torch.testing.assert_close(cos, cos_hf[0], atol=0, rtol=0)
    torch.testing.assert_close(sin, sin_hf[0], atol=0, rtol=0)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf, atol=0, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf, atol=0, rtol=0)


def test_rope_scores_depend_only_on_the_distance():
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(m, n):
        cos, sin = rope_cos_sin(torch.tensor([m, n]), 8, dtype=torch.float64)
        return (apply_rope(q, cos[0], sin[0]) @ apply_rope(k, cos[1], sin[1])).item()

    assert score(7, 3) == pytest.approx(score(14, 10), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    cos, sin = rope_cos_sin(torch.tensor([5]), 8, dtype=torch.float64)
    assert apply_rope(q, cos[0], sin[0]).norm().item() == pytest.approx(q.norm().item(), rel=1e-6), "a rotation keeps the length"


# --------------------------------------------------------------------------- decoder: the model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decoder_output_shape_and_dtype(dtype):
    model = tiny_decoder().to(dtype)
    logits = model(random_ids(2, 9))
    assert logits.shape == (2, 9, VOCAB) and logits.dtype == dtype
    assert torch.isfinite(logits).all()


def test_decoder_is_causal():
    model = tiny_decoder()
    ids = random_ids(2, 10)
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_decoder_tied_embeddings_share_one_matrix():
    model = tiny_decoder(tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight
    untied = tiny_decoder(tie_embeddings=False)
    assert untied.num_parameters() - model.num_parameters() == VOCAB * 32


def test_decoder_residual_projections_get_scaled_init():
    model = tiny_decoder(seed=0, d_model=64, d_ff=256, init_std=0.02, n_layers=8)
    q_std = torch.stack([b.attn.q_proj.weight.std() for b in model.blocks]).mean().item()
    o_std = torch.stack([b.attn.o_proj.weight.std() for b in model.blocks]).mean().item()
    assert q_std == pytest.approx(0.02, rel=0.05)
    assert o_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_hidden_states_are_what_the_output_layer_reads():
    model = tiny_decoder()
    ids = random_ids(2, 7)
    hidden = model.hidden_states(ids)
    assert hidden.shape == (2, 7, 32)
    torch.testing.assert_close(model.lm_head(hidden), model(ids))
    with pytest.raises(ValueError, match="integer tensor"):
        model.hidden_states(torch.rand(2, 5))


def test_decoder_rejects_bad_input():
    model = tiny_decoder()
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"ids in \[0, 96\]"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="exceed max_seq_len=64"):
        model(random_ids(1, 65))


# --------------------------------------------------------------------------- next-token loss


def test_next_token_loss_by_hand():
    # 1 sequence of 3 tokens, vocabulary of 2: positions 0 and 1 predict the tokens at 1 and 2 (both id 0);
    # the logits of the last position predict nothing
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]]])
    targets = torch.tensor([[1, 0, 0]])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert next_token_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_next_token_loss_shift_and_ignore_index():
    logits = torch.randn(2, 6, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 6))
    targets[1, 4:] = 0                                              # padding with id 0
    ours = next_token_loss(logits, targets, ignore_index=0)
    keep = targets[:, 1:] != 0
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, 11), targets[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(ours, per_token[keep.reshape(-1)].mean())
    unshifted = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert not torch.isclose(next_token_loss(logits, targets), unshifted)


def test_next_token_loss_equals_llama_loss():
    model = tiny_decoder(pad_id=0)
    hf = to_hf_llama(model)
    ids = random_ids(3, 12)
    ids[0, 8:] = 0
    labels = ids.masked_fill(ids == 0, -100)
    with torch.no_grad():
        theirs = hf(ids, labels=labels).loss
        assert model.loss(ids).item() == pytest.approx(theirs.item(), abs=1e-5)


@pytest.mark.parametrize(
    "logits,targets,match",
    [
        (torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.long), "logits must be a floating-point tensor"),
        (torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long), "targets must have shape"),
        (torch.randn(2, 1, 7), torch.zeros(2, 1, dtype=torch.long), "seq >= 2"),
        (torch.randn(2, 5, 7), torch.zeros(2, 5), "targets must be an integer tensor"),
    ],
)
def test_next_token_loss_rejects_bad_input(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        next_token_loss(logits, targets)


# --------------------------------------------------------------------------- Hugging Face Llama, both ways

CONVERSIONS = [(4, False), (2, False), (1, True), (2, True)]


def max_abs_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("n_kv_heads,tie", CONVERSIONS)
def test_to_hf_llama_gives_the_same_logits(n_kv_heads, tie):
    model = tiny_decoder(n_kv_heads=n_kv_heads, tie_embeddings=tie)
    hf = to_hf_llama(model)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == n_kv_heads
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    ids = random_ids()
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.abs().max() > 1.0, "weights too small for a meaningful comparison"
    assert max_abs_diff(ours, theirs) < 1e-4


@pytest.mark.parametrize("n_kv_heads,tie", CONVERSIONS)
def test_from_hf_llama_gives_the_same_logits(n_kv_heads, tie):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, max_position_embeddings=64, tie_word_embeddings=tie, initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, rms_norm_eps=1e-5,
    )
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(config).eval()
    for name, p in hf.named_parameters():                          # make the norms non-trivial too
        if name.endswith("norm.weight"):
            torch.nn.init.uniform_(p, 0.5, 1.5)
    model = from_hf_llama(hf)
    assert model.config.n_kv_heads == n_kv_heads and model.config.tie_embeddings == tie
    assert model.config.rope_theta == 1000.0 and model.config.norm_eps == 1e-5
    ids = random_ids()
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.abs().max() > 1.0
    assert max_abs_diff(ours, theirs) < 1e-4


def test_conversion_round_trip_is_exact_and_float64_agrees():
    model = tiny_decoder(tie_embeddings=True).double()
    hf = to_hf_llama(model)
    assert hf.dtype == torch.float64
    back = from_hf_llama(hf)
    ids = random_ids()
    for (name, p), (name_back, p_back) in zip(model.state_dict().items(), back.state_dict().items()):
        assert name == name_back and torch.equal(p, p_back)
    with torch.no_grad():
        # Hugging Face's RMSNorm normalises in float32 even for float64 inputs
        assert max_abs_diff(model(ids), hf(ids).logits) < 1e-5


def test_llama_name_map_covers_every_parameter():
    model = tiny_decoder()
    names = llama_name_map(2)
    assert set(names) == set(model.state_dict())
    assert set(names.values()) == set(to_hf_llama(model).state_dict())
    assert names["blocks.1.mlp_norm.weight"] == "model.layers.1.post_attention_layernorm.weight"


def test_from_llama_config_rejects_what_decoderlm_lacks():
    base = models.llama_config_dict(DecoderConfig())
    for change, match in [
        ({"attention_bias": True}, "no attention or MLP biases"),
        ({"hidden_act": "gelu"}, "hidden_act='silu'"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "default RoPE"),
        ({"model_type": "gpt2"}, "model_type 'llama'"),
        ({"head_dim": 32}, "head_dim = hidden_size / num_attention_heads"),
    ]:
        with pytest.raises(ValueError, match=match):
            from_llama_config({**base, **change})
    assert from_llama_config(base) == DecoderConfig()


# --------------------------------------------------------------------------- save_pretrained / load_pretrained


@pytest.mark.parametrize("tie", [False, True])
def test_save_pretrained_loads_in_transformers_and_course_lib(tmp_path, tie):
    model = tiny_decoder(n_kv_heads=1, tie_embeddings=tie, eos_id=2)
    folder = save_pretrained(model, tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = load_pretrained(folder)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    assert ours.config == model.config and not ours.training
    ids = random_ids()
    with torch.no_grad():
        expected = model(ids)
        assert max_abs_diff(hf(ids).logits, expected) < 1e-4
        assert torch.equal(ours(ids), expected)


def test_load_pretrained_reads_a_folder_written_by_transformers(tmp_path):
    model = tiny_decoder(tie_embeddings=True)
    to_hf_llama(model).save_pretrained(tmp_path)
    with torch.no_grad():
        ids = random_ids()
        assert torch.equal(load_pretrained(tmp_path)(ids), model(ids))


def test_load_pretrained_by_name_and_missing_names(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ASSETS", tmp_path)
    save_pretrained(tiny_decoder(), tmp_path / "tiny-a")
    (tmp_path / "not-a-model").mkdir()
    assert available_pretrained() == ["tiny-a"]
    assert isinstance(load_pretrained("tiny-a"), DecoderLM)
    with pytest.raises(FileNotFoundError, match=r"available: tiny-a\)"):
        load_pretrained("tiny-b")
    monkeypatch.setattr(models, "ASSETS", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="none yet"):
        load_pretrained("tiny-a")


# --------------------------------------------------------------------------- encoder-only


def tiny_encoder_config(**overrides) -> EncoderConfig:
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32, pad_id=0, init_std=0.2)
    return EncoderConfig(**{**settings, **overrides})


@pytest.mark.parametrize("pre_norm", [True, False])
def test_encoder_shapes_and_bidirectional_attention(pre_norm):
    torch.manual_seed(0)
    encoder = EncoderModel(tiny_encoder_config(pre_norm=pre_norm)).eval()
    ids = random_ids(2, 10, seed=5).clamp(min=1)
    hidden = encoder(ids)
    assert hidden.shape == (2, 10, 32) and hidden.dtype == torch.float32
    changed = ids.clone()
    changed[:, -1] = changed[:, -1] % (VOCAB - 1) + 1
    assert not torch.allclose(encoder(changed)[:, 0], hidden[:, 0]), "the first token sees the last one"


@pytest.mark.parametrize("pre_norm", [True, False])
def test_encoder_padding_does_not_change_real_positions(pre_norm):
    torch.manual_seed(0)
    encoder = EncoderModel(tiny_encoder_config(pre_norm=pre_norm)).eval()
    real = random_ids(1, 6, seed=2).clamp(min=1)
    padded = torch.cat([real, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    junk = torch.cat([real, torch.randint(1, VOCAB, (1, 4))], dim=1)    # other tokens, masked out
    mask = torch.tensor([[1] * 6 + [0] * 4])
    alone = encoder(real)
    torch.testing.assert_close(encoder(padded)[:, :6], alone)              # mask from pad_id
    torch.testing.assert_close(encoder(junk, attention_mask=mask)[:, :6], alone)
    torch.testing.assert_close(encoder(junk, attention_mask=mask.bool())[:, :6], alone)


def test_encoder_rejects_bad_mask_and_lengths():
    encoder = EncoderModel(tiny_encoder_config())
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        encoder(random_ids(2, 5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        encoder(random_ids(1, 33))


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_classifier_shapes_and_padding_invariance(pooling):
    torch.manual_seed(0)
    classifier = EncoderClassifier(tiny_encoder_config(), n_classes=3, pooling=pooling).eval()
    ids = random_ids(4, 7).clamp(min=1)
    out = classifier(ids)
    assert out.shape == (4, 3) and out.dtype == torch.float32
    padded = torch.cat([ids, torch.zeros(4, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(classifier(padded), out)
    with pytest.raises(ValueError, match="pooling must be 'first' or 'mean'"):
        EncoderClassifier(tiny_encoder_config(), n_classes=3, pooling="max")


def test_masked_lm_head_is_tied_and_trains():
    torch.manual_seed(0)
    config = tiny_encoder_config()
    model = EncoderForMaskedLM(config)
    assert model.head.decoder.weight is model.encoder.tok_embed.weight
    assert MaskedLMHead(config).decoder.weight is not model.encoder.tok_embed.weight
    ids = random_ids(4, 12).clamp(min=5)
    masked, labels = mlm_mask(ids, 0.5, mask_id=4, vocab_size=VOCAB, special_ids=(0, 1, 2, 3, 4), generator=torch.Generator().manual_seed(0))
    assert model(masked).shape == (4, 12, VOCAB)
    loss = model.loss(masked, labels)
    assert loss.item() == pytest.approx(math.log(VOCAB), rel=0.3)
    loss.backward()
    assert model.encoder.tok_embed.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- mlm_mask

SPECIALS = (0, 1, 2, 3)   # pad, [CLS], [SEP], [MASK]
MASK_ID = 3


def test_mlm_mask_follows_the_80_10_10_rule():
    ids = torch.randint(4, VOCAB, (200, 250), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1], ids[:, 200:249] = 1, 2, 0                         # [CLS] ... [SEP] and padding
    masked, labels = mlm_mask(ids, 0.15, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS, generator=torch.Generator().manual_seed(1))
    chosen = labels != -100
    candidates = ~torch.isin(ids, torch.tensor(SPECIALS))
    n = chosen.sum().item()
    assert not (chosen & ~candidates).any(), "special and pad tokens are never chosen"
    assert torch.equal(masked[~candidates], ids[~candidates])
    assert n / candidates.sum().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen]), "positions not chosen are untouched"
    to_mask = masked[chosen] == MASK_ID
    unchanged = masked[chosen] == ids[chosen]
    replaced = ~to_mask & ~unchanged
    assert to_mask.sum().item() / n == pytest.approx(0.8, abs=0.015)
    # a random token equals the original 1 time in VOCAB: those count as unchanged
    assert replaced.sum().item() / n == pytest.approx(0.1 * (1 - 1 / VOCAB), abs=0.01)
    assert unchanged.sum().item() / n == pytest.approx(0.1 + 0.1 / VOCAB, abs=0.01)
    assert masked.dtype == labels.dtype == ids.dtype and masked.shape == ids.shape


def test_mlm_mask_is_deterministic_with_a_generator_and_does_not_modify_input():
    ids = torch.randint(4, VOCAB, (8, 40))
    before = ids.clone()
    a = mlm_mask(ids, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS, generator=torch.Generator().manual_seed(7))
    b = mlm_mask(ids, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS, generator=torch.Generator().manual_seed(7))
    c = mlm_mask(ids, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, before)


def test_mlm_mask_edge_probabilities():
    ids = torch.randint(0, VOCAB, (4, 30))
    masked, labels = mlm_mask(ids, 0.0, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS)
    assert torch.equal(masked, ids) and (labels == -100).all()
    _, labels = mlm_mask(ids, 1.0, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS)
    assert torch.equal(labels != -100, ~torch.isin(ids, torch.tensor(SPECIALS)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mask_prob=1.5), r"mask_prob must be a number in \[0, 1\]"),
        (dict(mask_id=VOCAB), "mask_id must be in"),
        (dict(input_ids=torch.rand(2, 3)), "input_ids must be an integer tensor"),
        (dict(input_ids=torch.tensor([[VOCAB]])), "input_ids must hold ids in"),
    ],
)
def test_mlm_mask_rejects_bad_arguments(kwargs, match):
    args = dict(input_ids=torch.ones(2, 3, dtype=torch.long), mask_prob=0.15, mask_id=MASK_ID, vocab_size=VOCAB)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mlm_mask(**args)


# --------------------------------------------------------------------------- encoder-decoder

SENTINELS = list(range(VOCAB - 1, VOCAB - 41, -1))        # <extra_id_0> is the last id, counting down


@pytest.mark.parametrize("n,density,mean", [(20, 0.15, 3.0), (100, 0.15, 3.0), (57, 0.3, 2.0), (2, 0.15, 3.0), (64, 0.5, 1.0)])
def test_span_corruption_round_trips(n, density, mean):
    ids = torch.randint(2, 50, (n,), generator=torch.Generator().manual_seed(n))
    for seed in range(5):
        inputs, targets = span_corruption(ids, density, mean, sentinel_ids=SENTINELS, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(undo_span_corruption(inputs, targets, SENTINELS), ids)
        n_noise = min(max(round(n * density), 1), n - 1)
        is_sentinel = torch.isin(targets, torch.tensor(SENTINELS))
        n_spans = is_sentinel.sum().item()
        assert len(targets) - n_spans == n_noise, "exactly round(n * density) tokens are dropped"
        assert len(inputs) == n - n_noise + n_spans
        used = targets[is_sentinel].tolist()
        assert used == SENTINELS[:n_spans], "sentinels in order <extra_id_0>, <extra_id_1>, ..."
        assert inputs[torch.isin(inputs, torch.tensor(SENTINELS))].tolist() == used
        assert targets[0].item() == SENTINELS[0] and inputs[0].item() not in SENTINELS, "T5 starts with kept tokens"


def test_span_corruption_by_hand_and_with_eos():
    ids = torch.arange(10, 20)
    inputs, targets = span_corruption(ids, 0.3, 3.0, sentinel_ids=[99, 98], generator=torch.Generator().manual_seed(0), eos_id=1)
    # 3 noise tokens in one span; the kept tokens come first and the span ends the sequence
    assert inputs.tolist() == [10, 11, 12, 13, 14, 15, 16, 99, 1]
    assert targets.tolist() == [99, 17, 18, 19, 1]
    assert torch.equal(undo_span_corruption(inputs, targets, [99, 98], eos_id=1), ids)


def test_span_corruption_noise_density_and_span_lengths_on_average():
    ids = torch.randint(2, 50, (200,))
    total_spans = 0
    for seed in range(20):
        _, targets = span_corruption(ids, 0.15, 3.0, sentinel_ids=SENTINELS, generator=torch.Generator().manual_seed(seed))
        total_spans += torch.isin(targets, torch.tensor(SENTINELS)).sum().item()
    assert 30 * 20 / total_spans == pytest.approx(3.0, rel=0.05), "mean span length"


def test_span_corruption_is_deterministic_and_rejects_bad_arguments():
    ids = torch.arange(2, 40)
    a = span_corruption(ids, sentinel_ids=SENTINELS, generator=torch.Generator().manual_seed(3))
    b = span_corruption(ids, sentinel_ids=SENTINELS, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match=r"noise_density must be in \(0, 1\)"):
        span_corruption(ids, 1.0, sentinel_ids=SENTINELS)
    with pytest.raises(ValueError, match="need at least 2 sentinel ids"):
        span_corruption(ids, 0.15, 3.0, sentinel_ids=[99])
    with pytest.raises(ValueError, match=r"integer tensor \(seq,\)"):
        span_corruption(ids[None], sentinel_ids=SENTINELS)


def tiny_seq2seq(**overrides) -> EncoderDecoderModel:
    settings = dict(vocab_size=VOCAB, d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_heads=4, d_ff=64, max_seq_len=32, init_std=0.2)
    torch.manual_seed(0)
    return EncoderDecoderModel(Seq2SeqConfig(**{**settings, **overrides})).eval()


def test_seq2seq_shapes_causality_and_padding():
    model = tiny_seq2seq()
    src = random_ids(2, 9).clamp(min=2)
    tgt = random_ids(2, 6, seed=4).clamp(min=2)
    logits = model(src, tgt)
    assert logits.shape == (2, 6, VOCAB) and logits.dtype == torch.float32
    changed = tgt.clone()
    changed[:, 4:] = 5
    torch.testing.assert_close(model(src, changed)[:, :4], logits[:, :4])     # decoder self-attention is causal
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)    # pad_id 0
    torch.testing.assert_close(model(padded, tgt), logits)
    src2 = src.clone()
    src2[:, -1] = 7
    assert not torch.allclose(model(src2, tgt)[:, 0], logits[:, 0]), "every decoder position sees the whole source"
    assert model.lm_head.weight is model.embed.weight
    assert tiny_seq2seq(tie_embeddings=False).lm_head.weight is not tiny_seq2seq(tie_embeddings=False).embed.weight


def test_seq2seq_loss_uses_teacher_forcing():
    model = tiny_seq2seq()
    src, labels = random_ids(2, 9).clamp(min=2), random_ids(2, 5, seed=3).clamp(min=2)
    labels[1, 3:] = -100
    decoder_in = shift_right(labels, 0, 0)
    assert decoder_in[:, 0].tolist() == [0, 0] and torch.equal(decoder_in[0, 1:], labels[0, :-1])
    assert decoder_in[1].tolist() == [0, *labels[1, :3].tolist(), 0]
    logits = model(src, decoder_in)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model.loss(src, labels), expected)


def test_generate_seq2seq_is_greedy_recompute_and_stops_at_eos():
    model = tiny_seq2seq()
    src = random_ids(3, 8).clamp(min=2)
    out = generate_seq2seq(model, src, max_new_tokens=6, eos_id=-1)
    assert out.shape == (3, 7) and out.dtype == torch.long and (out[:, 0] == 0).all()
    for t in range(1, 7):                                           # each token is the argmax given the prefix
        assert torch.equal(out[:, t], model(src, out[:, :t])[:, -1].argmax(-1))
    eos = out[0, 3].item()
    stopped = generate_seq2seq(model, src[:1], max_new_tokens=6, eos_id=eos)
    assert stopped[0].tolist() == out[0, : out[0].tolist().index(eos) + 1].tolist()


def test_seq2seq_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        Seq2SeqConfig(d_model=30)
    with pytest.raises(ValueError, match="eos_id must be in"):
        Seq2SeqConfig(vocab_size=10, eos_id=10)


# --------------------------------------------------------------------------- what the lesson says


def test_differences_note_names_what_differs_from_bert_and_t5():
    for phrase in ["post-LN", "token-type", "relative", "RMSNorm", "Pre-norm", "learned absolute", "1/sqrt(head_dim)"]:
        assert phrase in DIFFERENCES, phrase
    assert DIFFERENCES in models.__doc__


# --------------------------------------------------------------------------- lesson 06: MHA -> GQA


def test_convert_kv_heads_is_exact_when_the_heads_of_a_group_agree():
    """If the heads of each group already have equal K and V weights, merging them changes nothing."""
    mha = tiny_decoder(n_kv_heads=4).double()
    with torch.no_grad():
        for block in mha.blocks:
            for proj in (block.attn.k_proj, block.attn.v_proj):
                heads = proj.weight.view(4, 8, 32)
                heads[1] = heads[0]
                heads[3] = heads[2]
    gqa = models.convert_kv_heads(mha, 2)
    assert gqa.config.n_kv_heads == 2 and gqa.blocks[0].attn.k_proj.weight.shape == (16, 32)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids))


def test_convert_kv_heads_pools_every_layer_and_copies_the_rest():
    mha = tiny_decoder(n_kv_heads=4, tie_embeddings=True)
    mqa = models.convert_kv_heads(mha, 1)
    assert mha.config.n_kv_heads == 4 and mha.blocks[1].attn.k_proj.weight.shape == (32, 32)   # unchanged
    for old, new in zip(mha.blocks, mqa.blocks):
        torch.testing.assert_close(new.attn.v_proj.weight, old.attn.v_proj.weight.view(4, 8, 32).mean(0))
        torch.testing.assert_close(new.attn.q_proj.weight, old.attn.q_proj.weight)
        torch.testing.assert_close(new.mlp.up_proj.weight, old.mlp.up_proj.weight)
    assert mqa.num_parameters() == mha.num_parameters() - 2 * 2 * 3 * 8 * 32
    assert mqa.lm_head.weight is mqa.embed.weight                         # still tied
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    hf = models.to_hf_llama(mqa)                                          # a valid Llama with one kv head
    with torch.no_grad():
        assert (hf(ids).logits - mqa(ids)).abs().max() < 1e-4


def test_convert_kv_heads_rejects_what_does_not_divide():
    with pytest.raises(ValueError, match="dividing the model's 2 key/value heads"):
        models.convert_kv_heads(tiny_decoder(), 4)
    with pytest.raises(ValueError, match="must be a DecoderLM"):
        models.convert_kv_heads(torch.nn.Linear(2, 2), 1)


def test_the_decoder_runs_under_bf16_autocast_and_keeps_its_loss():
    """Rotary angles take the queries' dtype, so q, k and v agree under autocast (they used not to: q and k came out fp32)."""
    from course_lib.data import build_corpus
    from course_lib.tokenizer import course_tokenizer

    tok = course_tokenizer(0)
    model = models.load_pretrained("course-lm-small")
    ids = torch.tensor([[1, *tok.encode(build_corpus(0).heldout_texts[0])[:60]]])
    with torch.no_grad():
        full = model.loss(ids).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids)
            half = model.loss(ids).item()
    assert logits.dtype == torch.bfloat16 and abs(half - full) < 0.05 * full
