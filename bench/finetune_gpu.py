"""Lesson 08 on a CUDA GPU: full fine-tuning vs LoRA vs QLoRA, time and memory per step; NF4 on the GPU.

    python bench/finetune_gpu.py --out bench/results/finetune-gpu.md     # needs CUDA, peft and bitsandbytes

1. NF4 (bitsandbytes' CUDA kernels) against the course's NF4 (``course_lib.quant``, lesson 04) on
   weights whose rows are and are not whole blocks of 64: codes, absmax, dequantized weights.
2. One training step of a 1.1 B-parameter Llama-style model (lesson 03's reference shape) in bf16,
   random weights, batch x sequence = 8 x 512, AdamW: full fine-tuning, LoRA (peft, rank 16, all
   seven projections) and QLoRA (the same LoRA on an NF4 base with double quantization). Median
   time per step as a ratio to full fine-tuning measured in the same run, forward alone too, and the
   peak memory against lesson 08's model-state estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import finetune as ft  # noqa: E402
from course_lib import qlora, quant  # noqa: E402
from course_lib.benchmark import median_ms  # noqa: E402
from course_lib.memory import ModelShape, count_params, reference_1b_config  # noqa: E402

BATCH, SEQ, R = 8, 512, 16


def nf4_on_gpu(device: str = "cuda", shapes=((96, 96), (48, 96), (192, 512), (4096, 4096), (4096, 11008))) -> list[dict]:
    import bitsandbytes.functional as F

    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        w = (torch.randn(shape, generator=gen) * 0.02).to(device)
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        indices, absmax = quant.nf4_quantize(w)
        theirs = qlora._unpack_nibbles(packed.flatten(), w.numel()).reshape(shape)
        dq_packed, dq_state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        ours_dq = qlora.NF4Linear(_linear(w), double_quant=True)
        plain = quant.nf4_dequantize(indices, absmax)
        rows.append({
            "shape": list(shape),
            "codes_differ": int((theirs != indices).sum()),
            "absmax_max_diff": float((state.absmax - absmax).abs().max()),
            "dequantized_max_diff": float((F.dequantize_4bit(packed, state) - plain).abs().max()),
            "double_quant_bnb_vs_plain": float((F.dequantize_4bit(dq_packed, dq_state) - plain).abs().max()),
            "double_quant_course_vs_plain": float((ours_dq.dequantize() - plain).abs().max()),
        })
    return rows


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device)
    with torch.no_grad():
        linear.weight.copy_(w)
    return linear


def _model(method: str, shape, device: str):
    """Full: fp32 weights under bf16 autocast (lesson 03's bf16-mixed). LoRA: the base frozen in bf16, adapters fp32.
    QLoRA: the projections of the base in NF4 (double quantization), the rest bf16, adapters fp32."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(shape.to_hf_config(attn_implementation="sdpa"))
    if method != "full":
        model = model.to(torch.bfloat16)
    if method == "qlora":
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in ft.PROJECTIONS and isinstance(child, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False, compute_dtype=torch.bfloat16,
                                          compress_statistics=True, quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                                 quant_type="nf4")
                    setattr(module, child_name, q)
    model = model.to(device)
    if method in ("lora", "qlora"):
        model = get_peft_model(model, LoraConfig(r=R, lora_alpha=2 * R, target_modules=list(ft.PROJECTIONS), lora_dropout=0.0))
        for n, p in model.named_parameters():  # adapters in fp32, as QLoRA keeps them
            if p.requires_grad:
                p.data = p.data.float()
    return model


def training_step(method: str, shape, device: str = "cuda", batch: int = BATCH, seq: int = SEQ, repeats: int = 10) -> dict:
    model = _model(method, shape, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, shape.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            model(input_ids=ids)

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms = median_ms(step, device, warmup=0, repeats=repeats)  # warmed up above
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    forward_ms = median_ms(forward, device, warmup=0, repeats=repeats)
    trainable = sum(p.numel() for p in params)
    del model, optimizer, params
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"method": method, "step_ms": step_ms, "forward_ms": forward_ms, "peak_bytes": peak, "trainable": trainable}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks that the script runs")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --smoke)")
    device = "cpu" if args.smoke else "cuda"
    shape = ModelShape(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256) if args.smoke \
        else reference_1b_config()
    size = dict(batch=2, seq=32, repeats=2) if args.smoke else {}
    result = {"gpu": "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
              "nf4": nf4_on_gpu(device, ((96, 96), (48, 96)) if args.smoke else nf4_on_gpu.__defaults__[1])}
    print(json.dumps(result["nf4"], indent=1), flush=True)
    steps = []
    for method in ("full", "lora", "qlora"):
        if args.smoke and method == "qlora":
            continue  # bitsandbytes' CPU kernels are lesson 08's own subject; the smoke run checks the script only
        row = training_step(method, shape, device, **size)
        row["estimated_model_states"] = ft.finetuning_model_states(shape, method, r=R)["total"]
        steps.append(row)
        print(row, flush=True)
    result["steps"] = steps
    full = steps[0]
    lines = [f"# Lesson 08 on {result['gpu']} (torch {result['torch']})", "",
             f"## NF4: bitsandbytes on the {device.upper()} against the course's", "",
             "| shape | codes that differ | absmax max diff | dequantized max diff | double quant: bnb vs plain | course vs plain |",
             "|---|---|---|---|---|---|"]
    for r in result["nf4"]:
        lines.append(f"| {r['shape']} | {r['codes_differ']} | {r['absmax_max_diff']:.1e} | {r['dequantized_max_diff']:.1e} | "
                     f"{r['double_quant_bnb_vs_plain']:.1e} | {r['double_quant_course_vs_plain']:.1e} |")
    lines += ["", f"## One training step, {count_params(shape) / 1e9:.2f} B Llama-style model, bf16 autocast, batch x sequence {size.get('batch', BATCH)} x {size.get('seq', SEQ)}, AdamW, LoRA rank {R} "
              "on all seven projections", "",
              "| method | trainable | step (ms) | step / full | forward (ms) | step / forward | peak (GiB) | model-state estimate (GiB) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in steps:
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['step_ms']:.1f} | {r['step_ms'] / full['step_ms']:.2f} | "
                     f"{r['forward_ms']:.1f} | {r['step_ms'] / r['forward_ms']:.2f} | {peak} | "
                     f"{r['estimated_model_states'] / 2**30:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
