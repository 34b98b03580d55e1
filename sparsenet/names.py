"""The vocabulary: engine, pruning-method and data-set names, the default grids, and which pruning
each engine is timed on. Every other module imports these; adding an engine, a method or a data set
is one edit here plus its implementation (engines.py, prune.py, sources.py).

Pure constants and lookups: no imports beyond the standard library, so anything may import it.
"""
from __future__ import annotations

# --- names ---------------------------------------------------------------------------------------

# inference engines, in the order reports use: numpy's BLAS chain (dense, shrunk), our one-call dense
# forward (-fused) and its zero-input skipping (-skip), our CSR kernels (csr, csr-skip), scipy's
# our block-sparse (bsr) and N:M (nm) kernels and scipy's BSR baseline run block- and N:M-pruned nets
ENGINES = ("dense", "csr", "csr-scipy", "shrunk", "dense-fused", "shrunk-fused", "dense-skip", "csr-skip",
           "shrunk-skip", "bsr", "bsr-scipy", "nm")
# the engines a study times by default: all of them
STUDY_ENGINES = ENGINES
METHODS = ("weight", "neuron")                     # the claim's two pruning methods (any k in [0, 1))
ALL_METHODS = METHODS + ("nm", "block")            # every method prune.make_masks runs
# pruning granularities, finest to coarsest: single weights, N:M groups, r x c blocks, whole neurons;
# the methods of the study's accuracy sweep and of its verdict at equal accuracy
GRANULARITIES = ("weight", "nm", "block", "neuron")
NM_M = 4                                           # M of N:M pruning in the study (2:4 at k=50%, 1:4 at 75%)
# N:M's sparsity is 1 - N/M: it exists only at k where k * M is whole; the recovered (fine-tuned,
# gradual) N:M curves use these patterns, the sparser of the semi-structured ones
NM_RECOVERY_SPARSITIES = (0.5, 0.75)               # 2:4 and 1:4
UNPRUNED = "none"                                  # the method of a net nobody pruned
DATASETS = ("mnist", "fashion-mnist")              # data sets (sources.DATASETS holds their sources)
RECOVERIES = ("oneshot", "finetuned", "gradual")   # what follows pruning in the accuracy sweep

# which pruning each engine is timed on: shrunk runs the neuron-pruned net (physically smaller);
# the others run the weight-pruned net (dense multiplies its zeros, the sparse engines skip them)
ENGINE_METHOD = {"dense": "weight", "csr": "weight", "csr-scipy": "weight", "shrunk": "neuron",
                 "dense-fused": "weight", "shrunk-fused": "neuron", "dense-skip": "weight", "csr-skip": "weight",
                 "shrunk-skip": "neuron", "bsr": "block", "bsr-scipy": "block", "nm": "nm"}
# engines that store every weight (dense matrices); the others store only non-zeros
DENSE_ENGINES = ("dense", "shrunk", "dense-fused", "shrunk-fused", "dense-skip", "shrunk-skip")
# engines whose time does not depend on k (they multiply the zeros): timed at the smallest k only
K_INDEPENDENT = ("dense", "dense-fused")
# the dense baselines a speed-up is measured against: numpy's chain, and our fastest dense
DENSE_BASELINES = ("dense", "dense-fused")
# engines that differ from another only at small batches (their plan runs the other's kernels above
# it): name -> (the engine they equal above, the plan.Tuning field holding the largest such batch)
SMALL_BATCH_ENGINES = {"dense-fused": ("dense", "max_fused_batch"), "shrunk-fused": ("shrunk", "max_fused_batch"),
                       "dense-skip": ("dense", "max_fused_batch"), "shrunk-skip": ("shrunk", "max_fused_batch"),
                       "csr-skip": ("csr", "max_csc_batch")}
SCALING_ENGINES = ("dense", "csr")                 # engines of the one-layer width-scaling study
# library engines timed only to show what our kernels gain over them: a call predicted slower than the
# study's max_baseline_call_s is skipped (their ratio to ours shows as well at the cheaper points)
LIBRARY_BASELINES = ("csr-scipy", "bsr-scipy")

# --- default grids -------------------------------------------------------------------------------

SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99)  # k: fraction removed
                                                   # (0.75: 1:4; 0.98: the sparse end of gradual pruning)
BATCHES = (1, 16, 256, 4096)                       # batch sizes timed
THREADS = (1, 2)                                   # thread limits timed (BLAS and Numba alike)
WIDTHS = (1024, 4096)                              # scaling study: one square layer of each width (16384,
                                                   # 1 GB dense, DRAM-bound: --widths 1024,4096,16384 adds
                                                   # ~3 min of building its layers to the study)
SCALING_THREADS = (1,)                             # thread limits of the scaling study
SCALING_SPARSITIES = (0.0, 0.5, 0.7, 0.9, 0.95, 0.99)  # k of the scaling study (a 16k layer: ~20 s per k)
FINETUNE_SPARSITIES = (0.8, 0.9, 0.95)             # k fine-tuned after pruning (N:M: NM_RECOVERY_SPARSITIES)
GRADUAL_SPARSITIES = (0.95, 0.98)                  # k reached by gradual magnitude pruning (where one-shot
                                                   # pruning and fine-tuning lose most)
GRADUAL_METHODS = ("weight",)                      # the granularities pruned gradually by default: the one
                                                   # that stays near the unpruned accuracy at 95-98% (block
                                                   # 8x1 lost 1.8-4.5 points there over 2 epochs, so its
                                                   # 24 epochs are opt-in: --gradual-methods weight,block;
                                                   # neuron pruning leaves too few neurons; N:M has no such
                                                   # pattern with M = 4)

# the small grids of `--quick` (StudyConfig.quick) and SPARSENET_BENCH_QUICK=1 (bench/)
QUICK_SPARSITIES = (0.0, 0.5, 0.9)
QUICK_BATCHES = (1, 256)
QUICK_THREADS = (1,)
QUICK_WIDTHS = (1024,)

assert set(ENGINE_METHOD) == set(ENGINES) and set(ENGINE_METHOD.values()) <= set(ALL_METHODS)
assert set(STUDY_ENGINES) <= set(ENGINES) and {ENGINE_METHOD[e] for e in STUDY_ENGINES} <= set(GRANULARITIES)
assert set(GRANULARITIES) == set(ALL_METHODS) and set(GRADUAL_METHODS) <= set(GRANULARITIES)
assert set(K_INDEPENDENT) <= set(ENGINES) and set(SMALL_BATCH_ENGINES) <= set(ENGINES)
assert set(DENSE_ENGINES) <= set(ENGINES) and set(DENSE_BASELINES) <= set(K_INDEPENDENT)
assert set(SCALING_ENGINES) <= set(ENGINES)


def method_of(engine: str) -> str:
    """The pruning method whose net `engine` is timed on (unknown engines: weight)."""
    return ENGINE_METHOD.get(engine, "weight")


def engines_of(method: str) -> tuple:
    """The engines that run a `method`-pruned net, in ENGINES order; the unpruned net runs on dense."""
    if method == UNPRUNED:
        return ("dense",)
    return tuple(e for e in ENGINES if ENGINE_METHOD[e] == method)


def has_sparsity(method: str, sparsity: float, m: int = NM_M) -> bool:
    """Whether `method` prunes to exactly `sparsity`: N:M only at k = 1 - N/m (to float rounding), the
    others at any k. prune.make_masks refuses the k where this is False."""
    return method != "nm" or abs(sparsity * m - round(sparsity * m)) < 1e-9


def method_sparsities(method: str, sparsities) -> tuple:
    """The k of `sparsities` at which `method` exists (see has_sparsity)."""
    return tuple(k for k in sparsities if has_sparsity(method, k))


def engine_rank(engine: str) -> int:
    """Sort key of an engine: the order of ENGINES, unknown engines last."""
    return ENGINES.index(engine) if engine in ENGINES else 99


def check_names(what: str, values, allowed) -> tuple:
    """`values` as a non-empty tuple of names from `allowed`, else a ValueError naming the bad ones."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{what} must be a sequence, got {values!r}")
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"unknown {what} {bad or values}; expected some of {', '.join(allowed)}")
    return check_unique(what, values)


def check_unique(what: str, values: tuple) -> tuple:
    """values, else a ValueError naming those given twice (a name, k, batch or width timed and swept
    twice is a wasted run and a doubled row in every table)."""
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{what} has duplicates: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in twice)}")
    return values
