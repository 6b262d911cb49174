"""MNIST import from the real IDX files in ../shared/data/mnist, and its failure modes."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from pgen.cli import app
from pgen.data import mnist, store

runner = CliRunner()
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist_h5(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("mnist") / "mnist.h5"
    result = runner.invoke(app, ["data", "mnist", "--out", str(out), "--source", str(shared_data / "mnist")])
    assert result.exit_code == 0, result.output
    return out


def test_counts_shapes_and_labels(mnist_h5):
    info = store.describe(mnist_h5, max_images=60000)
    train, test = info["splits"]["train"], info["splits"]["test"]
    assert (train["n"], test["n"]) == (60000, 10000)
    assert train["shape"] == [28, 28] and train["dtype"] == "uint8"
    assert [train["label_counts"][k] for k in range(10)] == TRAIN_COUNTS
    assert sum(test["label_counts"].values()) == 10000
    assert info["attrs"]["value_range"] == [0.0, 255.0]


def test_pixel_statistics_match_published(mnist_h5):
    images = store.read_split(mnist_h5, "train")["images"].astype(np.float64) / 255
    assert images.mean() == pytest.approx(0.1307, abs=5e-5)
    assert images.std() == pytest.approx(0.3081, abs=5e-5)


def test_raw_uncompressed_files_work(tmp_path, shared_data):
    for stem in mnist.FILES:
        with gzip.open(shared_data / "mnist" / f"{stem}.gz") as src, open(tmp_path / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    splits = mnist.load(tmp_path)
    assert splits["test"]["images"].shape == (10000, 28, 28)


def _copy_mnist(shared_data, dest):
    dest.mkdir()
    for stem in mnist.FILES:
        shutil.copy(shared_data / "mnist" / f"{stem}.gz", dest / f"{stem}.gz")
    return dest


def test_md5_mismatch_is_refused(tmp_path, shared_data):
    src = _copy_mnist(shared_data, tmp_path / "src")
    labels = src / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    out = tmp_path / "m.h5"
    result = runner.invoke(app, ["data", "mnist", "--out", str(out), "--source", str(src)])
    assert result.exit_code == 1
    assert "MD5" in result.output and "t10k-labels" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m.h5")]


def test_truncated_gzip_is_refused(tmp_path, shared_data):
    src = _copy_mnist(shared_data, tmp_path / "src")
    f = src / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:5000])
    out = tmp_path / "m.h5"
    result = runner.invoke(app, ["data", "mnist", "--out", str(out), "--source", str(src)])
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte.gz" in result.output and "corrupt gzip" in result.output
    assert not out.exists()


def test_missing_file_and_folder(tmp_path, shared_data):
    src = _copy_mnist(shared_data, tmp_path / "src")
    (src / "train-labels-idx1-ubyte.gz").unlink()
    result = runner.invoke(app, ["data", "mnist", "--out", str(tmp_path / "m.h5"), "--source", str(src)])
    assert result.exit_code == 1 and "missing train-labels-idx1-ubyte" in result.output
    result = runner.invoke(app, ["data", "mnist", "--out", str(tmp_path / "m.h5"), "--source", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "m.h5").exists()


def test_builtin_name_uses_pgen_mnist_dir(monkeypatch, shared_data):
    from pgen.data import builtin

    monkeypatch.setenv("PGEN_MNIST_DIR", str(shared_data / "mnist"))
    path = builtin.resolve("mnist", progress=False)
    assert path.name == "mnist.h5" and path.parent == builtin.cache_dir()
    mtime = path.stat().st_mtime_ns
    assert builtin.resolve("mnist", progress=False).stat().st_mtime_ns == mtime  # reused, not remade
