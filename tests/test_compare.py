"""`sparsenet compare` on fixture results folders of two (fixture) machines, and on incomparable ones."""
import json

import pytest

from fixture_results import make_results
from sparsenet import compare
from sparsenet.files import read_json, write_json


def _machine(folder, cpu, isa, blas_kernel, scale):
    """Make a fixture folder look like another machine: its CPU, ISA, BLAS kernel, csr `scale`x slower."""
    m = read_json(folder / "machine.json")
    m.update(cpu=cpu, isa=isa)
    m["blas"][0]["architecture"] = blas_kernel
    write_json(folder / "machine.json", m)
    t = read_json(folder / "timings.json")
    for r in t["records"]:
        if r["engine"] == "csr":
            for key in ("median_s", "min_s", "max_s"):
                r[key] *= scale
            r["isa"] = isa
    write_json(folder / "timings.json", t)
    return folder


@pytest.fixture()
def two_machines(tmp_path):
    a = _machine(make_results(tmp_path / "zen4"), "AMD EPYC Zen 4", "avx512", "SkylakeX", 1.0)
    b = _machine(make_results(tmp_path / "zen3"), "AMD EPYC Zen 3", "avx2", "Haswell", 3.0)
    return a, b


def test_compare_two_machines(two_machines, tmp_path):
    path = compare.compare(two_machines, tmp_path / "out")
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# sparsenet: machines compared"
    assert "across 2 machines (avx2, avx512)" in lines[2] and "csr breaks even with dense at" in lines[2]
    assert "| zen4 | AMD EPYC Zen 4 | avx512 | openblas 0.3.29 (SkylakeX) |" in text
    assert "| zen3 | AMD EPYC Zen 3 | avx2 | openblas 0.3.29 (Haswell) |" in text
    assert "## Break-even sparsity" in text and "| csr | weight | 256 |" in text
    assert (tmp_path / "out" / "compare_speedup.png").stat().st_size > 1000
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    be = data["break_even"]["csr/weight/b256"]
    assert be[0] is not None and (be[1] is None or be[1] > be[0])   # 3x slower csr breaks even later
    s90 = data["speedup_90"]["csr/weight/b256"]
    assert s90[0] == pytest.approx(3 * s90[1], rel=1e-6)
    assert "nothing: the same study settings on every machine" in text


def test_config_differences_listed(two_machines, tmp_path):
    c = read_json(two_machines[1] / "config.json")
    c["study"]["threads"] = [1]
    write_json(two_machines[1] / "config.json", c)
    text = compare.compare(two_machines, tmp_path / "out").read_text()
    assert "- `threads`: zen4 = [1, 2], zen3 = [1]" in text


@pytest.mark.parametrize("field, value, message", [
    ("sparsities", [0.0, 0.5], r"sparsities: .* in zen4, \[0.0, 0.5\] in zen3"),
    ("seeds", [7], r"seeds: \[0, 1, 2\] in zen4, \[7\] in zen3"),
    ("sizes", [784, 10], r"sizes: .* in zen4, \[784, 10\] in zen3")])
def test_incomparable_folders_are_refused(two_machines, tmp_path, field, value, message):
    c = read_json(two_machines[1] / "config.json")
    c["study"][field] = value
    write_json(two_machines[1] / "config.json", c)
    with pytest.raises(compare.NotComparable, match=message):
        compare.compare(two_machines, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_data_refused(two_machines, tmp_path):
    for folder, fp in zip(two_machines, ("aaaa", "bbbb")):
        c = read_json(folder / "config.json")
        c["data"] = {"fingerprint": fp}
        write_json(folder / "config.json", c)
    with pytest.raises(compare.NotComparable, match="data: fingerprint aaaa in zen4, bbbb in zen3"):
        compare.compare(two_machines, tmp_path / "out")


def test_one_folder_or_no_timings_refused(two_machines, tmp_path):
    with pytest.raises(compare.NotComparable, match="at least two results folders"):
        compare.compare(two_machines[:1], tmp_path / "out")
    (two_machines[1] / "timings.json").unlink()
    with pytest.raises(compare.NotComparable, match="zen3 has no timings"):
        compare.compare(two_machines, tmp_path / "out")


def test_cli_compare(two_machines, tmp_path, capsys):
    from sparsenet.cli import main
    out = tmp_path / "cmp"
    assert main(["compare", str(two_machines[0]), str(two_machines[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(out / "compare.md") and printed[1] == "# sparsenet: machines compared"
    c = read_json(two_machines[1] / "config.json")
    c["study"]["seeds"] = [5]
    write_json(two_machines[1] / "config.json", c)
    assert main(["compare", str(two_machines[0]), str(two_machines[1]), "--out", str(out)]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_a_folder_given_twice_is_refused(two_machines, tmp_path, monkeypatch):
    """The same folder twice (here `.` and its path) made a report "across 2 machines" of one."""
    monkeypatch.chdir(two_machines[0])
    with pytest.raises(compare.NotComparable, match=r"are the same results folder"):
        compare.compare([".", two_machines[1], two_machines[0]], tmp_path / "out")
    text = compare.compare([".", two_machines[1]], tmp_path / "out").read_text()
    assert "| zen4 | AMD EPYC Zen 4 |" in text                # "." is named by the folder it is
