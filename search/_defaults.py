"""Defaults of ``fqopt search`` that the CLI shows in its help.

This module imports nothing: ``fqopt search --help`` reads these without loading torch or
Optuna (``fqopt.search``'s other names load on first use, see its ``__init__``).
"""

#: complete trials a study holds when the user gives no ``--trials``
DEFAULT_TRIALS = 100
#: the budget of the recommendation when the user gives none (average bits)
DEFAULT_BUDGET = 4.0
