"""course_lib.qlora: NF4 layers equal to bitsandbytes', double quantization's bits, QLoRA equal to peft's, gradients arrive."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib import lora, qlora, quant
from course_lib.models import load_pretrained
from course_lib.pretrain import ASSETS

bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")


def test_bits_per_parameter_single_and_double_quantization():
    assert qlora.bits_per_parameter() == 4.5
    assert qlora.bits_per_parameter(double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(qlora.bits_per_parameter(double_quant=True) - 4, 3) == 0.127  # QLoRA's 0.127 bits per parameter


@pytest.mark.parametrize("double_quant", [False, True])
def test_an_nf4_layer_stores_what_its_formula_says(double_quant):
    torch.manual_seed(0)
    linear = nn.Linear(256, 64 * 40, bias=False)          # 40 x 256 blocks of 64 = 10,240 blocks: 40 of 256
    layer = qlora.NF4Linear(linear, double_quant=double_quant)
    n = linear.weight.numel()
    stored = qlora.storage_bytes(layer) - (4 if double_quant else 0)  # the mean (offset) is 4 bytes per layer
    assert stored * 8 / n == qlora.bits_per_parameter(double_quant=double_quant)


@pytest.mark.parametrize("shape", [(48, 96), (96, 256), (192, 192), (7, 9)])
def test_nf4_codes_and_absmax_equal_bitsandbytes(shape):
    torch.manual_seed(1)
    w = torch.randn(shape) * 0.05
    layer = qlora.NF4Linear(_linear_with(w), double_quant=False)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(layer.packed, packed.flatten()) and torch.equal(layer.absmax, state.absmax)
    indices, absmax = quant.nf4_quantize(w)
    assert torch.equal(layer.dequantize(), quant.nf4_dequantize(indices, absmax))


def _linear_with(w: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def test_course_nf4_codes_equal_bitsandbytes_but_on_a_boundary_between_two_codes():
    """bitsandbytes scales a block by multiplying with 1 / absmax, the course divides by absmax: the two can differ in
    the last bit, which moves a value lying exactly on a boundary between two codes to the other code."""
    model = load_pretrained("course-lm")
    differ, total = 0, 0
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed" not in name:
            w = p.detach()
            indices, absmax = quant.nf4_quantize(w)
            indices = indices.long()
            packed, _ = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
            theirs = qlora._unpack_nibbles(packed.flatten(), w.numel()).reshape(w.shape).long()
            where = (theirs != indices).nonzero()
            total += w.numel()
            for r, c in where.tolist():
                block = (r * w.shape[1] + c) // 64
                x = (w[r, c] / absmax[block]).double()
                mine_code, their_code = int(indices[r, c]), int(theirs[r, c])
                boundary = (quant.NF4_CODES[mine_code].double() + quant.NF4_CODES[their_code].double()) / 2
                assert abs(their_code - mine_code) == 1 and abs(x - boundary) < 1e-6, (name, r, c)
                differ += 1
    assert differ <= 3 and total > 2_000_000


def test_nf4_weights_equal_bitsandbytes_dequantized_where_rows_hold_whole_blocks():
    torch.manual_seed(2)
    w = torch.randn(96, 192) * 0.05                 # rows of 192 = 3 blocks of 64 (course-lm's widths are all multiples of 64)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(qlora.NF4Linear(_linear_with(w), double_quant=False).dequantize(), F.dequantize_4bit(packed, state))


def test_double_quantization_keeps_the_absmax_within_half_a_step():
    torch.manual_seed(3)
    absmax = torch.rand(1000) * 0.2 + 0.01
    codes, scales, offset = qlora.double_quantize(absmax)
    assert codes.dtype == torch.int8 and scales.shape == (4,) and offset.dim() == 0
    back = qlora.double_dequantize(codes, scales, offset)
    step = scales.repeat_interleave(256)[:1000]
    assert ((back - absmax).abs() <= step / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="absmax must be a 1-D float tensor"):
        qlora.double_quantize(absmax.reshape(10, 100))


def test_a_quantized_model_is_smaller_and_still_good():
    from course_lib.evaluation import perplexity
    from course_lib.data import build_corpus
    from course_lib.tokenizer import course_tokenizer

    texts = build_corpus(0).heldout_texts[:100]
    tok = course_tokenizer(0)
    model = load_pretrained("course-lm-small")
    full_bytes, full_ppl = qlora.storage_bytes(model), perplexity(model, tok, texts)
    replaced = qlora.quantize_nf4(model)
    assert len(replaced) == 3 * 7 and isinstance(model.embed, nn.Embedding)
    assert qlora.storage_bytes(model) < 0.4 * full_bytes
    assert full_ppl < perplexity(model, tok, texts) < 1.1 * full_ppl
    with pytest.raises(ValueError, match="NF4Linear quantizes an nn.Linear"):
        qlora.NF4Linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match=r"x must be a float tensor \(\.\.\., 96\)"):
        model.blocks[0].attn.q_proj(torch.ones(2, 95))


def test_course_qlora_gets_gradients_in_every_layer_and_cannot_merge():
    model = load_pretrained("course-lm-small")
    qlora.quantize_nf4(model)
    lora.inject_lora(model, r=4, alpha=8, targets=lora.LLAMA_TARGETS)
    ids = torch.randint(15, 1000, (2, 12))
    model.eval()
    with torch.no_grad():
        model(ids)                                   # an inference pass first: must not change what training gets
    model.train()
    model.loss(ids).backward()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(named) == 2 * 21   # B starts at zero, so A's first gradient is zero; B's is not, in every layer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named if "lora_B" in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with pytest.raises(ValueError, match="cannot merge into a 4-bit NF4 base"):
        lora.merge_lora(model)


def _course_and_peft_qlora(double_quant: bool):
    """The course's QLoRA and peft's on course-lm (whose rows are whole NF4 blocks), holding the same random adapters.

    Without double quantization the course's layers get bitsandbytes' own codes and absmax (they differ
    in a weight or two that lie on a boundary between two codes: see the test below)."""
    ours = load_pretrained("course-lm")
    qlora.quantize_nf4(ours, double_quant=double_quant)
    lora.inject_lora(ours, r=4, alpha=8)
    theirs = qlora.bnb_qlora_model(ASSETS / "course-lm", r=4, alpha=8, double_quant=double_quant)
    if not double_quant:
        for name, module in theirs.base_model.model.model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                mine = ours.get_submodule(name.replace("layers.", "blocks.").replace("self_attn", "attn"))
                mine.packed.copy_(module.weight.data.flatten())
                mine.absmax.copy_(module.weight.quant_state.absmax)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        named = dict(theirs.named_parameters())
        for name, value in lora.to_peft_names(lora.adapter_state_dict(ours), 6).items():
            part = ".lora_A." if ".lora_A." in name else ".lora_B."
            named[name.replace(part, part + "default.")].copy_(torch.randn(value.shape, generator=gen) * 0.05)
        theirs_state = {n.replace(".default", ""): p for n, p in theirs.named_parameters() if "lora_" in n}
        lora.load_adapter_state_dict(ours, lora.from_peft_names(theirs_state, 6))
    return ours, theirs


def test_course_qlora_equals_bitsandbytes_and_peft_outputs_and_adapter_gradients():
    ours, theirs = _course_and_peft_qlora(double_quant=False)
    ids = torch.randint(15, 1000, (3, 16), generator=torch.Generator().manual_seed(1))
    ours.train(), theirs.train()
    y_ours, y_theirs = ours(ids), theirs(ids).logits
    assert torch.allclose(y_ours, y_theirs, rtol=1e-4, atol=1e-4)
    y_ours.square().mean().backward()
    y_theirs.square().mean().backward()
    grads_ours = lora.to_peft_names({k: ours.get_submodule(k.rsplit(".", 1)[0] + ".default").weight.grad
                                     for k in lora.adapter_state_dict(ours)}, 6)
    grads_theirs = {n.replace(".default", ""): p.grad for n, p in theirs.named_parameters() if "lora_" in n}
    assert set(grads_ours) == set(grads_theirs)
    for name, g in grads_ours.items():
        assert torch.allclose(g, grads_theirs[name], rtol=1e-3, atol=1e-6), name


def test_bitsandbytes_double_quantization_is_as_close_as_the_courses():
    ours, theirs = _course_and_peft_qlora(double_quant=True)
    w = load_pretrained("course-lm").blocks[2].mlp.up_proj.weight.detach()
    mine = ours.blocks[2].mlp.up_proj.dequantize()
    layer = theirs.base_model.model.model.layers[2].mlp.up_proj
    assert layer.weight.quant_state.nested
    bnb_w = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    plain = qlora.NF4Linear(_linear_with(w), double_quant=False).dequantize()
    for got in (mine, bnb_w):  # both differ from plain NF4 only by the absmax's 8-bit rounding
        assert 0 < (got - plain).abs().max() < 0.01 * w.abs().max()


@pytest.mark.parametrize("double_quant", [False, True])
def test_keep_trainable_guards_the_bitsandbytes_cpu_inference_repacking(double_quant):
    model = qlora.bnb_qlora_model(ASSETS / "course-lm", r=4, alpha=8, double_quant=double_quant)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = F.has_avx512bf16()  # as bitsandbytes sets it, before the guard
    ids = torch.randint(15, 1000, (2, 10))
    model.train()
    before = model(ids).logits.detach()
    model.eval()
    with torch.no_grad():
        model(ids)                       # on an AVX512-BF16 CPU this repacks every Linear4bit for inference
    assert qlora.keep_trainable(model) == (42 if F.has_avx512bf16() else 0)
    model.train()
    after = model(ids).logits.detach()   # the same model again, up to the absmax's bf16 rounding
    assert (after - before).abs().max() < 0.05 * before.abs().max()
    model.train()
    model(ids, labels=ids).loss.backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trained) == 24 and all(p.grad is not None for _, p in trained)
    assert all(p.grad.abs().sum() > 0 for n, p in trained if "lora_B" in n)  # (B starts at zero, so A's gradient is zero)


@pytest.mark.skipif(not F.has_avx512bf16(), reason="the trap needs a CPU with AVX512-BF16")
def test_without_the_guard_an_inference_pass_leaves_earlier_adapters_without_gradients():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(ASSETS / "course-lm", quantization_config=qlora.bnb_4bit_config(),
                                                device_map="cpu")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(15, 1000, (2, 10))
    model.eval()
    with torch.no_grad():
        model(ids)
    model.train()
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert "layers.0.self_attn.q_proj" in " ".join(missing)   # the first layer's adapters learn nothing
