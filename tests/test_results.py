"""Atomic writes and the results folder."""
import json
import os

import pytest

from sparsenet import files, results


def test_write_json_round_trip_and_permissions(tmp_path):
    import numpy as np

    path = files.write_json(tmp_path / "sub" / "a.json", {"x": np.float32(1.5), "v": np.arange(3)})
    assert files.read_json(path) == {"x": 1.5, "v": [0, 1, 2]}
    assert os.stat(path).st_mode & 0o044 == 0o044 & ~_umask()   # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = files.write_json(tmp_path / "a.json", {"old": True})

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        files.read_json(bad)


def test_results_parts(tmp_path):
    results.save_part(tmp_path, "accuracy", {"a": 1})
    loaded = results.load_results(tmp_path)
    assert loaded == {"accuracy": {"a": 1}}
    assert results.missing_parts(loaded) == ["config", "machine", "activations", "timings", "scaling"]
    with pytest.raises(ValueError, match="unknown results part"):
        results.part_path(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="sparsenet study"):
        results.load_results(tmp_path / "missing")


def test_check_writable_names_the_path(tmp_path):
    import errno

    from sparsenet.files import check_folder_writable, check_writable
    (tmp_path / "afile").write_text("x")
    assert check_writable(tmp_path / "new" / "m.npz") == tmp_path / "new" / "m.npz"
    assert list((tmp_path / "new").iterdir()) == []                  # the trial file is gone
    for path, code in [(tmp_path, errno.EISDIR), (tmp_path / "afile" / "m.npz", errno.ENOTDIR),
                       (tmp_path / ("x" * 300), errno.ENAMETOOLONG)]:
        with pytest.raises(OSError) as exc:
            check_writable(path)
        assert exc.value.errno == code and str(path)[:40] in exc.value.filename
    with pytest.raises(NotADirectoryError, match="Not a directory") as exc:
        check_folder_writable(tmp_path / "afile")
    assert exc.value.filename == str(tmp_path / "afile")


def test_a_part_that_is_not_an_object_is_named(tmp_path):
    """load_results (the report, compare) and the study read parts alike: [] is refused by name."""
    results.save_part(tmp_path, "accuracy", [])
    with pytest.raises(ValueError, match=r"accuracy\.json: not a results file of a `sparsenet study` \(a JSON list"):
        results.load_results(tmp_path)
