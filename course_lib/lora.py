"""Lesson 08: LoRA from scratch, proved equal to ``peft``.

A frozen linear layer ``W`` (``out x in``) gets a trainable low-rank update: two small
matrices ``A`` (``r x in``, random) and ``B`` (``out x r``, zeros, so that training starts
from the pretrained model), and the layer computes::

    y = W x + (alpha / r) * B (A x)

Only ``r * (in + out)`` numbers train instead of ``in * out``. After training the update can
be *merged* (``W += (alpha / r) B A``: no extra cost at inference) and *un-merged* again.

The layout mirrors ``peft``'s so that adapters move between the two: each :class:`LoRALinear`
keeps its frozen layer as ``base_layer`` and one ``lora_A``/``lora_B`` pair per named adapter
(``"default"`` first). Several adapters on one base serve several tenants: switch the active
one per request (:func:`set_adapter`), or give every row of a batch its own
(:func:`adapters_per_row`, peft's ``adapter_names``).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from course_lib.qlora import NF4Linear

DEFAULT = "default"
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check_rank_alpha(r, alpha) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the rank) must be a positive int, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")


class LoRALinear(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(dropout(x)))`` for the active adapter(s). Defined in lesson 08.

    ``x``: ``(..., in_features)`` -> ``(..., out_features)``, in the base layer's dtype. The
    base layer is frozen; ``lora_A[name].weight`` is ``(r, in_features)``, initialised as
    peft does (Kaiming-uniform), and ``lora_B[name].weight`` is ``(out_features, r)``, zeros.
    """

    def __init__(self, base_layer: nn.Linear | NF4Linear, r: int, alpha: float, dropout: float = 0.0, adapter: str = DEFAULT):
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, NF4Linear)):
            raise ValueError(f"LoRALinear wraps an nn.Linear or an NF4Linear (QLoRA), got {type(base_layer).__name__}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.lora_A, self.lora_B = nn.ModuleDict(), nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active: list[str] = []
        self.merged: list[str] = []
        self.row_adapters: list[str | None] | None = None  # set by adapters_per_row
        self.add_adapter(adapter, r, alpha, dropout)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0) -> None:
        """A new pair ``A`` (random), ``B`` (zeros) named ``name``; it becomes the active adapter."""
        _check_rank_alpha(r, alpha)
        if name in self.lora_A:
            raise ValueError(f"an adapter named {name!r} exists already")
        if isinstance(self.base_layer, NF4Linear):  # QLoRA: the adapters in the dtype the base computes in
            dtype, device = self.base_layer.compute_dtype, self.base_layer.packed.device
        else:
            dtype, device = self.base_layer.weight.dtype, self.base_layer.weight.device
        a = nn.Linear(self.in_features, r, bias=False, dtype=dtype, device=device)
        b = nn.Linear(r, self.out_features, bias=False, dtype=dtype, device=device)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))  # peft's default initialisation of A
        nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / r
        self.active = [name]

    def delta_weight(self, name: str = DEFAULT) -> torch.Tensor:
        """``scaling * B @ A``: ``(out_features, in_features)``, what merging adds to the base weight."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    def _update(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.row_adapters is not None:  # a mixed batch: row i uses adapter row_adapters[i] (None: the base alone)
            if len(self.row_adapters) != x.shape[0]:
                raise ValueError(f"adapters_per_row got {len(self.row_adapters)} names for a batch of {x.shape[0]} rows")
            if self.merged:
                raise ValueError("un-merge the adapters before serving a mixed batch")
            for name in dict.fromkeys(n for n in self.row_adapters if n is not None):
                rows = [i for i, n in enumerate(self.row_adapters) if n == name]
                result[rows] = result[rows] + self._update(x[rows], name)
            return result
        for name in self.active:
            if name not in self.merged:
                result = result + self._update(x, name)
        return result

    def merge(self, name: str = DEFAULT) -> None:
        """``W += scaling * B A``: the layer then costs one matmul, and computes the same (up to rounding)."""
        if name in self.merged:
            raise ValueError(f"adapter {name!r} is merged already")
        if isinstance(self.base_layer, NF4Linear):
            raise ValueError("cannot merge into a 4-bit NF4 base: W + BA is not on the NF4 grid; dequantize the base "
                             "(or load it in full precision) and merge there")
        with torch.no_grad():
            self.base_layer.weight += self.delta_weight(name)
        self.merged.append(name)

    def unmerge(self, name: str = DEFAULT) -> None:
        """``W -= scaling * B A``: the frozen weight back (up to rounding), the adapter separate again."""
        if name not in self.merged:
            raise ValueError(f"adapter {name!r} is not merged")
        with torch.no_grad():
            self.base_layer.weight -= self.delta_weight(name)
        self.merged.remove(name)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: LoRALinear}`` of every LoRA layer in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, r: int, alpha: float, targets=("q_proj", "v_proj"), dropout: float = 0.0) -> list[str]:
    """Wrap every ``nn.Linear`` (or QLoRA's ``NF4Linear``) named one of ``targets`` in a :class:`LoRALinear`; freeze the rest.

    Returns the names of the wrapped layers. Afterwards only the LoRA matrices have
    ``requires_grad``. Defined in lesson 08.
    """
    _check_rank_alpha(r, alpha)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, (nn.Linear, NF4Linear)):
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear or NF4Linear named one of {tuple(targets)} in the model")
    return wrapped


def add_adapter(model: nn.Module, name: str, r: int, alpha: float, dropout: float = 0.0) -> None:
    """A new adapter ``name`` on every LoRA layer of ``model`` (another tenant on the same base); it becomes active."""
    for layer in lora_layers(model).values():
        layer.add_adapter(name, r, alpha, dropout)


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` the one active adapter of every LoRA layer (switching tenants costs no copy of the base)."""
    for layer in lora_layers(model).values():
        if name not in layer.lora_A:
            raise ValueError(f"no adapter named {name!r}; the model has {list(layer.lora_A)}")
        layer.active = [name]


@contextlib.contextmanager
def adapters_per_row(model: nn.Module, names: list[str | None]):
    """Inside the block, row ``i`` of a batch goes through adapter ``names[i]`` (``None``: the base model alone)."""
    layers = lora_layers(model).values()
    for layer in layers:
        unknown = [n for n in names if n is not None and n not in layer.lora_A]
        if unknown:
            raise ValueError(f"no adapter named {unknown[0]!r}; the model has {list(layer.lora_A)}")
        layer.row_adapters = list(names)
    try:
        yield
    finally:
        for layer in layers:
            layer.row_adapters = None


def merge_lora(model: nn.Module, name: str = DEFAULT) -> None:
    """Merge adapter ``name`` into the base weights of every LoRA layer."""
    for layer in lora_layers(model).values():
        layer.merge(name)


def unmerge_lora(model: nn.Module, name: str = DEFAULT) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge(name)


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers the optimizer updates: the elements of the parameters that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameter_count(shapes, r: int) -> int:
    """``r * (in + out)`` summed over the ``(out_features, in_features)`` weight ``shapes`` a LoRA of rank ``r`` adapts."""
    return sum(r * (out_features + in_features) for out_features, in_features in shapes)


# --------------------------------------------------------------------------- moving adapters to and from peft


def adapter_state_dict(model: nn.Module, name: str = DEFAULT) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s matrices, as ``{"<layer>.lora_A.weight": A, "<layer>.lora_B.weight": B}`` (the course's names)."""
    state = {}
    for layer_name, layer in lora_layers(model).items():
        state[f"{layer_name}.lora_A.weight"] = layer.lora_A[name].weight.detach().clone()
        state[f"{layer_name}.lora_B.weight"] = layer.lora_B[name].weight.detach().clone()
    return state


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str = DEFAULT) -> None:
    """Copy matrices saved by :func:`adapter_state_dict` into adapter ``name``; every layer must be there, in the same shapes."""
    expected = set(adapter_state_dict(model, name))
    if set(state) != expected:
        missing, unknown = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"the adapter's names do not match the model's LoRA layers: missing {missing}, unknown {unknown}")
    with torch.no_grad():
        for layer_name, layer in lora_layers(model).items():
            for part, weights in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                value = state[f"{layer_name}.{part}.weight"]
                if value.shape != weights[name].weight.shape:
                    raise ValueError(f"{layer_name}.{part}.weight should have shape {tuple(weights[name].weight.shape)}, "
                                     f"got {tuple(value.shape)}")
                weights[name].weight.copy_(value)


def to_peft_names(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The course's adapter names (``blocks.0.attn.q_proj.lora_A.weight``) as peft saves them for Llama
    (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``)."""
    from course_lib.models import llama_name_map

    names = llama_name_map(n_layers)
    out = {}
    for key, value in state.items():
        layer, part = key.rsplit(".lora_", 1)
        out["base_model.model." + names[f"{layer}.weight"].removesuffix(".weight") + ".lora_" + part] = value
    return out


def from_peft_names(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_peft_names`."""
    from course_lib.models import llama_name_map

    ours = {theirs.removesuffix(".weight"): mine.removesuffix(".weight") for mine, theirs in llama_name_map(n_layers).items()}
    out = {}
    for key, value in state.items():
        layer, part = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        if layer not in ours:
            raise ValueError(f"{key!r} is not a LoRA weight of a Llama layer of this model")
        out[f"{ours[layer]}.lora_{part}"] = value
    return out
