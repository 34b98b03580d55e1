"""machine.json contents and the peak measurements."""
import json

import numpy as np
import pytest

from sparsenet import machine


def test_machine_info_keys():
    info = machine.machine_info()
    for key in ("cpu", "n_cores", "platform", "python", "versions", "blas", "env"):
        assert key in info
    assert info["n_cores"] >= 1 and isinstance(info["cpu"], str) and info["cpu"]
    for pkg in ("numpy", "scipy", "numba", "threadpoolctl", "matplotlib", "sparsenet"):
        assert pkg in info["versions"]
    assert set(info["env"]) >= {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    assert "peaks" not in info
    from sparsenet.plan import cpu
    assert info["isa"] == cpu().isa in ("avx512", "avx2", "neon", "generic")
    assert info["numba_cpu"] == cpu().name
    from sparsenet.cpu import l1d_bytes, l2_bytes
    assert (info["l1d_bytes"], info["l2_bytes"]) == (l1d_bytes(), l2_bytes())   # what the plans' rules read
    json.dumps(info)                                   # JSON-ready as is


def test_machine_info_with_peaks():
    peaks = {"sgemm_gflops": {"1": 1.0}, "bandwidth_gbs": 2.0}
    assert machine.machine_info(peaks)["peaks"] == peaks


def test_the_sgemm_peak_engine_multiplies_and_counts_its_flops():
    eng = machine.SgemmPeak(8)
    X = np.arange(64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_allclose(eng(X), eng.A @ X, rtol=1e-6)
    assert eng.flops(8) == 2 * 8 ** 3 and eng.layer_sizes == (8, 8) and eng.uses_blas and not eng.uses_numba
    with pytest.raises(ValueError, match="n >= 1"):
        machine.SgemmPeak(0)


def test_measure_peaks_quick():
    peaks = machine.measure_peaks(threads=(1, 2), quick=True)
    assert set(peaks) == {"sgemm_gflops", "bandwidth_gbs"}
    assert set(peaks["sgemm_gflops"]) == {"1", "2"}
    assert all(v > 0 for v in peaks["sgemm_gflops"].values())
    assert peaks["bandwidth_gbs"] > 0


@pytest.mark.parametrize("cpu, tag", [
    ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "node7-xeon-platinum-8375c-avx2-2c"),
    ("AMD EPYC 7B13 64-Core Processor", "node7-epyc-7b13-avx2-2c"),
    ("Apple M1", "node7-apple-m1-avx2-2c"),
    ("", "node7-unknown-avx2-2c"),
])
def test_machine_tag_is_short_and_readable(cpu, tag):
    assert machine.machine_tag({"hostname": "node7.example.org", "cpu": cpu, "isa": "avx2", "n_cores": 2}) == tag


def test_fingerprint_names_this_machine():
    from sparsenet.plan import cpu
    fp = machine.fingerprint()
    assert set(fp) == set(machine.FINGERPRINT_KEYS) | {"tag"}
    assert fp["isa"] == cpu().isa and fp["n_cores"] == machine.n_cores() and fp["tag"] == machine.machine_tag(fp)
    assert machine.machine_info()["fingerprint"] == fp
    assert machine.same_machine(fp, {**fp, "tag": "renamed"})
    assert not machine.same_machine(fp, {**fp, "hostname": "elsewhere"})


def test_peaks_are_the_best_of_their_repeats(monkeypatch):
    """A peak is the fastest repeat (a median took a slow moment of a shared VM); the warm call is not timed."""
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])     # repeats of 3, 1 and 2 s
    calls = []
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(ticks))
    assert machine._best_time(lambda: calls.append(1), 3) == 1.0
    assert len(calls) == 4
