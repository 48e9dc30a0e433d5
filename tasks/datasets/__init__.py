"""Datasets and tasks: one module per task (arith.py, gsm8k.py, math.py), named once in registry.py.

A task module holds what is particular to its task: how a dataset row gives the reference answer
(`reference`), the grader (`grade`) and metrics only it can measure (`extra_metrics`). loader.py reads
any source into records, graders.py grades by task name; the pure grading math is in tasks/algos
(grading.py, math_answer.py, answer_text.py). Empty on purpose: configs/schema.py imports registry.py,
and importing this package must not pull in the loader, which imports configs.
"""
