"""The machine a study ran on (machine.json) and its measured peaks, the yardstick for timings.

Peaks, measured with NumPy so they say what this Python stack can reach:
- ``sgemm_gflops[str(t)]``: float32 ``A @ B`` of two n x n matrices (n = 2048; 1024 when quick)
  under a BLAS limit of t threads (threads.limit); 2 n^3 flops per product; best of repeats;
- ``bandwidth_gbs``: ``np.copyto(dst, src)`` of a 256 MB float32 array (64 MB when quick), one
  thread; bytes moved = 2 x nbytes (read src + write dst; write-allocate traffic not counted);
  best of repeats.
These are a few seconds of the machine stage, minutes away from the timings. The same product is
also timed as a case of the timing stage (`SgemmPeak`, timings.json "peaks"), in the rounds of the
engines it stands beside: a fraction of peak is then a ratio of two medians of one run.
"""
from __future__ import annotations

import importlib
import os
import platform
import re
import sys
import time

import numpy as np

PACKAGES = ("numpy", "scipy", "numba", "threadpoolctl", "matplotlib", "tqdm", "sparsenet")
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "NUMBA_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list:
    """The SIMD-related CPU flags (avx2, avx512f, fma, ...) from /proc/cpuinfo, when readable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def n_cores() -> int:
    """CPUs this process may run on (the affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def versions() -> dict:
    """Installed versions of the packages that shape a timing (None when missing)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except ImportError:
            out[name] = None
    return out


FINGERPRINT_KEYS = ("hostname", "cpu", "isa", "n_cores")   # what tells two timing machines apart


def fingerprint() -> dict:
    """Which machine times: host name, CPU model, ISA level of the kernels the plans choose
    (plan.CPU.isa, so an emulated AVX2 run is not the native one) and the cores this process may use,
    with `tag`, a short readable name of the four. Records of two runs mix only when these agree."""
    from sparsenet.plan import cpu
    fp = {"hostname": platform.node() or "unknown", "cpu": cpu_model(), "isa": cpu().isa, "n_cores": n_cores()}
    return {**fp, "tag": machine_tag(fp)}


def same_machine(a: dict, b: dict) -> bool:
    """Two fingerprints of one machine (equal FINGERPRINT_KEYS)."""
    return all(a.get(k) == b.get(k) for k in FINGERPRINT_KEYS)


# words of a CPU model name that tell nothing apart: vendors, trademarks, "CPU @ 2.90GHz", "64-Core"
_CPU_NOISE = re.compile(r"\((r|tm)\)|\b(intel|amd|cpu|processor|with|radeon graphics)\b|@.*$|\b\d+-core\b",
                        re.IGNORECASE)


def machine_tag(fp: dict) -> str:
    """A fingerprint as a short folder-safe name, host-cpu-isa-<cores>c: ``node7-xeon-platinum-8375c-avx512-2c``."""
    host = str(fp.get("hostname") or "unknown").split(".")[0]
    cpu = _CPU_NOISE.sub(" ", str(fp.get("cpu") or "unknown"))
    words = [host, *cpu.split()[:4], str(fp.get("isa") or "unknown"), f"{fp.get('n_cores', 0)}c"]
    tag = re.sub(r"[^a-z0-9.]+", "-", "-".join(words).lower()).strip("-.")
    return tag[:64].rstrip("-.") or "machine"


def machine_info(peaks=None) -> dict:
    """machine.json (see results.py); `peaks` (a measure_peaks() dict) is included when given."""
    import threadpoolctl
    import numba

    from sparsenet.plan import cpu, l1d_bytes, l2_bytes
    target = cpu()
    info = {
        "cpu": cpu_model(),
        "n_cores": n_cores(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions(),
        "blas": threadpoolctl.threadpool_info(),
        "env": {k: os.environ.get(k) for k in ENV_VARS},
        "cpu_flags": cpu_flags(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "isa": target.isa,                   # ISA level of the kernels the plans choose (plan.CPU.isa)
        "numba_cpu": target.name,            # the CPU Numba compiles for (NUMBA_CPU_NAME, else the host)
        "l1d_bytes": l1d_bytes(),            # the host's L1d per core (None: unknown): sizes the column panels
        "l2_bytes": l2_bytes(),              # the host's L2 per core (None: unknown): SELL-16 packed beyond it
        "fingerprint": fingerprint(),        # which machine timed (its tag names timing-only folders)
    }
    if peaks is not None:
        info["peaks"] = peaks
    return info


def _best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls after a warm one: a peak is the best the machine does (a
    median took a slow moment of the VM: 57.6 GFLOP/s "peak" in a run whose own dense engine ran 85)."""
    fn()                                     # warm: page faults, thread start-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(min(times))


def sgemm_gflops(n: int = 2048, threads: int = 1, repeats: int = 5) -> float:
    """Float32 matrix-product rate (GFLOP/s) of n x n @ n x n (SgemmPeak's product) under a `threads` BLAS limit."""
    from sparsenet.threads import limit
    peak = SgemmPeak(n)
    B = np.random.default_rng(1).random((n, n), dtype=np.float32)
    with limit(int(threads), numba_threads=False):       # BLAS threads only (threads.py owns limits)
        secs = _best_time(lambda: peak(B), repeats)
    return peak.flops(n) / secs / 1e9


PEAK_NAME = "sgemm-peak"      # the engine name of SgemmPeak's timing records (timings.json "peaks")


class SgemmPeak:
    """The sgemm peak as an engine for the timing harness (timing.peak_case): C = A @ X of n x n
    float32 matrices, under the case's BLAS limit (uses_blas: grouped with the BLAS engines when
    interleaved). 2 n^3 flops per call at the case's "batch" n."""

    uses_blas, uses_numba = True, False

    def __init__(self, n: int):
        n = int(n)
        if n < 1:
            raise ValueError(f"the sgemm peak needs n >= 1, got {n}")
        self.A = np.random.default_rng(0).random((n, n), dtype=np.float32)
        self.C = np.empty((n, n), np.float32)
        self.layer_sizes = (n, n)
        self.nbytes = int(self.A.nbytes)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.matmul(self.A, X, out=self.C)

    def flops(self, batch: int) -> float:
        return 2.0 * self.A.shape[0] ** 2 * int(batch)


def copy_bandwidth_gbs(nbytes: int = 256 * 2 ** 20, repeats: int = 5) -> float:
    """Memory bandwidth (GB/s) of one np.copyto of `nbytes`: counts read + write = 2 x nbytes."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    secs = _best_time(lambda: np.copyto(dst, src), repeats)
    return 2.0 * src.nbytes / secs / 1e9


def measure_peaks(threads=(1, 2), quick: bool = False) -> dict:
    """{"sgemm_gflops": {"1": x, "2": y}, "bandwidth_gbs": z}; about 3 s full, < 1 s quick."""
    n, mb, repeats = (1024, 64, 3) if quick else (2048, 256, 5)
    sgemm = {str(int(t)): sgemm_gflops(n, int(t), repeats) for t in threads}
    return {"sgemm_gflops": sgemm, "bandwidth_gbs": copy_bandwidth_gbs(mb * 2 ** 20, repeats)}
