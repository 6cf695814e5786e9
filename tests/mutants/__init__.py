"""Plausible wrong answers to the graded exercises, one module per lesson topic.

``MUTANTS`` in each module maps a test cell's ``grade_id`` to ``{mutant name: function}``.
tests/test_mutants.py runs every test cell of the solution notebooks against each
mutant (it must fail) and against the solution (it must pass).
"""
