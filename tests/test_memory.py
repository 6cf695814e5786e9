"""course_lib.memory: parameter counts, the memory estimator, and measurements that check it (lesson 03).

Counts are compared with ``sum(p.numel() for p in model.parameters())`` of ``transformers``
models built from configurations (tiny ones for real, full-size ones on the ``meta``
device, which allocates nothing). The estimator is compared with what one real training
step on the CPU holds: parameters, gradients and optimizer states read from their
storages, and the activations autograd saves for backward. The H200 measurements of
ANCHORS.md are reproduced from the shape alone; the ``gpu`` test measures a peak.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from course_lib.attention import MultiHeadAttention
from course_lib.memory import (
    GiB,
    REFERENCE_MODELS,
    ModelShape,
    TrainingMemory,
    activation_bytes_per_layer,
    activation_memory,
    attention_kernel,
    attention_params,
    count_params,
    dtype_bytes,
    embedding_params,
    estimate_inference_memory,
    estimate_training_memory,
    format_bytes,
    gated_mlp_params,
    korthikanti_activation_bytes,
    kv_cache_bytes,
    linear_params,
    make_optimizer,
    matmul_weight_params,
    measure_cuda_peak,
    measure_training_memory,
    mlp_params,
    norm_params,
    optimizer_state_bytes,
    param_breakdown,
    param_tensor_count,
    record_saved_tensors,
    reference_1b_config,
    saved_activation_bytes,
    source_table,
    tensor_bytes,
    unique_storage_bytes,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# --------------------------------------------------------------------------- models used below

LLAMA_GQA = ModelShape(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=344, max_positions=256)
LLAMA_TIED = ModelShape(vocab_size=384, d_model=64, n_layers=3, n_heads=4, d_ff=176, tie_embeddings=True, max_positions=256)
GPT2 = ModelShape(vocab_size=512, d_model=96, n_layers=2, n_heads=4, style="gpt2", tie_embeddings=True, max_positions=256,
                  activation="gelu_new", dropout=0.1, attention_dropout=0.1)
GPT2_NO_DROPOUT = ModelShape(vocab_size=512, d_model=96, n_layers=2, n_heads=4, style="gpt2", tie_embeddings=True,
                             max_positions=256, activation="gelu_pytorch_tanh")
SHAPES = {"llama-gqa": LLAMA_GQA, "llama-tied": LLAMA_TIED, "gpt2": GPT2, "gpt2-no-dropout": GPT2_NO_DROPOUT}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hf_model(shape: ModelShape, attention: str = "sdpa", precision: str = "fp32", checkpointing: bool = False):
    """A ``transformers`` model built from ``shape``, in the precision's dtype, seeded."""
    torch.manual_seed(0)
    config = shape.to_hf_config(attn_implementation=attention)
    cls = transformers.GPT2LMHeadModel if shape.style == "gpt2" else transformers.LlamaForCausalLM
    model = cls(config)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model


def token_batch(shape: ModelShape, batch_size: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, shape.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- basic units


def test_tensor_bytes_is_unchanged():
    assert tensor_bytes(torch.zeros(3, 4)) == 48
    assert tensor_bytes(torch.zeros(3, 4, dtype=torch.bfloat16)[0]) == 8
    with pytest.raises(ValueError, match="torch.Tensor"):
        tensor_bytes([1, 2])


def test_dtype_bytes_and_format_bytes():
    assert [dtype_bytes(d) for d in ("fp32", "bf16", "fp16", "int8", "int4")] == [4, 2, 2, 1, 0.5]
    assert dtype_bytes(torch.bfloat16) == 2 and dtype_bytes(torch.float64) == 8
    assert format_bytes(3 * GiB) == "3.00 GiB" and format_bytes(512) == "512 B"
    with pytest.raises(ValueError, match="one of"):
        dtype_bytes("fp12")


def test_unique_storage_bytes_counts_views_and_tied_weights_once():
    w = torch.zeros(10, 4)
    assert unique_storage_bytes([w, w[2:], w.t(), None]) == 160
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert unique_storage_bytes(list(emb.parameters()) + list(head.parameters())) == 160
    with pytest.raises(ValueError, match="meta"):
        unique_storage_bytes([torch.zeros(3, device="meta")])


# --------------------------------------------------------------------------- counting parameters


@pytest.mark.parametrize("bias", [True, False])
def test_linear_embedding_and_norm_counts_match_torch_modules(bias):
    assert linear_params(7, 5, bias) == n_params(nn.Linear(7, 5, bias=bias))
    assert embedding_params(11, 6) == n_params(nn.Embedding(11, 6))
    assert norm_params(9, "rmsnorm") == n_params(nn.RMSNorm(9))
    assert norm_params(9, "layernorm") == n_params(nn.LayerNorm(9))


@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])
@pytest.mark.parametrize("bias", [False, True])
def test_attention_count_matches_the_course_multi_head_attention(n_kv_heads, bias):
    assert attention_params(64, 8, n_kv_heads, bias=bias) == n_params(MultiHeadAttention(64, 8, n_kv_heads, bias=bias))


def test_gqa_attention_is_smaller_than_mha_by_the_kv_projections():
    mha, gqa = attention_params(4096, 32), attention_params(4096, 32, 8)
    assert mha - gqa == 2 * 4096 * (4096 - 8 * 128)


def test_mlp_counts_match_modules():
    swiglu = nn.ModuleList([nn.Linear(16, 44, bias=False), nn.Linear(16, 44, bias=False), nn.Linear(44, 16, bias=False)])
    plain = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
    assert gated_mlp_params(16, 44) == n_params(swiglu)
    assert mlp_params(16, 64) == n_params(plain)


@pytest.mark.parametrize(
    "config_kwargs,cls_name",
    [
        (dict(n_kv_heads=2), "llama"),                                    # GQA, untied
        (dict(n_kv_heads=4, tie_embeddings=True), "llama"),               # MHA, tied
        (dict(n_kv_heads=1, head_dim=24, attn_bias=True, mlp_bias=True), "llama"),  # MQA, head_dim != d/a, biases
        (dict(style="gpt2", tie_embeddings=True, activation="gelu_new"), "gpt2"),
        (dict(style="gpt2", tie_embeddings=False, activation="gelu_new", d_ff=200), "gpt2"),
    ],
)
def test_count_params_matches_tiny_transformers_models(config_kwargs, cls_name):
    shape = ModelShape(vocab_size=300, d_model=64, n_layers=3, n_heads=4, d_ff=config_kwargs.pop("d_ff", 176),
                       max_positions=128, **config_kwargs)
    model = hf_model(shape)
    assert count_params(shape) == n_params(model)
    assert param_tensor_count(shape) == len(list(model.parameters()))
    assert ModelShape.from_hf_config(model.config) == shape
    matmul = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, transformers.pytorch_utils.Conv1D))]
    assert matmul_weight_params(shape) == sum(w.numel() for w in matmul)


def test_count_params_matches_a_tiny_mistral():
    config = transformers.MistralConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256)
    shape = ModelShape.from_hf_config(config)
    assert (shape.n_kv_heads, shape.d_ff, shape.style) == (1, 160, "llama")
    assert count_params(shape) == n_params(transformers.MistralForCausalLM(config))


REFERENCE_COUNTS = {"gpt2-124m": 124_439_808, "llama-3-8b": 8_030_261_248, "mistral-7b-v0.1": 7_241_732_096}


def reference_hf_config(name: str):
    if name == "gpt2-124m":
        return transformers.GPT2Config(), transformers.GPT2LMHeadModel
    if name == "llama-3-8b":
        return transformers.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                        tie_word_embeddings=False), transformers.LlamaForCausalLM
    return transformers.MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                                      tie_word_embeddings=False), transformers.MistralForCausalLM


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_reference_models_have_their_published_counts(name):
    config, cls = reference_hf_config(name)
    shape = ModelShape.from_hf_config(config)
    assert shape == REFERENCE_MODELS[name]
    assert count_params(shape) == REFERENCE_COUNTS[name]
    with torch.device("meta"):            # builds the full-size model without allocating its weights
        model = cls(config)
    assert n_params(model) == REFERENCE_COUNTS[name]


def test_param_breakdown_of_gpt2_has_learned_positions_and_a_tied_head():
    parts = param_breakdown(REFERENCE_MODELS["gpt2-124m"])
    assert parts["position_embedding"] == 1024 * 768 and parts["lm_head"] == 0
    assert parts["token_embedding"] == 50257 * 768


def test_reference_1b_config_is_1_10_billion_and_16_bytes_per_param_in_fp32_adamw():
    shape = reference_1b_config()
    n = count_params(shape)
    assert round(n / 1e9, 2) == 1.10
    with torch.device("meta"):
        assert n_params(transformers.LlamaForCausalLM(shape.to_hf_config())) == n
    est = estimate_training_memory(shape, 1, 512, "adamw", "fp32")
    assert est.weights == est.gradients == 4 * n
    assert est.optimizer_states == 8 * n + 4 * param_tensor_count(shape)   # + Adam's step counters
    assert est.model_states / n == pytest.approx(16, abs=1e-5)
    assert est.weights / GiB == pytest.approx(4.11, abs=0.005)              # ANCHORS: weights 4.11 GiB


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_heads=3), "divisible by n_heads"),
        (dict(n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(style="bert"), "style must be one of"),
        (dict(d_model=0), "d_model must be a positive int"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(style="gpt2", activation="swish"), "gpt2-style activation"),
    ],
)
def test_model_shape_rejects_bad_numbers(kwargs, match):
    base = dict(vocab_size=100, d_model=64, n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match=match):
        ModelShape(**{**base, **kwargs})


def test_from_hf_config_rejects_other_models_and_counting_rejects_non_shapes():
    with pytest.raises(ValueError, match="LlamaConfig, MistralConfig or GPT2Config"):
        ModelShape.from_hf_config(transformers.BertConfig())
    with pytest.raises(ValueError, match="must be a ModelShape"):
        count_params(transformers.LlamaConfig())


# --------------------------------------------------------------------------- the source text's table and inference


def test_source_table_is_4_plus_20_and_scales_with_bits():
    rows = {r.precision: r for r in source_table()}
    fp32 = rows["fp32"]
    assert (fp32.weights, fp32.adam_states, fp32.gradients, fp32.activations_estimate) == (4, 8, 4, 8)
    assert fp32.train - fp32.load == 20
    assert [(r.load_gb_per_billion, r.train_gb_per_billion) for r in source_table()] == [(4, 24), (2, 12), (1, 6)]


def test_source_table_against_the_estimator_for_1b_params():
    shape = reference_1b_config()
    n = count_params(shape)
    fp32 = source_table()[0]
    est = estimate_training_memory(shape, 1, 512, "adamw", "fp32")
    # the model states agree (4 + 8 + 4 = 16 bytes/param); the source's "8 for activations" does not scale so
    assert est.model_states / n == pytest.approx(fp32.weights + fp32.adam_states + fp32.gradients, abs=1e-5)
    big = estimate_training_memory(shape, 4, 1024, "adamw", "fp32")
    assert big.activations / n > 2 * fp32.activations_estimate
    # 16-bit: the source says 12 bytes/param to train; pure bf16 AdamW keeps 2 + 2 + 4 = 8 in model states
    assert estimate_training_memory(shape, 1, 512, "adamw", "bf16").model_states / n == pytest.approx(8, abs=1e-5)
    # mixed precision keeps 16 bytes/param of model states: autocast does not halve them
    assert estimate_training_memory(shape, 1, 512, "adamw", "bf16-mixed").model_states / n == pytest.approx(16, abs=1e-5)
    # load: 1B params in fp32 is 4 GB
    assert estimate_inference_memory(shape, weight_dtype="fp32").weights / n == 4


def test_kv_cache_reproduces_the_gqa_table_of_anchors():
    sizes = {kv: kv_cache_bytes(32, kv, 128, 32 * 1024, 8, 2) for kv in (32, 8, 1)}
    assert sizes == {32: 128 * GiB, 8: 32 * GiB, 1: 4 * GiB}


def test_kv_cache_formula_matches_a_real_transformers_cache():
    shape = ModelShape(vocab_size=128, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=128)
    model = hf_model(shape).eval()
    with torch.no_grad():
        out = model(token_batch(shape, 3, 10), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    held = sum(tensor_bytes(t) for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == kv_cache_bytes(3, 2, 16, 10, 3, 4)


def test_inference_estimate_by_dtype():
    shape = REFERENCE_MODELS["llama-3-8b"]
    n = count_params(shape)
    for dtype, per_param in (("bf16", 2), ("int8", 1), ("int4", 0.5)):
        est = estimate_inference_memory(shape, batch_size=1, seq_len=8192, weight_dtype=dtype)
        assert est.weights == math.ceil(n * per_param)
        assert est.kv_cache == 2 * 32 * 8 * 128 * 8192 * 2       # 16-bit cache: 1 GiB
        assert est.total == est.weights + est.kv_cache


# --------------------------------------------------------------------------- measuring saved tensors


def test_saved_activation_bytes_by_hand():
    x = torch.randn(8, 16)
    lin = nn.Linear(16, 32)
    # Linear saves its input (512 B); ReLU saves its output (1 KiB); the parameters are not activations
    assert saved_activation_bytes(lambda: torch.relu(lin(x)).sum()) == 8 * 16 * 4 + 8 * 32 * 4
    # exp saves its output; three views of one input are one storage
    y = torch.randn(100, requires_grad=True)
    z = y.exp()
    assert saved_activation_bytes(lambda: (z[:50] * z[50:]).sum() + (z * 2).sum()) == 400
    assert saved_activation_bytes(lambda: y.exp().sum()) == 400


def test_saved_tensors_freed_before_the_end_are_not_counted():
    y = torch.randn(1000, requires_grad=True)

    def fn():
        y.exp().sum()               # the graph of this result is dropped at once
        return y.sin().sum()        # sin saves its input y: a leaf that needs grad, held by the caller

    report = record_saved_tensors(fn)
    assert report.activations == 4000 and report.count == 1


def test_autocast_weight_copies_are_reported_apart():
    lin = nn.Linear(64, 32)
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = record_saved_tensors(lambda: lin(x).float().sum())
    assert report.weight_copies == 0                     # no gradient for x: the weight is not needed
    assert report.by_dtype == {"bfloat16": 4 * 64 * 2}   # the bf16 copy of x, for the weight's gradient
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = record_saved_tensors(lambda: lin(x).float().sum())
    assert report.weight_copies == 64 * 32 * 2           # bf16 copy of the weight, for x's gradient
    assert report.activations == 4 * 64 * 2


def test_record_saved_tensors_rejects_non_callables():
    with pytest.raises(ValueError, match="callable"):
        record_saved_tensors(torch.zeros(3))


# --------------------------------------------------------------------------- estimate against measurement

AGREEMENT = 0.05
CASES = (
    [("llama-gqa", a, p, c, b, s) for a in ("eager", "sdpa") for p in ("fp32", "bf16", "bf16-mixed")
     for c in (False, True) for b, s in ((2, 64), (3, 128))]
    + [("llama-tied", a, p, c, 2, 128) for a in ("eager", "sdpa") for p in ("fp32", "bf16", "bf16-mixed") for c in (False, True)]
    + [("gpt2", a, p, c, 2, 64) for a in ("eager", "sdpa") for p in ("fp32", "bf16", "bf16-mixed") for c in (False, True)]
    + [("gpt2-no-dropout", a, p, False, 3, 128) for a in ("eager", "sdpa") for p in ("fp32", "bf16", "bf16-mixed")]
)


@pytest.mark.parametrize("name,attention,precision,checkpointing,batch_size,seq_len", CASES,
                         ids=["-".join(map(str, c)).replace("True", "ckpt").replace("False", "full") for c in CASES])
def test_estimate_agrees_with_a_measured_training_step(name, attention, precision, checkpointing, batch_size, seq_len):
    shape = SHAPES[name]
    model = hf_model(shape, attention, precision, checkpointing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = measure_training_memory(model, token_batch(shape, batch_size, seq_len), precision=precision)
    estimate = estimate_training_memory(shape, batch_size, seq_len, "adamw", precision, attention, checkpointing, "cpu")
    assert measured.peak is None
    for field in ("weights", "gradients", "optimizer_states"):
        assert getattr(estimate, field) == getattr(measured, field), field
    assert estimate.activations == pytest.approx(measured.activations, rel=AGREEMENT)
    assert estimate.weight_copies == pytest.approx(measured.weight_copies, rel=AGREEMENT)
    assert (measured.weight_copies > 0) == (precision == "bf16-mixed")


def test_a_tiny_mistral_agrees_too():
    config = transformers.MistralConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                                        attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config)
    shape = ModelShape.from_hf_config(config)
    measured = measure_training_memory(model, token_batch(shape, 2, 96), precision="bf16-mixed")
    estimate = estimate_training_memory(shape, 2, 96, precision="bf16-mixed", attention="sdpa", device="cpu")
    assert estimate.activations == pytest.approx(measured.activations, rel=AGREEMENT)


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "adam", "adamw"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_optimizer_states_are_measured_exactly(optimizer, precision):
    shape = LLAMA_TIED
    model = hf_model(shape, precision=precision)
    measured = measure_training_memory(model, token_batch(shape, 1, 16), optimizer_name=optimizer, precision=precision)
    assert measured.optimizer_states == optimizer_state_bytes(count_params(shape), optimizer, precision,
                                                              param_tensor_count(shape))


def test_training_memory_sums_its_parts():
    mem = TrainingMemory(weights=4, gradients=4, optimizer_states=8, activations=10, weight_copies=2)
    assert (mem.model_states, mem.total) == (16, 28)
    assert mem.as_dict() == dict(weights=4, gradients=4, optimizer_states=8, activations=10, weight_copies=2,
                                 peak=None, model_states=16, total=28)


def test_checkpointing_keeps_only_layer_inputs():
    est = activation_memory(LLAMA_GQA, 2, 64, "fp32", checkpointing=True, device="cpu")
    assert est["layer_inputs"] == LLAMA_GQA.n_layers * 2 * 64 * LLAMA_GQA.d_model * 4
    full = activation_memory(LLAMA_GQA, 2, 64, "fp32", checkpointing=False, device="cpu")
    assert sum(est.values()) < sum(full.values()) / 3


def test_eight_bit_optimizer_states_are_two_bytes_per_param_and_scales():
    n = 10**9
    assert optimizer_state_bytes(n, "adamw-8bit") == 2 * n + 2 * math.ceil(n / 256) * 4
    assert optimizer_state_bytes(n, "adamw-8bit") / n == pytest.approx(2.03125)
    est = estimate_training_memory(reference_1b_config(), 1, 512, "adamw-8bit", "bf16-mixed")
    assert est.optimizer_states / count_params(reference_1b_config()) == pytest.approx(2.03125, abs=1e-3)


def test_measure_rejects_a_model_in_the_wrong_precision():
    model = hf_model(LLAMA_TIED)
    with pytest.raises(ValueError, match="expects torch.bfloat16 parameters"):
        measure_training_memory(model, token_batch(LLAMA_TIED, 1, 8), precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        measure_training_memory(model, token_batch(LLAMA_TIED, 1, 8), precision="fp8")
    with pytest.raises(ValueError, match=r"\(batch, seq\) int64 tensor"):
        measure_training_memory(model, torch.zeros(8), precision="fp32")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("lion", model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(precision="fp16"), "precision must be one of"), (dict(optimizer="lion"), "optimizer must be one of"),
     (dict(attention="flash"), "attention must be one of"), (dict(device="tpu"), "device must be one of"),
     (dict(batch_size=0), "batch_size must be a positive int")],
)
def test_estimator_rejects_bad_settings(kwargs, match):
    args = dict(batch_size=1, seq_len=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        estimate_training_memory(LLAMA_GQA, **args)


# --------------------------------------------------------------------------- the estimator against the literature and the H200


def test_gpt_block_on_a_gpu_in_bf16_is_korthikanti_34_plus_5as_over_h():
    """Fused GELU, dropout, no FlashAttention, 16-bit, bool dropout masks: Korthikanti et al.'s count,
    plus the 2 x 2 fp32 LayerNorm statistics (16 bytes per token) that they leave out."""
    shape = ModelShape(vocab_size=50257, d_model=2048, n_layers=1, n_heads=16, style="gpt2",
                       activation="gelu_pytorch_tanh", dropout=0.1, attention_dropout=0.1)
    s, b = 2048, 4
    ours = sum(activation_bytes_per_layer(shape, s, b, "bf16", "eager", "cuda").values())
    assert ours == korthikanti_activation_bytes(s, b, 2048, 16) + 16 * s * b
    full = activation_memory(shape, b, s, "bf16", "eager", checkpointing=True, device="cuda")["layer_inputs"]
    assert full == korthikanti_activation_bytes(s, b, 2048, 16, recompute="full")


def test_flash_attention_removes_the_quadratic_term():
    shape = reference_1b_config()
    eager = activation_bytes_per_layer(shape, 4096, 1, "bf16", "eager", "cuda")
    fused = activation_bytes_per_layer(shape, 4096, 1, "bf16", "sdpa", "cuda")
    assert fused["attention_probs"] == 0 and eager["attention_probs"] == 6 * 32 * 4096 * 4096
    assert attention_kernel(shape, "fp32", "sdpa", "cuda") == "math"     # fp32 + GQA: no fused kernel
    assert attention_kernel(shape, "bf16-mixed", "sdpa", "cuda") == "flash"


# (precision, batch, seq, checkpointing, measured peak GiB): ANCHORS.md, 1.10 B model, AdamW, SDPA, H200
ANCHOR_PEAKS = [
    ("fp32", 1, 512, False, 20.6), ("fp32", 4, 1024, False, 34.9), ("fp32", 4, 1024, True, 20.6),
    ("bf16-mixed", 1, 512, False, 20.6), ("bf16-mixed", 4, 1024, False, 23.7),
    ("bf16", 1, 512, False, 10.3), ("bf16", 4, 1024, False, 14.3),
]


@pytest.mark.parametrize("precision,batch_size,seq_len,checkpointing,peak_gib", ANCHOR_PEAKS)
def test_estimated_peak_reproduces_the_h200_measurements(precision, batch_size, seq_len, checkpointing, peak_gib):
    est = estimate_training_memory(reference_1b_config(), batch_size, seq_len, "adamw", precision, "sdpa",
                                   checkpointing, device="cuda")
    assert est.peak / GiB == pytest.approx(peak_gib, rel=0.03)


# --------------------------------------------------------------------------- the course's own model


def test_course_decoder_parameter_count():
    models = pytest.importorskip("course_lib.models")
    if not hasattr(models, "DecoderLM") or not hasattr(models, "DecoderConfig"):
        pytest.skip("course_lib.models has no DecoderLM yet")
    for tie in (False, True):
        config = models.DecoderConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=176,
                                      max_seq_len=128, tie_embeddings=tie)
        shape = ModelShape(vocab_size=300, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=176,
                           max_positions=128, tie_embeddings=tie)
        assert count_params(shape) == n_params(models.DecoderLM(config))


# --------------------------------------------------------------------------- GPU


def test_measure_cuda_peak_explains_what_it_needs():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        measure_cuda_peak(nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))


GPU_SHAPE = ModelShape(vocab_size=32000, d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4, d_ff=2816, max_positions=2048)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,checkpointing",
                         [("fp32", False), ("bf16-mixed", False), ("bf16", False), ("bf16-mixed", True)])
def test_estimated_peak_matches_cuda_max_memory_allocated(precision, checkpointing):
    shape, b, s = GPU_SHAPE, 4, 512
    model = hf_model(shape, "sdpa", precision, checkpointing).cuda()
    batch = token_batch(shape, b, s).cuda()
    measured = measure_cuda_peak(model, batch, optimizer_name="adamw", precision=precision)
    estimate = estimate_training_memory(shape, b, s, "adamw", precision, "sdpa", checkpointing, device="cuda")
    print(f"\n{precision} ckpt={checkpointing}: peak estimated {format_bytes(estimate.peak)}, "
          f"measured {format_bytes(measured.peak)}, activations {estimate.activations / measured.activations:.3f}")
    assert estimate.model_states == pytest.approx(measured.model_states, rel=1e-6)
    assert estimate.activations == pytest.approx(measured.activations, rel=AGREEMENT)
    assert estimate.peak == pytest.approx(measured.peak, rel=0.10)
    del model
    torch.cuda.empty_cache()
