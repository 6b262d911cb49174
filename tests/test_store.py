"""The pgen HDF5 store: round trips, atomic writes, validation, streaming Dataset and seeded loader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from pgen.data import store
from pgen.data.dataset import ImageDataset, make_loader
from pgen.errors import PgenError


def _splits(rng):
    return {
        "train": {
            "images": rng.integers(0, 256, (20, 12, 10), dtype=np.uint8),
            "labels": rng.integers(0, 10, 20),
            "segmentation": rng.integers(0, 5, (20, 12, 10), dtype=np.uint8),
        },
        "val": {"images": rng.random((5, 12, 10)).astype(np.float32)},
        "test": {"images": rng.random((7, 2, 12, 10)).astype(np.float32), "labels": np.arange(7)},
    }


def test_round_trip_all_splits_dtypes_labels_segmentation(tmp_path):
    rng = np.random.default_rng(0)
    splits = _splits(rng)
    path = store.write_arrays(tmp_path / "d.h5", splits, source="unit-test", value_range=(0, 255), note={"a": [1, "x"]})
    for name, arrays in splits.items():
        back = store.read_split(path, name)
        assert set(back) == set(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(back[key], value)
            assert back[key].dtype == (np.int64 if key == "labels" else value.dtype)
    with store.open_store(path) as f:
        attrs = store.attrs_of(f)
        assert attrs["format"] == "pgen-images" and attrs["version"] == 1
        assert attrs["source"] == "unit-test" and attrs["value_range"] == [0.0, 255.0]
        assert attrs["note"] == {"a": [1, "x"]}
        assert attrs["created_by"].startswith("pgen ")
        assert store.split_names(f) == ["train", "val", "test"]
        # one image per chunk, compressed
        ds = f["train/images"]
        assert ds.chunks == (1, 12, 10) and ds.compression == "gzip"
        assert f["train/segmentation"].chunks == (1, 12, 10)


def test_append_in_pieces_equals_one_write(tmp_path):
    images = np.arange(6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4)
    with store.StoreWriter(tmp_path / "a.h5", source="t", value_range=(0, 95)) as w:
        sw = w.split("train", (4, 4), np.float32, labels=True)
        sw.append(images[:2], np.array([0, 1]))
        sw.append(images[2:], np.array([2, 3, 4, 5]))
    back = store.read_split(tmp_path / "a.h5", "train")
    np.testing.assert_array_equal(back["images"], images)
    np.testing.assert_array_equal(back["labels"], np.arange(6))


def test_atomic_write_leaves_no_file_when_it_raises(tmp_path):
    out = tmp_path / "d.h5"
    with pytest.raises(RuntimeError):
        with store.StoreWriter(out, source="t", value_range=(0, 1)) as w:
            w.split("train", (4, 4), np.float32).append(np.zeros((3, 4, 4), np.float32))
            raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_previous_file_when_it_raises(tmp_path):
    out = tmp_path / "d.h5"
    store.write_arrays(out, {"train": {"images": np.ones((2, 4, 4), np.uint8)}}, source="old", value_range=(0, 1))
    with pytest.raises(PgenError):
        with store.StoreWriter(out, source="new", value_range=(0, 1)) as w:
            w.split("train", (4, 4), np.uint8).append(np.ones((2, 5, 5), np.uint8))  # wrong shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]
    with store.open_store(out) as f:
        assert store.attrs_of(f)["source"] == "old"


def test_writer_refuses_missing_folder_and_bad_dtype(tmp_path):
    with pytest.raises(PgenError, match="does not exist"):
        store.StoreWriter(tmp_path / "nope" / "d.h5", source="t", value_range=(0, 1))
    with pytest.raises(PgenError, match="dtype"):
        with store.StoreWriter(tmp_path / "d.h5", source="t", value_range=(0, 1)) as w:
            w.split("train", (4, 4), np.int32)
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"this is not hdf5"), "not a readable HDF5 file"),
        (lambda p: h5py.File(p, "w").close(), "not a pgen dataset"),
        (lambda p: _newer(p), "newer pgen"),
    ],
)
def test_open_store_rejects_bad_files(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(PgenError, match=message) as e:
        store.open_store(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _newer(path):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "pgen-images"
        f.attrs["version"] = 99
        f.create_dataset("train/images", data=np.zeros((1, 2, 2), np.uint8))


def test_truncated_file_is_one_clear_error(tmp_path):
    path = tmp_path / "d.h5"
    store.write_arrays(path, _splits(np.random.default_rng(1)), source="t", value_range=(0, 255))
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(PgenError, match="cut.h5"):
        store.describe(tmp_path / "cut.h5")


def test_describe_reports_occupancy(tmp_path):
    images = np.zeros((4, 10, 10), np.float32)
    images[0, 0, :5] = 1  # 5%
    images[1, :, :] = 2  # 100%
    images[2, 3, 3] = 7  # 1%
    store.write_arrays(tmp_path / "d.h5", {"train": {"images": images}}, source="t", value_range=(0, 7))
    s = store.describe(tmp_path / "d.h5")["splits"]["train"]
    assert s["n"] == 4 and s["shape"] == [10, 10] and s["dtype"] == "float32"
    assert s["occupancy_mean"] == pytest.approx((0.05 + 1 + 0.01 + 0) / 4)
    assert s["occupancy_min"] == 0 and s["occupancy_max"] == 1 and s["empty_images"] == 1
    assert s["max"] == 7 and s["min"] == 0


def test_dataset_streams_and_matches_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (37, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 37)
    path = store.write_arrays(tmp_path / "d.h5", {"train": {"images": images, "labels": labels}}, source="t", value_range=(0, 255))
    streamed = ImageDataset(path, "train", labels=True)
    held = ImageDataset(path, "train", labels=True, in_memory=True)
    assert len(streamed) == 37 and streamed.shape == (1, 8, 8)
    x, y = streamed[5]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[0].numpy(), images[5])
    assert int(y) == labels[5]
    idx = [30, 2, 17, 2 + 1]
    a, la = streamed.read(idx)
    b, lb = held.read(idx)
    assert torch.equal(a, b) and torch.equal(la, lb)
    np.testing.assert_array_equal(a[:, 0].numpy(), images[idx])


def test_loader_seeded_shuffle_and_workers(tmp_path):
    images = np.arange(40, dtype=np.float32).reshape(40, 1, 1) * np.ones((1, 4, 4), np.float32)
    path = store.write_arrays(tmp_path / "d.h5", {"train": {"images": images}}, source="t", value_range=(0, 39))
    ds = ImageDataset(path, "train", transform=lambda x: x / 39.0)

    def order(seed, workers=0):
        loader = make_loader(ds, 8, seed=seed, num_workers=workers)
        return [int(round(v * 39)) for batch in loader for v in batch[:, 0, 0, 0].tolist()]

    first = order(0)
    assert sorted(first) == list(range(40))  # every image once
    assert first != list(range(40))  # shuffled
    assert order(0) == first  # same seed, same order
    assert order(1) != first


def test_loader_with_worker_processes(tmp_path):
    images = np.arange(24, dtype=np.float32).reshape(24, 1, 1) * np.ones((1, 4, 4), np.float32)
    path = store.write_arrays(tmp_path / "d.h5", {"train": {"images": images}}, source="t", value_range=(0, 23))
    ds = ImageDataset(path, "train")
    single = [b[:, 0, 0, 0].tolist() for b in make_loader(ds, 6, seed=3)]
    multi = [b[:, 0, 0, 0].tolist() for b in make_loader(ds, 6, seed=3, num_workers=2)]
    assert single == multi
