"""Wrong answers to lesson 00's warm-up exercise ``tensor_bytes``."""

import torch


def assumes_four_bytes(t):
    """Every element taken as a float32."""
    return t.numel() * 4


def counts_elements(t):
    """Elements, not bytes."""
    return t.numel()


def counts_the_storage(t):
    """The whole storage a view looks into, not the view's own elements."""
    return t.untyped_storage().nbytes()


def returns_a_tensor(t):
    """The right number, but as a tensor."""
    return torch.tensor(t.numel() * t.element_size())


def from_the_shape_only(t):
    """Multiplies the sizes: a 0-d tensor then gives 0 elements... or forgets element_size."""
    n = 1 if t.dim() else 0
    for s in t.shape:
        n *= s
    return n * t.element_size()


def bits_not_bytes(t):
    return t.numel() * t.element_size() * 8


MUTANTS = {
    "test_tensor_bytes": {
        f.__name__: f
        for f in (assumes_four_bytes, counts_elements, counts_the_storage, returns_a_tensor, from_the_shape_only, bits_not_bytes)
    }
}
