"""Thread limits (threads.py): the checks, and that limit() sets and restores BLAS and Numba."""
import numba
import pytest

from sparsenet import threads

N = numba.config.NUMBA_NUM_THREADS


class FakeBlas:
    """A threadpoolctl lib controller that records set_num_threads calls."""

    def __init__(self, threads, info=None):
        self.threads, self.calls, self._info = threads, [], info or {}

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.calls.append(n)
        self.threads = n

    def info(self):
        return self._info


@pytest.fixture
def fake_blas(monkeypatch):
    """Two fake BLAS libraries, at 2 and 3 threads, in place of the scanned ones."""
    libs = [FakeBlas(2), FakeBlas(3)]
    monkeypatch.setattr(threads, "_blas", libs)
    return libs


@pytest.fixture
def numba_calls(monkeypatch):
    """Record numba.set_num_threads calls (and still make them)."""
    calls = []
    real = numba.set_num_threads

    def spy(n):
        calls.append(n)
        real(n)

    monkeypatch.setattr(numba, "set_num_threads", spy)
    return calls


def test_max_threads():
    assert threads.max_threads() == N and type(threads.max_threads()) is int


def test_blas_controllers_scanned_once(monkeypatch):
    monkeypatch.setattr(threads, "_blas", None)
    first = threads.blas_controllers()
    assert isinstance(first, list) and threads._blas is first
    assert threads.blas_controllers() is first
    assert first and all(lib.user_api == "blas" for lib in first)     # numpy's BLAS, nothing else
    assert {lib.internal_api for lib in first} <= {"openblas", "mkl", "blis", "accelerate", "flexiblas"}


def test_blas_library(monkeypatch):
    monkeypatch.setattr(threads, "_blas", [FakeBlas(1, {"internal_api": "openblas", "version": "0.3.27",
                                                        "architecture": "SkylakeX"}), FakeBlas(1)])
    assert threads.blas_library() == {"blas": "openblas", "blas_version": "0.3.27",
                                      "blas_architecture": "SkylakeX"}
    monkeypatch.setattr(threads, "_blas", [FakeBlas(1, {"internal_api": "mkl"})])
    assert threads.blas_library() == {"blas": "mkl", "blas_version": None, "blas_architecture": None}
    monkeypatch.setattr(threads, "_blas", [])
    assert threads.blas_library() == {"blas": None, "blas_version": None, "blas_architecture": None}


def test_blas_library_of_this_process(monkeypatch):
    monkeypatch.setattr(threads, "_blas", None)
    info = threads.blas_library()
    assert set(info) == {"blas", "blas_version", "blas_architecture"}
    if threads.blas_controllers():
        assert info["blas"] == threads.blas_controllers()[0].info()["internal_api"]


def test_check_threads_accepts_the_range():
    assert threads.check_threads(1) == 1
    assert threads.check_threads(N) == N
    import numpy as np
    assert type(threads.check_threads(np.int64(1))) is int and threads.check_threads(np.int64(1)) == 1


@pytest.mark.parametrize("bad", [0, -1, N + 1])
def test_check_threads_range_message(bad):
    msg = rf"^workers must be in 1\.\.{N} \(this machine's threads\), got {bad!r}$"
    with pytest.raises(ValueError, match=msg):
        threads.check_threads(bad, "workers")
    with pytest.raises(ValueError, match=rf"^threads must be in 1\.\.{N} "):
        threads.check_threads(bad)


@pytest.mark.parametrize("bad", [None, "two", [1], True, False, 1.5])
def test_check_threads_not_an_integer(bad):
    msg = rf"^workers must be an integer in 1\.\.{N}, got {bad!r}$".replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ValueError, match=msg) as e:
        threads.check_threads(bad, "workers")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(ValueError, match=rf"^threads must be an integer in 1\.\.{N}, got"):
        threads.check_threads(bad)


@pytest.mark.parametrize("bad", ["1", 1.0, 2.0])
def test_check_threads_refuses_what_only_reads_as_an_integer(bad):
    """2.0 or "1" is not a thread count: refused as not an integer (2.0 was taken as 2, "1" said out of range)."""
    with pytest.raises(ValueError, match=rf"^threads must be an integer in 1\.\.{N}, got {bad!r}$"):
        threads.check_threads(bad)


def test_limit_sets_and_restores_both(fake_blas, numba_calls):
    before = numba.get_num_threads()
    with threads.limit(1):
        assert numba.get_num_threads() == 1
        assert [lib.threads for lib in fake_blas] == [1, 1]
    assert numba.get_num_threads() == before
    assert [lib.threads for lib in fake_blas] == [2, 3]
    assert [lib.calls for lib in fake_blas] == [[1, 2], [1, 3]]
    assert numba_calls == ([] if before == 1 else [1, before])


def test_limit_leaves_equal_counts_alone(fake_blas, numba_calls):
    """A library already at n is not set (each set costs microseconds)."""
    with threads.limit(numba.get_num_threads()):
        pass
    assert numba_calls == []
    fake_blas[0].threads, fake_blas[1].calls = 1, []
    with threads.limit(1):
        assert [lib.threads for lib in fake_blas] == [1, 1]
    assert fake_blas[0].calls == [] and fake_blas[1].calls == [1, 3]


@pytest.mark.skipif(N < 2, reason="needs 2 threads")
def test_limit_numba_two_threads(numba_calls):
    numba.set_num_threads(2)
    numba_calls.clear()
    with threads.limit(1, blas=False):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == 2 and numba_calls == [1, 2]
    numba_calls.clear()
    with threads.limit(2, blas=False):
        assert numba.get_num_threads() == 2
    assert numba_calls == []


def test_limit_caps_at_max_threads(fake_blas):
    with threads.limit(N + 5):
        assert numba.get_num_threads() == N
        assert [lib.threads for lib in fake_blas] == [N, N]
    assert [lib.threads for lib in fake_blas] == [2, 3]
    with threads.limit("1"):                       # int(n): any integer-like value
        assert [lib.threads for lib in fake_blas] == [1, 1]


def test_limit_blas_only(fake_blas, numba_calls):
    with threads.limit(1, numba_threads=False):
        assert [lib.threads for lib in fake_blas] == [1, 1]
    assert numba_calls == [] and [lib.threads for lib in fake_blas] == [2, 3]


def test_limit_numba_only(fake_blas, numba_calls):
    before = numba.get_num_threads()
    with threads.limit(1, blas=False):
        assert numba.get_num_threads() == 1
    assert [lib.calls for lib in fake_blas] == [[], []]
    assert numba.get_num_threads() == before


def test_limit_restores_after_an_exception(fake_blas):
    before = numba.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with threads.limit(1):
            raise RuntimeError("boom")
    assert numba.get_num_threads() == before and [lib.threads for lib in fake_blas] == [2, 3]


def test_limit_on_the_real_blas(monkeypatch):
    monkeypatch.setattr(threads, "_blas", None)
    libs = threads.blas_controllers()
    if not libs:
        pytest.skip("no BLAS found by threadpoolctl")
    before = [lib.get_num_threads() for lib in libs]
    with threads.limit(1):
        assert [lib.get_num_threads() for lib in libs] == [1] * len(libs)
    assert [lib.get_num_threads() for lib in libs] == before
