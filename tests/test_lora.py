"""course_lib.lora: LoRA from scratch, equal to peft (layer by layer exactly, on the course checkpoint as a whole)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from course_lib import lora as L
from course_lib import models

peft = pytest.importorskip("peft")


def _random_b(model: nn.Module, name: str = L.DEFAULT, seed: int = 0) -> None:
    """B starts at zero (the adapter changes nothing yet); give it values so that every comparison means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in L.lora_layers(model).values():
            w = layer.lora_B[name].weight
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.dtype) * 0.05)


def _peft_linear(base: nn.Linear, ours: L.LoRALinear, r: int, alpha: float):
    """peft's own LoRA layer on a copy of ``base``, holding our A and B."""
    from peft import LoraConfig, get_peft_model

    holder = nn.Module()
    holder.proj = copy.deepcopy(base)
    theirs = get_peft_model(holder, LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)).base_model.model.proj
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A["default"].weight)
        theirs.lora_B["default"].weight.copy_(ours.lora_B["default"].weight)
    return theirs


def test_the_sources_count_and_a_fresh_adapter_changes_nothing():
    assert L.lora_parameter_count([(64, 512)], 4) == 4 * (512 + 64) == 2304  # the source's 512 x 64 at rank 4
    assert 512 * 64 == 32768
    torch.manual_seed(0)
    base = nn.Linear(512, 64, bias=False, dtype=torch.float64)
    layer = L.LoRALinear(base, r=4, alpha=8)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 2304
    assert not base.weight.requires_grad
    x = torch.randn(3, 512, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))  # B = 0


@pytest.mark.parametrize("bias", [False, True])
def test_a_lora_layer_equals_peft_s_outputs_gradients_and_merge(bias):
    torch.manual_seed(1)
    base = nn.Linear(24, 10, bias=bias, dtype=torch.float64)
    ours = L.LoRALinear(copy.deepcopy(base), r=3, alpha=6)
    _random_b(ours)
    theirs = _peft_linear(base, ours, r=3, alpha=6)
    x = torch.randn(4, 5, 24, dtype=torch.float64)
    y_ours, y_theirs = ours(x), theirs(x)
    assert torch.equal(y_ours, y_theirs)
    (y_ours ** 2).sum().backward()
    (y_theirs ** 2).sum().backward()
    for part in ("lora_A", "lora_B"):
        assert torch.equal(getattr(ours, part)["default"].weight.grad, getattr(theirs, part)["default"].weight.grad)
    assert torch.allclose(ours.delta_weight(), theirs.get_delta_weight("default"), rtol=0, atol=1e-15)
    with torch.no_grad():
        ours.merge()
        theirs.merge()
        assert torch.allclose(ours.base_layer.weight, theirs.base_layer.weight, rtol=0, atol=1e-15)
        assert torch.allclose(ours(x), y_ours, rtol=0, atol=1e-13)  # merged: the same function, one matmul
        ours.unmerge()
        assert torch.allclose(ours.base_layer.weight, base.weight, rtol=0, atol=1e-15)


@pytest.fixture(scope="module")
def checkpoint():
    return models.load_pretrained("course-lm-small").double().eval()


def _course_with_lora(base, r=4, alpha=8, targets=L.LLAMA_TARGETS):
    model = copy.deepcopy(base)
    torch.manual_seed(2)
    L.inject_lora(model, r=r, alpha=alpha, targets=targets)
    _random_b(model)
    return model


def _peft_model(base, course, r=4, alpha=8, targets=L.LLAMA_TARGETS):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    hf = models.to_hf_llama(base)
    model = get_peft_model(copy.deepcopy(hf), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))
    result = set_peft_model_state_dict(model, L.to_peft_names(L.adapter_state_dict(course), base.config.n_layers))
    assert not result.unexpected_keys
    return hf, model.eval()


def test_the_course_checkpoint_with_lora_equals_peft(checkpoint):
    """Outputs and gradients of the whole model; the base models themselves differ by rotary rounding (float32 angles),
    so the LoRA's contribution is compared: (LoRA model - base) in the course and in peft."""
    course = _course_with_lora(checkpoint)
    hf, theirs = _peft_model(checkpoint, course)
    ids = torch.randint(0, checkpoint.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours_delta = course(ids) - checkpoint(ids)
        theirs_delta = theirs(input_ids=ids).logits - hf(input_ids=ids).logits
    assert ours_delta.abs().max() > 1e-3  # the adapter does change the model
    assert torch.allclose(ours_delta, theirs_delta, rtol=1e-5, atol=1e-5)  # measured: 2.8e-6 at most, on changes up to 6
    assert L.trainable_parameters(course) == sum(p.numel() for p in theirs.parameters() if p.requires_grad) == 20736
    # gradients of the adapters: the same loss on both models
    targets = torch.randint(0, checkpoint.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    models.next_token_loss(course(ids), targets).backward()
    models.next_token_loss(theirs(input_ids=ids).logits, targets).backward()
    ours_grads = L.to_peft_names({k.replace(".default", ""): p.grad for k, p in course.named_parameters() if p.requires_grad},
                                 checkpoint.config.n_layers)
    theirs_grads = {k.replace(".default", ""): p.grad for k, p in theirs.named_parameters() if p.requires_grad}
    assert ours_grads.keys() == theirs_grads.keys()
    for key, grad in theirs_grads.items():
        assert torch.allclose(ours_grads[key], grad, rtol=1e-5, atol=1e-6), key  # measured: 8.7e-7 of the largest at most


def test_adapters_move_between_the_course_and_peft(checkpoint, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    course = _course_with_lora(checkpoint)
    hf, theirs = _peft_model(checkpoint, course)
    theirs.save_pretrained(tmp_path / "adapter")  # peft's own files: adapter_config.json, adapter_model.safetensors
    loaded = PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapter")
    back = L.from_peft_names(get_peft_model_state_dict(loaded), checkpoint.config.n_layers)
    fresh = copy.deepcopy(checkpoint)
    L.inject_lora(fresh, r=4, alpha=8, targets=L.LLAMA_TARGETS)
    L.load_adapter_state_dict(fresh, back)
    for key, value in L.adapter_state_dict(course).items():
        assert torch.equal(L.adapter_state_dict(fresh)[key], value), key
    with pytest.raises(ValueError, match="do not match"):
        L.load_adapter_state_dict(fresh, {k: v for k, v in back.items() if "q_proj" not in k})


def test_merged_weights_equal_peft_s_merge_and_unmerge_restores_the_base(checkpoint):
    course = _course_with_lora(checkpoint)
    _, theirs = _peft_model(checkpoint, course)
    ids = torch.randint(0, checkpoint.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = course(ids)
        L.merge_lora(course)
        merged_logits = course(ids)
        merged_hf = theirs.merge_and_unload().state_dict()
        names = models.llama_name_map(checkpoint.config.n_layers)
        for name, layer in L.lora_layers(course).items():
            assert torch.allclose(layer.base_layer.weight, merged_hf[names[f"{name}.weight"]], rtol=0, atol=1e-14), name
        assert torch.allclose(merged_logits, before, rtol=0, atol=1e-11)
        L.unmerge_lora(course)
        for name, layer in L.lora_layers(course).items():
            assert torch.allclose(layer.base_layer.weight, checkpoint.get_submodule(name).weight, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="not merged"):
        L.unmerge_lora(course)


def test_one_base_serves_several_adapters_and_a_mixed_batch(checkpoint):
    course = _course_with_lora(checkpoint, targets=("q_proj", "v_proj"))
    torch.manual_seed(6)
    L.add_adapter(course, "tenant_b", r=2, alpha=4)
    _random_b(course, "tenant_b", seed=7)
    ids = torch.randint(0, checkpoint.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        one_by_one = []
        for row, name in enumerate([L.DEFAULT, "tenant_b", None]):
            if name is None:
                one_by_one.append(checkpoint(ids[row:row + 1]))
            else:
                L.set_adapter(course, name)
                one_by_one.append(course(ids[row:row + 1]))
        with L.adapters_per_row(course, [L.DEFAULT, "tenant_b", None]):
            mixed = course(ids)
    assert torch.allclose(mixed, torch.cat(one_by_one), rtol=0, atol=1e-12)
    assert not torch.allclose(one_by_one[0], one_by_one[1])
    # peft's own mixed batch (adapter_names) gives the same adapters' contributions
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    hf = models.to_hf_llama(checkpoint)
    theirs = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    theirs.add_adapter("tenant_b", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name in (L.DEFAULT, "tenant_b"):
        set_peft_model_state_dict(theirs, L.to_peft_names(L.adapter_state_dict(course, name), checkpoint.config.n_layers),
                                  adapter_name=name)
    theirs.eval()
    with torch.no_grad():
        theirs_mixed = theirs(input_ids=ids, adapter_names=[L.DEFAULT, "tenant_b", "__base__"]).logits
        base_hf, base_ours = hf(input_ids=ids).logits, checkpoint(ids)
    assert torch.allclose(theirs_mixed - base_hf, mixed - base_ours, rtol=1e-5, atol=1e-5)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="positive int"):
        L.LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    with pytest.raises(ValueError, match="alpha"):
        L.LoRALinear(nn.Linear(4, 4), r=2, alpha=0)
    with pytest.raises(ValueError, match="nn.Linear"):
        L.LoRALinear(nn.Conv1d(4, 4, 1), r=2, alpha=1)
    with pytest.raises(ValueError, match="no nn.Linear or NF4Linear named"):
        L.inject_lora(nn.Sequential(nn.Linear(2, 2)), r=1, alpha=1, targets=("q_proj",))
    model = nn.Sequential()
    model.q_proj = nn.Linear(3, 3)
    L.inject_lora(model, r=1, alpha=1, targets=("q_proj",))
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        L.set_adapter(model, "x")
    with pytest.raises(ValueError, match="2 names for a batch of 3"), L.adapters_per_row(model, [L.DEFAULT, None]):
        model(torch.randn(3, 3))
