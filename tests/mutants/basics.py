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


def bytes_from_a_dtype_table(t):
    """A table of the common dtypes and 4 bytes for any other: int16, complex and float8 tensors come out wrong."""
    table = {torch.float64: 8, torch.int64: 8, torch.float32: 4, torch.float16: 2, torch.bfloat16: 2,
             torch.int8: 1, torch.uint8: 1, torch.bool: 1}
    return t.numel() * table.get(t.dtype, 4)


def bytes_from_finfo_and_iinfo(t):
    """Bits from torch.finfo / torch.iinfo (bool special-cased): a complex tensor has neither."""
    if t.dtype == torch.bool:
        return t.numel()
    info = torch.finfo(t.dtype) if t.is_floating_point() else torch.iinfo(t.dtype)
    return t.numel() * info.bits // 8


def bytes_through_numpy(t):
    """numpy's nbytes (bf16, which numpy lacks, special-cased): fails for a tensor that requires grad and for float8."""
    if t.dtype == torch.bfloat16:
        return t.numel() * 2
    return int(t.numpy().nbytes)


def expanded_dims_counted_once(t):
    """Counts a dimension of stride 0 (an expanded view) once: the view shows more elements than it stores."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


MUTANTS = {
    "test_tensor_bytes": {
        f.__name__: f
        for f in (assumes_four_bytes, counts_elements, counts_the_storage, returns_a_tensor, from_the_shape_only, bits_not_bytes,
                  bytes_from_a_dtype_table, bytes_from_finfo_and_iinfo, bytes_through_numpy, expanded_dims_counted_once)
    }
}
