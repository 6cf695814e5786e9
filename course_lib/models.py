"""The three Transformer families: decoder-only, encoder-only, encoder-decoder (lesson 02).

All three are stacks of the same two sublayers, attention and a position-wise MLP, each
wrapped in a residual connection and a normalisation. They differ in who may attend to whom
and in what they are trained to predict:

- **decoder-only** (GPT, Llama): causal self-attention; predicts the next token.
  :class:`DecoderLM` is a Llama-style block (pre-norm RMSNorm, rotary position embeddings,
  grouped-query attention, SwiGLU MLP) that converts exactly to and from Hugging Face's
  ``LlamaForCausalLM`` (:func:`to_hf_llama`, :func:`from_hf_llama`, :func:`save_pretrained`,
  :func:`load_pretrained`). Its loss is :func:`next_token_loss`; generation lives in
  :mod:`course_lib.kvcache`.
- **encoder-only** (BERT): bidirectional self-attention with a padding mask; predicts
  masked tokens (:func:`mlm_mask`, :class:`MaskedLMHead`) or classifies the whole input
  (:class:`EncoderClassifier`).
- **encoder-decoder** (T5): an encoder as above, and a decoder with causal self-attention
  plus cross-attention to the encoder's output; trained on span corruption
  (:func:`span_corruption`), decoded with :func:`generate_seq2seq`.

Attention always goes through :mod:`course_lib.attention` (lesson 01).

Design choices, and how these models differ from BERT and T5 in Hugging Face ``transformers``
(the same text is in :data:`DIFFERENCES`):

**Encoder (BERT-style).** Pre-LN by default (``EncoderConfig.pre_norm=True``): each sublayer
sees ``LayerNorm(x)`` and adds its output to ``x``, with one final LayerNorm. Gradients then
reach every layer through an un-normalised residual path, so small models train without a
learning-rate warm-up. ``pre_norm=False`` gives BERT's post-LN layout
(``x = LayerNorm(x + sublayer(x))``, LayerNorm after the embeddings). Unlike ``BertModel``:
no token-type (segment) embeddings, no dropout, no pooler (``dense + tanh`` on [CLS]; the
classifier here reads the first token or the mean directly), GELU computed exactly (as BERT's
``"gelu"``), LayerNorm eps ``1e-5`` instead of ``1e-12``. The masked-LM head is BERT's
(dense, GELU, LayerNorm, decoder tied to the token embeddings, plus a bias).

**Encoder-decoder (T5-style).** Pre-norm RMSNorm (T5's ``T5LayerNorm``, no mean subtraction,
no bias), no biases in any linear layer, ReLU MLP (T5 v1.0), shared token embeddings, as T5.
Unlike ``T5ForConditionalGeneration``: *learned absolute* position embeddings added to the
input, one table for the encoder and one for the decoder (T5 adds a learned *relative*
position bias to the attention scores, bucketed by distance, computed in the first layer and
shared by the others, and has no absolute positions at all); attention scores scaled by
``1/sqrt(head_dim)`` (T5 folds that factor into its initialisation and does not scale); no
dropout; the tied output layer is not rescaled by ``d_model**-0.5``. Decoding recomputes the
decoder over the whole prefix at each step (no KV cache) but runs the encoder only once.

**Decoder (Llama-style).** The same computation as ``LlamaForCausalLM`` with default RoPE;
the rotary angles are computed in float32 as there. One difference in float64: our RMSNorm
normalises in the input's dtype, Hugging Face's in float32.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from course_lib.attention import (
    MultiHeadAttention,
    attention_with_weights,
    causal_mask,
    mean_pool_kv_heads,
    merge_heads,
    split_heads,
)
from course_lib.kvcache import KVCache

ASSETS = Path(__file__).resolve().parent / "assets"

DIFFERENCES = __doc__[__doc__.index("**Encoder (BERT-style).**"):].strip() if __doc__ else ""

# --------------------------------------------------------------------------- checks


def _describe(x) -> str:
    return f"shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 stay as they are (for losses and norms)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _require_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _require_token_ids(name: str, ids, vocab_size: int | None = None, dim: int = 2) -> None:
    shape = {1: "(seq,)", 2: "(batch, seq)"}[dim]
    if not isinstance(ids, torch.Tensor) or ids.dim() != dim or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor {shape}, got {_describe(ids)}")
    if vocab_size is not None and ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{name} must hold ids in [0, {vocab_size - 1}], got values from {int(ids.min())} to {int(ids.max())}")


def _key_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_id: int | None) -> torch.Tensor:
    """Boolean key-padding mask ``(batch, 1, 1, seq)``, True at real tokens, from ``attention_mask`` or ``pad_id``."""
    if attention_mask is None:
        real = input_ids != pad_id if pad_id is not None else torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        real = attention_mask.bool()
    return real[:, None, None, :]


def _init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases (GPT-2 / BERT style)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: ``x / sqrt(mean(x**2) + eps) * weight``, over the last dim.

    Unlike LayerNorm it subtracts no mean and adds no bias. float16/bfloat16 inputs are
    normalised in float32. Input and output: ``(..., dim)``, same dtype. Defined in lesson 02.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _at_least_float32(x)
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype=torch.float32):
    """Cosines and sines of the rotary angles ``position * theta**(-2i / head_dim)``.

    Args:
        positions: ``(seq,)`` integer positions.
        head_dim: even number of features per head.
        theta: the base; larger means slower-turning pairs (longer contexts).
    Returns:
        ``(cos, sin)``, each ``(seq, head_dim)`` in ``dtype``; the ``head_dim // 2``
        frequencies appear twice (``[f_0 .. f_{d/2-1}, f_0 .. f_{d/2-1}]``), Hugging Face
        Llama's layout. The angles are computed in float32, as there.

    Defined in lesson 02.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]              # (seq, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)                         # (seq, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the two halves of the last dim. Defined in lesson 02."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs ``(i, i + head_dim/2)`` of ``x`` ``(batch, heads, seq, head_dim)`` by their angles.

    ``cos``, ``sin``: ``(seq, head_dim)`` from :func:`rope_cos_sin`. Because both queries
    and keys are rotated, their dot product depends only on the *difference* of positions.
    The result keeps ``x``'s dtype (the angles are cast to it, as in transformers' Llama), so a
    bf16 query stays bf16 under ``torch.autocast``. Defined in lesson 02.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class SwiGLU(nn.Module):
    """Gated MLP of Llama: ``down(silu(gate(x)) * up(x))``, ``(..., d_model) -> (..., d_model)``. Defined in lesson 02."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def feed_forward(d_model: int, d_ff: int, activation: nn.Module, bias: bool) -> nn.Sequential:
    """The classic MLP ``Linear(d_model, d_ff) -> activation -> Linear(d_ff, d_model)``. Defined in lesson 02."""
    return nn.Sequential(nn.Linear(d_model, d_ff, bias=bias), activation, nn.Linear(d_ff, d_model, bias=bias))


# --------------------------------------------------------------------------- decoder-only (Llama-style)


@dataclass
class DecoderConfig:
    """Size and settings of a :class:`DecoderLM`. Defined in lesson 02.

    ``n_kv_heads < n_heads`` is grouped-query attention; ``d_ff`` is the hidden size of
    the SwiGLU MLP (Llama uses about ``8/3 * d_model``); ``tie_embeddings`` shares one
    matrix between the input embedding and the output layer.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 176
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            _require_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim = d_model / n_heads must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta and norm_eps must be > 0, got {self.rope_theta} and {self.norm_eps}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be None or in [0, {self.vocab_size - 1}], got {value}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class RotarySelfAttention(MultiHeadAttention):
    """Causal self-attention with rotary embeddings and an optional :class:`~course_lib.kvcache.KVCache`.

    The projections are those of :class:`~course_lib.attention.MultiHeadAttention` (no
    biases, ``n_kv_heads`` key/value heads); queries and keys are rotated by :func:`apply_rope`
    before attending. With a cache, the new keys and values (only ``n_kv_heads`` of them) are
    appended and the queries, the last ``n_q`` of ``n_k`` positions, use the bottom-right
    aligned mask ``causal_mask(n_q, n_k, offset=n_k - n_q)``.

    Set ``record_weights = True`` to keep the last weights ``(batch, n_heads, L, S)`` in
    ``attention_weights`` for plotting (off by default: they would hold memory in every layer).
    Defined in lesson 02.
    """

    record_weights = False

    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__(config.d_model, config.n_heads, config.n_kv_heads, bias=False)
        self.layer = layer

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x``: ``(batch, seq, d_model)``; ``cos``, ``sin``: ``(seq, head_dim)`` of the new positions."""
        q = apply_rope(split_heads(self.q_proj(x), self.n_heads), cos, sin)       # (B, H,   L, hd)
        k = apply_rope(split_heads(self.k_proj(x), self.n_kv_heads), cos, sin)    # (B, Hkv, L, hd)
        v = split_heads(self.v_proj(x), self.n_kv_heads)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)                                 # (B, Hkv, S, hd)
        n_q, n_k = q.shape[-2], k.shape[-2]
        mask = causal_mask(n_q, n_k, offset=n_k - n_q, device=x.device)
        out, weights = attention_with_weights(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        self.attention_weights = weights.detach() if self.record_weights else None
        return self.o_proj(merge_heads(out))


class DecoderBlock(nn.Module):
    """Pre-norm Llama block: ``x += attn(RMSNorm(x))``, then ``x += SwiGLU(RMSNorm(x))``. Defined in lesson 02."""

    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = RotarySelfAttention(config, layer)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nn.Module):
    """A decoder-only causal language model with Llama's architecture.

    ``model(input_ids)`` maps ``(batch, seq)`` integer ids to next-token logits
    ``(batch, seq, vocab)`` in the model's dtype (float32 unless you call ``.double()``);
    position ``t`` sees only tokens ``0..t``. With ``cache=KVCache(n_layers)`` the ids are
    the *new* tokens and take positions ``len(cache), len(cache) + 1, ...``.

    Weights are drawn from N(0, ``init_std``); the projections that write into the residual
    stream (``o_proj``, ``down_proj``) get ``init_std / sqrt(2 * n_layers)``, as GPT-2, so
    that the residual sum does not grow with depth. Seed with ``torch.manual_seed`` first.

    Defined in lesson 02.
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([DecoderBlock(config, i) for i in range(config.n_layers)])
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        _init_weights(self, config.init_std)
        for block in self.blocks:
            nn.init.normal_(block.attn.o_proj.weight, std=config.init_std / math.sqrt(2 * config.n_layers))
            nn.init.normal_(block.mlp.down_proj.weight, std=config.init_std / math.sqrt(2 * config.n_layers))
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        _require_token_ids("input_ids", input_ids, self.config.vocab_size)
        return self.forward_embeddings(self.embed(input_ids), cache)                # embeddings (B, L, d_model)

    def forward_embeddings(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The model from its input embeddings ``x`` ``(batch, seq, d_model)`` on: logits ``(batch, seq, vocab)``.

        Prompt tuning (lesson 08) puts trained vectors in front of the tokens' embeddings here.
        Defined in lesson 02.
        """
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"x should have shape (batch, seq, {self.config.d_model}), got {tuple(x.shape)}")
        start = 0 if cache is None else len(cache)       # position of the first new token
        end = start + x.shape[1]
        if end > self.config.max_seq_len:
            raise ValueError(f"positions up to {end - 1} exceed max_seq_len={self.config.max_seq_len}")
        positions = torch.arange(start, end, device=x.device)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        return self.lm_head(self.norm(x))                                          # (B, L, vocab)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The last block's output after the final norm, before ``lm_head``: ``(batch, seq, d_model)``.

        What a reward model or a value head reads (lesson 09). Defined in lesson 09.
        """
        _require_token_ids("input_ids", input_ids, self.config.vocab_size)
        x = self.embed(input_ids)
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"positions up to {input_ids.shape[1] - 1} exceed max_seq_len={self.config.max_seq_len}")
        cos, sin = rope_cos_sin(torch.arange(input_ids.shape[1], device=x.device), self.config.head_dim,
                                self.config.rope_theta, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``input_ids`` ``(batch, seq)``, ignoring ``config.pad_id``."""
        ignore = self.config.pad_id if self.config.pad_id is not None else -100
        return next_token_loss(self(input_ids), input_ids, ignore_index=ignore)

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of predicting token ``t + 1`` from position ``t`` (the label shift).

    The logits at position ``t`` are the model's guess for ``targets[:, t + 1]``, so the
    last position has no target and the first token is never predicted:
    ``cross_entropy(logits[:, :-1], targets[:, 1:])``, averaged over the targets that are
    not ``ignore_index`` (padding). This is what ``LlamaForCausalLM(input_ids, labels=input_ids)``
    computes.

    Args:
        logits: ``(batch, seq, vocab)`` floating-point scores.
        targets: ``(batch, seq)`` integer ids, usually the model's own input, ``seq >= 2``.
        ignore_index: target id that does not count (a pad id, or -100).
    Returns:
        a 0-dim float tensor (computed in at least float32); ``nan`` if every target is ignored.

    Defined in lesson 02.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor (batch, seq, vocab), got {_describe(logits)}")
    _require_token_ids("targets", targets)
    if targets.shape != logits.shape[:2] or targets.shape[1] < 2:
        raise ValueError(
            f"targets must have shape (batch, seq) = {tuple(logits.shape[:2])} with seq >= 2, got {tuple(targets.shape)}"
        )
    logits = _at_least_float32(logits[:, :-1])                  # the predictions for positions 1..T-1
    shifted = targets[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=ignore_index)


# --------------------------------------------------------------------------- Hugging Face Llama format

# Our parameter names and Hugging Face Llama's; "{i}" is the layer number.
_LLAMA_NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def llama_name_map(n_layers: int) -> dict[str, str]:
    """``{our parameter name: Hugging Face Llama's}`` for a model of ``n_layers`` layers. Defined in lesson 02."""
    names = {}
    for ours, theirs in _LLAMA_NAMES.items():
        for i in range(n_layers) if "{i}" in ours else [None]:
            names[ours.format(i=i)] = theirs.format(i=i)
    return names


def llama_config_dict(config: DecoderConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` of Hugging Face Llama for ``config``, as a plain dict. Defined in lesson 02."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,            # where transformers 4 reads it
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "pad_token_id": config.pad_id,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def to_llama_config(config: DecoderConfig):
    """A ``transformers.LlamaConfig`` describing the same architecture as ``config``. Defined in lesson 02."""
    from transformers import LlamaConfig

    settings = llama_config_dict(config)
    for key in ("architectures", "model_type", "rope_theta", "dtype"):
        settings.pop(key)
    return LlamaConfig(**settings)


def from_llama_config(llama_config) -> DecoderConfig:
    """A :class:`DecoderConfig` from a ``LlamaConfig`` or its ``config.json`` dict.

    Raises ``ValueError`` for Llama features :class:`DecoderLM` does not have (biases, RoPE
    scaling, another activation, a head size other than ``hidden_size / num_attention_heads``).
    Defined in lesson 02.
    """
    c = llama_config if isinstance(llama_config, dict) else llama_config.to_dict()
    if c.get("model_type", "llama") != "llama":
        raise ValueError(f"expected a Llama config (model_type 'llama'), got model_type {c.get('model_type')!r}")
    rope = c.get("rope_parameters") or {"rope_type": "default", "rope_theta": c.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only the default RoPE is supported, got rope_type {rope.get('rope_type')!r}")
    if c.get("hidden_act", "silu") != "silu" or c.get("attention_bias") or c.get("mlp_bias"):
        raise ValueError("expected hidden_act='silu' and no attention or MLP biases")
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    if head_dim * heads != c["hidden_size"]:
        raise ValueError(f"expected head_dim = hidden_size / num_attention_heads, got head_dim {head_dim}")
    return DecoderConfig(
        vocab_size=c["vocab_size"],
        d_model=c["hidden_size"],
        n_layers=c["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=c.get("num_key_value_heads") or heads,
        d_ff=c["intermediate_size"],
        max_seq_len=c["max_position_embeddings"],
        rope_theta=float(rope["rope_theta"]),
        norm_eps=c.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        pad_id=c.get("pad_token_id"),
        bos_id=c.get("bos_token_id"),
        eos_id=c.get("eos_token_id"),
        init_std=c.get("initializer_range", 0.02),
    )


def _to_llama_state_dict(model: DecoderLM) -> dict[str, torch.Tensor]:
    names = llama_name_map(model.config.n_layers)
    return {names[key]: value for key, value in model.state_dict().items()}


def _load_llama_state_dict(model: DecoderLM, state: dict[str, torch.Tensor]) -> DecoderLM:
    ours = {theirs: mine for mine, theirs in llama_name_map(model.config.n_layers).items()}
    state = dict(state)
    if model.config.tie_embeddings:   # a tied checkpoint may omit the output layer
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    unknown = sorted(set(state) - set(ours))
    if unknown:
        raise ValueError(f"unexpected Llama weights {unknown[:5]}; expected the names of llama_name_map({model.config.n_layers})")
    model.load_state_dict({ours[key]: value for key, value in state.items()}, strict=True)
    return model


def to_hf_llama(model: DecoderLM):
    """Copy ``model`` into a ``transformers.LlamaForCausalLM`` (same dtype, eval mode) that gives the same logits.

    Defined in lesson 02.
    """
    from transformers import LlamaForCausalLM

    dtype = model.embed.weight.dtype
    hf = LlamaForCausalLM(to_llama_config(model.config)).to(dtype)
    hf.load_state_dict(_to_llama_state_dict(model), strict=True)
    return hf.eval()


def from_hf_llama(hf_model) -> DecoderLM:
    """Copy a ``transformers.LlamaForCausalLM`` into a :class:`DecoderLM` (same dtype, eval mode).

    Defined in lesson 02.
    """
    model = DecoderLM(from_llama_config(hf_model.config))
    model.to(hf_model.lm_head.weight.dtype)
    return _load_llama_state_dict(model, hf_model.state_dict()).eval()


def convert_kv_heads(model: DecoderLM, n_kv_heads: int) -> DecoderLM:
    """A copy of ``model`` with ``n_kv_heads`` key/value heads: MHA -> GQA -> MQA.

    Every layer's key and value projections are merged by
    :func:`course_lib.attention.mean_pool_kv_heads` (the mean of each group of heads); every
    other weight is copied. ``n_kv_heads`` must divide the model's current number of
    key/value heads. The copy is what the GQA paper starts its *uptraining* from: it is
    worse than the original until trained a little more (lesson 06 measures by how much,
    before and after). Returns a new :class:`DecoderLM` in eval mode; ``model`` is unchanged.
    Defined in lesson 06.
    """
    if not isinstance(model, DecoderLM):
        raise ValueError(f"model must be a DecoderLM, got {type(model).__name__}")
    old = model.config.n_kv_heads
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int) or n_kv_heads <= 0 or old % n_kv_heads:
        raise ValueError(f"n_kv_heads must be a positive int dividing the model's {old} key/value heads, got {n_kv_heads!r}")
    dtype = model.embed.weight.dtype
    converted = DecoderLM(replace(model.config, n_kv_heads=n_kv_heads)).to(device=model.embed.weight.device, dtype=dtype)
    state = model.state_dict()
    for i in range(model.config.n_layers):
        for name in ("k_proj", "v_proj"):
            key = f"blocks.{i}.attn.{name}.weight"
            state[key] = mean_pool_kv_heads(state[key], old, n_kv_heads)
    converted.load_state_dict(state)
    return converted.eval()


def save_pretrained(model: DecoderLM, folder: str | os.PathLike) -> Path:
    """Write ``model`` in Hugging Face's format: ``folder/config.json`` and ``folder/model.safetensors``.

    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it as a
    ``LlamaForCausalLM``, and :func:`load_pretrained` as a :class:`DecoderLM`. A tied output
    layer is not stored twice. Returns the folder. Defined in lesson 02.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = _to_llama_state_dict(model)
    if model.config.tie_embeddings:
        del state["lm_head.weight"]
    save_file({k: v.detach().contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    config = llama_config_dict(model.config, model.embed.weight.dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def available_pretrained() -> list[str]:
    """Names of the checkpoints shipped in ``course_lib/assets/`` (folders with a ``config.json``). Defined in lesson 02."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())


def load_pretrained(name_or_path: str | os.PathLike) -> DecoderLM:
    """Load a :class:`DecoderLM` (eval mode, the checkpoint's dtype) from a Hugging Face Llama folder.

    ``name_or_path`` is a folder holding ``config.json`` and ``model.safetensors``, or the
    name of a checkpoint shipped with the course, ``course_lib/assets/<name>/`` (see
    :func:`available_pretrained`). Raises ``FileNotFoundError`` naming the available ones.
    Defined in lesson 02.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = ASSETS / str(name_or_path)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        names = ", ".join(available_pretrained()) or "none yet"
        raise FileNotFoundError(
            f"no checkpoint at {str(name_or_path)!r}: expected a folder with config.json and model.safetensors, "
            f"or the name of one in {ASSETS} (available: {names})"
        )
    config = from_llama_config(json.loads((folder / "config.json").read_text()))
    state = load_file(folder / "model.safetensors")
    model = DecoderLM(config).to(state["model.embed_tokens.weight"].dtype)
    return _load_llama_state_dict(model, state).eval()


# --------------------------------------------------------------------------- encoder-only (BERT-style)


@dataclass
class EncoderConfig:
    """Size and settings of an :class:`EncoderModel`. Defined in lesson 02.

    ``pre_norm=True`` puts LayerNorm before each sublayer (and once at the end); ``False``
    is BERT's post-LN layout. ``pad_id`` marks padding when no ``attention_mask`` is given.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_seq_len: int = 128
    norm_eps: float = 1e-5
    pre_norm: bool = True
    pad_id: int | None = 0
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            _require_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be None or in [0, {self.vocab_size - 1}], got {self.pad_id}")


class EncoderBlock(nn.Module):
    """Bidirectional self-attention and a GELU MLP, with biases, pre-LN or post-LN. Defined in lesson 02."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = MultiHeadAttention(config.d_model, config.n_heads, bias=True)
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = feed_forward(config.d_model, config.d_ff, nn.GELU(), bias=True)
        self.mlp_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(batch, seq, d_model)``; ``key_mask``: ``(batch, 1, 1, seq)``, True at real tokens."""
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), attn_mask=key_mask)
            return x + self.mlp(self.mlp_norm(x))
        x = self.attn_norm(x + self.attn(x, attn_mask=key_mask))
        return self.mlp_norm(x + self.mlp(x))


class EncoderModel(nn.Module):
    """A BERT-style encoder: token + learned position embeddings, then bidirectional blocks.

    ``model(input_ids, attention_mask=None)`` maps ``(batch, seq)`` ids to hidden states
    ``(batch, seq, d_model)``. Every token attends to every real token, before and after
    it; ``attention_mask`` ``(batch, seq)`` (1/True = real token) hides padding from the keys,
    and defaults to ``input_ids != config.pad_id``. Hidden states at padded positions are
    computed but meaningless. Defined in lesson 02.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.tok_embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.embed_norm = nn.Identity() if config.pre_norm else nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.blocks = nn.ModuleList([EncoderBlock(config) for _ in range(config.n_layers)])
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        _init_weights(self, config.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _require_token_ids("input_ids", input_ids, self.config.vocab_size)
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_seq_len={self.config.max_seq_len}")
        key_mask = _key_mask(input_ids, attention_mask, self.config.pad_id)          # (B, 1, 1, S)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_norm(self.tok_embed(input_ids) + self.pos_embed(positions))   # (B, S, d_model)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: ``dense -> GELU -> LayerNorm -> decoder``, hidden states to logits.

    ``(batch, seq, d_model) -> (batch, seq, vocab)``. Pass the encoder's token embedding
    as ``embedding`` to tie the decoder's weight to it (BERT does); the decoder keeps its
    own bias. Defined in lesson 02.
    """

    def __init__(self, config: EncoderConfig, embedding: nn.Embedding | None = None):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)
        _init_weights(self, config.init_std)
        if embedding is not None:
            self.decoder.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class EncoderForMaskedLM(nn.Module):
    """An :class:`EncoderModel` with a tied :class:`MaskedLMHead`: ids ``(batch, seq)`` to logits ``(batch, seq, vocab)``.

    Train it on the output of :func:`mlm_mask` with :meth:`loss`. Defined in lesson 02.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = EncoderModel(config)
        self.head = MaskedLMHead(config, embedding=self.encoder.tok_embed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy at the positions where ``labels != -100`` (the chosen ones)."""
        logits = self(input_ids, attention_mask)
        return F.cross_entropy(_at_least_float32(logits).flatten(0, 1), labels.reshape(-1), ignore_index=-100)


class EncoderClassifier(nn.Module):
    """An :class:`EncoderModel` with a linear classifier on one vector per sequence.

    ``pooling="first"`` reads the first token (BERT puts [CLS] there); ``"mean"`` averages
    the real (unpadded) positions. ``model(input_ids, attention_mask=None)`` returns logits
    ``(batch, n_classes)``. Defined in lesson 02.
    """

    def __init__(self, config: EncoderConfig, n_classes: int, pooling: str = "first"):
        super().__init__()
        _require_positive_int("n_classes", n_classes)
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.encoder = EncoderModel(config)
        self.classifier = nn.Linear(config.d_model, n_classes)
        _init_weights(self.classifier, config.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)                              # (B, S, d_model)
        if self.pooling == "first":
            pooled = hidden[:, 0]
        else:
            real = _key_mask(input_ids, attention_mask, self.encoder.config.pad_id)[:, 0, 0, :, None].to(hidden.dtype)
            pooled = (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
        return self.classifier(pooled)                                                # (B, n_classes)


def mlm_mask(
    input_ids: torch.Tensor,
    mask_prob: float = 0.15,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids=(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking for masked-language-model training.

    Each position whose token is not in ``special_ids`` (padding, [CLS], [SEP], ...) is
    chosen with probability ``mask_prob``, independently. Of the chosen positions, 80 %
    become ``mask_id``, 10 % a token drawn uniformly from ``[0, vocab_size)``, and 10 % keep
    their token; the model must predict the original token at all of them.

    Args:
        input_ids: ``(batch, seq)`` (or any shape) integer ids in ``[0, vocab_size)``.
        mask_prob: probability of choosing a position, in ``[0, 1]``.
        mask_id: the id of [MASK]; vocab_size: size of the vocabulary.
        special_ids: ids that are never chosen.
        generator: a seeded ``torch.Generator``; draws, in order: the choice, the
            80/10/10 split, the random tokens.
    Returns:
        ``(masked_input_ids, labels)``, both of ``input_ids``' shape and dtype; ``labels``
        holds the original token at chosen positions and ``-100`` elsewhere.

    Defined in lesson 02.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got {_describe(input_ids)}")
    if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)) or not 0 <= mask_prob <= 1:
        raise ValueError(f"mask_prob must be a number in [0, 1], got {mask_prob!r}")
    _require_positive_int("vocab_size", vocab_size)
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be in [0, {vocab_size - 1}], got {mask_id}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids must hold ids in [0, {vocab_size - 1}]")
    device = input_ids.device
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=device))
    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < mask_prob) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (split < 0.8)
    to_random = chosen & (split >= 0.8) & (split < 0.9)                    # the last 10 % stay unchanged
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    return masked, labels


# --------------------------------------------------------------------------- encoder-decoder (T5-style)


@dataclass
class Seq2SeqConfig:
    """Size and settings of an :class:`EncoderDecoderModel`. Defined in lesson 02.

    ``decoder_start_id`` begins every decoder input (T5 uses its pad id, 0); ``max_seq_len``
    bounds both the encoder input and the decoder output (learned positions).
    """

    vocab_size: int = 256
    d_model: int = 64
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_seq_len: int = 128
    norm_eps: float = 1e-6
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_encoder_layers", "n_decoder_layers", "n_heads", "d_ff", "max_seq_len"):
            _require_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in [0, {self.vocab_size - 1}], got {getattr(self, name)}")


class Seq2SeqEncoderBlock(nn.Module):
    """T5-style encoder block: pre-norm RMSNorm, bidirectional self-attention, ReLU MLP, no biases. Defined in lesson 02."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = MultiHeadAttention(config.d_model, config.n_heads)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = feed_forward(config.d_model, config.d_ff, nn.ReLU(), bias=False)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), attn_mask=key_mask)
        return x + self.mlp(self.mlp_norm(x))


class Seq2SeqDecoderBlock(nn.Module):
    """T5-style decoder block: causal self-attention, cross-attention to the encoder, MLP. Defined in lesson 02."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.self_norm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = MultiHeadAttention(config.d_model, config.n_heads)
        self.cross_norm = RMSNorm(config.d_model, config.norm_eps)
        self.cross_attn = MultiHeadAttention(config.d_model, config.n_heads)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = feed_forward(config.d_model, config.d_ff, nn.ReLU(), bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(batch, T, d_model)``; ``memory``: encoder output ``(batch, S, d_model)``; ``memory_mask``: ``(batch, 1, 1, S)``."""
        x = x + self.self_attn(self.self_norm(x), is_causal=True)
        x = x + self.cross_attn(self.cross_norm(x), context=memory, attn_mask=memory_mask)
        return x + self.mlp(self.mlp_norm(x))


class EncoderDecoderModel(nn.Module):
    """A T5-style encoder-decoder with learned absolute positions (see :data:`DIFFERENCES`).

    - :meth:`encode`: source ids ``(batch, S)`` -> memory ``(batch, S, d_model)`` and its key mask;
    - :meth:`decode`: decoder ids ``(batch, T)`` + memory -> logits ``(batch, T, vocab)``;
    - ``model(input_ids, decoder_input_ids, attention_mask=None)`` does both;
    - :meth:`loss` trains on ``(input_ids, labels)`` with teacher forcing.

    The encoder and decoder share the token embedding; the output layer is tied to it when
    ``config.tie_embeddings``. Defined in lesson 02.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.enc_pos = nn.Embedding(config.max_seq_len, config.d_model)
        self.dec_pos = nn.Embedding(config.max_seq_len, config.d_model)
        self.encoder = nn.ModuleList([Seq2SeqEncoderBlock(config) for _ in range(config.n_encoder_layers)])
        self.enc_norm = RMSNorm(config.d_model, config.norm_eps)
        self.decoder = nn.ModuleList([Seq2SeqDecoderBlock(config) for _ in range(config.n_decoder_layers)])
        self.dec_norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        _init_weights(self, config.init_std)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _embed(self, ids: torch.Tensor, positions: nn.Embedding) -> torch.Tensor:
        _require_token_ids("ids", ids, self.config.vocab_size)
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len={self.config.max_seq_len}")
        return self.embed(ids) + positions(torch.arange(ids.shape[1], device=ids.device))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Returns ``(memory (batch, S, d_model), memory_mask (batch, 1, 1, S) bool)``; padding defaults to ``pad_id``."""
        key_mask = _key_mask(input_ids, attention_mask, self.config.pad_id)
        x = self._embed(input_ids, self.enc_pos)
        for block in self.encoder:
            x = block(x, key_mask)
        return self.enc_norm(x), key_mask

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, T, vocab)``; position ``t`` sees decoder tokens ``0..t`` and every real source token."""
        x = self._embed(decoder_input_ids, self.dec_pos)
        for block in self.decoder:
            x = block(x, memory, memory_mask)
        return self.lm_head(self.dec_norm(x))

    def forward(self, input_ids, decoder_input_ids, attention_mask=None) -> torch.Tensor:
        memory, memory_mask = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, memory_mask)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: the decoder reads ``shift_right(labels)`` and predicts ``labels`` (``-100`` = ignore)."""
        decoder_input_ids = shift_right(labels, self.config.decoder_start_id, self.config.pad_id)
        logits = self(input_ids, decoder_input_ids, attention_mask)
        return F.cross_entropy(_at_least_float32(logits).flatten(0, 1), labels.reshape(-1), ignore_index=-100)


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``[start_id, labels[0], ..., labels[T-2]]``, with ``-100`` read as ``pad_id``.

    ``labels``: ``(batch, T)`` integer ids. Returns the same shape and dtype. Defined in lesson 02.
    """
    _require_token_ids("labels", labels)
    shifted = torch.cat([torch.full_like(labels[:, :1], start_id), labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == -100, pad_id)


@torch.no_grad()
def generate_seq2seq(
    model: EncoderDecoderModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Greedy decoding: encode once, then append the argmax token until ``eos_id`` or ``max_new_tokens``.

    ``eos_id`` defaults to ``model.config.eos_id``; after a sequence's eos the rest is
    ``pad_id``. Returns ``(batch, 1 + generated)`` ``torch.long``, starting with
    ``decoder_start_id``. Defined in lesson 02.
    """
    _require_positive_int("max_new_tokens", max_new_tokens)
    config = model.config
    eos_id = config.eos_id if eos_id is None else eos_id
    memory, memory_mask = model.encode(input_ids, attention_mask)
    out = torch.full((input_ids.shape[0], 1), config.decoder_start_id, dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        token = model.decode(out, memory, memory_mask)[:, -1].argmax(dim=-1)
        token = token.masked_fill(finished, config.pad_id)
        finished |= token == eos_id
        out = torch.cat([out, token[:, None]], dim=1)
        if bool(finished.all()):
            break
    return out


def _random_partition(total: int, n_parts: int, generator: torch.Generator | None) -> list[int]:
    """Split ``total`` items into ``n_parts`` non-empty runs of random lengths (summing to ``total``)."""
    cuts = (torch.randperm(total - 1, generator=generator)[: n_parts - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def span_corruption(
    ids: torch.Tensor,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    *,
    sentinel_ids,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's pre-training objective: drop random spans of ``ids``, ask for them back.

    With ``n`` = ``len(ids)``, ``round(n * noise_density)`` tokens (at least 1, at most
    ``n - 1``) are noise, split into ``round(noise / mean_span_length)`` spans (at least 1);
    the kept tokens are split into as many runs. The sequence alternates kept run, noise
    span, kept run, ..., noise span, as in T5. Span ``i`` is replaced by ``sentinel_ids[i]``:

        ids     = A B C D E F G H           noise spans: "C D" and "H"
        inputs  = A B <s0> E F G <s1>
        targets = <s0> C D <s1> H

    Args:
        ids: ``(seq,)`` integer ids, ``seq >= 2``.
        noise_density: fraction of tokens to drop, in ``(0, 1)``.
        mean_span_length: average span length, ``>= 1``.
        sentinel_ids: ids of ``<extra_id_0>, <extra_id_1>, ...`` in that order (in T5,
            ``<extra_id_0>`` is the last id of the vocabulary and they count down).
        generator: a seeded ``torch.Generator`` for repeatable spans.
        eos_id: if given, appended to both inputs and targets.
    Returns:
        ``(inputs, targets)``, 1-D, ``ids``' dtype. :func:`undo_span_corruption` inverts it.

    Defined in lesson 02.
    """
    _require_token_ids("ids", ids, dim=1)
    n = ids.shape[0]
    if n < 2:
        raise ValueError(f"ids must hold at least 2 tokens, got {n}")
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span_length < 1:
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")
    n_noise = min(max(round(n * noise_density), 1), n - 1)
    n_spans = min(max(round(n_noise / mean_span_length), 1), n - n_noise)   # each span needs a kept run before it
    if len(sentinel_ids) < n_spans:
        raise ValueError(f"need at least {n_spans} sentinel ids for {n_spans} spans, got {len(sentinel_ids)}")
    kept_lengths = _random_partition(n - n_noise, n_spans, generator)
    noise_lengths = _random_partition(n_noise, n_spans, generator)
    inputs, targets, start = [], [], 0
    for i, (kept, noise) in enumerate(zip(kept_lengths, noise_lengths)):
        sentinel = ids.new_tensor([sentinel_ids[i]])
        inputs += [ids[start : start + kept], sentinel]
        targets += [sentinel, ids[start + kept : start + kept + noise]]
        start += kept + noise
    if eos_id is not None:
        inputs.append(ids.new_tensor([eos_id]))
        targets.append(ids.new_tensor([eos_id]))
    return torch.cat(inputs), torch.cat(targets)


def undo_span_corruption(inputs: torch.Tensor, targets: torch.Tensor, sentinel_ids, eos_id: int | None = None) -> torch.Tensor:
    """Put the spans of ``targets`` back in place of the sentinels of ``inputs`` (1-D each).

    Inverse of :func:`span_corruption`, with the same ``sentinel_ids`` and ``eos_id``
    (an ``eos_id`` ending both is removed). Defined in lesson 02.
    """
    _require_token_ids("inputs", inputs, dim=1)
    _require_token_ids("targets", targets, dim=1)
    inputs_dtype = inputs.dtype
    inputs, targets = inputs.tolist(), targets.tolist()
    if eos_id is not None:
        inputs, targets = inputs[:-1], targets[:-1]
    sentinels = {s: i for i, s in enumerate(sentinel_ids)}
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            current = spans.setdefault(sentinels[token], [])
        elif current is None:
            raise ValueError("targets must start with a sentinel id")
        else:
            current.append(token)
    original = []
    for token in inputs:
        original += spans.get(sentinels[token], []) if token in sentinels else [token]
    return torch.tensor(original, dtype=inputs_dtype)
