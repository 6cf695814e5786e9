"""The conceptual figures render, and each box names a module the course's model really has."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import diagrams, models  # noqa: E402


def test_every_box_is_a_module_of_the_encoder_decoder_model():
    model = models.EncoderDecoderModel(models.Seq2SeqConfig())
    for box in diagrams.TRANSFORMER_BOXES:
        assert type(model.get_submodule(box.module)).__name__ == box.kind, box


def test_every_module_of_a_block_and_around_it_is_drawn():
    model = models.EncoderDecoderModel(models.Seq2SeqConfig())
    drawn = {box.module for box in diagrams.TRANSFORMER_BOXES}
    for stack in ("encoder", "decoder"):
        for name, _ in getattr(model, stack)[0].named_children():
            assert f"{stack}.0.{name}" in drawn, f"{stack}.0.{name} is missing from the figure"
    for name, _ in model.named_children():
        if name not in ("encoder", "decoder"):
            assert name in drawn, f"{name} is missing from the figure"


def test_the_architecture_figure_renders_one_patch_per_box():
    fig = diagrams.transformer_architecture()
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.texts]
    for box in diagrams.TRANSFORMER_BOXES:
        assert any(box.module in text for text in labels), f"{box.module} is not written on the figure"
    assert len(ax.patches) == len(diagrams.TRANSFORMER_BOXES) + 2  # and the two dashed block frames
    plt.close(fig)


def test_the_attention_figure_draws_softmax_weights_that_sum_to_one():
    import pytest
    import torch

    from course_lib import attention

    gen = torch.Generator().manual_seed(0)
    tokens = ["I", "am", "a", "student"]
    q, k, v = (torch.randn(4, 3, generator=gen) for _ in range(3))
    fig, numbers = diagrams.attention_weighted_average(tokens, q, k, v, query=0)
    ax_scores, ax_weights, ax_output = fig.axes[:3]
    drawn = torch.tensor([bar.get_height() for bar in ax_weights.patches], dtype=torch.float32)
    assert torch.allclose(drawn, torch.softmax(numbers["scores"][0], dim=-1), atol=1e-6)
    assert torch.allclose(drawn.sum(), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(numbers["scores"], q @ k.T / 3 ** 0.5)
    assert torch.allclose(numbers["contributions"].sum(dim=0), attention.attention_with_weights(q, k, v)[0][0], atol=1e-6)
    assert len(ax_scores.texts) == 16 and len(ax_output.get_yticklabels()) == 5
    fig.canvas.draw()
    plt.close(fig)
    with pytest.raises(ValueError, match="query in 0..3"):
        diagrams.attention_weighted_average(tokens, q, k, v, query=4)


def test_the_training_step_figure_stacks_the_estimate_and_peaks_at_it():
    from course_lib import memory

    ref = memory.reference_1b_config()
    for precision, batch in (("fp32", 4), ("bf16-mixed", 1), ("bf16", 8)):
        estimate = memory.estimate_training_memory(ref, batch, 1024, "adamw", precision, "sdpa")
        fig, phases = diagrams.training_step_memory(ref, batch, 1024, precision)
        totals = {name: sum(parts.values()) for name, parts in phases.items()}
        assert max(totals.values()) == estimate.peak
        assert totals["end of forward"] == estimate.weights + estimate.optimizer_states + estimate.activations + estimate.weight_copies
        assert phases["optimizer step"]["gradients"] == estimate.gradients and phases["optimizer step"]["activations"] == 0
        ax = fig.axes[0]
        assert len(ax.patches) == len(diagrams.TRAINING_PARTS) * len(phases)
        tops = {}
        for bar in ax.patches:  # the drawn bars, stacked, reach each phase's total
            tops[round(bar.get_x(), 6)] = max(tops.get(round(bar.get_x(), 6), 0.0), bar.get_y() + bar.get_height())
        assert sorted(tops.values()) == sorted(t / memory.GiB for t in totals.values()) or all(
            abs(a - b) < 1e-9 for a, b in zip(sorted(tops.values()), sorted(t / memory.GiB for t in totals.values())))
        fig.canvas.draw()
        plt.close(fig)


def test_the_bit_layout_figure_draws_one_box_per_bit_of_every_format():
    import torch

    from course_lib import formats

    layouts = diagrams.bit_layout_fields()
    for fmt in formats.FORMATS.values():
        assert layouts[fmt.name] == [("sign", 1), ("exponent", fmt.exponent_bits), ("mantissa", fmt.mantissa_bits)]
        assert sum(bits for _, bits in layouts[fmt.name]) == fmt.total_bits
    assert sum(b for _, b in layouts["int8"]) == 8 * torch.empty(0, dtype=torch.int8).element_size()
    assert sum(b for _, b in layouts["int4"]) == 4
    fig = diagrams.bit_layouts()
    boxes = [p for p in fig.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(boxes) == sum(bits for fields in layouts.values() for _, bits in fields)
    plt.close(fig)


def test_the_kv_cache_figure_plots_the_lesson_formula_and_the_sharing():
    from course_lib import kvcache, memory

    config = kvcache.PUBLISHED_CONFIGS["Llama-3-8B"]
    lengths = [1024, 4096, 32768]
    fig, curves = diagrams.kv_cache_and_gqa(config, weight_bytes=16e9, name="Llama-3-8B", lengths=lengths)
    assert list(curves) == ["MHA (32 kv heads)", "GQA-8", "MQA (1 kv head)"]
    for label, kv in zip(curves, (32, 8, 1)):
        assert curves[label] == [kvcache.kv_cache_bytes_from_config({**config, "num_key_value_heads": kv}, s) for s in lengths]
    assert curves["MHA (32 kv heads)"][0] == 4 * curves["GQA-8"][0] == 32 * curves["MQA (1 kv head)"][0]
    left, right = fig.axes
    plotted = [list(line.get_ydata()) for line in left.lines[:3]]
    assert plotted == [[b / memory.GiB for b in sizes] for sizes in curves.values()]
    assert left.lines[3].get_ydata()[0] == 16e9 / memory.GiB
    assert len(right.patches) == 8 + 2  # 8 query heads, 2 kv heads
    arrows = [t for t in right.texts if isinstance(t, matplotlib.text.Annotation)]
    assert len(arrows) == 8
    fig.canvas.draw()
    plt.close(fig)


def test_the_tiling_figure_counts_the_tiles_and_its_online_softmax_reaches_the_exact_row():
    kinds = diagrams.flash_tile_kinds(512, 64)
    counts = {kind: sum(row.count(kind) for row in kinds) for kind in diagrams.TILE_COLOURS}
    assert counts == {"computed": 28, "computed with a mask": 8, "skipped": 28}  # 8 x 8 tiles: 8 on the diagonal, 28 each side
    assert all(row[i] == "computed with a mask" for i, row in enumerate(kinds))
    assert diagrams.flash_tile_kinds(100, 64, causal=False) == [["computed"] * 2] * 2
    # a block that does not divide the length: the last tile is short, the diagonal tile still needs its mask
    assert diagrams.flash_tile_kinds(100, 64) == [["computed with a mask", "skipped"], ["computed", "computed with a mask"]]
    fig, kinds, trace = diagrams.flash_tiling(256, 32, causal=True, seed=3)
    assert kinds == diagrams.flash_tile_kinds(256, 32)
    assert len(trace["max"]) == len(trace["sum"]) == len(trace["output"]) == 8
    assert trace["max"] == sorted(trace["max"])  # a running max never falls
    assert trace["max"][-1] == trace["final_max"][0]
    assert abs(trace["sum"][-1] - trace["final_sum"][0]) < 1e-4 * trace["final_sum"][0]
    assert abs(trace["output"][-1] - trace["final_output"][0]) < 1e-5
    assert trace["max"][3] < trace["max"][4]  # the planted largest score sits in tile 5 of 8
    assert trace["sum"][4] < trace["sum"][3]  # so the sum is rescaled down there
    tiles = [p for p in fig.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(tiles) >= 8 * 8
    fig.canvas.draw()
    plt.close(fig)
    fig, kinds, _ = diagrams.flash_tiling(256, 32)
    assert kinds == [["computed"] * 8] * 8
    plt.close(fig)
    with pytest.raises(ValueError, match="positive"):
        diagrams.flash_tile_kinds(0, 64)
    with pytest.raises(ValueError, match="1-D"):
        diagrams.online_softmax_trace(torch.zeros(2, 3), torch.zeros(2, 3), 2)
