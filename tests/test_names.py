"""The vocabulary (names.py): every other module's names and defaults agree with it."""
import pytest

from sparsenet import names


def test_engines_methods_and_data_sets_match_their_implementations():
    from sparsenet import data, engines, prune
    assert tuple(engines.ENGINES) == names.ENGINES          # engines.py will import it from names
    assert set(names.ENGINES) <= set(engines._CLASSES)         # every named engine is built by make_engine
    assert tuple(prune.METHODS) == names.METHODS            # prune.py will import it from names
    assert tuple(prune.ALL_METHODS) == names.ALL_METHODS
    assert tuple(data.DATASETS) == names.DATASETS


def test_engine_method_pairing():
    assert names.method_of("shrunk") == "neuron" and names.method_of("csr") == "weight"
    assert names.engines_of("weight") == ("dense", "csr", "csr-scipy", "dense-fused", "dense-skip", "csr-skip")
    assert names.engines_of("neuron") == ("shrunk", "shrunk-fused", "shrunk-skip")
    assert names.engines_of(names.UNPRUNED) == ("dense",)
    assert names.engines_of("random") == ()
    assert sorted(names.ENGINES, key=names.engine_rank) == list(names.ENGINES)
    assert names.engine_rank("gpu") > names.engine_rank("shrunk")


def test_defaults_are_used_by_the_study_the_sweep_and_the_benchmarks():
    from sparsenet import sweep
    from sparsenet.study_config import StudyConfig
    cfg = StudyConfig()
    assert (cfg.sparsities, cfg.engines, cfg.methods, cfg.batches, cfg.threads, cfg.widths) == (
        names.SPARSITIES, names.STUDY_ENGINES, names.GRANULARITIES, names.BATCHES, names.THREADS, names.WIDTHS)
    assert (cfg.finetune_sparsities, cfg.gradual_sparsities, cfg.gradual_methods) == (
        names.FINETUNE_SPARSITIES, names.GRADUAL_SPARSITIES, names.GRADUAL_METHODS)
    q = StudyConfig.quick()
    assert (q.sparsities, q.batches, q.threads, q.widths) == (
        names.QUICK_SPARSITIES, names.QUICK_BATCHES, names.QUICK_THREADS, names.QUICK_WIDTHS)
    assert sweep.SWEEP_SPARSITIES == names.SPARSITIES and sweep.RECOVERIES == names.RECOVERIES


def test_granularities_run_from_single_weights_to_whole_neurons():
    import inspect

    from sparsenet import prune
    assert names.GRANULARITIES == ("weight", "nm", "block", "neuron")
    assert set(names.GRANULARITIES) == set(prune.ALL_METHODS)
    assert {names.method_of(e) for e in names.STUDY_ENGINES} == set(names.GRANULARITIES)   # each one is timed
    assert names.engines_of("block") == ("bsr", "bsr-scipy") and names.engines_of("nm") == ("nm",)
    # the study's N:M group size is make_masks' default, and its recovered patterns exist at that M
    assert inspect.signature(prune.make_masks).parameters["m"].default == names.NM_M == 4
    assert all(names.has_sparsity("nm", k) for k in names.NM_RECOVERY_SPARSITIES)


@pytest.mark.parametrize("k, exists", [(0.0, True), (0.25, True), (0.5, True), (0.75, True), (0.6, False),
                                       (0.9, False), (0.95, False), (0.99, False), (0.7500000001, True)])
def test_nm_exists_only_where_k_times_m_is_whole(k, exists):
    assert names.has_sparsity("nm", k) is exists
    assert names.has_sparsity("weight", k) and names.has_sparsity("block", k) and names.has_sparsity("neuron", k)
    assert names.method_sparsities("nm", (0.6, k, 0.9)) == ((k,) if exists else ())
    assert names.method_sparsities("weight", (0.6, k)) == (0.6, k)


def test_check_names():
    assert names.check_names("engines", ["csr"], names.ENGINES) == ("csr",)
    with pytest.raises(ValueError, match=r"unknown engines \['gpu'\]; expected some of dense, csr"):
        names.check_names("engines", ("csr", "gpu"), names.ENGINES)
    with pytest.raises(ValueError, match="must be a sequence"):
        names.check_names("engines", "csr", names.ENGINES)
