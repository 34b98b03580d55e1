"""The CPU Numba compiles for: its name and the features our kernels depend on (AVX-512F, AVX2, FMA).

NUMBA_CPU_NAME / NUMBA_CPU_FEATURES may name another CPU than the host (CI forces `haswell` on
AVX-512 machines to test the AVX2 paths); kernels and plans follow Numba's target, not the host.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_SYS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
L1D_FALLBACK = 32 * 1024     # when the host does not say: the L1d of most x86 cores (Zen 2-5, Skylake-Haswell)


@dataclass(frozen=True)
class CPU:
    """What the plan needs to know of the CPU Numba compiles for (NUMBA_CPU_NAME may differ from the host)."""

    name: str          # Numba's target CPU name (e.g. 'sapphirerapids', 'znver3', 'haswell')
    machine: str       # platform.machine(): x86_64, aarch64, ...
    avx512f: bool
    avx2: bool
    fma: bool

    @property
    def isa(self) -> str:
        """ISA level of the kernels this CPU runs: avx512, avx2, neon or generic."""
        if self.avx512f:
            return "avx512"
        if self.avx2 and self.fma:
            return "avx2"
        if self.machine in ("aarch64", "arm64"):
            return "neon"
        return "generic"


@functools.lru_cache(maxsize=1)
def cpu() -> CPU:
    """The CPU Numba targets in this process (its NUMBA_CPU_NAME/NUMBA_CPU_FEATURES, else the host)."""
    import llvmlite.binding as llvm
    from numba.core import config
    machine = platform.machine()
    host = llvm.get_host_cpu_features()
    if config.CPU_NAME and config.CPU_NAME != "host":
        name = config.CPU_NAME
    else:
        name = llvm.get_host_cpu_name()
    # Numba passes NUMBA_CPU_FEATURES to LLVM when set (an empty string: the named CPU's own
    # features), else the host's features, whatever NUMBA_CPU_NAME says
    if config.CPU_FEATURES is None:
        has = lambda f: bool(host.get(f, False))      # noqa: E731
    else:
        flags = set(config.CPU_FEATURES.split(",")) if config.CPU_FEATURES else _known_features(name)
        has = lambda f: f"+{f}" in flags              # noqa: E731
    return CPU(name=name, machine=machine, avx512f=has("avx512f"), avx2=has("avx2"), fma=has("fma"))


def _known_features(cpu_name: str) -> set:
    """Flags of x86 CPU names used to force a code path (NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=''):
    unknown names get none, so the plan stays on portable kernels rather than emit instructions the
    CPU may lack."""
    avx2 = {"+avx", "+avx2", "+fma"}
    avx512 = avx2 | {"+avx512f"}
    table = {"haswell": avx2, "broadwell": avx2, "skylake": avx2, "znver1": avx2, "znver2": avx2,
             "znver3": avx2, "alderlake": avx2, "skylake-avx512": avx512, "icelake-server": avx512,
             "sapphirerapids": avx512, "emeraldrapids": avx512, "znver4": avx512, "x86-64-v4": avx512,
             "x86-64-v3": avx2}
    return table.get(cpu_name, set())


@functools.lru_cache(maxsize=1)
def l1d_bytes() -> Optional[int]:
    """The host's level-1 data cache per core in bytes (Linux sysfs), None when it does not say. The
    column panels of the csr and nm kernels are sized by it (plan.panel_bytes)."""
    return _l1d_from(_SYS_CACHE)


@functools.lru_cache(maxsize=1)
def l2_bytes() -> Optional[int]:
    """The host's level-2 cache per core in bytes (Linux sysfs), None when it does not say: whether
    batch 1's SELL stays in it decides its packed form (plan.sell_packs)."""
    return _cache_from(_SYS_CACHE, "2")


def _l1d_from(root: Path) -> Optional[int]:
    """The L1d size in the sysfs cache folder `root` (index*/level, type, size like '48K')."""
    return _cache_from(root, "1")


def _cache_from(root: Path, level: str) -> Optional[int]:
    """The size of the data (or unified) cache of `level` in the sysfs cache folder `root`."""
    try:
        for index in sorted(root.glob("index*")):
            kind = (index / "type").read_text().strip()
            if (index / "level").read_text().strip() == level and kind in ("Data", "Unified"):
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1024, "M": 1024 ** 2}.get(size[-1:], 1)
                value = int(size.rstrip("KM")) * scale
                return value if value > 0 else None
    except (OSError, ValueError):
        return None
    return None
