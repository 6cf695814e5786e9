"""Memory: how many bytes tensors and models take (lesson 00; lesson 03 builds on it).

Lesson 03 answers "will it fit on my GPU?" three ways and checks that they agree:

1. **Count** the parameters of a model from its configuration alone
   (:class:`ModelShape`, :func:`count_params`), no weights needed.
2. **Estimate** the bytes of inference (:func:`estimate_inference_memory`: weights and the
   KV cache) and of one training step (:func:`estimate_training_memory`: weights,
   gradients, optimizer states, activations saved for backward, and the peak).
3. **Measure** the same quantities on real tensors, on the CPU
   (:func:`measure_training_memory`, :func:`saved_activation_bytes`) or on a GPU
   (:func:`measure_cuda_peak`).

:func:`source_table` is the source text's rule of thumb (4 + 20 bytes per parameter),
kept as code so that the lesson can set it beside the estimator and the measurements.

Units: every count of bytes is a Python ``int``; ``GB = 10**9`` and ``GiB = 2**30``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch

GB = 10**9
GiB = 2**30
MiB = 2**20


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes taken by the elements of ``t``: ``t.numel() * t.element_size()``, as a Python ``int``.

    A view counts its own elements, not the whole storage it looks into. Defined in lesson 00.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"t must be a torch.Tensor, got {type(t).__name__}")
    return t.numel() * t.element_size()


# --------------------------------------------------------------------------- number formats

#: Bytes per element of the formats the lesson talks about (int4 packs two values in a byte).
BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4, "float32": 4, "tf32": 4,
    "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2,
    "fp8": 1, "int8": 1, "uint8": 1,
    "int4": 0.5, "nf4": 0.5,
}


def dtype_bytes(dtype: str | torch.dtype) -> float:
    """Bytes per element of ``dtype``: a ``torch.dtype`` or a name such as ``"bf16"`` or ``"int4"``.

    Returns 4 for fp32, 2 for fp16/bf16, 1 for fp8/int8 and 0.5 for int4/nf4.
    Defined in lesson 03.
    """
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if not isinstance(dtype, str) or dtype.lower() not in BYTES_PER_ELEMENT:
        raise ValueError(f"dtype must be a torch.dtype or one of {sorted(BYTES_PER_ELEMENT)}, got {dtype!r}")
    return BYTES_PER_ELEMENT[dtype.lower()]


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human string in binary units: ``format_bytes(3 * 2**30) == "3.00 GiB"``. Defined in lesson 03."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- counting parameters


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def linear_params(d_in: int, d_out: int, bias: bool = True) -> int:
    """Parameters of ``nn.Linear(d_in, d_out)``: the weight ``W`` (d_out, d_in) and, with ``bias``, ``b`` (d_out,).

    The layer computes ``W x + b``; every entry of ``W`` and ``b`` is one parameter.
    Defined in lesson 03.
    """
    _positive(d_in=d_in, d_out=d_out)
    return d_in * d_out + (d_out if bias else 0)


def embedding_params(num_embeddings: int, dim: int) -> int:
    """Parameters of ``nn.Embedding(num_embeddings, dim)``: one ``dim``-vector per token id. Defined in lesson 03."""
    _positive(num_embeddings=num_embeddings, dim=dim)
    return num_embeddings * dim


def norm_params(dim: int, kind: str = "rmsnorm") -> int:
    """Parameters of a normalisation layer over ``dim`` features.

    ``"rmsnorm"`` (Llama) has a gain only: ``dim``; ``"layernorm"`` (GPT-2) has a gain and a
    bias: ``2 * dim``. Defined in lesson 03.
    """
    _positive(dim=dim)
    if kind not in ("rmsnorm", "layernorm"):
        raise ValueError(f"kind must be 'rmsnorm' or 'layernorm', got {kind!r}")
    return dim if kind == "rmsnorm" else 2 * dim


def attention_params(d_model: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None,
                     bias: bool = False) -> int:
    """Parameters of the q, k, v and o projections of multi-head attention (MHA, GQA or MQA).

    ``q`` and ``o`` map ``d_model`` to ``n_heads * head_dim`` and back; ``k`` and ``v`` map
    ``d_model`` to ``n_kv_heads * head_dim`` only, which is why GQA is smaller than MHA.
    ``head_dim`` defaults to ``d_model // n_heads``; ``n_kv_heads`` to ``n_heads``.
    GPT-2's fused ``c_attn`` (q, k and v in one matrix, with biases) counts the same as
    ``bias=True``. Defined in lesson 03.
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    _positive(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    head_dim = d_model // n_heads if head_dim is None else head_dim
    _positive(head_dim=head_dim)
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    return (linear_params(d_model, q_dim, bias) + 2 * linear_params(d_model, kv_dim, bias)
            + linear_params(q_dim, d_model, bias))


def gated_mlp_params(d_model: int, d_ff: int, bias: bool = False) -> int:
    """Parameters of a gated MLP (SwiGLU, Llama): ``down(silu(gate(x)) * up(x))``, three matrices.

    gate and up are ``d_model -> d_ff``, down is ``d_ff -> d_model``. Defined in lesson 03.
    """
    return 2 * linear_params(d_model, d_ff, bias) + linear_params(d_ff, d_model, bias)


def mlp_params(d_model: int, d_ff: int, bias: bool = True) -> int:
    """Parameters of a plain MLP (GPT-2): ``proj(gelu(fc(x)))``, two matrices with biases. Defined in lesson 03."""
    return linear_params(d_model, d_ff, bias) + linear_params(d_ff, d_model, bias)


STYLES = ("llama", "gpt2")

# How many activation-sized tensors (of d_ff features) autograd keeps for one MLP
# activation, in transformers' code: see :func:`activation_bytes_per_layer`.
_GPT2_ACT_SAVES = {"gelu_new": 5, "gelu": 2, "gelu_pytorch_tanh": 2, "gelu_python_tanh": 2, "relu": 1, "silu": 2}


@dataclass(frozen=True)
class ModelShape:
    """The numbers that fix a decoder-only language model's memory: plain data, no weights.

    Attributes:
        vocab_size: tokens in the vocabulary (V).
        d_model: width of the residual stream (h, ``hidden_size``).
        n_layers: decoder blocks (L).
        n_heads: query heads (a).
        n_kv_heads: key/value heads; ``None`` means ``n_heads`` (MHA). GQA has fewer.
        d_ff: hidden width of the MLP; ``None`` means ``4 * d_model``.
        tie_embeddings: the output layer reuses the token embedding matrix.
        style: ``"llama"`` (RMSNorm, RoPE, SwiGLU, no biases) or ``"gpt2"`` (LayerNorm,
            learned positions, GELU MLP, biases everywhere).
        max_positions: the longest sequence; GPT-2 learns one embedding per position.
        head_dim: features per head; ``None`` means ``d_model // n_heads``.
        attn_bias, mlp_bias: biases in the attention / MLP projections (Llama style only;
            GPT-2 always has them).
        activation: the MLP non-linearity, as named in transformers' configs.
        dropout: dropout on the residual branches and embeddings (GPT-2's resid/embd_pdrop).
        attention_dropout: dropout on the attention probabilities.

    Defined in lesson 03.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    d_ff: int | None = None
    tie_embeddings: bool = False
    style: str = "llama"
    max_positions: int = 2048
    head_dim: int | None = None
    attn_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"
    dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self):
        _positive(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                  n_heads=self.n_heads, max_positions=self.max_positions)
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.n_kv_heads is not None:
            _positive(n_kv_heads=self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.d_ff is not None:
            _positive(d_ff=self.d_ff)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} (or give head_dim)")
        if self.head_dim is not None:
            _positive(head_dim=self.head_dim)
        # fill in the defaults, so that equal models have equal shapes
        object.__setattr__(self, "n_kv_heads", self.n_heads if self.n_kv_heads is None else self.n_kv_heads)
        object.__setattr__(self, "d_ff", 4 * self.d_model if self.d_ff is None else self.d_ff)
        object.__setattr__(self, "head_dim", self.d_model // self.n_heads if self.head_dim is None else self.head_dim)
        if self.style == "gpt2" and self.activation not in _GPT2_ACT_SAVES:
            raise ValueError(f"a gpt2-style activation must be one of {sorted(_GPT2_ACT_SAVES)}, got {self.activation!r}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def q_dim(self) -> int:
        """Width of all query heads together: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together: ``kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, config) -> "ModelShape":
        """The shape of a ``transformers`` ``LlamaConfig``, ``MistralConfig`` or ``GPT2Config``.

        Reads only numbers from the configuration; no model is built. Defined in lesson 03.
        """
        kind = getattr(config, "model_type", None)
        if kind == "gpt2":
            return cls(
                vocab_size=config.vocab_size, d_model=config.n_embd, n_layers=config.n_layer,
                n_heads=config.n_head, d_ff=config.n_inner, max_positions=config.n_positions,
                tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)), style="gpt2",
                activation=config.activation_function,
                dropout=max(config.resid_pdrop, config.embd_pdrop), attention_dropout=config.attn_pdrop,
            )
        if kind in ("llama", "mistral"):
            return cls(
                vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
                n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads,
                d_ff=config.intermediate_size, tie_embeddings=bool(config.tie_word_embeddings), style="llama",
                max_positions=config.max_position_embeddings, head_dim=getattr(config, "head_dim", None),
                attn_bias=bool(getattr(config, "attention_bias", False)), mlp_bias=bool(getattr(config, "mlp_bias", False)),
                activation=config.hidden_act, attention_dropout=float(getattr(config, "attention_dropout", 0.0)),
            )
        raise ValueError(f"config must be a LlamaConfig, MistralConfig or GPT2Config "
                         f"(model_type llama/mistral/gpt2), got {kind!r}")

    def to_hf_config(self, **kwargs):
        """A ``transformers`` ``LlamaConfig`` (style "llama") or ``GPT2Config`` (style "gpt2") with these numbers.

        Extra keyword arguments go to the config, for example ``attn_implementation="eager"``.
        Defined in lesson 03.
        """
        import transformers

        if self.style == "gpt2":
            return transformers.GPT2Config(
                vocab_size=self.vocab_size, n_embd=self.d_model, n_layer=self.n_layers, n_head=self.n_heads,
                n_inner=self.d_ff, n_positions=self.max_positions, tie_word_embeddings=self.tie_embeddings,
                activation_function=self.activation, resid_pdrop=self.dropout, embd_pdrop=self.dropout,
                attn_pdrop=self.attention_dropout, bos_token_id=0, eos_token_id=0, **kwargs,
            )
        return transformers.LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.d_model, num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads, intermediate_size=self.d_ff,
            head_dim=self.head_dim, max_position_embeddings=self.max_positions, tie_word_embeddings=self.tie_embeddings,
            attention_bias=self.attn_bias, mlp_bias=self.mlp_bias, hidden_act=self.activation,
            attention_dropout=self.attention_dropout, bos_token_id=0, eos_token_id=0, pad_token_id=None, **kwargs,
        )


def _require_shape(shape) -> None:
    if not isinstance(shape, ModelShape):
        raise ValueError(f"shape must be a ModelShape (see ModelShape.from_hf_config), got {type(shape).__name__}")


def block_params(shape: ModelShape) -> int:
    """Parameters of one decoder block: attention, MLP and its two norms. Defined in lesson 03."""
    _require_shape(shape)
    h = shape.d_model
    if shape.style == "gpt2":
        return attention_params(h, shape.n_heads, bias=True) + mlp_params(h, shape.d_ff) + 2 * norm_params(h, "layernorm")
    return (attention_params(h, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.attn_bias)
            + gated_mlp_params(h, shape.d_ff, shape.mlp_bias) + 2 * norm_params(h, "rmsnorm"))


def param_breakdown(shape: ModelShape) -> dict[str, int]:
    """Parameters by part: token embedding, position embedding, all blocks, final norm, output layer.

    The output layer (``lm_head``, ``d_model -> vocab_size``, no bias) counts 0 when it is
    tied to the token embedding. Defined in lesson 03.
    """
    _require_shape(shape)
    h, v = shape.d_model, shape.vocab_size
    kind = "layernorm" if shape.style == "gpt2" else "rmsnorm"
    return {
        "token_embedding": embedding_params(v, h),
        "position_embedding": embedding_params(shape.max_positions, h) if shape.style == "gpt2" else 0,
        "blocks": shape.n_layers * block_params(shape),
        "final_norm": norm_params(h, kind),
        "lm_head": 0 if shape.tie_embeddings else linear_params(h, v, bias=False),
    }


def count_params(shape: ModelShape) -> int:
    """Parameters of the whole model, from its shape alone (tied weights counted once).

    Equals ``sum(p.numel() for p in model.parameters())`` for the ``transformers`` model
    built from the same configuration. Defined in lesson 03.
    """
    return sum(param_breakdown(shape).values())


def param_tensor_count(shape: ModelShape) -> int:
    """How many parameter tensors the model has (Adam keeps one step counter per tensor). Defined in lesson 03."""
    _require_shape(shape)
    if shape.style == "gpt2":
        return 12 * shape.n_layers + 4 + (0 if shape.tie_embeddings else 1)
    per_layer = 4 * (1 + shape.attn_bias) + 3 * (1 + shape.mlp_bias) + 2
    return per_layer * shape.n_layers + 2 + (0 if shape.tie_embeddings else 1)


def matmul_weight_params(shape: ModelShape) -> int:
    """Parameters in weight matrices that feed a matrix multiplication (not norms, biases or embeddings).

    Under autocast each of these is copied to bf16 once per forward pass, and the copy is
    kept for the backward pass. The output layer counts even when it is tied to the
    embedding (the embedding lookup itself is not a matmul). Defined in lesson 03.
    """
    _require_shape(shape)
    h = shape.d_model
    if shape.style == "gpt2":
        block = 3 * h * h + h * h + 2 * h * shape.d_ff
    else:
        block = 2 * h * shape.q_dim + 2 * h * shape.kv_dim + 3 * h * shape.d_ff
    return shape.n_layers * block + h * shape.vocab_size


#: Well-known configurations, with their published parameter counts (checked in the tests).
REFERENCE_MODELS: dict[str, ModelShape] = {
    "gpt2-124m": ModelShape(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, tie_embeddings=True,
                            style="gpt2", max_positions=1024, activation="gelu_new", dropout=0.1, attention_dropout=0.1),
    "llama-3-8b": ModelShape(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                             max_positions=8192),
    "mistral-7b-v0.1": ModelShape(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                                  max_positions=32768),
}


def reference_1b_config() -> ModelShape:
    """The 1.10 B-parameter Llama-style model whose training memory the course measured on an H200.

    hidden 2048, 16 layers, 32 heads, 8 key/value heads, MLP 8192, vocabulary 32000,
    untied output layer: 1,104,218,112 parameters. Defined in lesson 03.
    """
    return ModelShape(vocab_size=32000, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                      max_positions=2048)


# --------------------------------------------------------------------------- the source text's table


@dataclass(frozen=True)
class SourceRow:
    """One precision of the source text's rule of thumb, in bytes per parameter.

    ``load`` is the weights alone; ``train`` adds Adam's two states, the gradients and an
    "estimate" for activations and temporaries. ``*_gb_per_billion`` are the same numbers
    read as GB per billion parameters (1e9 params x 4 bytes = 4 GB). Defined in lesson 03.
    """

    precision: str
    weights: float
    adam_states: float
    gradients: float
    activations_estimate: float

    @property
    def load(self) -> float:
        return self.weights

    @property
    def train(self) -> float:
        return self.weights + self.adam_states + self.gradients + self.activations_estimate

    @property
    def load_gb_per_billion(self) -> float:
        return self.load * 1e9 / GB

    @property
    def train_gb_per_billion(self) -> float:
        return self.train * 1e9 / GB


#: The source's table, row by row: (Chinese label, English label, bytes per parameter at 32 bits).
SOURCE_STATES: tuple[tuple[str, str, int], ...] = (
    ("模型参数(权重)", "model parameters (weights)", 4),
    ("Adam优化器(2个状态)", "Adam optimizer (2 states)", 8),
    ("梯度", "gradients", 4),
    ("激活值和临时函数变量(可变大小)", "activations and temporaries (variable size)", 8),
)


def source_table() -> list[SourceRow]:
    """The source text's memory table as rows: 32-bit, 16-bit and 8-bit.

    At 32 bits: weights 4 + Adam 8 + gradients 4 + activations 8 ("estimate") = 4 + 20 = 24
    bytes per parameter, so a 1B model needs 4 GB to load and 24 GB to train; the source
    halves everything for 16 bits (2 GB / 12 GB) and quarters it for 8 bits (1 GB / 6 GB).

    The estimator and the measurements correct it: in fp32 AdamW the model states alone are
    16 bytes/param, activations grow with batch x sequence instead of with the parameters,
    mixed precision (autocast) keeps the 16, and 8-bit training keeps 32-bit or 16-bit
    master weights and gradients. Defined in lesson 03.
    """
    rows = []
    for name, scale in (("fp32", 1.0), ("16-bit", 0.5), ("8-bit", 0.25)):
        w, adam, g, act = (b * scale for _, _, b in SOURCE_STATES)
        rows.append(SourceRow(name, w, adam, g, act))
    return rows


# --------------------------------------------------------------------------- inference


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int = 1,
                   bytes_per_element: float = 2) -> int:
    """Bytes of the KV cache: ``2 * layers * kv_heads * head_dim * seq * batch * bytes``.

    The 2 is one tensor for keys and one for values, each ``(batch, kv_heads, seq, head_dim)``
    per layer. Defined in lesson 03 (lesson 06 measures it).
    """
    _positive(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, seq_len=seq_len, batch_size=batch_size)
    return math.ceil(2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element)


@dataclass(frozen=True)
class InferenceMemory:
    """Bytes needed to generate: the weights and the KV cache. Defined in lesson 03."""

    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def estimate_inference_memory(shape: ModelShape, batch_size: int = 1, seq_len: int = 2048,
                              weight_dtype: str | torch.dtype = "bf16",
                              kv_dtype: str | torch.dtype | None = None) -> InferenceMemory:
    """Weights (``count_params * bytes``) plus the KV cache of ``batch_size`` sequences of ``seq_len`` tokens.

    ``kv_dtype`` defaults to ``weight_dtype`` (or bf16 when the weights are 8-bit or 4-bit,
    as quantized models keep 16-bit activations). Temporary activations of a forward pass
    are left out: they are small next to these two at batch sizes used for generation.
    Defined in lesson 03.
    """
    _require_shape(shape)
    w = dtype_bytes(weight_dtype)
    kv = dtype_bytes(kv_dtype) if kv_dtype is not None else (w if w >= 2 else 2)
    return InferenceMemory(
        weights=math.ceil(count_params(shape) * w),
        kv_cache=kv_cache_bytes(shape.n_layers, shape.n_kv_heads, shape.head_dim, seq_len, batch_size, kv),
    )


# --------------------------------------------------------------------------- training: model states

PRECISIONS = ("fp32", "bf16", "bf16-mixed")
OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw", "adamw-8bit")
ATTENTIONS = ("eager", "sdpa")
DEVICES = ("cpu", "cuda")

#: Blockwise 8-bit optimizer states (bitsandbytes): one fp32 scale per block of this many values.
BLOCK_8BIT = 256


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def precision_bytes(precision: str) -> tuple[int, int, int]:
    """``(weights, compute, residual)`` bytes per element for a precision mode.

    - ``"fp32"``: everything in fp32: ``(4, 4, 4)``.
    - ``"bf16"`` (pure bf16): the model itself is bf16, so weights, gradients, optimizer
      states and activations are 2 bytes: ``(2, 2, 2)``.
    - ``"bf16-mixed"`` (``torch.autocast``): fp32 master weights, gradients and states;
      matrix multiplications run in bf16, so most activations are bf16, while the residual
      stream between blocks stays fp32: ``(4, 2, 4)``.

    Defined in lesson 03.
    """
    _check_choice("precision", precision, PRECISIONS)
    return {"fp32": (4, 4, 4), "bf16": (2, 2, 2), "bf16-mixed": (4, 2, 4)}[precision]


def optimizer_state_bytes(n_params: int, optimizer: str = "adamw", precision: str = "fp32", n_tensors: int = 0) -> int:
    """Bytes of optimizer state for ``n_params`` trainable parameters in ``n_tensors`` tensors.

    - ``"sgd"``: none. ``"sgd-momentum"``: one buffer per parameter.
    - ``"adam"`` / ``"adamw"``: two (first and second moment), in the parameters' dtype
      (fp32 for ``"fp32"`` and ``"bf16-mixed"``, bf16 for pure ``"bf16"``), plus PyTorch's
      4-byte step counter per tensor.
    - ``"adamw-8bit"``: two int8 states (2 bytes/param) plus one fp32 scale per block of
      ``BLOCK_8BIT`` = 256 values per state (``2 * 4 / 256`` = 0.03 bytes/param), as
      bitsandbytes' blockwise 8-bit optimizers do. (bitsandbytes keeps tensors under 4096
      elements in 32-bit; that matters for tiny models only and is left out.)

    Defined in lesson 03.
    """
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    w = precision_bytes(precision)[0]
    if optimizer == "sgd":
        return 0
    if optimizer == "sgd-momentum":
        return n_params * w
    if optimizer == "adamw-8bit":
        return 2 * n_params + 2 * math.ceil(n_params / BLOCK_8BIT) * 4
    return 2 * n_params * w + 4 * n_tensors


# --------------------------------------------------------------------------- training: activations


def attention_kernel(shape: ModelShape, precision: str, attention: str = "sdpa", device: str = "cuda") -> str:
    """Which attention computation runs, which decides what is saved for backward.

    - ``"eager"``: transformers' own ``softmax(q k^T) v``; saves the ``(a, s, s)``
      probabilities.
    - ``"flash"``: a fused SDPA kernel (FlashAttention, memory-efficient or cuDNN on a GPU,
      the flash kernel on a CPU): saves q, k, v, the output and one fp32 log-sum-exp per
      head and position, nothing of size s x s.
    - ``"math"``: SDPA's fallback written with ordinary ops; it computes in fp32 even for
      bf16 inputs and saves the probabilities like eager.

    PyTorch picks the kernel: on a CPU the flash kernel takes no dropout; on a GPU fp32 has
    no FlashAttention and the memory-efficient kernel takes no grouped-query heads, so fp32
    with GQA falls back to math. Defined in lesson 03.
    """
    _check_choice("attention", attention, ATTENTIONS)
    _check_choice("device", device, DEVICES)
    if attention == "eager":
        return "eager"
    if device == "cpu":
        return "math" if shape.attention_dropout > 0 else "flash"
    if precision == "fp32" and shape.n_kv_heads != shape.n_heads:
        return "math"
    return "flash"


def _norm_bytes(shape: ModelShape, precision: str, device: str, consumers: int) -> dict[str, float]:
    """Bytes per token saved by one norm and by the Linear layers that read its output."""
    w, e, r = precision_bytes(precision)
    h = shape.d_model
    mixed = precision == "bf16-mixed"
    if shape.style == "llama":
        # transformers' LlamaRMSNorm: x.to(fp32) -> pow, mean, rsqrt -> x * rstd -> .to(dtype) -> weight * (.)
        saved = 4 * h + 4 + w * h              # fp32 input (pow, mul), 1/rms (fp32), x * rstd (param dtype)
    else:
        stats = 2 if device == "cpu" and precision == "bf16" else 4
        saved = r * h + 2 * stats              # native layer_norm: input, mean and 1/std
    # The output is saved by the Linear layers that read it. autocast casts it to bf16
    # once per Linear (q, k and v each keep their own copy); otherwise they share one.
    out = 2 * h * consumers if mixed else e * h
    return {"norms": saved + out}


def _dropout_mask_bytes(device: str, element: int) -> int:
    # CUDA's fused dropout keeps a bool mask; on a CPU dropout is x * mask with a mask of x's dtype.
    return 1 if device == "cuda" else element


def _attention_bytes(shape: ModelShape, seq_len: int, precision: str, kernel: str, device: str) -> dict[str, float]:
    """Bytes per token saved by attention (between the q/k/v projections and the output projection)."""
    e = precision_bytes(precision)[1]
    a, qd, kvd = shape.n_heads, shape.q_dim, shape.kv_dim
    dropout = shape.attention_dropout > 0
    if kernel == "flash":
        # q, k, v (GQA: only kv heads), the output (also the o-projection's input), log-sum-exp.
        # GPT-2's q is a view into the fused c_attn output, which therefore stays whole, and
        # k and v are the copies that the KV cache's concatenation makes (transformers builds
        # a cache even in training unless use_cache=False).
        qkv = qd + 2 * kvd + 2 * kvd if shape.style == "gpt2" else qd + 2 * kvd
        return {"attention": e * (qkv + qd) + 4 * a, "attention_probs": 0}
    if kernel == "math":
        # fp32 copies of q, k, v (k and v repeated to all heads), probabilities (+ dropout), output cast back
        probs = 4 + (_dropout_mask_bytes(device, 4) + 4 if dropout else 0)
        return {"attention": 3 * 4 * qd + e * qd, "attention_probs": probs * a * seq_len}
    # eager: q, k, v repeated to all heads, softmax(q k^T) (+ dropout), and the output copy
    if shape.style == "llama":
        soft = 4                                   # softmax(..., dtype=float32)
    else:
        soft = 4 if precision != "bf16" else 2     # scores + mask; autocast's mask is fp32
    if dropout:
        probs = soft + _dropout_mask_bytes(device, e) + e
    else:
        probs = soft + (e if soft != e else 0)     # the cast back to bf16 is saved by probs @ v
    return {"attention": 4 * e * qd, "attention_probs": probs * a * seq_len}


def _mlp_bytes(shape: ModelShape, precision: str) -> dict[str, float]:
    e = precision_bytes(precision)[1]
    if shape.style == "llama":
        return {"mlp": 4 * e * shape.d_ff}         # gate out (SiLU input), SiLU out, up out, product (down input)
    return {"mlp": _GPT2_ACT_SAVES[shape.activation] * e * shape.d_ff}


def _add(total: dict[str, float], part: dict[str, float], times: float = 1.0) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v * times


def activation_bytes_per_layer(shape: ModelShape, seq_len: int, batch_size: int = 1, precision: str = "fp32",
                               attention: str = "sdpa", device: str = "cuda") -> dict[str, int]:
    """Bytes one decoder block saves for the backward pass, by part, without checkpointing.

    The formula is what autograd keeps for the blocks of transformers' ``LlamaForCausalLM``
    and ``GPT2LMHeadModel`` in PyTorch eager mode, per token (h = d_model, f = d_ff,
    a = heads, s = sequence, e = bytes of the compute dtype, all checked by measurement):

    Llama block, fp32 (e = 4):

    - each RMSNorm: its input, 1/rms, ``x * 1/rms`` and its output: ``3h + 1`` elements
      (in pure bf16 the input and 1/rms are fp32 copies: ``8h + 4`` bytes);
    - attention, eager: q (after RoPE), k and v repeated to all heads, the softmax
      probabilities (``a * s`` in fp32, plus a bf16 copy in bf16 modes) and the output
      that enters ``o_proj``: ``4h + a s``;
      SDPA with a fused kernel: q, k, v with only the kv heads, the output, and ``a``
      fp32 log-sum-exps: ``2h + 2 h_kv + a`` and nothing of size s x s;
    - SwiGLU MLP: the gate output (SiLU's input), SiLU's output, the up output and their
      product (``down_proj``'s input): ``4f``.

    Under autocast (``"bf16-mixed"``) the Linear layers keep bf16 copies of their inputs,
    one per layer even when three layers (q, k, v) read the same tensor, and the residual
    stream and norms stay fp32.

    Korthikanti et al. (2022) count ``s b h (34 + 5 a s / h)`` bytes per layer for a
    GPT block in 16-bit with dropout and no FlashAttention (:func:`korthikanti_activation_bytes`).
    The GPT-2 style here reproduces it exactly on a GPU in pure bf16 with a fused GELU
    (``activation="gelu_pytorch_tanh"``), up to the 16 bytes per token of LayerNorm
    statistics they drop. The differences elsewhere are real: transformers' GPT-2 GELU
    (``"gelu_new"``) is written in Python and saves five f-sized tensors instead of two
    (+24h bytes in 16-bit); the Llama block has no dropout (no ``a s`` mask and dropped
    copy) but keeps fp32 softmax probabilities in eager mode (``6 a s`` instead of
    ``5 a s``), RMSNorm keeps three h-sized tensors, SwiGLU keeps four f-sized ones;
    with FlashAttention the ``a s / h`` term disappears. On a CPU dropout masks are the
    dtype of the tensor rather than bool.

    Returns a dict of byte counts for ``batch_size`` sequences of ``seq_len`` tokens:
    ``norms``, ``attention``, ``attention_probs`` (the part that grows with s^2), ``mlp``,
    ``dropout_masks``. Defined in lesson 03.
    """
    _require_shape(shape)
    _positive(seq_len=seq_len, batch_size=batch_size)
    kernel = attention_kernel(shape, precision, attention, device)
    per_token: dict[str, float] = {}
    if shape.style == "llama":
        _add(per_token, _norm_bytes(shape, precision, device, consumers=3))
        _add(per_token, _norm_bytes(shape, precision, device, consumers=2))
    else:
        _add(per_token, _norm_bytes(shape, precision, device, consumers=1), times=2)
    _add(per_token, _attention_bytes(shape, seq_len, precision, kernel, device))
    _add(per_token, _mlp_bytes(shape, precision))
    if shape.dropout > 0:   # after the attention output and after the MLP (outputs in the compute dtype)
        per_token["dropout_masks"] = 2 * _dropout_mask_bytes(device, precision_bytes(precision)[1]) * shape.d_model
    tokens = batch_size * seq_len
    return {k: int(round(v * tokens)) for k, v in per_token.items()}


def korthikanti_activation_bytes(seq_len: int, batch_size: int, d_model: int, n_heads: int,
                                 recompute: str = "none") -> int:
    """Activation bytes of one transformer layer after Korthikanti et al. (2022).

    ``s b h (34 + 5 a s / h)`` in 16-bit with dropout and no FlashAttention;
    ``2 s b h`` with full recomputation (only the layer's input is kept).
    Defined in lesson 03.
    """
    _positive(seq_len=seq_len, batch_size=batch_size, d_model=d_model, n_heads=n_heads)
    _check_choice("recompute", recompute, ("none", "full"))
    s, b, h, a = seq_len, batch_size, d_model, n_heads
    if recompute == "full":
        return 2 * s * b * h
    return s * b * h * 34 + 5 * a * s * s * b


def activation_memory(shape: ModelShape, batch_size: int, seq_len: int, precision: str = "fp32",
                      attention: str = "sdpa", checkpointing: bool = False, device: str = "cuda") -> dict[str, int]:
    """Bytes saved for backward by one forward pass of the whole model, including the loss, by part.

    Blocks: :func:`activation_bytes_per_layer` times ``n_layers``; with activation
    checkpointing (transformers' ``activation_checkpointing_enable``, non-reentrant) a
    block keeps only its input, ``s b h`` in the residual dtype (Korthikanti's ``2 s b h``
    in 16-bit), and recomputes the rest during backward (one block at a time; see
    :func:`estimate_training_memory` for that extra peak). GPT-2's eager attention also
    hands its ``(b, 1, s, s)`` mask to the checkpoints, which keep one copy.

    Outside the blocks: the token ids (int64, 8 bytes/token) kept by the embedding, GPT-2's
    position ids and embedding dropout mask, Llama's RoPE cos/sin tables (``2 s d_head``,
    shared by all layers), the final norm, the fp32 log-softmax of the logits that
    cross-entropy keeps (``4 V`` bytes/token: transformers upcasts logits to fp32 for the
    loss, so this is the largest single tensor for small models with big vocabularies),
    and the shifted labels (8 bytes/token).

    Limits: the formula follows transformers' code (checked with 5.x) for batches without
    padding, so that SDPA gets no mask. A padding mask, or Mistral's sliding window when
    it is shorter than the sequence, hands SDPA an explicit ``(b, 1, s, s)`` mask, which it
    keeps (6 % more than estimated for a two-layer model at s = 96 with a window of 32).
    A model written differently (another RMSNorm, a hand-written softmax, a fused loss)
    saves different tensors: measure it with :func:`measure_training_memory`.

    Defined in lesson 03.
    """
    _require_shape(shape)
    _check_choice("precision", precision, PRECISIONS)
    w, _, r = precision_bytes(precision)
    s, b, h, v = seq_len, batch_size, shape.d_model, shape.vocab_size
    tokens = b * s
    parts: dict[str, int] = {}
    if checkpointing:
        parts["layer_inputs"] = shape.n_layers * r * h * tokens
        if shape.style == "gpt2" and attention == "eager":
            parts["attention_mask"] = w * b * s * s
    else:
        for k, val in activation_bytes_per_layer(shape, s, b, precision, attention, device).items():
            parts[k] = shape.n_layers * val
        if shape.style == "llama":
            parts["rope_tables"] = 2 * s * shape.head_dim * (2 if precision == "bf16" else 4)
    parts["token_ids"] = 8 * tokens
    if shape.style == "gpt2":
        parts["token_ids"] += 8 * s                         # position ids (1, s)
        if shape.dropout > 0:
            parts["dropout_masks"] = parts.get("dropout_masks", 0) + _dropout_mask_bytes(device, r) * h * tokens
    parts["final_norm"] = int(_norm_bytes(shape, precision, device, consumers=1)["norms"] * tokens)
    parts["logits"] = 4 * v * tokens                        # fp32 log-softmax kept by cross-entropy
    parts["loss"] = 8 * tokens + 4                          # shifted labels and the weight total
    return parts


# --------------------------------------------------------------------------- training: the estimate


@dataclass
class TrainingMemory:
    """Bytes of one training step, by kind. Estimates and measurements use the same fields.

    Attributes:
        weights: the parameters.
        gradients: one gradient per trainable parameter, in the parameters' dtype.
        optimizer_states: e.g. Adam's two moments.
        activations: tensors saved by the forward pass for the backward pass.
        weight_copies: bf16 copies of weights that autocast makes and keeps for backward.
        peak: highest bytes allocated during a step (estimated, or measured on a GPU);
            ``None`` where it is not known (CPU measurements).
        details: named parts (the estimate's activation parts, or bytes by dtype when measured).

    ``model_states`` is weights + gradients + optimizer states (ZeRO's "16 bytes per
    parameter" for mixed-precision Adam); ``total`` adds activations and weight copies,
    everything held at once if nothing were freed early. Defined in lesson 03.
    """

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    weight_copies: int = 0
    peak: int | None = None
    details: dict[str, int] = field(default_factory=dict)

    @property
    def model_states(self) -> int:
        return self.weights + self.gradients + self.optimizer_states

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.weight_copies

    def as_dict(self) -> dict[str, int | None]:
        """The byte counts by name, with ``model_states`` and ``total``."""
        d = {k: v for k, v in asdict(self).items() if k != "details"}
        d.update(model_states=self.model_states, total=self.total)
        return d


def estimate_training_memory(shape: ModelShape, batch_size: int, seq_len: int, optimizer: str = "adamw",
                             precision: str = "fp32", attention: str = "sdpa", checkpointing: bool = False,
                             device: str = "cuda") -> TrainingMemory:
    """Estimate the memory of one training step of a model of this shape, as a breakdown.

    Model states (per parameter; ``n`` = :func:`count_params`):

    ============ ======= ======= ==================
    precision    weights grads   Adam states
    ============ ======= ======= ==================
    fp32         4       4       8
    bf16 (pure)  2       2       4
    bf16-mixed   4       4       8  (+2 bf16 copy of each matmul weight during fwd/bwd)
    ============ ======= ======= ==================

    Activations: :func:`activation_memory`.

    Peak: the step is highest either during backward or at the optimizer step:

    - backward: weights + optimizer states (from the second step on) + weight copies +
      activations + the gradients of the logits (two fp32 ``b x s x V`` buffers) + the
      output layer's gradient + with checkpointing one block's activations, recomputed;
    - optimizer step: weights + gradients + states + the optimizer's temporaries (PyTorch's
      foreach Adam on a GPU allocates one more parameter-sized buffer; on a CPU one
      tensor's worth).

    This is how the course's H200 measurements of a 1.10 B model come out at 20 bytes/param
    for small batches (the step) and grow with batch x sequence (backward).

    Args:
        shape: the model (:class:`ModelShape`).
        batch_size, seq_len: sequences per step and tokens per sequence.
        optimizer: one of ``OPTIMIZERS`` ("sgd", "sgd-momentum", "adam", "adamw", "adamw-8bit").
        precision: one of ``PRECISIONS`` ("fp32", "bf16", "bf16-mixed").
        attention: "eager" or "sdpa" (transformers' ``attn_implementation``).
        checkpointing: activation checkpointing of every block.
        device: "cuda" or "cpu" (dropout masks and the SDPA kernel differ).
    Returns:
        :class:`TrainingMemory` with the peak filled in and ``details`` naming the parts.

    Defined in lesson 03.
    """
    _require_shape(shape)
    _positive(batch_size=batch_size, seq_len=seq_len)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    w = precision_bytes(precision)[0]
    n = count_params(shape)
    parts = activation_memory(shape, batch_size, seq_len, precision, attention, checkpointing, device)
    copies = 0
    if precision == "bf16-mixed":
        copies = 2 * (shape.d_model * shape.vocab_size if checkpointing else matmul_weight_params(shape))
    mem = TrainingMemory(
        weights=n * w,
        gradients=n * w,
        optimizer_states=optimizer_state_bytes(n, optimizer, precision, param_tensor_count(shape)),
        activations=sum(parts.values()),
        weight_copies=copies,
        details=parts,
    )
    mem.peak = _peak(shape, mem, batch_size, seq_len, optimizer, precision, attention, checkpointing, device)
    return mem


def _peak(shape, mem: TrainingMemory, b, s, optimizer, precision, attention, checkpointing, device) -> int:
    w = precision_bytes(precision)[0]
    logits_grads = 2 * 4 * b * s * shape.vocab_size
    head_grad = 0 if shape.tie_embeddings else w * shape.d_model * shape.vocab_size
    recompute = 0
    if checkpointing:
        recompute = sum(activation_bytes_per_layer(shape, s, b, precision, attention, device).values())
        if precision == "bf16-mixed":
            recompute += 2 * (matmul_weight_params(shape) - shape.d_model * shape.vocab_size) // shape.n_layers
    backward = (mem.weights + mem.optimizer_states + mem.weight_copies + mem.activations
                + logits_grads + head_grad + recompute)
    temporary = 0
    if optimizer in ("adam", "adamw"):  # exp_avg_sq.sqrt(): all at once (foreach, GPU) or tensor by tensor (CPU)
        largest = shape.d_model * max(shape.vocab_size, shape.d_ff, shape.q_dim, 3 * shape.d_model)
        temporary = (count_params(shape) if device == "cuda" else largest) * w
    step = mem.model_states + temporary
    return max(backward, step)


# --------------------------------------------------------------------------- measuring


def unique_storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (``None`` entries are skipped).

    Views and tied weights share a storage and count once; a view counts its whole storage,
    since that is what stays allocated. Defined in lesson 03.
    """
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"expected tensors (or None), got {type(t).__name__}")
        if t.device.type == "meta":
            raise ValueError("meta tensors have no storage to measure; count their parameters with count_params")
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _is_parameter(t: torch.Tensor) -> bool:
    base = t._base if t._base is not None else t
    return isinstance(base, torch.nn.Parameter)


def _is_weight_copy(t: torch.Tensor) -> bool:
    """A dtype cast of a parameter (autocast's bf16 weight), possibly seen through a view."""
    base = t._base if t._base is not None else t
    fn = base.grad_fn
    if fn is None or fn.name() != "ToCopyBackward0":
        return False
    return any(isinstance(getattr(nxt, "variable", None), torch.nn.Parameter) for nxt, _ in fn.next_functions)


@dataclass
class SavedTensors:
    """What a forward pass saved for backward: bytes of activations and of weight copies.

    ``by_dtype`` splits the activations by dtype name; ``count`` is the number of distinct
    storages; ``result`` is what the function returned. Defined in lesson 03.
    """

    activations: int
    weight_copies: int
    count: int
    by_dtype: dict[str, int]
    result: Any = None


def record_saved_tensors(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> SavedTensors:
    """Run ``fn()`` and measure the tensors autograd saves for backward, from their storages.

    A pack hook (``torch.autograd.graph.saved_tensors_hooks``) sees every tensor an op
    saves. Tensors that share a storage (views, the same input saved by three Linear layers)
    count once, with the storage's full size. Parameters are not activations and are left
    out (``nn.Parameter`` tensors, views of them, and anything in ``exclude``);
    casts of parameters (autocast's bf16 weights) are reported apart as ``weight_copies``.
    Only tensors still held when ``fn`` returns are counted (the graph of the returned
    value keeps them alive).

    Args:
        fn: a function of no arguments that runs a forward pass and returns its output
            (for example the loss); autocast, if any, must be entered around this call
            or inside ``fn``.
        exclude: tensors whose storages are not to be counted.
    Returns:
        :class:`SavedTensors`.

    Defined in lesson 03.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable with no arguments, got {type(fn).__name__}")
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    records: list[tuple[weakref.ref, bool]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        # keep a detached alias (same storage, no grad_fn): an op that saves its own output
        # would otherwise hold itself through the tensor and never be freed
        saved = t.detach()
        if not _is_parameter(t) and t.untyped_storage().data_ptr() not in skip:
            records.append((weakref.ref(saved), _is_weight_copy(t)))
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    storages: dict[int, tuple[int, str, bool]] = {}
    for ref, is_copy in records:
        t = ref()
        if t is None:          # freed with a part of the graph nobody holds any more
            continue
        st = t.untyped_storage()
        storages[st.data_ptr()] = (st.nbytes(), str(t.dtype).replace("torch.", ""), is_copy)
    by_dtype: dict[str, int] = {}
    for nbytes, dtype, is_copy in storages.values():
        if not is_copy:
            by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
    copies = sum(nbytes for nbytes, _, is_copy in storages.values() if is_copy)
    return SavedTensors(sum(by_dtype.values()), copies, len(storages), by_dtype, result)


def saved_activation_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of activations ``fn()`` saves for backward (parameters and their casts left out).

    See :func:`record_saved_tensors`. Example::

        saved_activation_bytes(lambda: model(input_ids=ids, labels=ids).loss)

    Defined in lesson 03.
    """
    return record_saved_tensors(fn, exclude).activations


def causal_lm_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of a ``transformers`` causal LM: ``model(input_ids=batch, labels=batch).loss``.

    ``batch`` is a ``(batch, seq)`` int64 tensor of token ids, or a dict of model inputs
    that includes ``labels``. Defined in lesson 03.
    """
    if isinstance(batch, dict):
        return model(**batch).loss
    if not isinstance(batch, torch.Tensor) or batch.dim() != 2 or batch.dtype != torch.long:
        raise ValueError(f"batch must be a (batch, seq) int64 tensor of token ids or a dict of inputs, got {batch!r:.80}")
    return model(input_ids=batch, labels=batch).loss


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float = 1e-3) -> torch.optim.Optimizer:
    """A PyTorch optimizer by name: "sgd", "sgd-momentum" (0.9), "adam", "adamw", or "adamw-8bit" (bitsandbytes).

    Defined in lesson 03.
    """
    _check_choice("optimizer", name, OPTIMIZERS)
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ValueError("optimizer 'adamw-8bit' needs the bitsandbytes package (and usually a GPU)") from None
    return bnb.optim.AdamW8bit(params, lr=lr)


def _check_model_precision(model: torch.nn.Module, precision: str) -> list[torch.nn.Parameter]:
    _check_choice("precision", precision, PRECISIONS)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    dtypes = {p.dtype for p in params}
    if dtypes != {want}:
        raise ValueError(f"precision {precision!r} expects {want} parameters (pure bf16: model.to(torch.bfloat16); "
                         f"fp32 and bf16-mixed: fp32), got {sorted(str(d) for d in dtypes)}")
    if any(p.device.type == "meta" for p in params):
        raise ValueError("the model is on the meta device: it has no memory to measure")
    return params


def _autocast(precision: str, device_type: str):
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _states(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def measure_training_memory(model: torch.nn.Module, batch, loss_fn: Callable | None = None,
                            optimizer_name: str = "adamw", precision: str = "fp32", lr: float = 1e-3) -> TrainingMemory:
    """Run one training step and measure its memory from the tensors themselves (any device, no GPU needed).

    - weights: the parameters' storages (tied weights once);
    - activations and weight copies: :func:`record_saved_tensors` around the forward pass
      (``torch.autocast`` in bf16 around it for ``"bf16-mixed"``);
    - gradients: the storages of ``p.grad`` after ``loss.backward()``;
    - optimizer states: every tensor in ``optimizer.state`` after one ``step()``.

    The model must already be in the precision's dtype (bf16 for ``"bf16"``, fp32
    otherwise); activation checkpointing, if wanted, is switched on beforehand. The step
    changes the model's weights. ``peak`` stays ``None``: a CPU has no allocator
    statistics (see :func:`measure_cuda_peak`).

    Args:
        model: e.g. a ``transformers`` ``LlamaForCausalLM``; put in training mode here.
        batch: what ``loss_fn`` takes (default: a ``(batch, seq)`` int64 tensor of token ids).
        loss_fn: ``loss_fn(model, batch) -> scalar loss``; default :func:`causal_lm_loss`.
        optimizer_name: see :func:`make_optimizer`.
        precision: "fp32", "bf16" or "bf16-mixed".
    Returns:
        :class:`TrainingMemory` with ``details`` = activation bytes by dtype.

    Defined in lesson 03.
    """
    params = _check_model_precision(model, precision)
    loss_fn = causal_lm_loss if loss_fn is None else loss_fn
    model.train()
    for p in params:
        p.grad = None
    device_type = params[0].device.type
    with _autocast(precision, device_type):
        saved = record_saved_tensors(lambda: loss_fn(model, batch), exclude=model.parameters())
    loss, saved.result = saved.result, None
    loss.backward()
    del loss
    optimizer = make_optimizer(optimizer_name, params, lr)
    optimizer.step()
    mem = TrainingMemory(
        weights=unique_storage_bytes(model.parameters()),
        gradients=unique_storage_bytes(p.grad for p in params),
        optimizer_states=unique_storage_bytes(_states(optimizer)),
        activations=saved.activations,
        weight_copies=saved.weight_copies,
        details=saved.by_dtype,
    )
    optimizer.zero_grad(set_to_none=True)
    return mem


def measure_cuda_peak(model: torch.nn.Module, batch, loss_fn: Callable | None = None, optimizer_name: str = "adamw",
                      precision: str = "fp32", steps: int = 3, lr: float = 1e-5) -> TrainingMemory:
    """Train ``steps`` steps on a CUDA GPU and report the peak bytes allocated, with the breakdown.

    The first step creates the optimizer states, so the peak of the later steps is the
    steady-state one; the peak of all steps (``torch.cuda.max_memory_allocated``, which
    counts tensors, not the allocator's cached blocks) is reported. The other fields are
    measured as in :func:`measure_training_memory`, on the last step.

    Args: as :func:`measure_training_memory`; the model and batch must be on the GPU.
    Returns:
        :class:`TrainingMemory` with ``peak`` measured.

    Defined in lesson 03.
    """
    if not torch.cuda.is_available():
        raise ValueError("measure_cuda_peak needs a CUDA GPU; on a CPU use measure_training_memory")
    params = _check_model_precision(model, precision)
    if params[0].device.type != "cuda":
        raise ValueError(f"the model must be on a CUDA device, got {params[0].device}")
    _positive(steps=steps)
    loss_fn = causal_lm_loss if loss_fn is None else loss_fn
    model.train()
    optimizer = make_optimizer(optimizer_name, params, lr)
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps):
        with _autocast(precision, "cuda"):
            if i == steps - 1:
                saved = record_saved_tensors(lambda: loss_fn(model, batch), exclude=model.parameters())
                loss, saved.result = saved.result, None
            else:
                loss = loss_fn(model, batch)
        loss.backward()
        del loss
        if i == steps - 1:
            gradients = unique_storage_bytes(p.grad for p in params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return TrainingMemory(
        weights=unique_storage_bytes(model.parameters()),
        gradients=gradients,
        optimizer_states=unique_storage_bytes(_states(optimizer)),
        activations=saved.activations,
        weight_copies=saved.weight_copies,
        peak=torch.cuda.max_memory_allocated(),
        details=saved.by_dtype,
    )
