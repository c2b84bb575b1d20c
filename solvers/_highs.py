"""HiGHS without its banner. HiGHS prints a copyright banner to the C-level stdout when the first
instance of a process is built, before any option can switch it off; that instance is built with
file descriptor 1 on the null device, so that stdout stays data (``--format json``).
highspy is imported only when a back-end that needs it runs."""

from __future__ import annotations

import os
import sys

_BANNER_SILENCED = False


def silence_banner() -> None:
    """Build (and drop) the process's first HiGHS instance with stdout on the null device."""
    global _BANNER_SILENCED
    if _BANNER_SILENCED:
        return
    import highspy  # deferred: a solver library loads only when its back-end runs

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    _BANNER_SILENCED = True


def new_highs(**options):
    """A silent ``highspy.Highs`` with ``options`` set (e.g. tolerances)."""
    import highspy  # deferred: a solver library loads only when its back-end runs

    silence_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    for name, value in options.items():
        h.setOptionValue(name, value)
    return h
