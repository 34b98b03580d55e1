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
        names.SPARSITIES, names.STUDY_ENGINES, names.METHODS, names.BATCHES, names.THREADS, names.WIDTHS)
    q = StudyConfig.quick()
    assert (q.sparsities, q.batches, q.threads, q.widths) == (
        names.QUICK_SPARSITIES, names.QUICK_BATCHES, names.QUICK_THREADS, names.QUICK_WIDTHS)
    assert sweep.SWEEP_SPARSITIES == names.SPARSITIES and sweep.RECOVERIES == names.RECOVERIES


def test_check_names():
    assert names.check_names("engines", ["csr"], names.ENGINES) == ("csr",)
    with pytest.raises(ValueError, match=r"unknown engines \['gpu'\]; expected some of dense, csr"):
        names.check_names("engines", ("csr", "gpu"), names.ENGINES)
    with pytest.raises(ValueError, match="must be a sequence"):
        names.check_names("engines", "csr", names.ENGINES)
