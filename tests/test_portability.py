"""Portable on every CPU: the portable kernels compile for aarch64, and on an AVX-512 machine the
kernel and engine tests also run with Numba's target forced to an AVX2 CPU (haswell)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparsenet import sell_kernels

ROOT = Path(__file__).resolve().parents[1]

# Compiles the portable kernels for this CPU (NUMBA_OPT=0: the optimiser would turn some IR into
# x86 intrinsics), moves their LLVM IR to an aarch64 target and emits NEON code from it.
_AARCH64 = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, "tests")
    from aarch64 import aarch64_asm
    from sparsenet import kernels, sell_kernels
    from sparsenet.engines import make_engine
    from sparsenet.model import he_init
    from sparsenet.plan import Tuning
    from sparsenet.prune import weight_prune

    params = weight_prune(he_init((64, 48, 10), bias=True), 0.5)
    make_engine("csr", params, threads=1, sell="portable")(np.ones((1, 64), np.float32))
    make_engine("csr", params, threads=1)(np.ones((32, 64), np.float32))       # batch split: tiles
    make_engine("csr", params, threads=1, sell=False,
                tuning=Tuning(max_chunk=0, tile_chunk=0))(np.ones((5, 64), np.float32))   # row split
    make_engine("csr", params, threads=1, sell=False)(np.ones((1, 64), np.float32))       # SpMV
    for disp in (kernels._worker, kernels._forward, kernels._spmv_part, kernels._tiles_part,
                 sell_kernels.sell_forward_portable):
        for asm in aarch64_asm(disp):
            print(disp.__name__, "fmla" in asm)
""")


def _run(args, **env):
    full = {**os.environ, **env}
    return subprocess.run(args, cwd=ROOT, env=full, capture_output=True, text=True, timeout=1800)


def test_portable_kernels_compile_for_aarch64(tmp_path):
    r = _run([sys.executable, "-c", _AARCH64], NUMBA_OPT="0", NUMBA_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    lines = dict(line.split() for line in r.stdout.split("\n") if line.strip())
    assert set(lines) == {"_worker", "_forward", "_spmv_part", "_tiles_part", "sell_forward_portable"}
    assert lines["_worker"] == lines["_tiles_part"] == "True"     # the register tiles became NEON fmla


@pytest.mark.skipif(not sell_kernels.available(),
                    reason="runs only where Numba targets AVX-512 (an AVX2 CPU runs these tests itself)")
def test_kernel_and_engine_tests_on_an_avx2_target():
    """NUMBA_CPU_NAME=haswell with NUMBA_CPU_FEATURES='' (LLVM's haswell features; without it Numba
    would pass the host's, AVX-512 included): AVX2 code and the plan's AVX2 paths, on this machine."""
    tests = ["tests/test_kernels.py", "tests/test_simd.py", "tests/test_sell_kernels.py", "tests/test_sell8_kernels.py",
             "tests/test_bitmap_kernels.py",
             "tests/test_engines.py", "tests/test_plan.py", "tests/test_csr_engine.py", "tests/test_dense_kernels.py"]
    r = _run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
             NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", SPARSENET_EXPECT_ISA="avx2")
    assert r.returncode == 0, r.stdout[-6000:]
    assert " passed" in r.stdout.splitlines()[-1]
