"""course_lib.distill: Hinton's loss, by hand and at its limits, and a student that trains."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import distill
from course_lib.models import load_pretrained
from course_lib.pretrain import RECIPES
from course_lib.train import TrainConfig


def test_the_loss_by_hand_on_one_position():
    student, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    labels = torch.tensor([1])
    t, alpha = 2.0, 0.3
    p = torch.softmax(teacher / t, -1)
    kl = float((p * (p.log() - torch.log_softmax(student / t, -1))).sum())
    ce = -float(torch.log_softmax(student, -1)[0, 1])
    got = distill.distillation_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert math.isclose(float(got), alpha * t * t * kl + (1 - alpha) * ce, rel_tol=1e-6)


def test_alpha_zero_is_cross_entropy_and_a_student_equal_to_its_teacher_has_no_soft_loss():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 5, 11, generator=gen), torch.randint(0, 11, (2, 5), generator=gen)
    assert torch.allclose(distill.distillation_loss(logits, torch.randn(2, 5, 11), labels, alpha=0.0),
                          F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1)))
    assert float(distill.distillation_loss(logits, logits, labels, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_the_t_squared_factor_keeps_the_soft_gradients_the_same_size():
    """Without T^2 the soft gradients shrink as 1/T^2; with it they stay within a factor of about 1 as T grows."""
    gen = torch.Generator().manual_seed(1)
    teacher, labels = torch.randn(64, 50, generator=gen), torch.zeros(64, dtype=torch.long)
    sizes = []
    for t in (4.0, 8.0):
        student = torch.randn(64, 50, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        distill.distillation_loss(student, teacher, labels, temperature=t, alpha=1.0).backward()
        sizes.append(float(student.grad.norm()))
    assert 0.8 < sizes[1] / sizes[0] < 1.25


def test_ignored_positions_do_not_count():
    logits, teacher = torch.randn(4, 7), torch.randn(4, 7)
    labels = torch.tensor([1, -100, 2, -100])
    assert torch.allclose(distill.distillation_loss(logits, teacher, labels),
                          distill.distillation_loss(logits[[0, 2]], teacher[[0, 2]], labels[[0, 2]]))


def test_a_distilled_student_trains_and_its_teacher_is_untouched():
    teacher = load_pretrained("course-lm")
    before = teacher.blocks[0].mlp.up_proj.weight.clone()
    stream = torch.randint(4, 1024, (5000,), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=3, lr=1e-3, warmup_steps=1, eval_every=3, seed=0, progress=False)
    student, history = distill.distill(teacher, RECIPES["course-lm-small"].model, stream, config, batch_size=2, seq_len=16,
                                       eval_batches=[stream[:17].reshape(1, -1)])
    assert len(history.train_loss) == 3 and history.eval_loss and student.num_parameters() == 403_104
    assert torch.equal(teacher.blocks[0].mlp.up_proj.weight, before)


@pytest.mark.parametrize("kwargs,expected", [
    ({"teacher_logits": torch.randn(3, 6)}, "one shape"),
    ({"labels": torch.zeros(4)}, "labels should be integer ids of shape"),
    ({"temperature": 0.0}, "temperature > 0"),
])
def test_bad_input_names_what_was_expected(kwargs, expected):
    call = {"student_logits": torch.randn(4, 5), "teacher_logits": torch.randn(4, 5),
            "labels": torch.zeros(4, dtype=torch.long), **kwargs}
    with pytest.raises(ValueError, match=expected):
        distill.distillation_loss(**call)
