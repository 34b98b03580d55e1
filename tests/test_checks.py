"""checks.py: one rule for integers and real numbers in settings."""
import numpy as np
import pytest

from sparsenet.checks import is_integer, is_real


@pytest.mark.parametrize("value", [0, 3, np.int64(3), np.int8(3), np.uint16(3)])
def test_integers(value):
    assert is_integer(value) and is_integer(value, 0, 3)
    assert not is_integer(value, 4) and is_integer(value, maximum=3) and not is_integer(value, maximum=-1)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, np.float32(2), "2", None, [2], float("nan")])
def test_not_integers(value):
    assert not is_integer(value)


def test_reals_and_their_bounds():
    for v in (0, 0.5, np.float32(0.5), np.int64(1), 1.0):
        assert is_real(v) and is_real(v, 0, 1)
    assert not is_real(0, 0, 1, low_open=True) and is_real(0, 0, 1)
    assert not is_real(1.0, 0, 1, high_open=True) and is_real(0.999, 0, 1, high_open=True)
    assert not is_real(-0.1, 0) and not is_real(1.1, None, 1) and is_real(-5.0, None, 1)
    for bad in (True, np.bool_(False), float("nan"), float("inf"), -float("inf"), "0.5", None, 1j):
        assert not is_real(bad), bad
