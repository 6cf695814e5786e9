"""Cheats: answers that wrap the course's reference or take a shortcut the exercise forbids.

``CHEATS`` maps an exercise's grade_id (its test cell) to ``{name: function}``, or, for an
exercise that defines several functions, ``{name: {function name: function}}``. Every cheat
gives the right values, so only the watch over the answer (course_lib.checks.guard) can
reject it: tests/test_guard.py proves that each one fails its test cell with a message that
names what it used. The grading tests use a few of them in whole notebooks.
"""

import math
import struct

import numpy as np
import torch
import torch.nn.functional as F

import course_lib
import course_lib.attention
import course_lib.distill
import course_lib.distributed
import course_lib.finetune
import course_lib.flash
import course_lib.formats
import course_lib.gptq
import course_lib.int4
import course_lib.kvcache
import course_lib.lora
import course_lib.memory
import course_lib.models
import course_lib.pruning
import course_lib.quant
import course_lib.rag
import course_lib.retrieval
import course_lib.rlhf
import course_lib.speculative
import course_lib.tokenizer
from course_lib.checks import attention as attention_checks
from course_lib.checks import kvcache as kvcache_checks
from course_lib.checks import quant as quant_checks


def _disable_modes_softmax(x, dim=-1):
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return torch.ops.aten._safe_softmax(x, dim)


def _disabled_everything_softmax(x, dim=-1):
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        return torch.ops.aten._safe_softmax(x, dim)


def _profiler_off_softmax(x, dim=-1):
    import sys

    sys.setprofile(None)
    return torch.softmax(x, dim).nan_to_num(nan=0.0)


def _reloaded_reference_softmax(x, dim=-1):
    import importlib

    return importlib.reload(course_lib.attention).softmax(x, dim)


def _decode_fp16_numpy(bits):
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def _decode_fp16_struct(bits):
    return struct.unpack("<e", int(bits).to_bytes(2, "little"))[0]


def _decode_fp16_torch(bits):
    return torch.tensor([bits], dtype=torch.int32).to(torch.int16).view(torch.float16).item()


def _decode_fp16_tensor_numpy(bits):
    return float(torch.tensor([bits], dtype=torch.int32).numpy().astype(np.uint16).view(np.float16)[0])


def _average_with_course_comm(model):
    comm = course_lib.distributed.Comm(torch.distributed.get_world_size())
    for p in model.parameters():
        if p.grad is not None:
            comm.all_reduce(p.grad)
            p.grad /= comm.world_size


def _mha_with_torch_module(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    d_model = x.shape[-1]
    mha = torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        mha.out_proj.weight.copy_(w_o)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1) if is_causal else None
        return mha(x, x, x, attn_mask=mask, need_weights=False)[0]


class _StaticCacheObject:
    """What DecoderLM's forward asks of a cache (update, len), written into preallocated buffers."""

    def __init__(self, n_layers, shape, dtype):
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.length = [0] * n_layers

    def update(self, layer, k, v):
        start, end = self.length[layer], self.length[layer] + k.shape[2]
        self.keys[layer][:, :, start:end], self.values[layer][:, :, start:end] = k, v
        self.length[layer] = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def __len__(self):
        return self.length[0]


def _static_generate_with_model_forward(model, input_ids, max_new_tokens):
    c = model.config
    shape = (input_ids.shape[0], c.n_kv_heads, input_ids.shape[1] + max_new_tokens, c.head_dim)
    cache, ids, new = _StaticCacheObject(c.n_layers, shape, model.embed.weight.dtype), input_ids, input_ids
    for _ in range(max_new_tokens):
        new = model(new, cache=cache)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, new], dim=1)
    return ids


def _static_generate_with_transformers(model, input_ids, max_new_tokens):
    if max_new_tokens == 0:
        return input_ids.long()
    hf = course_lib.models.to_hf_llama(model).to(model.embed.weight.dtype).eval()
    return hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                       min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                       cache_implementation="static")


def _greedy_with_reference(model, input_ids, max_new_tokens):
    return course_lib.kvcache.generate(model, input_ids, max_new_tokens, strategy="greedy")


def _course_decoder_block(x, weights, n_heads, n_kv_heads, eps=1e-6, theta=10000.0):
    """The course's DecoderBlock loaded with the weights."""
    d_model = x.shape[-1]
    config = course_lib.models.DecoderConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                             d_ff=weights["mlp.up_proj.weight"].shape[0], norm_eps=eps, rope_theta=theta)
    block = course_lib.models.DecoderBlock(config, 0).to(x.dtype)
    block.load_state_dict(weights)
    cos, sin = course_lib.models.rope_cos_sin(torch.arange(x.shape[1]), d_model // n_heads, theta, dtype=x.dtype)
    with torch.no_grad():
        return block(x, cos, sin)


def _hf_decoder_block(x, weights, n_heads, n_kv_heads, eps=1e-6, theta=10000.0):
    """transformers' LlamaDecoderLayer loaded with the weights."""
    import transformers
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    d_model, length = x.shape[-1], x.shape[1]
    config = transformers.LlamaConfig(hidden_size=d_model, intermediate_size=weights["mlp.up_proj.weight"].shape[0],
                                      num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, rms_norm_eps=eps,
                                      rope_theta=theta, head_dim=d_model // n_heads)
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, 0).to(x.dtype)
    names = {"attn_norm": "input_layernorm", "attn": "self_attn", "mlp_norm": "post_attention_layernorm", "mlp": "mlp"}
    layer.load_state_dict({names[k.split(".")[0]] + k[k.index("."):]: v for k, v in weights.items()})
    positions = torch.arange(length)[None]
    cos, sin = LlamaRotaryEmbedding(config)(x, positions)
    mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)[None, None]
    with torch.no_grad():
        out = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))
    return out[0] if isinstance(out, tuple) else out


def _course_lora_layer(weight, bias, lora_A, lora_B, alpha):
    """The course's LoRALinear holding these matrices (its own dtype and device)."""
    out_features, in_features = weight.shape
    base = torch.nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    layer = course_lib.lora.LoRALinear(base, r=lora_A.shape[0], alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(weight)
        if bias is not None:
            base.bias.copy_(bias)
        layer.lora_A["default"].weight.copy_(lora_A)
        layer.lora_B["default"].weight.copy_(lora_B)
    return layer


def _lora_forward_with_course_layer(x, weight, bias, lora_A, lora_B, alpha):
    with torch.no_grad():
        return _course_lora_layer(weight, bias, lora_A, lora_B, alpha)(x)


def _lora_forward_with_peft(x, weight, bias, lora_A, lora_B, alpha):
    from peft import LoraConfig, get_peft_model

    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    layer = get_peft_model(holder, LoraConfig(r=lora_A.shape[0], lora_alpha=alpha, target_modules=["proj"])).base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(weight)
        if bias is not None:
            layer.base_layer.bias.copy_(bias)
        layer.lora_A["default"].weight.copy_(lora_A)
        layer.lora_B["default"].weight.copy_(lora_B)
        return layer(x)


def _merge_with_course_layer(weight, lora_A, lora_B, alpha):
    layer = _course_lora_layer(weight, None, lora_A, lora_B, alpha)
    layer.merge()
    return layer.base_layer.weight.detach().clone()


def _count_with_course_references(config, r, targets):
    shape = course_lib.memory.ModelShape(vocab_size=1000, d_model=config["d_model"], n_layers=config["n_layers"],
                                         n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"], d_ff=config["d_ff"])
    return course_lib.lora.lora_parameter_count(course_lib.finetune.projection_shapes(shape, tuple(targets)), r)


def _bt_with_dpo(chosen_scores, rejected_scores):
    zeros = torch.zeros_like(chosen_scores)
    return course_lib.rlhf.dpo_loss(chosen_scores, rejected_scores, zeros, zeros, 1.0)


def _dpo_with_bradley_terry(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return course_lib.rlhf.bradley_terry_loss(beta * (policy_chosen_logps - ref_chosen_logps),
                                              beta * (policy_rejected_logps - ref_rejected_logps))


def _gae_wrapping_the_reference(rewards, values, mask, gamma, lam):
    return course_lib.rlhf.gae(rewards, values, mask, gamma, lam)


def _gptq_step_with_course_rounding(w, u, i, scale, zero, bits):
    w = w.clone()
    q = course_lib.gptq.round_to_grid(w[:, i:i + 1], scale, zero, bits)
    error = (w[:, i:i + 1] - q) / u[i, i]
    w[:, i + 1:] -= error * u[i:i + 1, i + 1:]
    w[:, i:i + 1] = q
    return w


def _gptq_step_with_course_codes(w, u, i, scale, zero, bits):
    w = w.clone()
    q = scale * (course_lib.gptq.to_codes(w[:, i:i + 1], scale, zero, bits) - zero)
    error = (w[:, i:i + 1] - q) / u[i, i]
    w[:, i + 1:] -= error * u[i:i + 1, i + 1:]
    w[:, i:i + 1] = q
    return w


def _distill_with_course_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """The course's loss wherever it gives the right dtype (it computes in float32); float64 by hand."""
    if student_logits.dtype == torch.float32:
        return course_lib.distill.distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)
    vocab = student_logits.shape[-1]
    keep = labels.reshape(-1) != -100
    student, teacher = student_logits.reshape(-1, vocab)[keep], teacher_logits.reshape(-1, vocab)[keep]
    log_s, log_t = F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1)
    soft = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student, labels.reshape(-1)[keep])


class _FixedDraw:
    """Stands in for torch inside course_lib.speculative: its random number is u, its multinomial keeps the residual."""

    def __init__(self, u, device):
        self.u, self.device, self.residual = u, device, None

    def __getattr__(self, name):
        return getattr(torch, name)

    def rand(self, *args, **kwargs):
        return torch.tensor(self.u, dtype=torch.float64, device=self.device)

    def multinomial(self, probs, num_samples, generator=None):
        self.residual = probs
        return torch.zeros(num_samples, dtype=torch.long, device=probs.device)


def _accept_with_course_rule(p, q, token, u):
    """course_lib.speculative's rule, with u handed in through a stand-in for torch and the residual read back."""
    draw = _FixedDraw(u, p.device)
    course_lib.speculative.torch = draw
    try:
        accepted, _ = course_lib.speculative.accept_or_resample(p, q, token)
    finally:
        course_lib.speculative.torch = torch
    if accepted:
        one_hot = torch.zeros_like(p)
        one_hot[token] = 1
        return True, one_hot
    return False, draw.residual


def _bm25_with_course_class(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """course_lib.retrieval.BM25 with its idf table replaced by Lucene's "plus one" idf."""
    if len(corpus) == 0:
        raise ValueError("corpus must not be empty")
    if sum(len(d) for d in corpus) == 0 or not query_tokens:
        return 0.0
    bm25 = course_lib.retrieval.BM25([list(d) for d in corpus], k1=k1, b=b)
    n = len(corpus)
    bm25.idf = {t: math.log((n - len(ids) + 0.5) / (len(ids) + 0.5) + 1) for t, (ids, _) in bm25.postings.items()}
    return float(bm25.score(list(query_tokens), [list(d) for d in corpus].index(list(doc_tokens))))


def _bm25_with_rank_bm25(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """rank_bm25's BM25Okapi with its idf table replaced by Lucene's."""
    from rank_bm25 import BM25Okapi

    if len(corpus) == 0:
        raise ValueError("corpus must not be empty")
    if sum(len(d) for d in corpus) == 0 or not query_tokens:
        return 0.0
    bm25 = BM25Okapi([list(d) for d in corpus], k1=k1, b=b)
    n = len(corpus)
    vocabulary = {t for d in corpus for t in d}
    bm25.idf = {t: math.log((n - sum(t in d for d in corpus) + 0.5) / (sum(t in d for d in corpus) + 0.5) + 1)
                for t in vocabulary}
    i = [list(d) for d in corpus].index(list(doc_tokens))
    present = [t for t in query_tokens if t in doc_tokens]  # rank_bm25 divides 0 by 0 for absent tokens when k1 = 0
    return float(bm25.get_batch_scores(present, [i])[0]) if present else 0.0


def _cosine_with_f_cosine_similarity(query, docs, k):
    """F.cosine_similarity (its eps makes a zero vector's cosine 0), sorted stably."""
    if query.dim() != 1 or docs.dim() != 2 or docs.shape[1] != query.shape[0] or not 1 <= k <= docs.shape[0]:
        raise ValueError("need query (d,), docs (n, d) and 1 <= k <= n")
    cos = F.cosine_similarity(docs.double(), query.double()[None, :], dim=1)
    order = torch.sort(cos, descending=True, stable=True).indices[:k]
    return cos[order].to(docs.dtype), order


def _cosine_with_faiss(query, docs, k):
    """A faiss flat index searched, then the scores recomputed in float64 for the ranking."""
    if query.dim() != 1 or docs.dim() != 2 or docs.shape[1] != query.shape[0] or not 1 <= k <= docs.shape[0]:
        raise ValueError("need query (d,), docs (n, d) and 1 <= k <= n")
    d, q = docs.double(), query.double()
    if d.device.type == "cpu":  # faiss reads CPU memory only
        index = course_lib.retrieval.flat_index(F.normalize(d, dim=1).float())
        course_lib.retrieval.search(index, F.normalize(q, dim=0).float()[None], k)
    cos = torch.nan_to_num((d @ q) / (d.norm(dim=1) * q.norm()), nan=0.0)
    order = torch.sort(cos, descending=True, stable=True).indices[:k]
    return cos[order].to(docs.dtype), order


def _chunk_with_course(words, size, overlap):
    """course_lib.rag.chunk_words on the words joined by spaces."""
    pieces = course_lib.rag.chunk_words(" ".join(words), size, overlap)
    return [piece.split(" ") for piece in pieces] if words else []


def _fit_format(kept, question):
    return "Context:\n" + "\n".join(kept) + "\nQuestion: " + question + "\nAnswer:"


class _ExerciseFormatTokenizer:
    """A stand-in tokenizer for course_lib.rag.fit_passages: it counts the exercise's format of the same prompt."""

    def __init__(self, passages, count_tokens, question):
        self.passages, self.count_tokens, self.question = passages, count_tokens, question

    def encode(self, chat_text):
        j = 0
        while j < len(self.passages) and self.passages[j] in chat_text:
            j += 1
        return [0] * self.count_tokens(_fit_format(self.passages[:j], self.question))


def _fit_with_course(passages, question, count_tokens, max_tokens):
    """course_lib.rag.fit_passages, handed a tokenizer that counts the exercise's prompt."""
    if count_tokens(_fit_format([], question)) > max_tokens:
        raise ValueError("the question alone does not fit")
    kept = course_lib.rag.fit_passages(_ExerciseFormatTokenizer(list(passages), count_tokens, question), list(passages),
                                       question, max_tokens)
    return _fit_format(kept, question)



def _int4_packed_grid(w, group_size):
    out, n = w.shape
    if w.dim() != 2 or n % 2 or group_size % 2 or n % group_size:
        raise ValueError("w should be 2-D with an even number of inputs, a multiple of an even group_size")
    x = w.detach().float().reshape(out, n // group_size, group_size)
    low, high = x.amin(dim=2).clamp(max=0), x.amax(dim=2).clamp(min=0)
    scale = (high - low) / 15
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    return x, scale, divisor, torch.round(-low / divisor)


def _int4_packed_codes(w, group_size):
    x, scale, divisor, zero = _int4_packed_grid(w, group_size)
    codes = torch.clamp(torch.round(x / divisor[..., None]) + zero[..., None], 0, 15).reshape(w.shape)
    return codes, scale, zero


def _int4_packed_via_course(w, group_size):
    """Codes by hand, packed by course_lib.int4.pack (given scales of 1, which it stores in float16)."""
    codes, scale, zero = _int4_packed_codes(w, group_size)
    packed = course_lib.int4.pack(codes.to(torch.uint8), torch.ones_like(scale), zero, group_size).packed
    return packed, scale, zero.to(torch.uint8)


def _int4_packed_via_pack_int4(w, group_size):
    """Codes by hand, packed with the course's signed pack_int4 (codes - 8), the sign bit flipped back."""
    codes, scale, zero = _int4_packed_codes(w, group_size)
    return course_lib.quant.pack_int4((codes - 8).to(torch.int8)) ^ 0x88, scale, zero.to(torch.uint8)


def _int4_packed_unpacked(packed, scale, zero, group_size):
    """course_lib.int4.unpack for the codes, the rest by hand."""
    codes = course_lib.int4.unpack(course_lib.int4.Int4Weight(packed, torch.ones_like(scale, dtype=torch.float16), zero, group_size))
    return scale.repeat_interleave(group_size, dim=1) * (codes.float() - zero.float().repeat_interleave(group_size, dim=1))


def _int4_packed_dequantize(packed, scale, zero, group_size):
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1).float()
    return scale.repeat_interleave(group_size, dim=1) * (codes - zero.float().repeat_interleave(group_size, dim=1))


def _flash_tiles(q, k, v, block_q, block_k, causal):
    """The tiles a causal or full flash pass computes, with their scaled (and masked) scores: only the tile products are made."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    for q_start in range(0, n_q, block_q):
        q_end = min(n_q, q_start + block_q)
        tiles = []
        for k_start in range(0, n_k, block_k):
            if causal and k_start > q_end - 1:
                break
            k_end = min(n_k, k_start + block_k)
            s = q[..., q_start:q_end, :] @ k[..., k_start:k_end, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
            if causal:
                s = s.masked_fill(torch.arange(k_start, k_end) > torch.arange(q_start, q_end)[:, None], float("-inf"))
            tiles.append((k_start, k_end, s))
        yield q_start, q_end, tiles


def _flash_merged(q, k, v, block_q, block_k, causal, tile_output):
    """Merges per-tile (softmax @ v, logsumexp) pairs made by a forbidden shortcut into (o, lse)."""
    outs, lses = [], []
    for _, _, tiles in _flash_tiles(q, k, v, block_q, block_k, causal):
        acc, lse = None, None
        for k_start, k_end, s in tiles:
            o_t, lse_t = tile_output(s, v[..., k_start:k_end, :])
            o_t = torch.nan_to_num(o_t)
            if acc is None:
                acc, lse = o_t, lse_t
                continue
            new = torch.logaddexp(lse, lse_t)
            acc = acc * torch.exp(lse - new).unsqueeze(-1) + o_t * torch.nan_to_num(torch.exp(lse_t - new)).unsqueeze(-1)
            lse = new
        outs.append(acc)
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


def _flash_via_sdpa(s, v_tile):
    """SDPA on the tile: zero queries and keys (of width 1), the scores as an additive mask."""
    zeros_q, zeros_k = s.new_zeros(*s.shape[:-1], 1), s.new_zeros(*s.shape[:-2], s.shape[-1], 1)
    return F.scaled_dot_product_attention(zeros_q, zeros_k, v_tile, attn_mask=s), torch.logsumexp(s, dim=-1)


def _flash_full_rows(q, k, v, block_q=64, block_k=64, causal=False):
    """The tiles' scores put back together into full rows, then torch.softmax and torch.logsumexp over each row."""
    outs, lses = [], []
    for q_start, q_end, tiles in _flash_tiles(q, k, v, block_q, block_k, causal):
        row = q.new_full((*q.shape[:-2], q_end - q_start, k.shape[-2]), float("-inf"))
        for k_start, k_end, s in tiles:
            row[..., k_start:k_end] = s
        p = torch.softmax(row, dim=-1)
        outs.append(sum(p[..., k_start:k_end] @ v[..., k_start:k_end, :] for k_start, k_end, _ in tiles))
        lses.append(torch.logsumexp(row, dim=-1))
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


CHEATS = {
    "test_tensor_bytes": {
        "wraps the reference": lambda t: course_lib.memory.tensor_bytes(t),
    },
    "test_softmax": {
        "wraps the reference": lambda x, dim=-1: course_lib.attention.softmax(x, dim),
        "reloads the reference": _reloaded_reference_softmax,
        "F.softmax": lambda x, dim=-1: torch.nan_to_num(F.softmax(x, dim=dim), nan=0.0),
        "torch.softmax": lambda x, dim=-1: torch.nan_to_num(torch.softmax(x, dim), nan=0.0),
        "Tensor.softmax": lambda x, dim=-1: x.softmax(dim).nan_to_num(nan=0.0),
        "nn.Softmax": lambda x, dim=-1: torch.nn.Softmax(dim)(x).nan_to_num(nan=0.0),
        "log_softmax().exp()": lambda x, dim=-1: torch.log_softmax(x, dim).exp().nan_to_num(nan=0.0),
        "torch.ops.aten._safe_softmax": lambda x, dim=-1: torch.ops.aten._safe_softmax(x, dim),
        "switches the modes off": _disable_modes_softmax,
        "disables torch function and dispatch": _disabled_everything_softmax,
        "switches the profiler off": _profiler_off_softmax,
    },
    "test_scaled_dot_product_attention": {
        "wraps the reference": lambda q, k, v, attn_mask=None: course_lib.attention.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask),
        "F.scaled_dot_product_attention": lambda q, k, v, attn_mask=None: torch.nan_to_num(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)),
    },
    "test_causal_mask": {
        "wraps the reference": lambda n_q, n_k: course_lib.attention.causal_mask(n_q, n_k),
    },
    "test_predict_equal_weights": {
        "computed with the course's softmax": lambda: float(course_lib.attention.softmax(torch.zeros(8))[0]),
        "computed with torch.softmax": lambda: float(torch.softmax(torch.zeros(8), dim=0)[0]),
    },
    "test_predict_score_growth": {
        "computed with the course's attention": lambda: (
            course_lib.attention.attention_with_weights(*[torch.zeros(8, 2)] * 3)[1].numel()
            / course_lib.attention.attention_with_weights(*[torch.zeros(4, 2)] * 3)[1].numel()),
    },
    "test_multi_head_attention": {
        "the checks' own reference": attention_checks.reference_multi_head_attention,
        "wraps the checks' own reference": lambda *a, **k: attention_checks.reference_multi_head_attention(*a, **k),
        "torch.nn.MultiheadAttention": _mha_with_torch_module,
    },
    "test_merge_pair": {
        "wraps the reference": lambda word, pair, new_symbol: course_lib.tokenizer.merge_pair(word, pair, new_symbol),
    },
    "test_next_token_loss": {
        "wraps the reference": lambda logits, targets, ignore_index=-100: course_lib.models.next_token_loss(logits, targets, ignore_index),
    },
    "test_mlm_mask": {
        "wraps the reference": lambda *a, **k: course_lib.models.mlm_mask(*a, **k),
    },
    "test_greedy_generate": {
        "wraps the reference": _greedy_with_reference,
    },
    "test_decoder_block": {
        "wraps the course's DecoderBlock": _course_decoder_block,
        "transformers' LlamaDecoderLayer": _hf_decoder_block,
    },
    "test_predict_uniform_loss": {
        "computes it with course_lib.models": lambda: course_lib.models.next_token_loss(
            torch.zeros(1, 2, course_lib.tokenizer.DEFAULT_VOCAB_SIZE), torch.zeros(1, 2, dtype=torch.long)).item(),
    },
    "test_predict_block_params_millions": {
        "counts the course's DecoderBlock": lambda: sum(p.numel() for p in course_lib.models.DecoderBlock(
            course_lib.models.DecoderConfig(d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336), 0).to("meta").parameters()) / 1e6,
    },
    "test_llama_block_params": {
        "uses course_lib.memory": lambda d, h, kv, ff: course_lib.memory.block_params(
            course_lib.memory.ModelShape(vocab_size=10, d_model=d, n_layers=1, n_heads=h, n_kv_heads=kv, d_ff=ff)),
    },
    "test_kv_cache_bytes": {
        "uses course_lib.memory": lambda n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2:
            course_lib.memory.kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element),
    },
    "test_predict_adamw_bytes_per_param": {
        "computes it with course_lib.memory": lambda: course_lib.memory.optimizer_state_bytes(10, "adamw") / 10 + 8,
    },
    "test_predict_probs_growth": {
        "computes it with course_lib.memory": lambda: (
            course_lib.memory.activation_memory(course_lib.memory.ModelShape(8, 8, 1, 1), 1, 64, "fp32", "eager", device="cpu")["attention_probs"]
            / course_lib.memory.activation_memory(course_lib.memory.ModelShape(8, 8, 1, 1), 1, 32, "fp32", "eager", device="cpu")["attention_probs"]),
    },
    "test_activation_bytes": {
        "wraps the course's activation estimate": lambda shape, b, s, attention="eager", checkpointing=False: int(
            sum(course_lib.memory.activation_memory(shape, b, s, "fp32", attention, checkpointing, "cpu").values())
            + checkpointing * sum(course_lib.memory.activation_bytes_per_layer(shape, s, b, "fp32", attention, "cpu").values())),
        "wraps estimate_training_memory": lambda shape, b, s, attention="eager", checkpointing=False: int(
            course_lib.memory.estimate_training_memory(shape, b, s, "sgd", "fp32", attention, checkpointing, "cpu").activations
            + checkpointing * sum(course_lib.memory.activation_bytes_per_layer(shape, s, b, "fp32", attention, "cpu").values())),
    },
    "test_decode_fp16": {
        "numpy": _decode_fp16_numpy,
        "struct": _decode_fp16_struct,
        "torch.float16": _decode_fp16_torch,
        "Tensor.numpy": _decode_fp16_tensor_numpy,
        "course_lib.formats": lambda bits: float(course_lib.formats.decode(bits, course_lib.formats.FP16)),
    },
    "test_round_to_bf16": {
        "x.to(torch.bfloat16)": lambda x: x.to(torch.bfloat16).float(),
        "x.bfloat16()": lambda x: x.bfloat16().to(torch.float32),
        "course_lib.formats": lambda x: torch.from_numpy(course_lib.formats.round_to(x.double().numpy(), course_lib.formats.BF16)).float(),
    },
    "test_absmax_int8": {
        "course_lib.quant": {
            "absmax_quantize_int8": lambda w: course_lib.quant.absmax_quantize(w, bits=8),
            "absmax_dequantize_int8": lambda q, scale: course_lib.quant.absmax_dequantize(q, scale),
        },
    },
    "test_quantize_int4_blocks": {
        "course_lib.quant": lambda w, block_size=64: course_lib.quant.absmax_quantize(w, bits=4, block_size=block_size),
    },
    "test_int4_packed": {
        "course_lib.gptq and course_lib.int4": {
            "quantize_int4_packed": lambda w, group_size=32: _int4_packed_via_course(w, group_size),
            "dequantize_int4_packed": lambda packed, scale, zero, group_size=32: _int4_packed_unpacked(packed, scale, zero, group_size),
        },
        "course_lib.quant.pack_int4": {
            "quantize_int4_packed": lambda w, group_size=32: _int4_packed_via_pack_int4(w, group_size),
            "dequantize_int4_packed": lambda packed, scale, zero, group_size=32: _int4_packed_dequantize(packed, scale, zero, group_size),
        },
    },
    "test_predict_int4_layer_mib": {
        "counted from course_lib.int4's layout": lambda: sum(t.numel() * t.element_size() for t in (
            lambda w: (w.packed, w.scale, w.zero))(course_lib.int4.Int4Weight(
                torch.empty(4096, 2048, dtype=torch.uint8, device="meta"), torch.empty(4096, 32, dtype=torch.float16, device="meta"),
                torch.empty(4096, 32, dtype=torch.uint8, device="meta"), group_size=128))) / 2**20,
        "the check's own int4_layer_bytes": lambda: quant_checks.int4_layer_bytes() / 2**20,
    },
    "test_online_softmax_update": {
        "course_lib.flash": lambda m, l, acc, scores, v: course_lib.flash.online_softmax_update(m, l, acc, scores, v),
    },
    "test_flash_forward": {
        "course_lib.flash": lambda q, k, v, block_q=64, block_k=64, causal=False: course_lib.flash.flash_attention_forward(
            q, k, v, causal, None, block_q, block_k),
        "SDPA and logsumexp per tile": lambda q, k, v, block_q=64, block_k=64, causal=False: _flash_merged(
            q, k, v, block_q, block_k, causal, _flash_via_sdpa),
        "softmax per tile": lambda q, k, v, block_q=64, block_k=64, causal=False: _flash_merged(
            q, k, v, block_q, block_k, causal, lambda s, v_tile: (torch.softmax(s, dim=-1) @ v_tile, torch.logsumexp(s, dim=-1))),
        "softmax over full rows": _flash_full_rows,
    },
    "test_predict_causal_skipped_fraction": {
        "counted with course_lib.flash": lambda: sum(
            course_lib.flash.causal_tile_skip(a, a + 64, b) for a in range(0, 512, 64) for b in range(0, 512, 64)) / 64,
    },
    "test_causal_tile_skip": {
        "course_lib.flash": lambda q_start, q_end, k_start: course_lib.flash.causal_tile_skip(q_start, q_end, k_start),
    },
    "test_repeat_kv": {
        "wraps the reference": lambda x, n_rep: course_lib.attention.repeat_kv(x, n_rep),
    },
    "test_cached_attention_step": {
        "the checks' own reference": kvcache_checks.reference_cached_attention_step,
    },
    "test_generate_with_static_cache": {
        "the model's own forward with a static cache object": _static_generate_with_model_forward,
        "transformers' generate": _static_generate_with_transformers,
    },
    "test_predict_gqa8_cache_shrink": {
        "computed with the lesson's formula": lambda: (
            course_lib.kvcache.kv_cache_bytes_from_config({**course_lib.kvcache.PUBLISHED_CONFIGS["Llama-3-8B"], "num_key_value_heads": 32}, 1)
            / course_lib.kvcache.kv_cache_bytes_from_config(course_lib.kvcache.PUBLISHED_CONFIGS["Llama-3-8B"], 1)),
    },
    "test_ring_all_reduce": {
        "wraps the reference": lambda tensors: course_lib.distributed.ring_all_reduce(tensors),
    },
    "test_shard": {
        "wraps the references": {"shard": lambda flat, rank, world_size: course_lib.distributed.shard(flat, rank, world_size),
                                 "unshard": lambda shards, numel: course_lib.distributed.unshard(shards, numel)},
    },
    "test_zero_memory_per_gpu": {
        "wraps the reference": lambda n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12:
            course_lib.distributed.zero_bytes_per_rank(n_params, world_size, stage, optimizer_bytes, weight_bytes, grad_bytes),
    },
    "test_average_gradients": {
        "the course's counted all-reduce": _average_with_course_comm,
    },
    "test_mask_prompt": {
        "wraps the reference": lambda input_ids, prompt_lengths, lengths:
            course_lib.finetune.mask_prompt(input_ids, prompt_lengths, lengths),
    },
    "test_lora_forward": {
        "the course's LoRALinear": _lora_forward_with_course_layer,
        "peft's LoRA layer": _lora_forward_with_peft,
    },
    "test_merge_lora_weight": {
        "the course's merge": _merge_with_course_layer,
    },
    "test_lora_trainable_parameters": {
        "wraps the references": _count_with_course_references,
    },
    "test_bradley_terry_loss": {
        "wraps the reference": lambda chosen_scores, rejected_scores: course_lib.rlhf.bradley_terry_loss(chosen_scores, rejected_scores),
        "the course's DPO loss with a zero reference": _bt_with_dpo,
    },
    "test_kl_penalized_rewards": {
        "wraps the reference": lambda scores, logprobs, ref_logprobs, mask, beta:
            course_lib.rlhf.kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, beta),
    },
    "test_gae": {
        "wraps the reference": _gae_wrapping_the_reference,
    },
    "test_dpo_loss": {
        "wraps the reference": lambda policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta:
            course_lib.rlhf.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta),
        "the course's Bradley-Terry loss": _dpo_with_bradley_terry,
    },
    "test_group_advantages": {
        "wraps the reference": lambda rewards, eps=1e-4: course_lib.rlhf.group_advantages(rewards, eps),
    },
    "test_mask_2_4": {
        "the course's n:m mask": lambda w: course_lib.pruning.n_m_mask(w.abs()),
    },
    "test_wanda_scores": {
        "wraps the reference": lambda w, x: course_lib.pruning.wanda_scores(w, torch.linalg.vector_norm(x, dim=0)),
    },
    "test_gptq_column_step": {
        "the course's round_to_grid": _gptq_step_with_course_rounding,
        "the course's to_codes": _gptq_step_with_course_codes,
    },
    "test_distillation_loss": {
        "wraps the reference": _distill_with_course_loss,
    },
    "test_accept_or_resample": {
        "the course's rule with u handed in": _accept_with_course_rule,
    },
    "test_quantize_layer": {
        "wraps the course's GPTQ": lambda w, hessian, bits: course_lib.gptq.gptq(w, hessian, bits),
        "the course's GPTQ codes, dequantized": lambda w, hessian, bits: course_lib.gptq.dequantize(
            *course_lib.gptq.gptq_codes(w, hessian, bits)),
    },
    "test_bm25_score": {
        "course_lib.retrieval.BM25 with Lucene's idf": _bm25_with_course_class,
        "rank_bm25 with Lucene's idf": _bm25_with_rank_bm25,
    },
    "test_cosine_top_k": {
        "F.cosine_similarity": _cosine_with_f_cosine_similarity,
        "a faiss flat index": _cosine_with_faiss,
    },
    "test_recall_and_mrr": {
        "course_lib.retrieval": {
            "recall_at_k": lambda ranked, gold, k: course_lib.retrieval.recall_at_k([list(r) for r in ranked], list(gold), k),
            "mrr": lambda ranked, gold: course_lib.retrieval.mrr([list(r) for r in ranked], list(gold)),
        },
    },
    "test_chunk_words": {
        "course_lib.rag.chunk_words": _chunk_with_course,
    },
    "test_fit_prompt": {
        "course_lib.rag.fit_passages": _fit_with_course,
    },
}

# The answers above are right in value: prove it for the few whose exercise has no other check on it.
assert math.isclose(_decode_fp16_struct(0x3C00), 1.0)
