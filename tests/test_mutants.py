"""Every graded test cell rejects plausible wrong answers and accepts the solution.

A mutant is a function bound to the exercise's name (the answer cell's grade_id), or, for
an exercise that defines several functions, a dict of them.

The test cells are read from the solution notebooks (visible checks and hidden tests
together, exactly what nbgrader runs) and executed with the exercise's function bound
to each mutant from tests/mutants/.
"""

from __future__ import annotations

import pytest

from tests.mutants import attention as attention_mutants
from tests.mutants import basics as basics_mutants
from tests.mutants import compression as compression_mutants
from tests.mutants import distributed as distributed_mutants
from tests.mutants import finetune as finetune_mutants
from tests.mutants import flash as flash_mutants
from tests.mutants import formats as formats_mutants
from tests.mutants import kvcache as kvcache_mutants
from tests.mutants import memory as memory_mutants
from tests.mutants import models as models_mutants
from tests.mutants import rag as rag_mutants
from tests.mutants import rlhf as rlhf_mutants
from tests import answers

MUTANT_MODULES = [basics_mutants, attention_mutants, models_mutants, memory_mutants, formats_mutants, flash_mutants, kvcache_mutants,
                 distributed_mutants, finetune_mutants, rlhf_mutants, compression_mutants, rag_mutants]
MUTANTS = {grade_id: m for module in MUTANT_MODULES for grade_id, m in module.MUTANTS.items()}


CELLS = list(answers.graded_cells())


def test_every_graded_cell_has_at_least_three_mutants():
    assert CELLS, "no graded test cells found in solutions/"
    for lesson, grade_id, name, answer, _ in CELLS:
        assert answer is not None, f"{lesson}: test cell {grade_id} has no answer cell with grade_id {name!r}"
        assert len(MUTANTS.get(grade_id, {})) >= 3, f"{lesson}: {grade_id} needs at least three mutants in tests/mutants/"


def test_no_mutants_for_cells_that_do_not_exist():
    assert set(MUTANTS) <= {grade_id for _, grade_id, *_ in CELLS}


@pytest.mark.parametrize("lesson,grade_id,name,answer,test", CELLS, ids=[c[1] for c in CELLS])
def test_solution_passes_its_test_cell(lesson, grade_id, name, answer, test):
    ns = answers.namespace()
    exec(compile(answer, f"{lesson}:{name}", "exec"), ns)
    exec(compile(test, f"{lesson}:{grade_id}", "exec"), ns)


# The capstones of lessons 08 to 11 train, quantize or embed on each run; their mutants fail by construction (a
# malformed adapter, too many levels, rankings of the wrong form) or far from the threshold (an untrained adapter,
# round-to-nearest, BM25 alone), whatever is drawn: one run each.
ONE_DRAW = {"test_train_reverse_adapter", "test_align_policy", "test_quantize_layer", "test_retrieve"}

MUTANT_CASES = [
    (grade_id, name, mutant_name, mutant, test)
    for _, grade_id, name, _, test in CELLS
    for mutant_name, mutant in MUTANTS.get(grade_id, {}).items()
]


@pytest.mark.parametrize("grade_id,name,mutant_name,mutant,test", MUTANT_CASES, ids=[f"{c[0]}-{c[2]}" for c in MUTANT_CASES])
def test_mutant_fails_its_test_cell(grade_id, name, mutant_name, mutant, test):
    """The checks draw fresh random inputs; a mutant must fail whatever they draw (10 draws)."""
    ns = answers.namespace()
    if isinstance(mutant, dict):  # an exercise that defines several functions
        ns.update(mutant)
    else:
        ns[name] = mutant
    for _ in range(1 if grade_id in ONE_DRAW else 10):
        with pytest.raises(Exception):
            exec(compile(test, grade_id, "exec"), ns)
