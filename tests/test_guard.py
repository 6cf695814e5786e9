"""The watch over the learner's function (course_lib.checks.guard) rejects every cheat and no honest answer."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import course_lib.checks
from course_lib.checks import guard
from course_lib.checks.guard import Rules, watch, watched
from tests import answers
from tests.cheats import CHEATS

CELLS = {grade_id: (name, test) for _, grade_id, name, _, test in answers.graded_cells()}
CHEAT_CASES = [(grade_id, label, cheat) for grade_id, cheats in CHEATS.items() for label, cheat in cheats.items()]


def run_test_cell(grade_id: str, answer) -> None:
    """Execute the solution notebook's test cell (visible and hidden checks) with ``answer`` bound."""
    name, test = CELLS[grade_id]
    ns = answers.namespace()
    ns.update(answer) if isinstance(answer, dict) else ns.update({name: answer})
    exec(compile(test, grade_id, "exec"), ns)


@pytest.fixture
def no_watch(monkeypatch):
    """The checks without the watch: ``watched`` gives the function back as it is."""
    modules = [importlib.import_module(f"course_lib.checks.{m.name}") for m in pkgutil.iter_modules(course_lib.checks.__path__)]
    for module in modules:  # all imported first: a module imported later would keep the stand-in for good
        if getattr(module, "watched", None) is watched:
            monkeypatch.setattr(module, "watched", lambda fn, rules: fn)


def test_every_exercise_has_cheats():
    assert set(CHEATS) <= set(CELLS)
    # test_model_state_bytes: pure arithmetic, nothing to wrap; test_train_reverse_adapter: the capstone may use the
    # whole library (it trains with course_lib.finetune and course_lib.lora): it forbids nothing; so does
    # test_align_policy (it trains with course_lib.rlhf) and test_retrieve (it combines course_lib.retrieval's tools)
    missing = set(CELLS) - set(CHEATS) - {"test_model_state_bytes", "test_train_reverse_adapter", "test_align_policy",
                                          "test_retrieve"}
    assert not missing, f"no cheats for {sorted(missing)}"


@pytest.mark.parametrize("grade_id,label,cheat", CHEAT_CASES, ids=[f"{g}-{lbl}" for g, lbl, _ in CHEAT_CASES])
def test_cheat_is_right_in_value(grade_id, label, cheat, no_watch):
    """Without the watch the cheat passes its test cell: only the watch stands between it and the points."""
    run_test_cell(grade_id, cheat)


@pytest.mark.parametrize("grade_id,label,cheat", CHEAT_CASES, ids=[f"{g}-{lbl}" for g, lbl, _ in CHEAT_CASES])
def test_cheat_fails_its_test_cell_and_the_message_says_why(grade_id, label, cheat):
    with pytest.raises(AssertionError, match="forbids|write your own") as err:
        run_test_cell(grade_id, cheat)
    assert "\n  - " in str(err.value) or "rather than passing" in str(err.value), str(err.value)


SOFTMAX = Rules("softmax", references=("course_lib.attention:softmax",), functions=("torch.softmax",), ops=("aten._softmax",))


def honest_softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def test_honest_code_that_uses_modes_and_context_managers_passes():
    def answer(x, dim=-1):
        with torch.device("cpu"), torch.no_grad():
            y = torch.zeros(1) + honest_softmax(x, dim)
        return y

    x = torch.randn(3, 4)
    torch.testing.assert_close(watched(answer, SOFTMAX)(x), torch.softmax(x, -1))


def test_the_watch_names_each_route_once_and_in_order():
    with watch(SOFTMAX) as seen:
        torch.softmax(torch.randn(3), 0)
        torch.softmax(torch.randn(3), 0)
    assert seen.lines == ["torch.softmax", "the operator aten._softmax"]


def test_the_watch_is_off_outside_the_call():
    fn = watched(honest_softmax, SOFTMAX)
    fn(torch.randn(2, 2))
    torch.softmax(torch.randn(3), 0)  # the check's own code may use anything
    assert torch.overrides._get_current_function_mode_stack() == []


def test_a_forbidden_dtype_is_seen_however_it_is_made():
    rules = Rules("round_to_bf16", dtypes=("bfloat16",))
    for make in (lambda x: x.to(torch.bfloat16), lambda x: x.bfloat16(), lambda x: torch.zeros(2, dtype=torch.bfloat16),
                 lambda x: x.view(torch.int16).view(torch.bfloat16)):
        with watch(rules) as seen:
            make(torch.randn(4))
        assert seen and "bfloat16" in seen.lines[0]


def test_objects_a_check_hands_over_may_be_called():
    from course_lib.checks import models as model_checks

    model = model_checks._tiny_model(0)
    counting = model_checks._CountingModel(model)

    def answer(m, ids):
        return m(ids)

    logits = watched(answer, model_checks.GREEDY_GENERATE)(counting, torch.zeros(1, 3, dtype=torch.long))
    assert logits.shape == (1, 3, 37) and counting.calls == [(3, False)]


def test_rules_travel_as_plain_data():
    from course_lib.checks.attention import SOFTMAX as rules

    assert Rules.from_dict(rules.to_dict()) == rules
    assert guard._index(Rules.from_dict(rules.to_dict())).c_names
