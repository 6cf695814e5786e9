"""Wrong answers to lesson 07's exercises: ring_all_reduce, shard/unshard, zero_memory_per_gpu, average_gradients."""

import math

import torch
import torch.distributed as dist

# --------------------------------------------------------------------------- ring_all_reduce


def _ring(tensors, chunking=None, rs_index=None, ag_index=None, count=None):
    """The ring with one piece swappable: how chunks are cut, which chunk a rank sends, how bytes are counted."""
    n = len(tensors)
    chunking = chunking or (lambda flat, n: list(flat.tensor_split(n)))
    rs_index = rs_index or (lambda r, s, n: (r - s) % n)
    ag_index = ag_index or (lambda r, s, n: (r + 1 - s) % n)
    count = count or (lambda data: data.numel() * data.element_size())
    chunks = [chunking(t.reshape(-1).clone(), n) for t in tensors]
    sent = [0] * n
    for step in range(n - 1):
        outgoing = [(r, rs_index(r, step, n), chunks[r][rs_index(r, step, n)].clone()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] += data
            sent[r] += count(data)
    for step in range(n - 1):
        outgoing = [(r, ag_index(r, step, n), chunks[r][ag_index(r, step, n)].clone()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] = data
            sent[r] += count(data)
    return [torch.cat(c).reshape(tensors[0].shape) for c in chunks], sent


def ring_counts_elements(tensors):
    """Counts elements sent, not bytes."""
    return _ring(tensors, count=lambda data: data.numel())


def ring_naive_bytes(tensors):
    """Right sums, but counts what a naive all-reduce sends: the whole tensor to each of the N-1 others."""
    total = torch.stack([t.clone() for t in tensors]).sum(0)
    size = tensors[0].numel() * tensors[0].element_size()
    return [total.clone() for _ in tensors], [(len(tensors) - 1) * size for _ in tensors]


def ring_average_formula(tensors):
    """Right sums, bytes from the average formula 2(N-1)/N * S (wrong when N does not divide the size, and a float)."""
    results, _ = _ring(tensors)
    n, size = len(tensors), tensors[0].numel() * tensors[0].element_size()
    return results, [2 * (n - 1) / n * size for _ in tensors]


def ring_only_reduce_scatter(tensors):
    """Stops after the reduce-scatter: each rank holds the full sum of one chunk only."""
    n = len(tensors)
    chunks = [list(t.reshape(-1).clone().tensor_split(n)) for t in tensors]
    sent = [0] * n
    for step in range(n - 1):
        outgoing = [(r, (r - step) % n, chunks[r][(r - step) % n].clone()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] += data
            sent[r] += 2 * data.numel() * data.element_size()
    return [torch.cat(c).reshape(tensors[0].shape) for c in chunks], sent


def ring_wrong_chunk_in_gather(tensors):
    """All-gather sends chunk (r - s) mod N, which is not yet summed in full."""
    return _ring(tensors, ag_index=lambda r, s, n: (r - s) % n)


def ring_equal_chunks_padded(tensors):
    """Pads to equal chunks (ceil(size/N) each) and counts the padding as sent."""
    def chunking(flat, n):
        size = math.ceil(flat.numel() / n) if flat.numel() else 0
        padded = torch.cat([flat, flat.new_zeros(size * n - flat.numel())])
        return list(padded.split(size)) if size else [flat[:0].clone() for _ in range(n)]

    results, sent = _ring(tensors, chunking=chunking)
    numel = tensors[0].numel()
    return [r.reshape(-1)[:numel].reshape(tensors[0].shape) for r in results], sent


def ring_in_place(tensors):
    """Adds into the callers' tensors (their data is no longer theirs)."""
    results, sent = _ring(tensors)
    for t, r in zip(tensors, results):
        t.copy_(r)
    return list(tensors), sent


def ring_float_sum(tensors):
    """Sums in float32: integer tensors come back as floats."""
    results, sent = _ring([t.float() for t in tensors])
    return results, [s * tensors[0].element_size() // 4 for s in sent]


def ring_flatten_with_view(tensors):
    """``t.view(-1)``: fails for a non-contiguous tensor."""
    return _ring([t.view(-1).view(t.shape) for t in tensors])


def ring_returns_list_of_lists(tensors):
    """Returns the chunks of each rank, not one tensor per rank."""
    n = len(tensors)
    results, sent = _ring(tensors)
    return [list(r.reshape(-1).tensor_split(n)) for r in results], sent


# --------------------------------------------------------------------------- shard and unshard


def _shard(flat, rank, world_size):
    size = math.ceil(flat.numel() / world_size)
    padded = torch.cat([flat, flat.new_zeros(size * world_size - flat.numel())])
    return padded[rank * size:(rank + 1) * size].clone()


def _unshard(shards, numel):
    return torch.cat(shards)[:numel]


def shard_no_padding(flat, rank, world_size):
    """``tensor_split``: shards of unequal length, no padding."""
    return flat.tensor_split(world_size)[rank].clone()


def shard_interleaved(flat, rank, world_size):
    """Every N-th element (rank::N) instead of a contiguous block."""
    size = math.ceil(flat.numel() / world_size)
    padded = torch.cat([flat, flat.new_zeros(size * world_size - flat.numel())])
    return padded[rank::world_size].clone()


def shard_floor_size(flat, rank, world_size):
    """numel // N elements per shard: the tail is lost."""
    size = flat.numel() // world_size
    return flat[rank * size:(rank + 1) * size].clone()


def shard_pads_in_front(flat, rank, world_size):
    """The zeros go in front of the buffer."""
    size = math.ceil(flat.numel() / world_size)
    padded = torch.cat([flat.new_zeros(size * world_size - flat.numel()), flat])
    return padded[rank * size:(rank + 1) * size].clone()


def shard_float_padding(flat, rank, world_size):
    """Pads with torch.zeros (float32): an int64 or float64 buffer changes dtype."""
    size = math.ceil(flat.numel() / world_size)
    padded = torch.cat([flat.float(), torch.zeros(size * world_size - flat.numel())])
    return padded[rank * size:(rank + 1) * size].clone()


def shard_on_cpu(flat, rank, world_size):
    """Pads with zeros made on the CPU: a GPU buffer fails."""
    size = math.ceil(flat.numel() / world_size)
    padded = torch.cat([flat, torch.zeros(size * world_size - flat.numel(), dtype=flat.dtype)])
    return padded[rank * size:(rank + 1) * size].clone()


def shard_size_plus_one(flat, rank, world_size):
    """numel // N + 1 elements per shard: right when N does not divide numel, one too many when it does."""
    size = flat.numel() // world_size + 1
    padded = torch.cat([flat, flat.new_zeros(size * world_size - flat.numel())])
    return padded[rank * size:(rank + 1) * size].clone()


def unshard_keeps_padding(shards, numel):
    """Forgets to drop the padding."""
    return torch.cat(shards)


def unshard_strips_zeros(shards, numel):
    """Drops trailing zeros instead of cutting at numel: wrong when the padding is not zero, or the data ends in 0."""
    flat = torch.cat(shards)
    nonzero = (flat != 0).nonzero()
    end = int(nonzero[-1]) + 1 if len(nonzero) else 0
    return flat[:end]


def unshard_interleaved(shards, numel):
    """Reassembles as if the shards were interleaved."""
    return torch.stack(shards, dim=1).reshape(-1)[:numel]


def unshard_reversed(shards, numel):
    """Concatenates the shards in reverse rank order."""
    return torch.cat(shards[::-1])[:numel]


# --------------------------------------------------------------------------- zero_memory_per_gpu


def _zero(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12, variant=None):
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0-3, got {stage}")
    w, g, o, n = weight_bytes * n_params, grad_bytes * n_params, optimizer_bytes * n_params, world_size
    formulas = {0: w + g + o, 1: w + g + o / n, 2: w + (g + o) / n, 3: (w + g + o) / n}
    if variant:
        formulas.update(variant(w, g, o, n))
    return formulas[stage]


def zero_stage2_shards_weights(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Stage 2 shards the weights too (that is stage 3)."""
    return _zero(n_params, world_size, stage, weight_bytes, grad_bytes, optimizer_bytes, lambda w, g, o, n: {2: (w + g + o) / n})


def zero_stage1_shards_grads(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Stage 1 shards the gradients as well as the optimizer states."""
    return _zero(n_params, world_size, stage, weight_bytes, grad_bytes, optimizer_bytes, lambda w, g, o, n: {1: w + (g + o) / n})


def zero_stage3_unsharded_weights(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Stage 3 keeps the full weights (forgets that parameters are sharded)."""
    return _zero(n_params, world_size, stage, weight_bytes, grad_bytes, optimizer_bytes, lambda w, g, o, n: {3: w + (g + o) / n})


def zero_divides_by_n_minus_1(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Shards over N-1 ranks."""
    n = max(world_size - 1, 1)
    return _zero(n_params, n, stage, weight_bytes, grad_bytes, optimizer_bytes)


def zero_fixed_16_bytes(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Ignores the precisions: always 2 + 2 + 12."""
    return _zero(n_params, world_size, stage)


def zero_grad_defaults_to_4(n_params, world_size, stage, weight_bytes=2, grad_bytes=4, optimizer_bytes=12):
    """fp32 gradients by default."""
    return _zero(n_params, world_size, stage, weight_bytes, grad_bytes, optimizer_bytes)


def zero_no_error(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Any other stage counts as stage 3."""
    return _zero(n_params, world_size, min(max(stage, 0), 3), weight_bytes, grad_bytes, optimizer_bytes)


def zero_in_gigabytes(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Returns GB, not bytes."""
    return _zero(n_params, world_size, stage, weight_bytes, grad_bytes, optimizer_bytes) / 1e9


def zero_as_tensor(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12):
    """Returns a tensor."""
    return torch.tensor(_zero(n_params, world_size, stage, weight_bytes, grad_bytes, optimizer_bytes))


# --------------------------------------------------------------------------- average_gradients


def average_sums(model):
    """All-reduces (a sum) and forgets to divide."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)


def average_max_op(model):
    """``ReduceOp.MAX`` where the sum was meant, then divides."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.MAX)
            p.grad /= dist.get_world_size()


def average_on_a_copy(model):
    """All-reduces a copy of the gradient; p.grad keeps this rank's own."""
    for p in model.parameters():
        if p.grad is not None:
            grad = p.grad.clone()
            dist.all_reduce(grad)
            grad / dist.get_world_size()


def average_reduce_to_rank_0(model):
    """``dist.reduce``: only rank 0 gets the sum."""
    for p in model.parameters():
        if p.grad is not None:
            dist.reduce(p.grad, dst=0)
            p.grad /= dist.get_world_size()


def average_broadcast_rank_0(model):
    """Every rank takes rank 0's gradient."""
    for p in model.parameters():
        if p.grad is not None:
            dist.broadcast(p.grad, src=0)


def average_none_grads(model):
    """Forgets that a frozen parameter has no gradient."""
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def average_first_only(model):
    """Stops after the first parameter."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
            return


def average_weights(model):
    """Averages the weights, not the gradients."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.data)
            p.data /= dist.get_world_size()


def average_divides_by_n_minus_1(model):
    """Divides by N - 1 (at least 1)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= max(dist.get_world_size() - 1, 1)


def average_rank_0_only(model):
    """Only rank 0 calls the all-reduce: the others never join it."""
    if dist.get_rank() == 0:
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


def average_steps(model):
    """Averages, then takes an SGD step as well."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
            p.data -= 0.1 * p.grad


MUTANTS = {
    "test_ring_all_reduce": {
        f.__name__: f
        for f in (ring_counts_elements, ring_naive_bytes, ring_average_formula, ring_only_reduce_scatter, ring_wrong_chunk_in_gather,
                  ring_equal_chunks_padded, ring_in_place, ring_float_sum, ring_flatten_with_view, ring_returns_list_of_lists)
    },
    # this exercise defines two functions: a mutant gives both names
    "test_shard": {
        name: {"shard": shard, "unshard": unshard}
        for name, (shard, unshard) in {
            "no_padding": (shard_no_padding, _unshard),
            "interleaved": (shard_interleaved, unshard_interleaved),
            "floor_size": (shard_floor_size, _unshard),
            "pads_in_front": (shard_pads_in_front, _unshard),
            "float_padding": (shard_float_padding, _unshard),
            "on_cpu": (shard_on_cpu, _unshard),
            "size_plus_one": (shard_size_plus_one, _unshard),
            "keeps_padding": (_shard, unshard_keeps_padding),
            "strips_zeros": (_shard, unshard_strips_zeros),
            "unshard_interleaved": (_shard, unshard_interleaved),
            "reversed": (_shard, unshard_reversed),
        }.items()
    },
    "test_zero_memory_per_gpu": {
        f.__name__: f
        for f in (zero_stage2_shards_weights, zero_stage1_shards_grads, zero_stage3_unsharded_weights, zero_divides_by_n_minus_1,
                  zero_fixed_16_bytes, zero_grad_defaults_to_4, zero_no_error, zero_in_gigabytes, zero_as_tensor)
    },
    "test_average_gradients": {
        f.__name__: f
        for f in (average_sums, average_max_op, average_on_a_copy, average_reduce_to_rank_0, average_broadcast_rank_0,
                  average_none_grads, average_first_only, average_weights, average_divides_by_n_minus_1, average_rank_0_only,
                  average_steps)
    },
}
