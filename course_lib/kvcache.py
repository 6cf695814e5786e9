"""Generating text: the KV cache, decode steps and sampling (lesson 02, used again in lesson 06).

A causal language model predicts one token at a time. Without a cache, every new token
re-runs the model on the whole sequence so far; with a :class:`KVCache` each layer keeps
the keys and values it has already computed, and a decode step feeds only the new token:

    logits = decode_step(model, prompt, cache)          # prefill: the whole prompt, once
    for _ in range(n):
        token = sample_next_token(logits, temperature=0.8, top_p=0.9, generator=g)
        logits = decode_step(model, token[:, None], cache)   # one token, position = len(cache)

The new token's query sits at position ``len(cache)`` and may attend to every cached key:
the causal mask is aligned to the bottom right, ``causal_mask(n_q, n_k, offset=n_k - n_q)``
(see :func:`course_lib.attention.causal_mask`). With grouped-query attention the cache holds
only the ``n_kv_heads`` key/value heads, which is what makes GQA cheap at inference.

The model is any module called as ``model(input_ids, cache=cache) -> logits (batch, seq, vocab)``,
for example :class:`course_lib.models.DecoderLM`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


# --------------------------------------------------------------------------- the cache


class KVCache:
    """Keys and values of every layer, ``(batch, n_kv_heads, seq, head_dim)`` each, grown by appending.

    Layer ``i`` calls ``k, v = cache.update(i, k_new, v_new)`` with the keys and values of
    its new positions and attends with the returned tensors: everything cached so far
    followed by the new positions. ``len(cache)`` is the number of positions cached (read
    it *before* a forward pass: it is the position of the first new token).

    Defined in lesson 02; lesson 06 measures its size.
    """

    def __init__(self, n_layers: int):
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers <= 0:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` ``(batch, n_kv_heads, new, head_dim)`` to layer ``layer``; return all of its keys and values."""
        if not 0 <= layer < len(self.keys):
            raise ValueError(f"layer must be in [0, {len(self.keys) - 1}], got {layer}")
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(
                f"k and v must both have shape (batch, n_kv_heads, new, head_dim), got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        old_k = self.keys[layer]
        if old_k is not None:
            if old_k.shape[:2] != k.shape[:2] or old_k.shape[3] != k.shape[3] or old_k.dtype != k.dtype:
                raise ValueError(
                    f"new keys {tuple(k.shape)} ({k.dtype}) do not match the cached ones {tuple(old_k.shape)} "
                    f"({old_k.dtype}) in batch, heads, head_dim or dtype"
                )
            k = torch.cat([old_k, k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer, forget the rest (speculative decoding's rollback).

        Defined in lesson 10.
        """
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= len(self):
            raise ValueError(f"length must be an int from 0 to {len(self)} (the positions cached), got {length!r}")
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                self.keys[layer], self.values[layer] = (k[:, :, :length], v[:, :, :length]) if length else (None, None)

    def __len__(self) -> int:
        """Number of positions held by layer 0 (all layers agree between forward passes)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values: ``2 * layers * batch * kv_heads * seq * head_dim * bytes``."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)

    def __repr__(self) -> str:
        shape = None if self.keys[0] is None else tuple(self.keys[0].shape)
        return f"KVCache(n_layers={self.n_layers}, length={len(self)}, keys per layer={shape})"


# --------------------------------------------------------------------------- filtering and sampling


def _describe(x) -> str:
    return f"shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise ValueError(f"logits must be a floating-point tensor (..., vocab), got {_describe(logits)}")


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 -> float32; float32 and float64 stay as they are."""
    return torch.promote_types(dtype, torch.float32)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the others to ``-inf``.

    Args:
        logits: ``(..., vocab)`` floating-point scores.
        k: how many to keep, ``k >= 1``; ``k >= vocab`` keeps everything. Ties with the
            k-th largest value are kept too (as Hugging Face's ``TopKLogitsWarper``).
    Returns:
        a new tensor of the same shape and dtype.

    Defined in lesson 02.
    """
    _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]      # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens whose probabilities sum to at least ``p``.

    Sort the tokens by probability, largest first; a token is kept iff the tokens ranked
    above it hold less than ``p`` of the probability. The most likely token is therefore
    always kept. The others are set to ``-inf``.

    Args:
        logits: ``(..., vocab)`` floating-point scores.
        p: ``0 < p <= 1``; ``p = 1`` keeps everything.
    Returns:
        a new tensor of the same shape and dtype.

    Defined in lesson 02.
    """
    _check_logits(logits)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p must be a number in (0, 1], got {p!r}")
    if p >= 1:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.to(_at_least_float32(logits.dtype)), dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs                           # probability of the better-ranked tokens
    remove_sorted = mass_above >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)            # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)``, after top-k then top-p filtering.

    Args:
        logits: ``(batch, vocab)`` next-token scores.
        temperature: ``> 0``; below 1 sharpens the distribution, above 1 flattens it.
            ``temperature = 0`` means greedy: the argmax, no randomness.
        top_k, top_p: optional filters, see :func:`top_k_filter` and :func:`top_p_filter`.
        generator: a seeded ``torch.Generator`` for repeatable draws.
    Returns:
        ``(batch,)`` token ids, ``torch.long``.

    Defined in lesson 02.
    """
    _check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(_at_least_float32(logits.dtype)) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------- decoding


def _is_id_matrix(x) -> bool:
    """True for an integer (not bool) tensor of shape (batch, seq)."""
    return isinstance(x, torch.Tensor) and x.dim() == 2 and not x.is_floating_point() and x.dtype != torch.bool


def decode_step(model: nn.Module, token_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed only the new token(s) through ``model`` and return the next-token logits.

    The new tokens take positions ``len(cache), len(cache) + 1, ...`` (the position
    offset), their keys and values are appended to ``cache``, and each attends to every
    cached position and to the new ones before it: ``causal_mask(n_q, n_k, offset=n_k - n_q)``.
    With an empty cache this is the *prefill* of a whole prompt.

    Args:
        model: called as ``model(token_ids, cache=cache)`` returning ``(batch, new, vocab)``.
        token_ids: ``(batch, new)`` integer ids, usually ``new = 1``.
        cache: the :class:`KVCache`, updated in place.
    Returns:
        ``(batch, vocab)`` logits for the token after the last one fed, in the model's dtype.

    Defined in lesson 02.
    """
    if not _is_id_matrix(token_ids):
        raise ValueError(f"token_ids must be an integer tensor (batch, new), got {_describe(token_ids)}")
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache must be a KVCache, got {type(cache).__name__}")
    return model(token_ids, cache=cache)[:, -1, :]


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens.

    Args:
        model: a causal LM, ``model(ids, cache=None) -> (batch, seq, vocab)`` with
            ``model.config.n_layers``, e.g. :class:`course_lib.models.DecoderLM`.
        input_ids: ``(batch, prompt_len)`` integer prompt, ``prompt_len >= 1`` (no padding).
        strategy: ``"greedy"`` (argmax at each step) or ``"sample"`` (see :func:`sample_next_token`
            for ``temperature``, ``top_k``, ``top_p`` and ``generator``).
        eos_id: a sequence that produced ``eos_id`` is finished: later positions get
            ``pad_id`` (default ``eos_id``); generation stops when all are finished.
        use_cache: decode with a :class:`KVCache` (one token per step) or recompute the
            whole sequence at every step; both give the same tokens.
    Returns:
        ``(batch, prompt_len + generated)`` ``torch.long`` ids, the prompt included.

    Defined in lesson 02.
    """
    if not _is_id_matrix(input_ids) or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty integer tensor (batch, prompt_len), got {_describe(input_ids)}")
    if strategy not in ("greedy", "sample"):
        raise ValueError(f"strategy must be 'greedy' or 'sample', got {strategy!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    pad_id = eos_id if pad_id is None else pad_id
    ids = input_ids.long()
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    cache = KVCache(model.config.n_layers) if use_cache else None
    new_tokens = ids                                             # what the model has not seen yet
    for _ in range(max_new_tokens):
        if use_cache:
            logits = decode_step(model, new_tokens, cache)
        else:
            logits = model(ids)[:, -1, :]
        if strategy == "greedy":
            token = logits.argmax(dim=-1)
        else:
            token = sample_next_token(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            finished |= token == eos_id
        ids = torch.cat([ids, token[:, None]], dim=1)
        new_tokens = token[:, None]
        if eos_id is not None and bool(finished.all()):
            break
    return ids


# --------------------------------------------------------------------------- bytes read


def _extent_bytes(t: torch.Tensor) -> int:
    """Bytes of the memory a tensor covers: a broadcast (stride-0) view covers its source once."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return min(t.numel(), span) * t.element_size()


class _BytesRead(TorchDispatchMode):
    """Adds up the bytes of every tensor each operation takes as input."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view or func.overloadpacket.__name__ == "_unsafe_view":   # a view only re-describes memory
            return func(*args, **(kwargs or {}))
        read = sum(_extent_bytes(t) for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor))
        self.total += read
        name = func.overloadpacket.__name__
        self.by_op[name] = self.by_op.get(name, 0) + read
        return func(*args, **(kwargs or {}))


def bytes_read(fn: Callable[[], Any], by_op: bool = False) -> int | tuple[int, dict[str, int]]:
    """Run ``fn()`` and count the bytes handed to its tensor operations: the sum over every operation of its inputs' bytes.

    A model that generates one token reads all of its weights once (each matrix product
    reads its weight) and, in every layer, the whole KV cache (the attention reads the
    cached keys and values). The count approximates the memory traffic that bounds decoding
    speed: it is exact for what PyTorch's operations are handed, but counts no writes (a
    cache that grows by ``torch.cat`` reads the old cache to copy it, counted, and writes
    the new one, not counted), charges an operation for a whole input it reads only part of
    (an embedding lookup for its whole table), and ignores re-reads inside one kernel and
    CPU and GPU caches. With ``by_op=True`` also returns the bytes per operation name
    (``mm``, ``cat``, ``bmm``, ...). Defined in lesson 06.
    """
    with _BytesRead() as counter:
        fn()
    return (counter.total, dict(counter.by_op)) if by_op else counter.total


# --------------------------------------------------------------------------- the size of a cache, from a config


# The attention shape of published models, from each one's config.json on the Hugging Face Hub
# (the keys a KV cache depends on; Falcon's ``multi_query: true`` written as one key/value head).
PUBLISHED_CONFIGS: dict[str, dict[str, int]] = {
    "Llama-2-7B": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "Llama-2-70B": {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "Llama-3-8B": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8},
    "Llama-3-70B": {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "Mistral-7B": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8},
    "Qwen2.5-7B": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
    "Gemma-7B": {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
                 "head_dim": 256},
    "Falcon-7B": {"hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71, "num_key_value_heads": 1},
}


def kv_cache_bytes_from_config(config: dict, seq_len: int, batch_size: int = 1, bytes_per_value: float = 2) -> int:
    """Bytes of the KV cache of a model described by a Hugging Face ``config.json`` (a dict).

    ``2 * num_hidden_layers * num_key_value_heads * head_dim * seq_len * batch_size * bytes_per_value``,
    where a missing ``num_key_value_heads`` means multi-head attention (as many as
    ``num_attention_heads``) and a missing ``head_dim`` means ``hidden_size // num_attention_heads``
    (Gemma sets its own). Defined in lesson 06 (the formula is lesson 03's ``memory.kv_cache_bytes``).
    """
    from course_lib.memory import kv_cache_bytes

    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict (a config.json), got {type(config).__name__}")
    missing = {"num_hidden_layers", "num_attention_heads"} - set(config)
    if missing or ("head_dim" not in config and "hidden_size" not in config):
        raise ValueError(f"config needs num_hidden_layers, num_attention_heads and hidden_size or head_dim; missing {sorted(missing) or ['hidden_size']}")
    n_kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return kv_cache_bytes(config["num_hidden_layers"], n_kv, head_dim, seq_len, batch_size, bytes_per_value)


# --------------------------------------------------------------------------- one layer, in pieces (a cache of your own)


def layer_qkv(model: nn.Module, layer: int, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries, keys and values that block ``layer`` of a :class:`~course_lib.models.DecoderLM` makes from ``x``.

    Args:
        model: a ``DecoderLM``.
        layer: the block, ``0 <= layer < model.config.n_layers``.
        x: ``(batch, n, d_model)``, the block's input (the residual stream) for ``n`` new tokens.
        positions: ``(n,)`` integer positions of those tokens in their sequences; the keys and
            queries are rotated (RoPE) by these angles, so a token fed alone at position ``t``
            needs ``positions = [t]``, not ``[0]``.
    Returns:
        ``q`` ``(batch, n_heads, n, head_dim)``, ``k`` and ``v`` ``(batch, n_kv_heads, n, head_dim)``:
        the block's pre-attention norm, its projections and RoPE, no attention and no cache.

    With :func:`layer_output` it runs a block with a cache you keep yourself. Defined in lesson 06.
    """
    from course_lib.attention import split_heads
    from course_lib.models import apply_rope, rope_cos_sin

    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer must be in [0, {len(model.blocks) - 1}], got {layer}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != model.config.d_model:
        raise ValueError(f"x must have shape (batch, n, {model.config.d_model}), got {_describe(x)}")
    if not isinstance(positions, torch.Tensor) or positions.shape != (x.shape[1],) or positions.is_floating_point():
        raise ValueError(f"positions must be an integer tensor of shape ({x.shape[1]},), one per token of x, got {_describe(positions)}")
    block = model.blocks[layer]
    attn = block.attn
    h = block.attn_norm(x)
    cos, sin = rope_cos_sin(positions.to(x.device), model.config.head_dim, model.config.rope_theta, x.dtype)
    q = apply_rope(split_heads(attn.q_proj(h), attn.n_heads), cos, sin)
    k = apply_rope(split_heads(attn.k_proj(h), attn.n_kv_heads), cos, sin)
    v = split_heads(attn.v_proj(h), attn.n_kv_heads)
    return q, k, v


def layer_output(model: nn.Module, layer: int, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Finish block ``layer``: ``x + o_proj(heads merged)``, then the MLP with its residual; returns ``(batch, n, d_model)``.

    ``x`` is the block's input given to :func:`layer_qkv`; ``attn_out`` ``(batch, n_heads, n, head_dim)``
    is the attention output of its queries. Defined in lesson 06.
    """
    from course_lib.attention import merge_heads

    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer must be in [0, {len(model.blocks) - 1}], got {layer}")
    block = model.blocks[layer]
    expected = (x.shape[0], block.attn.n_heads, x.shape[1], model.config.head_dim)
    if not isinstance(attn_out, torch.Tensor) or tuple(attn_out.shape) != expected:
        raise ValueError(f"attn_out must have shape {expected} (batch, n_heads, n, head_dim), got {_describe(attn_out)}")
    x = x + block.attn.o_proj(merge_heads(attn_out))
    return x + block.mlp(block.mlp_norm(x))
