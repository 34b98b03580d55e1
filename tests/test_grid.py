"""The case grid (grid.py): points, skips, nets and cases; one source for building and resuming."""
import numpy as np
import pytest

from sparsenet import grid
from sparsenet.model import forward, he_init, layer_sizes
from sparsenet.timing import case_id


class Built:
    """A stand-in engine: the reference forward pass, remembering how it was built."""

    def __init__(self, name, params, threads=None):
        self.name, self.params, self.threads = name, params, threads

    def __call__(self, X):
        return forward(self.params, X)

    def copy(self):
        return Built(self.name, self.params, self.threads)


@pytest.fixture
def small():
    return he_init((16, 8, 4), seed=0)


def made(log):
    def make_engine(name, params, threads=None):
        log.append(name)
        return Built(name, params, threads)
    return make_engine


def test_point_key_and_id():
    p = grid.Point("csr", 0.9000000001, 256, 2)
    assert p.key() == ("csr", 0.9, 256, 2, None) and p.id == "csr-s90-b256-t2"
    assert grid.Point("csr", 0.9, 256, 2, 4096).id == "csr-s90-b256-t2-w4096"
    rec = {"engine": "csr", "sparsity": 0.9, "batch": 256, "threads": 2, "width": None, "median_s": 1.0}
    assert grid.record_key(rec) == p.key()
    assert grid.record_key({k: v for k, v in rec.items() if k != "width"}) == p.key()   # older records


def test_engines_at():
    engines = ("dense", "csr", "shrunk")
    assert grid.engines_at(engines, 0.0, (0.0, 0.5)) == engines
    assert grid.engines_at(engines, 0.5, (0.0, 0.5)) == ("csr", "shrunk")
    assert grid.engines_at(engines, 0.5, (0.0, 0.5), dense_every_k=True) == engines
    assert grid.engines_at(engines, 0.5, (0.5, 0.9)) == engines          # the smallest k, not 0


def test_points_and_units(small):
    g = grid.MLPGrid(small, ("dense", "csr"), (0.0, 0.5), (1, 4), (1, 2))
    assert g.units() == [(None, 0.0), (None, 0.5)]
    assert [p.id for p in g.points((None, 0.0))][:3] == ["dense-s0-b1-t1", "dense-s0-b4-t1", "dense-s0-b1-t2"]
    assert len(g.points((None, 0.0))) == 8 and len(g.points((None, 0.5))) == 4    # dense at k = 0 only
    assert len(g.all_points()) == 12
    s = grid.ScalingGrid(("dense", "csr"), (0.0, 0.9), (1,), (1,), widths=(64, 128))
    assert s.units() == [(64, 0.0), (64, 0.9), (128, 0.0), (128, 0.9)]
    assert {p.width for p in s.points((128, 0.9))} == {128} and s.method("dense") == "weight"


def test_scaling_skip():
    assert grid.scaling_skip("dense", 0.0, 4096, 16384) is not None      # ~2 TFLOP per call
    assert "GB" in grid.scaling_skip("dense", 0.0, 4096, 32768)
    assert grid.scaling_skip("csr", 0.99, 1, 1024) is None
    assert grid.scaling_skip("dense", 0.5, 16, 1024) is None


def test_mlp_skip():
    g = grid.MLPGrid(he_init(seed=0), ("dense", "csr", "csr-scipy"), (0.0, 0.9), (1, 4096), (1, 2), max_call_s=2.0)
    reason = g.skip(grid.Point("csr-scipy", 0.0, 4096, 1))
    assert reason and "s per call" in reason
    assert g.skip(grid.Point("dense", 0.0, 4096, 1)) is None and g.skip(grid.Point("csr", 0.9, 1, 2)) is None


def test_scaling_params_exact_count():
    (layer,) = grid.scaling_params(64, 0.9)
    assert layer.weight.shape == (64, 64) and layer.bias is None
    assert np.count_nonzero(layer.weight) == 64 * 64 - round(0.9 * 64 * 64)
    kept = np.abs(layer.weight[layer.weight != 0]).min()
    base = grid._base_layer(64, 0)
    assert kept >= np.abs(base[layer.weight == 0]).max()     # the smallest |w| went
    assert np.count_nonzero(grid.scaling_params(64, 0.0)[0].weight) == 64 * 64


def test_engines_shared_when_large(small, monkeypatch):
    built = []
    g = grid.MLPGrid(small, ("dense", "shrunk"), (0.5,), (1, 4), (1,), make_engine=made(built))
    cases = g.cases((None, 0.5), g.points((None, 0.5)))
    assert [case_id(c) for c in cases] == ["dense-s50-b1-t1", "dense-s50-b4-t1",
                                           "shrunk-s50-b1-t1", "shrunk-s50-b4-t1"]
    # built once per (engine, threads), copied for the other batch: its own scratch, the weights shared
    assert len(built) == 2 and cases[0].engine is not cases[1].engine
    assert cases[1].engine.params is cases[0].engine.params
    assert cases[2].method == "neuron" and cases[0].method == "weight"
    assert cases[0].X is not cases[1].X and cases[0].X is cases[2].X     # inputs shared by batch
    monkeypatch.setattr(grid, "SHARE_BYTES", 0)
    cases = g.cases((None, 0.5), g.points((None, 0.5))[:2])
    assert cases[0].engine is cases[1].engine


def test_cases_of_some_points_only(small):
    """A resumed unit builds only the points still to time, in the grid's order."""
    built = []
    g = grid.MLPGrid(small, ("dense", "csr"), (0.0,), (1, 4), (1,), make_engine=made(built))
    points = g.points((None, 0.0))
    cases = g.cases((None, 0.0), [points[1], points[3]])
    assert [case_id(c) for c in cases] == ["dense-s0-b4-t1", "csr-s0-b4-t1"] and built == ["dense", "csr"]
    np.testing.assert_allclose(cases[1].engine(cases[1].X), forward(cases[1].params, cases[1].X))


def test_scaling_cases_skip_and_build():
    built = []
    g = grid.ScalingGrid(("dense", "csr"), (0.5,), (1, 4), (1,), widths=(64,), make_engine=made(built))
    g.skip = lambda p: "too big" if p.engine == "dense" and p.batch == 4 else None
    cases = grid.make_cases(g)
    assert [(c.name, c.batch) for c in cases] == [("dense", 1), ("csr", 1), ("csr", 4)]
    assert layer_sizes(cases[0].params) == (64, 64) and cases[0].width == 64 and cases[0].method == "weight"


def test_pruned_by_method(small):
    w = grid.pruned(small, "weight", 0.5)
    n = grid.pruned(small, "neuron", 0.5)
    assert np.count_nonzero(w[0].weight) == 64 and np.count_nonzero(n[0].weight.any(axis=1)) == 4
    assert grid.pruned(small, "none", 0.5)[0].weight is small[0].weight


def test_scipy_bsr_slow_cases_are_skipped_by_its_measured_rate():
    """scipy's BSR runs ~1 GFLOP/s at batch 4096 (0.6-1.1 on the Xeon): its 2.5-8.5 s calls on the
    default net at k <= 90 % are predicted as such and skipped, ours are timed."""
    n_weights = 784 * 1000 + 1000 * 1000 + 1000 * 500 + 500 * 200 + 200 * 10
    reason = grid.skip_reason("bsr-scipy", n_weights, 0.6, 4096, 3000)
    assert reason is not None and reason.startswith("predicted ") and reason.endswith("s per call > 2 s")
    assert float(reason.split()[1]) == pytest.approx(2 * 4096 * 0.4 * n_weights / 1e9, rel=0.01)
    assert grid.skip_reason("bsr", n_weights, 0.6, 4096, 3000) is None
    assert grid.skip_reason("bsr-scipy", n_weights, 0.6, 256, 3000) is None
    assert grid.skip_reason("bsr-scipy", n_weights, 0.95, 4096, 3000) is None


def test_library_baselines_have_their_own_limit():
    """scipy's engines are timed where a call is predicted to take at most max_baseline_call_s; our
    engines keep max_call_s; the limit never raises max_call_s."""
    n_weights = 784 * 1000 + 1000 * 1000 + 1000 * 500 + 500 * 200 + 200 * 10
    nnz = 0.1 * n_weights                                          # k = 90 %
    reason = grid.skip_reason("bsr-scipy", n_weights, 0.9, 256, 3000, max_baseline_call_s=0.02)
    assert reason == f"predicted {2 * 256 * nnz / 1e9:.2g} s per call > the library baseline limit 0.02 s"
    assert grid.skip_reason("bsr-scipy", n_weights, 0.9, 256, 3000) is None          # no limit given
    assert grid.skip_reason("bsr-scipy", n_weights, 0.9, 256, 3000, max_baseline_call_s=0.2) is None
    assert grid.skip_reason("bsr-scipy", n_weights, 0.9, 16, 3000, max_baseline_call_s=0.02) is None
    assert "library" in grid.skip_reason("csr-scipy", n_weights, 0.5, 256, 3000, max_baseline_call_s=0.02)
    for ours in ("bsr", "csr", "nm", "dense"):
        assert grid.skip_reason(ours, n_weights, 0.5, 256, 3000, max_baseline_call_s=1e-9) is None
    assert grid.skip_reason("csr-scipy", n_weights, 0.0, 4096, 3000, max_call_s=2.0,
                            max_baseline_call_s=10.0).endswith("> the library baseline limit 2 s")
    g = grid.MLPGrid(he_init(seed=0), ("csr", "csr-scipy"), (0.9,), (1, 256), (1,), max_baseline_call_s=0.02)
    assert g.skip(grid.Point("csr-scipy", 0.9, 256, 1)) and g.skip(grid.Point("csr-scipy", 0.9, 1, 1)) is None
    assert g.skip(grid.Point("csr", 0.9, 256, 1)) is None
    s = grid.ScalingGrid(("dense", "csr-scipy"), (0.9,), (1, 256), (1,), widths=(4096,), max_baseline_call_s=0.02)
    assert s.skip(grid.Point("csr-scipy", 0.9, 256, 1, 4096)) and s.skip(grid.Point("dense", 0.9, 256, 1, 4096)) is None
