"""Lesson 10's GPTQ next to two real libraries: the same 4-bit quantization of the course checkpoint, compared.

    python bench/gptq_library.py --out bench/gptq_library.md

The libraries are not in requirements.txt: run this in a separate environment
(bench/gptq_library.md gives the commands). A library that is not installed is left out.

Every method quantizes every linear layer of the six blocks of ``course-lm`` (the embeddings
and the tied output layer stay in float32) to 4 bits, asymmetric (zero point), in groups of
64 inputs, with the same 32 x 128 calibration tokens from the training text, no act-order,
and damping 0.01 of the mean Hessian diagonal:

- ``course_lib.gptq`` (:func:`course_lib.gptq.quantize_model`);
- GPTQModel, through transformers' own route (``GPTQConfig``, which calls optimum's
  ``GPTQQuantizer``, which calls GPTQModel's ``GPTQ``); the weights are read back from its
  packed 4-bit layers;
- llm-compressor (``oneshot`` with a ``GPTQModifier``).

Each library quantizes a ``LlamaForCausalLM`` copy of the course model and its weights are
copied back into a course ``DecoderLM``, so that every method is measured by the same code:

1. per layer, the relative output error ``||X W^T - X Q^T||^2 / ||X W^T||^2`` on held-out
   inputs ``X`` (taken from the float32 model), divided by round-to-nearest's (below 1:
   better than RTN);
2. held-out perplexity (:func:`course_lib.evaluation.perplexity`);
3. wall time of the quantization alone.

A last table gives GPTQModel's ``GPTQ`` and ``course_lib.gptq.gptq`` the *same* inputs, layer by
layer: where the two differ, it is only in when a group's grid is chosen.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing may be downloaded: the model is local,
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")    # the calibration tokens are given

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import gptq, pruning  # noqa: E402
from course_lib.evaluation import perplexity  # noqa: E402
from course_lib.models import ASSETS, llama_name_map, load_pretrained, save_pretrained  # noqa: E402
from course_lib.pretrain import training_data  # noqa: E402
from course_lib.train import random_windows  # noqa: E402

CHECKPOINT = "course-lm"
BITS, GROUP, DAMP = 4, 64, 0.01
CALIBRATION = (32, 128)      # sequences x tokens, from the training text
HELDOUT = (16, 128)          # per batch; training_data gives 4 held-out batches
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

NOTES = """\
## Reading the tables

- All three GPTQs reach the same quality: about 0.38 of round-to-nearest's output error per
  layer, and the same perplexity to within 0.001. On a model this small, 4-bit groups of 64
  cost RTN only 0.01 of perplexity, so the perplexity column separates little; the layer errors do.
- Without groups, GPTQModel's `GPTQ` and `course_lib.gptq.gptq` land on the same grid points
  given the same inputs, but for a few dozen weights that lie almost halfway between two grid
  points (GPTQModel sums the Hessian in float32, the course in float64).
- With groups they differ in *when* a group's grid (scale and zero point) is chosen:
  - `course_lib.gptq` takes it from the weights as updated by every column already rounded;
  - GPTQModel (as GPTQ's original code) from the weights as they were at the start of the
    current lazy block of 128 columns, so a group that starts inside a block misses the block's
    updates so far. With its lazy block set to the group size (64) the two agree again;
  - llm-compressor fixes every group's grid from the original weights, before GPTQ starts.

  Once one grid differs, every later weight of the row differs a little: hence the share of
  weights that differ, while the mean errors stay within 1% of each other.
- Times: the libraries include converting to the library's format (GPTQModel packs the weights
  into 4-bit integers and builds its layers). One run each, on an otherwise idle 2-core machine.
- GPTQModel's packed layers are read back by running each on the identity matrix (its output is
  `W^T`); run as they are, they give the copied-back weights' perplexity to within 0.0001
  (GPTQModel stores the scales in float16).

## Reproduce

These libraries are not in requirements.txt; use a separate virtual environment:

    python3 -m venv /tmp/gptq-bench
    /tmp/gptq-bench/bin/pip install torch==2.13.0 gptqmodel==7.6.0 optimum==2.3.0 llmcompressor==0.14.0.1 \\
        tqdm==4.70.1 safetensors==0.8.0 tokenizers==0.23.3
    /tmp/gptq-bench/bin/python bench/gptq_library.py --out bench/gptq_library.md

(For a CPU-only torch, add the extra index given in README.md.) pip resolves this to
transformers 5.17.0, numpy 2.2.6, accelerate 1.16.0 and huggingface_hub 1.33.0: not the course's
pins. The install takes about 80 s and 1.6 GB, and builds six packages from source (gptqmodel,
defuser, device-smi, logbar and tokenicer are pure Python; pypcre compiles a C extension, so it
needs a C compiler and the Python headers). Nothing is downloaded at run time: the model, the
tokenizer and the calibration tokens are the course's own, and the run sets HF_HUB_OFFLINE=1 and
TRANSFORMERS_OFFLINE=1.

The same run in the course's own environment (transformers 5.24.0, numpy 2.4.6,
huggingface_hub 2.4.0, accelerate 1.15.0) with these libraries installed by `pip install --no-deps`
gives the same errors and perplexities; pip then reports two conflicts (below).

## What did not work, and why

- **transformers' `GPTQConfig` with optimum alone.** transformers 5 quantizes GPTQ through optimum,
  and optimum through GPTQModel (transformers 5.24's GPTQ quantizer no longer looks for auto-gptq).
  Without gptqmodel installed, `from_pretrained(..., quantization_config=GPTQConfig(...))` fails with
  `NameError: name 'QuantizeConfig' is not defined` (optimum 2.3.0, optimum/gptq/quantizer.py).
- **GPTQModel 7.7.0** (the newest) requires `torch>=2.14.1`: with the course's `torch==2.13.0`,
  pip stops with `ResolutionImpossible` ("gptqmodel 7.7.0 depends on torch>=2.14.1").
- **GPTQModel 7.0.0 to 7.6.0** require `numpy==2.2.6` (on Python below 3.14): with the course's
  `numpy==2.4.6`, pip stops with `ResolutionImpossible`. Installed with `--no-deps` beside
  numpy 2.4.6, 7.6.0 runs.
- **GPTQModel 6.0.3 and older** are source packages whose build imports torch: in pip's isolated
  build environment, `Exception: Unable to detect torch version via uv/pip/conda/importlib. Please
  install torch >= 2.7.1` (they need `--no-build-isolation`).
- **GPTQModel's own API** (`GPTQModel.load(path, QuantizeConfig(...)).quantize(data)`) on a 2-core
  machine: `ValueError: Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only
  has 1` (its default CPU pool has (cores + 1) // 2 workers). With `GPTQMODEL_CPU_WORKERS=2` it
  quantizes, saves and reloads the checkpoint on the CPU. It also writes a `logs/` folder in the
  working directory. The transformers route above uses neither.
- **llm-compressor 0.14.0.1** requires `transformers>=5.15.0,<=5.17.0`: with the course's
  `transformers==5.24.0`, pip stops with `ResolutionImpossible`; on its own it installs
  transformers 5.17.0 and huggingface_hub 1.33.0. Installed with `--no-deps` beside
  transformers 5.24.0, it runs. `oneshot` also wants a tokenizer (`processor=`) even when the data
  is already tokenized, and reads the model's folder again (`model.name_or_path`), so the folder
  must still exist.
"""


# --------------------------------------------------------------------------- data


def data():
    """(model, tokenizer, held-out texts, calibration ids (32, 128), held-out batches)."""
    corpus, tokenizer, stream, heldout = training_data(*HELDOUT)
    calibration = random_windows(stream, *CALIBRATION, torch.Generator().manual_seed(0))
    return load_pretrained(CHECKPOINT), tokenizer, corpus.heldout_texts, calibration, heldout


def hf_names(model) -> dict[str, str]:
    """``{course layer name: Hugging Face module name}`` for every block linear layer."""
    names = llama_name_map(model.config.n_layers)
    return {name: names[name + ".weight"].removesuffix(".weight") for name in pruning.linear_layers(model)}


def with_weights(model, weights: dict[str, torch.Tensor]):
    """A copy of the course ``model`` with ``weights`` (by course layer name) in its block linear layers."""
    changed = copy.deepcopy(model)
    for name, layer in pruning.linear_layers(changed).items():
        layer.weight.data = weights[name].to(layer.weight.dtype)
    return changed


# --------------------------------------------------------------------------- the three quantizers


def with_course(model, calibration):
    start = time.perf_counter()
    quantized = gptq.quantize_model(model, "gptq", BITS, list(calibration.split(8)), group_size=GROUP)
    return quantized, time.perf_counter() - start


def with_gptqmodel(model, calibration):
    """transformers' GPTQConfig route. Returns (course model with the dequantized weights, seconds, the HF model)."""
    from transformers import AutoModelForCausalLM, GPTQConfig

    config = GPTQConfig(
        bits=BITS, group_size=GROUP, damp_percent=DAMP, sym=False, desc_act=False,
        act_group_aware=False,     # GPTQModel's default reorders columns inside groups: off, as in the course
        true_sequential=False,     # the course collects a whole block's inputs at once
        dataset=[{"input_ids": row.reshape(1, -1).tolist(), "attention_mask": [[1] * row.numel()]} for row in calibration],
    )
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder)
        start = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, dtype=torch.float32, device_map="cpu")
        seconds = time.perf_counter() - start
    hf.eval()
    modules = dict(hf.named_modules())
    weights = {}
    with torch.no_grad():
        for ours, theirs in hf_names(model).items():
            layer = modules[theirs]   # a packed 4-bit layer: its output on the identity matrix is W^T
            weights[ours] = layer(torch.eye(layer.in_features)).T.float().contiguous()
    return with_weights(model, weights), seconds, hf


def with_llmcompressor(model, calibration):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scheme = {"targets": ["Linear"], "weights": {"num_bits": BITS, "type": "int", "symmetric": False,
                                                 "strategy": "group", "group_size": GROUP, "actorder": None}}
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], dampening_frac=DAMP, actorder=None)
    dataset = Dataset.from_dict({"input_ids": calibration.tolist(), "attention_mask": torch.ones_like(calibration).tolist()})
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / CHECKPOINT)   # oneshot wants one, though the data is tokenized
    with tempfile.TemporaryDirectory() as folder:   # oneshot reads the model's config.json again
        save_pretrained(model, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        start = time.perf_counter()
        oneshot(model=hf, processor=tokenizer, dataset=dataset, recipe=recipe, num_calibration_samples=len(calibration),
                max_seq_length=calibration.shape[1])
        seconds = time.perf_counter() - start
    modules = dict(hf.named_modules())   # each weight now holds its dequantized 4-bit values
    weights = {ours: modules[theirs].weight.detach().float().clone() for ours, theirs in hf_names(model).items()}
    return with_weights(model, weights), seconds


# --------------------------------------------------------------------------- measuring


def relative_error(w: torch.Tensor, q: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||X W^T - X Q^T||^2 / ||X W^T||^2`` from the inputs' ``H = 2 X^T X / n`` alone (the constant cancels):
    ``tr((W - Q) H (W - Q)^T) / tr(W H W^T)``, what :func:`course_lib.pruning.output_error` gives on ``X``."""
    w, d = w.double(), (w - q).double()
    return float(torch.trace(d @ hessian @ d.T) / torch.trace(w @ hessian @ w.T))


def layer_errors(model, quantized, heldout_hessians) -> dict[str, float]:
    original, changed = pruning.linear_layers(model), pruning.linear_layers(quantized)
    return {name: relative_error(original[name].weight, changed[name].weight, heldout_hessians[name]["hessian"])
            for name in original}


def max_levels_per_group(quantized) -> int:
    """The most distinct values in any group of 64 inputs of any row: at most 2^bits if on a 4-bit grid."""
    most = 0
    for layer in pruning.linear_layers(quantized).values():
        groups = layer.weight.detach().reshape(layer.out_features, -1, GROUP)
        most = max(most, max(len(torch.unique(g)) for g in groups.reshape(-1, GROUP)))
    return most


class Logits(torch.nn.Module):
    """A Hugging Face causal LM called as the course's models are: ids in, logits out."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, ids):
        return self.hf(input_ids=ids).logits


@torch.no_grad()
def layer_inputs(model, batches) -> dict[str, torch.Tensor]:
    """Every block linear layer's inputs (tokens, in) when ``model`` reads ``batches``."""
    inputs, handles = {}, []
    for name, layer in pruning.linear_layers(model).items():
        def keep(module, args, output, name=name):
            inputs.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]))
        handles.append(layer.register_forward_hook(keep))
    for ids in batches:
        model(ids)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(x) for name, x in inputs.items()}


def same_inputs(model, calibration) -> list[dict]:
    """GPTQModel's ``GPTQ`` and ``course_lib.gptq.gptq`` on every layer, each given the same calibration inputs
    (those of the float32 model): how many weights land on a different grid point, and by how much."""
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization import GPTQ

    inputs = layer_inputs(model, calibration.split(8))
    rows = []
    for group, lazy_block in ((None, 128), (GROUP, 128), (GROUP, GROUP)):
        differ = total = 0
        largest = 0.0
        for name, layer in pruning.linear_layers(model).items():
            x = inputs[name].double()
            ours = gptq.gptq(layer.weight.data, 2 * x.T @ x / x.shape[0], BITS, group, damp=DAMP)
            config = QuantizeConfig(bits=BITS, group_size=group or -1, sym=False, desc_act=False, act_group_aware=False,
                                    damp_percent=DAMP, damp_auto_increment=0.0, offload_to_disk=False)
            theirs = GPTQ(layer, qcfg=config)
            theirs.quantizer.configure(bits=BITS, sym=False, perchannel=True)
            theirs.add_batch(inputs[name], None)
            delta = (theirs.quantize(blocksize=lazy_block)[0] - ours).abs()
            differ += int((delta > 1e-6).sum())
            total += delta.numel()
            largest = max(largest, float(delta.max()))
        rows.append({"group": group, "block": lazy_block, "differ": differ, "total": total, "largest": largest})
    return rows


# --------------------------------------------------------------------------- the tables


def versions() -> str:
    names = ["torch", "transformers", "optimum", "gptqmodel", "llmcompressor", "compressed-tensors", "auto-round",
             "accelerate", "huggingface_hub", "datasets", "torchao", "numpy"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def run(progress: bool = True) -> str:
    torch.manual_seed(0)
    model, tokenizer, texts, calibration, heldout = data()
    say = print if progress else (lambda *a, **k: None)
    heldout_hessians = pruning.calibrate(model, pruning.linear_layers(model), heldout)

    results = {}   # method -> (course model, seconds or None)
    start = time.perf_counter()
    results["round-to-nearest"] = (gptq.quantize_model(model, "rtn", BITS, group_size=GROUP), time.perf_counter() - start)
    say("course GPTQ ...")
    results["course_lib.gptq"] = with_course(model, calibration)
    hf_quantized, missing = None, []
    try:
        say("GPTQModel (transformers GPTQConfig) ...")
        q, seconds, hf_quantized = with_gptqmodel(model, calibration)
        results["GPTQModel via GPTQConfig"] = (q, seconds)
    except ImportError as error:
        missing.append(f"GPTQModel: {error}")
    try:
        say("llm-compressor ...")
        results["llm-compressor"] = with_llmcompressor(model, calibration)
    except ImportError as error:
        missing.append(f"llm-compressor: {error}")

    rtn = layer_errors(model, results["round-to-nearest"][0], heldout_hessians)
    ratios = {method: {name: e / rtn[name] for name, e in layer_errors(model, q, heldout_hessians).items()}
              for method, (q, _) in results.items()}

    lines = [f"Checkpoint {CHECKPOINT} ({sum(p.numel() for p in model.parameters()):,} parameters, float32); "
             f"{BITS}-bit asymmetric, groups of {GROUP}, damping {DAMP}, no act-order; calibration "
             f"{CALIBRATION[0]} x {CALIBRATION[1]} training tokens; held-out: {4 * HELDOUT[0]} x {HELDOUT[1]} tokens "
             f"for the layer errors, {len(texts)} documents for perplexity. {platform.machine()}, "
             f"{torch.get_num_threads()} threads. {versions()}.", ""]
    lines += ["| method | quantization time (s) | held-out perplexity | layer error / RTN's, mean of 42 | worst layer | "
              "most values in a group |", "|---|---|---|---|---|---|"]
    lines.append(f"| float32 (not quantized) | - | {perplexity(model, tokenizer, texts):.4f} | - | - | - |")
    for method, (q, seconds) in results.items():
        r = ratios[method]
        lines.append(f"| {method} | {seconds:.1f} | {perplexity(q, tokenizer, texts):.4f} | "
                     f"{sum(r.values()) / len(r):.3f} | {max(r.values()):.3f} | {max_levels_per_group(q)} |")
    if hf_quantized is not None:
        lines.append(f"| GPTQModel's own 4-bit layers (the same model, not copied back) | - | "
                     f"{perplexity(Logits(hf_quantized), tokenizer, texts):.4f} | - | - | - |")
    lines += [""] + [f"Not measured: {m}" for m in missing] + ([""] if missing else [])

    methods = [m for m in ratios if m != "round-to-nearest"]
    lines += ["Per kind of layer: the output error over round-to-nearest's, mean of the 6 blocks (RTN's own error "
              "in the last column).", "",
              "| layer | " + " | ".join(methods) + " | RTN's relative error |",
              "|---|" + "---|" * (len(methods) + 1)]
    for kind in LAYER_TYPES:
        names = [n for n in rtn if n.endswith(kind)]
        cells = [f"{sum(ratios[m][n] for n in names) / len(names):.3f}" for m in methods]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {sum(rtn[n] for n in names) / len(names):.2e} |")

    if hf_quantized is not None:
        say("the same inputs, layer by layer ...")
        lines += ["", "The same calibration inputs (the float32 model's) given to GPTQModel's `GPTQ` and to "
                  "`course_lib.gptq.gptq`, layer by layer, all 42 layers, 4 bits:", "",
                  "| groups | GPTQModel's lazy block | weights that differ (of all) | largest difference |",
                  "|---|---|---|---|"]
        for row in same_inputs(model, calibration):
            lines.append(f"| {row['group'] or 'none (one grid per row)'} | {row['block']} | {row['differ']:,} "
                         f"({100 * row['differ'] / row['total']:.3f}%) | {row['largest']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the tables, with NOTES, to this markdown file")
    args = parser.parse_args(argv)
    table = run()
    print(table)
    if args.out:
        args.out.write_text(f"# GPTQ: course_lib.gptq next to GPTQModel and llm-compressor\n\n{table}\n{NOTES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
