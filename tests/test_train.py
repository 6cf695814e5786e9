"""course_lib.train: schedule, batches, repeatability, and that training really learns."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from torch import nn

from course_lib.train import History, TrainConfig, evaluate, learning_rate, make_optimizer, plot_history, random_windows, train

matplotlib.use("Agg")


class Bigram(nn.Module):
    """The smallest language model: the next token's logits depend on the current token only."""

    def __init__(self, vocab: int = 8):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.table(ids)


def bigram_loss(model, batch):
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


# a deterministic token stream: 0 1 2 ... 7 0 1 2 ..., so the next token is always known
STREAM = torch.arange(4000) % 8


def run(seed: int, steps: int = 60) -> tuple[nn.Module, History]:
    torch.manual_seed(seed)
    model = Bigram()
    config = TrainConfig(steps=steps, lr=0.1, min_lr=0.01, warmup_steps=5, eval_every=20, seed=seed, progress=False)
    eval_batches = [random_windows(STREAM, 4, 16, torch.Generator().manual_seed(99))]
    history = train(model, bigram_loss, lambda g: random_windows(STREAM, 8, 16, g), config, eval_batches)
    return model, history


def test_training_learns_a_deterministic_sequence():
    _, history = run(0, steps=150)
    assert history.train_loss[0] > 1.5  # about log(8) = 2.08 at the start
    assert history.eval_loss[-1] < 0.1 < history.train_loss[0]
    assert history.eval_steps == [20, 40, 60, 80, 100, 120, 140, 150]


def test_same_seed_same_losses_other_seed_other_losses():
    _, a = run(1)
    _, b = run(1)
    _, c = run(2)
    assert a.train_loss == b.train_loss and a.eval_loss == b.eval_loss
    assert a.train_loss != c.train_loss


def test_learning_rate_warms_up_then_decays_to_min():
    config = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert learning_rate(55, config) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = make_optimizer(model, TrainConfig(weight_decay=0.5)).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]


def test_random_windows_are_slices_of_the_stream():
    batch = random_windows(STREAM, 5, 7, torch.Generator().manual_seed(0))
    assert batch.shape == (5, 7) and batch.dtype == torch.int64
    for row in batch:
        assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 7) % 8)


@pytest.mark.parametrize(
    "tokens,match",
    [(torch.zeros(3, 3, dtype=torch.long), "1-D integer tensor"), (torch.zeros(10), "1-D integer tensor"), (torch.zeros(5, dtype=torch.long), "more than seq_len")],
)
def test_random_windows_rejects_bad_streams(tokens, match):
    with pytest.raises(ValueError, match=match):
        random_windows(tokens, 2, 8, torch.Generator())


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_evaluate_restores_training_mode_and_needs_batches():
    model = Bigram()
    model.train()
    assert evaluate(model, bigram_loss, [STREAM[:20].view(1, -1)]) > 0
    assert model.training
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate(model, bigram_loss, [])


def test_diverging_loss_stops_with_a_clear_error():
    def nan_loss(model, batch):
        return bigram_loss(model, batch) * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(Bigram(), nan_loss, lambda g: random_windows(STREAM, 2, 8, g), TrainConfig(steps=3, progress=False))


def test_plot_history_draws_both_curves():
    _, history = run(0, steps=40)
    ax = plot_history(history)
    labels = [line.get_label() for line in ax.get_lines()]
    assert "training loss" in labels and "held-out loss" in labels
