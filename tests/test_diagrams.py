"""The conceptual figures render, and each box names a module the course's model really has."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

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
