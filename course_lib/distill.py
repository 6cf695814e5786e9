"""Knowledge distillation: a small student trained on a large teacher's predictions (lesson 10).

The source text says

    “缩小模型体积的技术,基于较大的Teacher模型训练一个较小的Student模型,模型参数大为减少并保留大模型的准确率。”
    ("A technique to shrink the model: train a smaller Student model from a larger Teacher
    model; the parameters shrink greatly and the large model's accuracy is kept.")

Hinton et al. (2015): the teacher's full distribution over the next token (its "soft
targets", softened by a temperature ``T``) carries more than the one right answer: which wrong
answers are nearly right. The student is trained on a mix of the two,

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels),

the ``T^2`` keeping the soft part's gradients the same size whatever ``T`` (they shrink as
``1 / T^2`` otherwise). Lesson 10 measures how much of the teacher's quality a student keeps,
against the same student trained on the labels alone: "keeps the accuracy" is a measured share,
not a given.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from course_lib.models import DecoderConfig, DecoderLM
from course_lib.train import TrainConfig, random_windows, train


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """Hinton's loss, averaged over the positions whose label is not ``ignore_index``; a scalar.

    ``student_logits`` and ``teacher_logits`` (..., vocab) of one shape, ``labels`` (...) long (the
    next token at each position). ``alpha = 1`` is soft targets alone, ``alpha = 0`` the labels alone.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(f"student_logits and teacher_logits should have one shape (..., vocab), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if labels.shape != student_logits.shape[:-1] or labels.is_floating_point():
        raise ValueError(f"labels should be integer ids of shape {tuple(student_logits.shape[:-1])}, got "
                         f"{tuple(labels.shape)} {labels.dtype}")
    if not temperature > 0 or not 0 <= alpha <= 1:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature!r} and {alpha!r}")
    vocab = student_logits.shape[-1]
    student, teacher, labels = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), labels.reshape(-1)
    keep = labels != ignore_index
    student, teacher, labels = student[keep], teacher[keep].detach(), labels[keep]
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    soft = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
    hard = F.cross_entropy(student.float(), labels)
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard


def distill(teacher: DecoderLM, student_config: DecoderConfig, stream: torch.Tensor, config: TrainConfig,
            temperature: float = 2.0, alpha: float = 0.5, batch_size: int = 32, seq_len: int = 128,
            eval_batches: list[torch.Tensor] | None = None, student: DecoderLM | None = None):
    """Train a fresh student (``student_config``, or a copy of ``student``) on windows of ``stream`` with
    :func:`distillation_loss` against ``teacher`` (frozen). ``alpha=0`` trains on the labels alone: the baseline.

    Returns ``(student, history)``; the held-out loss in the history is the plain next-token loss.
    """
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(config.seed)
    model = DecoderLM(student_config) if student is None else copy.deepcopy(student)

    def loss_fn(model, batch):
        logits = model(batch[:, :-1])
        if not model.training:  # held-out batches: the ordinary next-token loss
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        if alpha == 0:
            return distillation_loss(logits, logits.detach(), batch[:, 1:], temperature, 0.0)
        with torch.no_grad():
            teacher_logits = teacher(batch[:, :-1])
        return distillation_loss(logits, teacher_logits, batch[:, 1:], temperature, alpha)

    history = train(model, loss_fn, lambda gen: random_windows(stream, batch_size, seq_len + 1, gen), config, eval_batches)
    return model, history
