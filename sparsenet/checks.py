"""What counts as an integer and as a real number where a setting is checked: one rule for the
engines, the configurations, the checkpoints and the command line.

An integer is Python's or numpy's, never a bool (True is int 1, but not a count anyone meant) and
never 2.0 or "2". A real number is an int or a float (numpy's too), finite, never a bool. A sequence
of settings is any iterable but a string (whose characters nobody meant as items).
"""
from __future__ import annotations

import math
import numbers


def is_integer(value, minimum=None, maximum=None) -> bool:
    """True for an integer (not a bool) in [minimum, maximum] (None: no bound)."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (minimum is None or value >= minimum) and (maximum is None or value <= maximum))


def is_real(value, low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> bool:
    """True for a finite real number (not a bool) between low and high (None: no bound), each end
    closed unless low_open / high_open."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or not (value >= high if high_open else value > high)


def is_sequence(value) -> bool:
    """True for an iterable that is not a str or bytes (a list, tuple, range, numpy array, ...)."""
    return not isinstance(value, (str, bytes)) and hasattr(value, "__iter__")
