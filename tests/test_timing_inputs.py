"""The timed net and images saved in a run folder: round trip, checksums, copies."""
import numpy as np
import pytest

from sparsenet import checkpoint, timing_inputs
from sparsenet.model import he_init

SIZES = (784, 16, 10)


@pytest.fixture
def saved(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5000, 784), dtype=np.uint8)
    timing_inputs.save(tmp_path / "run", he_init(SIZES, seed=3), images, meta={"seed": 3})
    return tmp_path / "run", images


def test_round_trip(saved):
    folder, images = saved
    assert timing_inputs.saved(folder)
    params, got = timing_inputs.load(folder)
    assert got.dtype == np.uint8 and (got == images[:timing_inputs.N_IMAGES]).all()
    for a, b in zip(params, he_init(SIZES, seed=3)):
        assert (a.weight == b.weight).all()
    assert checkpoint.load(folder / "net.npz")[1]["seed"] == 3


def test_a_changed_file_fails_its_checksum(saved):
    folder, images = saved
    np.save(folder / "test-images.npy", images[:100])
    with pytest.raises(timing_inputs.TimingInputsError, match=r"test-images.npy fails its checksum"):
        timing_inputs.load(folder)


@pytest.mark.parametrize("name", timing_inputs.FILES)
def test_a_missing_file_is_named(saved, name):
    folder, _ = saved
    (folder / name).unlink()
    assert not timing_inputs.saved(folder)
    with pytest.raises(timing_inputs.TimingInputsError, match=rf"{name} is missing"):
        timing_inputs.load(folder)


def test_copy(saved, tmp_path):
    folder, _ = saved
    (tmp_path / "copy").mkdir()
    timing_inputs.copy(folder, tmp_path / "copy")
    assert [(folder / n).read_bytes() for n in timing_inputs.FILES] == [
        (tmp_path / "copy" / n).read_bytes() for n in timing_inputs.FILES]
    timing_inputs.load(tmp_path / "copy")


def test_images_must_be_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        timing_inputs.save(tmp_path, he_init(SIZES), np.zeros((4, 784), np.float32))


@pytest.mark.parametrize("text", ['{"files": []}', '{"files": {"net.npz": "abc", "test-images.npy": "x"}}',
                                  '{"files": {"net.npz": {"sha256": "0"}}}'])
def test_a_malformed_checksums_file_is_named(saved, text):
    """A 'files' that is not a mapping of entries was an AttributeError from inside load."""
    folder, _ = saved
    (folder / "checksums.json").write_text(text)
    with pytest.raises(timing_inputs.TimingInputsError, match=r"checksums.json: not a checksums file"):
        timing_inputs.load(folder)


def test_no_images_is_named(saved, tmp_path):
    """An empty (0, 784) image file passed the checks and failed in the timings stage, in numpy's words
    ("cannot reshape array of size 0"); save failed so too."""
    import hashlib
    import json
    with pytest.raises(ValueError, match=r"test images must hold at least one image"):
        timing_inputs.save(tmp_path / "empty", he_init(SIZES), np.zeros((0, 784), np.uint8))
    folder, _ = saved
    np.save(folder / "test-images.npy", np.zeros((0, 784), np.uint8))
    sums = json.loads((folder / "checksums.json").read_text())
    sums["files"]["test-images.npy"]["sha256"] = hashlib.sha256((folder / "test-images.npy").read_bytes()).hexdigest()
    (folder / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(timing_inputs.TimingInputsError, match=r"test-images.npy: expected uint8 images \(at least one\)"):
        timing_inputs.load(folder)


def test_a_net_of_another_run_is_refused(saved):
    """A net and checksums copied from another run match each other: the run's seed and data decide."""
    folder, _ = saved
    assert timing_inputs.load(folder, {"seed": 3, "data_fingerprint": None})[0]      # None: not recorded, not checked
    with pytest.raises(timing_inputs.TimingInputsError, match=r"net.npz is not this run's net: its seed is 3, the run's 0"):
        timing_inputs.load(folder, {"seed": 0})
    with pytest.raises(timing_inputs.TimingInputsError, match=r"its data_fingerprint is None, the run's 'abc'"):
        timing_inputs.load(folder, {"data_fingerprint": "abc"})
