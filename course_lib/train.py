"""A small, readable training loop (lesson 02; used again by every lesson that trains).

The loop is the textbook one: draw a batch, compute the loss, backpropagate, clip the
gradient norm, take an AdamW step with a warm-up-then-cosine learning rate, and now and
then measure the loss on held-out data. A tqdm progress bar shows the loss as it goes;
:func:`plot_history` draws the curves afterwards.

Runs are repeatable: the same seed on the same machine gives the same losses, because
every random choice (initialisation by the caller, batches here) comes from seeded
generators and PyTorch's CPU kernels are deterministic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`. Defined in lesson 02."""

    steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.steps <= 0 or self.warmup_steps < 0 or self.eval_every <= 0:
            raise ValueError(f"steps and eval_every must be positive and warmup_steps >= 0, got {self}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")


@dataclass
class History:
    """What :func:`train` measured: losses per step, held-out losses, and wall time. Defined in lesson 02."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``config.lr``, then cosine decay to ``config.min_lr`` at the last step. Defined in lesson 02."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms' gains or 1-D parameters). Defined in lesson 02."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of ``batch_size`` random windows of ``seq_len`` tokens from a 1-D token stream.

    Args:
        tokens: ``(N,)`` integer tensor, the whole training text as token ids.
    Returns:
        ``(batch_size, seq_len)`` int64 tensor. Defined in lesson 02.
    """
    if tokens.dim() != 1 or tokens.is_floating_point():
        raise ValueError(f"tokens must be a 1-D integer tensor (N,), got shape {tuple(tokens.shape)} and dtype {tokens.dtype}")
    if tokens.numel() <= seq_len:
        raise ValueError(f"need more than seq_len={seq_len} tokens, got {tokens.numel()}")
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()]).long()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn: Callable, batches: Iterable) -> float:
    """Mean of ``loss_fn(model, batch)`` over ``batches``, in eval mode, without gradients. Defined in lesson 02."""
    was_training = model.training
    model.eval()
    losses = [float(loss_fn(model, batch)) for batch in batches]
    model.train(was_training)
    if not losses:
        raise ValueError("evaluate needs at least one batch")
    return sum(losses) / len(losses)


def train(
    model: torch.nn.Module,
    loss_fn: Callable,
    get_batch: Callable[[torch.Generator], object],
    config: TrainConfig,
    eval_batches: Iterable | None = None,
) -> History:
    """Train ``model`` for ``config.steps`` steps and return the :class:`History`.

    Args:
        model: the module to train (its parameters are updated in place).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        get_batch: ``get_batch(generator) -> batch``; draws its randomness from the
            seeded generator it is given, so that runs repeat.
        config: a :class:`TrainConfig`.
        eval_batches: a list of batches for the held-out loss, measured every
            ``config.eval_every`` steps and after the last step.

    Defined in lesson 02.
    """
    eval_batches = list(eval_batches) if eval_batches is not None else None
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    history = History()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="training", disable=not config.progress, mininterval=0.5)
    for step in bar:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(model, get_batch(generator))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        history.steps.append(step)
        history.train_loss.append(loss.item())
        history.lr.append(lr)
        last = step == config.steps - 1
        if eval_batches is not None and ((step + 1) % config.eval_every == 0 or last):
            history.eval_steps.append(step + 1)
            history.eval_loss.append(evaluate(model, loss_fn, eval_batches))
            bar.set_postfix(loss=f"{loss.item():.3f}", eval=f"{history.eval_loss[-1]:.3f}")
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def plot_history(history: History, ax=None, title: str = "training"):
    """Training loss (smoothed) and held-out loss against the step, on a matplotlib axis. Defined in lesson 02."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    losses = torch.tensor(history.train_loss)
    window = max(1, len(losses) // 50)
    smooth = losses.unfold(0, window, 1).mean(1) if len(losses) >= window else losses
    ax.plot(history.steps, history.train_loss, color="C0", alpha=0.25, lw=0.8)
    ax.plot(history.steps[window - 1 :], smooth.tolist(), color="C0", label="training loss")
    if history.eval_steps:
        ax.plot(history.eval_steps, history.eval_loss, "o-", color="C1", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(f"{title} ({history.seconds:.0f} s)")
    ax.legend()
    return ax
