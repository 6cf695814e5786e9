"""Lesson 08: QLoRA — a frozen base stored in 4-bit NF4, LoRA adapters trained on top.

QLoRA (Dettmers et al. 2023) fine-tunes a 65B model on one 48 GB GPU by storing the frozen
base weights in 4 bits (lesson 04's NormalFloat4, blocks of 64) and training only LoRA
matrices in 16 or 32 bits. Every forward pass dequantizes the base weights it needs; the
gradient flows *through* them (to the adapters of earlier layers) but never *into* them.

- :class:`NF4Linear`: a frozen linear layer kept as NF4 codes (two per byte) and one absmax
  per block, dequantized on the fly. Its weights equal bitsandbytes' ``Linear4bit`` exactly
  (the same codes, the same blocks: tested).
- **Double quantization** (:func:`double_quantize`): the absmax constants themselves take
  32 bits per 64 weights = 0.5 bit per parameter. QLoRA quantizes them to 8 bits in blocks of
  256 (after subtracting their mean), which leaves 8/64 + 32/(64*256) = 0.127 bit:
  :func:`bits_per_parameter`. (bitsandbytes codes the absmax with its own 8-bit "dynamic" map;
  the course uses lesson 04's absmax int8, which costs the same bits.)
- :func:`quantize_nf4` swaps a model's projections for :class:`NF4Linear`; then
  ``course_lib.lora.inject_lora`` puts adapters on them: that is QLoRA.
- The real path (:func:`bnb_qlora_model`): transformers loads the course checkpoint with
  ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`` and peft adds the
  adapters; it runs on the CPU.

A trap of the real path, guarded here: on a CPU with AVX512-BF16, bitsandbytes repacks a
``Linear4bit``'s weights for fast inference the first time the layer runs in eval mode without
gradients, and from then on its forward pass has no backward: an evaluation before training
leaves the adapters of all but the last layers without gradients, silently (and for a layer
whose rows are not whole blocks of 64 the repacking fails outright). :func:`keep_trainable`
undoes the repacking and turns it off.

Measured with bitsandbytes 0.50.2 on the CPU: its ``dequantize_4bit`` is wrong when a row of the
weight is not a whole number of blocks of 64 (``course-lm-small``'s rows are 96 long), while its
codes and absmax are right; the lesson runs the bitsandbytes path on ``course-lm``, whose rows are
192 and 512 long.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import quant

NF4_BLOCK = 64
ABSMAX_BLOCK = 256


# --------------------------------------------------------------------------- double quantization


def double_quantize(absmax: torch.Tensor, block_size: int = ABSMAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize NF4's absmax constants to int8: subtract their mean, then absmax int8 in blocks of ``block_size``.

    Args:
        absmax: ``(n_blocks,)`` float32, one per block of NF4 weights.
    Returns:
        ``(codes, scales, offset)``: int8 ``(n_blocks,)``, float32 ``(ceil(n_blocks / block_size),)``
        and a float32 0-dim mean. Defined in lesson 08.
    """
    if absmax.dim() != 1 or not absmax.is_floating_point():
        raise ValueError(f"absmax must be a 1-D float tensor, got shape {tuple(absmax.shape)} and dtype {absmax.dtype}")
    offset = absmax.mean()
    codes, scales = quant.absmax_quantize(absmax - offset, bits=8, block_size=block_size)
    return codes, scales, offset


def double_dequantize(codes: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor,
                      block_size: int = ABSMAX_BLOCK) -> torch.Tensor:
    """The absmax constants back from :func:`double_quantize`: float32 ``(n_blocks,)``. Defined in lesson 08."""
    return quant.absmax_dequantize(codes, scales, block_size=block_size) + offset


def bits_per_parameter(block_size: int = NF4_BLOCK, double_quant: bool = False, absmax_block: int = ABSMAX_BLOCK) -> float:
    """Storage of NF4 per weight: 4 bits + the absmax constants' share.

    Single: ``4 + 32 / block_size`` (4.5 for blocks of 64). Double: ``4 + 8 / block_size + 32 /
    (block_size * absmax_block)`` (4.127). Defined in lesson 08.
    """
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * absmax_block)
    return 4 + 32 / block_size


# --------------------------------------------------------------------------- a frozen NF4 linear layer


def _pack_nibbles(indices: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes (0..15) per byte, the first in the high half, as bitsandbytes stores them.

    An odd count is padded with code 7, NF4's 0.0."""
    flat = indices.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), 7)])
    return (flat[0::2] << 4) | flat[1::2]


def _unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[:numel]


class NF4Linear(nn.Module):
    """A frozen ``nn.Linear`` stored as NF4 (lesson 04), computed as ``x @ dequantize().T + bias``. Defined in lesson 08.

    ``x``: ``(..., in_features)`` float -> ``(..., out_features)`` in x's dtype. Buffers:
    ``packed`` uint8 ``(ceil(out*in / 2),)``; the absmax constants as float32 ``absmax``, or,
    with ``double_quant``, as int8 ``absmax_codes`` + float32 ``absmax_scales`` + ``absmax_offset``.
    """

    def __init__(self, linear: nn.Linear, block_size: int = NF4_BLOCK, double_quant: bool = True):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"NF4Linear quantizes an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.double_quant = block_size, double_quant
        self.compute_dtype = linear.weight.dtype
        indices, absmax = quant.nf4_quantize(linear.weight.detach().float(), block_size)
        self.register_buffer("packed", _pack_nibbles(indices))
        if double_quant:
            codes, scales, offset = double_quantize(absmax)
            self.register_buffer("absmax_codes", codes)
            self.register_buffer("absmax_scales", scales)
            self.register_buffer("absmax_offset", offset)
        else:
            self.register_buffer("absmax", absmax)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def absmax_constants(self) -> torch.Tensor:
        """The per-block absmax, float32 ``(n_blocks,)`` (after the round trip through int8 with double quantization)."""
        if self.double_quant:
            return double_dequantize(self.absmax_codes, self.absmax_scales, self.absmax_offset)
        return self.absmax

    def dequantize(self) -> torch.Tensor:
        """The weight, ``(out_features, in_features)`` in the original dtype: NF4 code x its block's absmax."""
        numel = self.in_features * self.out_features
        indices = _unpack_nibbles(self.packed, numel).reshape(self.out_features, self.in_features)
        return quant.nf4_dequantize(indices, self.absmax_constants(), self.block_size).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor (..., {self.in_features}), got shape {tuple(x.shape)} and dtype {x.dtype}")
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4 blocks of {self.block_size}, double_quant={self.double_quant}"


def quantize_nf4(model: nn.Module, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                 double_quant: bool = True) -> list[str]:
    """Replace every ``nn.Linear`` whose name is in ``targets`` by an :class:`NF4Linear`, in place; freeze the model.

    Returns the names of the replaced layers. Embeddings, norms and the output head stay as
    they are (as in QLoRA). Defined in lesson 08.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, NF4Linear(child, double_quant=double_quant))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    if not replaced:
        raise ValueError(f"no nn.Linear named one of {tuple(targets)} in the model")
    return replaced


def storage_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (each shared tensor once). Defined in lesson 08."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------- the real path: bitsandbytes + peft


def keep_trainable(model: nn.Module) -> int:
    """Guard against bitsandbytes' CPU inference repacking (see the module's docstring), in place.

    Every ``bitsandbytes.nn.Linear4bit`` of ``model`` gets its weights back in the trainable
    layout if an eval-mode forward repacked them, and never repacks again. Returns how many
    layers were repacked. The repacking rounded each block's absmax to bf16 (a relative change
    of up to 2**-9), which cannot be undone: call this before any evaluation (as
    :func:`bnb_qlora_model` does), or reload the model. Defined in lesson 08.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    undone = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            state = module.weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):
                nested = state.original_nested
                module.weight.data, state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
                if not nested:  # bitsandbytes 0.50.2 leaves these absmax transposed (and in bf16): lay them out again
                    state.absmax = state.absmax.T.reshape(-1).float()
                module.weight.quant_state = state
                undone += 1
    return undone


def bnb_4bit_config(double_quant: bool = True):
    """transformers' ``BitsAndBytesConfig`` for QLoRA's base: NF4, blocks of 64, float32 compute on the CPU. Defined in lesson 08."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch.float32)


def bnb_qlora_model(path, r: int = 8, alpha: float = 16, targets=("q_proj", "v_proj"), double_quant: bool = True):
    """The real-world QLoRA: the checkpoint at ``path`` loaded in 4-bit by transformers + bitsandbytes, LoRA by peft.

    Returns peft's ``PeftModel`` (on the CPU), with :func:`keep_trainable` applied. Defined in lesson 08.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_4bit_config(double_quant), device_map="cpu")
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))
    keep_trainable(model)
    return model
