"""machine.json contents and the peak measurements."""
import json

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
    json.dumps(info)                                   # JSON-ready as is


def test_machine_info_with_peaks():
    peaks = {"sgemm_gflops": {"1": 1.0}, "bandwidth_gbs": 2.0}
    assert machine.machine_info(peaks)["peaks"] == peaks


def test_measure_peaks_quick():
    peaks = machine.measure_peaks(threads=(1, 2), quick=True)
    assert set(peaks) == {"sgemm_gflops", "bandwidth_gbs"}
    assert set(peaks["sgemm_gflops"]) == {"1", "2"}
    assert all(v > 0 for v in peaks["sgemm_gflops"].values())
    assert peaks["bandwidth_gbs"] > 0
