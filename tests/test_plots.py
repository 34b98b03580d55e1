"""Every figure function writes a non-empty PNG from fixture data, and copes with empty input."""
import pytest

from sparsenet import plots
from sparsenet.results import load_results


@pytest.fixture(scope="module")
def res(results_folder):
    return load_results(results_folder)


def is_png(path):
    data = path.read_bytes()
    return data.startswith(b"\x89PNG") and len(data) > 2000


def test_all_figures(res, tmp_path):
    calls = {
        "accuracy": lambda p: plots.plot_accuracy(res["accuracy"], p),
        "accuracy_neuron": lambda p: plots.plot_accuracy_method(res["accuracy"], "neuron", p),
        "latency": lambda p: plots.plot_latency(res["timings"], p),
        "latency_t1": lambda p: plots.plot_latency(res["timings"], p, threads=1),
        "speedup": lambda p: plots.plot_speedup(res["timings"], p),
        "memory": lambda p: plots.plot_memory(res["timings"], p),
        "pareto": lambda p: plots.plot_pareto(res["accuracy"], res["timings"], p, 1),
        "roofline": lambda p: plots.plot_roofline(res["timings"], res["machine"], p),
        "roofline_no_machine": lambda p: plots.plot_roofline(res["timings"], None, p),
        "scaling": lambda p: plots.plot_scaling(res["scaling"], p),
    }
    for name, call in calls.items():
        path = tmp_path / f"{name}.png"
        assert call(path) == path
        assert is_png(path), name


def test_empty_inputs_still_give_a_png(tmp_path):
    empty = {"records": []}
    for name, call in {
        "latency": lambda p: plots.plot_latency(empty, p),
        "speedup": lambda p: plots.plot_speedup(empty, p),
        "memory": lambda p: plots.plot_memory(empty, p),
        "pareto": lambda p: plots.plot_pareto({"curves": []}, empty, p, 1),
        "roofline": lambda p: plots.plot_roofline(empty, None, p),
        "scaling": lambda p: plots.plot_scaling(empty, p),
    }.items():
        path = call(tmp_path / f"{name}.png")
        assert path.read_bytes().startswith(b"\x89PNG"), name


def test_no_pyplot_state(res, tmp_path):
    # figures are built on Figure objects: nothing is left open in pyplot
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    plots.plot_memory(res["timings"], tmp_path / "m.png")
    assert plt.get_fignums() == before


def test_roofline_skips_records_without_flops(res, tmp_path):
    recs = [dict(r) for r in res["timings"]["records"][:8]]
    recs[0]["flops"], recs[1]["nbytes"] = float("nan"), 0
    path = plots.plot_roofline({"records": recs}, res["machine"], tmp_path / "r.png")
    assert is_png(path)


def test_four_batch_sizes_wrap_onto_a_grid(tmp_path):
    from fixture_results import make_results
    folder = make_results(tmp_path / "run", missing=("accuracy", "scaling"), batches=(1, 16, 256, 4096))
    timings = load_results(folder)["timings"]
    assert is_png(plots.plot_speedup(timings, tmp_path / "s.png"))


def test_per_batch_panels(res):
    # one titled panel per batch size, at the largest thread count unless told; no figure without timings
    threads, fig, panels = plots._per_batch(res["timings"], None)
    assert threads == 2 and fig is not None
    assert [b for _, b in panels] == [1, 256]
    assert [ax.get_title() for ax, _ in panels] == ["batch 1, 2 threads", "batch 256, 2 threads"]
    assert plots._per_batch({"records": []}, 1) == (1, None, [])
