"""pgen.evaluate.classifier: a real classifier trained on a small labelled store (bars and blobs),
its cache, and the Frechet distance / class histogram / mode coverage on known inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pgen.data.builtin import cache_dir
from pgen.data.store import StoreWriter
from pgen.errors import PgenError
from pgen.evaluate import classifier
from pgen.evaluate.classifier import class_histogram, classifier_for, frechet_distance, mode_coverage
from pgen.tracking import file_digest

SIZE = 12
N_CLASSES = 3


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint8 images of three easily told classes: 0 horizontal bar, 1 vertical bar, 2 square blob."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    images = rng.integers(0, 60, (n, SIZE, SIZE)).astype(np.float64)  # background noise
    for i, y in enumerate(labels):
        r, c = rng.integers(2, SIZE - 4, 2)
        if y == 0:
            images[i, r : r + 2, 1 : SIZE - 1] += 180
        elif y == 1:
            images[i, 1 : SIZE - 1, c : c + 2] += 180
        else:
            images[i, r : r + 4, c : c + 4] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A real labelled pgen store: 384 train / 96 test 12x12 uint8 images of three classes."""
    path = tmp_path_factory.mktemp("labelled") / "shapes.h5"
    with StoreWriter(path, source="test", value_range=(0, 255)) as w:
        for split, n, seed in (("train", 384, 1), ("test", 96, 2)):
            images, labels = shapes(n, seed)
            w.split(split, (SIZE, SIZE), np.uint8, labels=True).append(images, labels)
    return path


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    """The classifier cache of this module's shared classifier (the autouse PGEN_CACHE is session-wide)."""
    return tmp_path_factory.mktemp("pgen-cache")


@pytest.fixture(scope="module")
def trained(labelled, module_cache):
    """The shapes classifier, trained once for the module, and the progress lines of that training."""
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse one-thread fixture
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PGEN_CACHE", str(module_cache))
            clf = classifier_for(labelled, epochs=3, progress=lines.append)
    finally:
        torch.set_num_threads(threads)
    return clf, lines


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of the test's own."""
    monkeypatch.setenv("PGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cache_file(path: Path) -> Path:
    return cache_dir() / "classifiers" / f"{file_digest(path)}-v{classifier.VERSION}.pt"


# --------------------------------------------------------------------------- the classifier


def test_learns_the_classes(trained, labelled):
    clf, _ = trained
    assert clf.n_classes == N_CLASSES
    assert clf.value_range == (0.0, 255.0)
    assert clf.digest == file_digest(labelled)
    assert clf.test_accuracy >= 0.95
    images, labels = shapes(200, seed=3)  # fresh images, never seen
    pred = clf.predict(images)
    assert pred.dtype == np.int64 and pred.shape == (200,)
    assert (pred == labels).mean() >= 0.95
    assert np.array_equal(clf.labels_of(clf.features(images)), pred)  # the head on computed features: the same labels
    assert not clf.net.training and next(clf.net.parameters()).device.type == "cpu"


def test_features_and_predict_shapes(trained):
    clf, _ = trained
    images, _ = shapes(37, seed=4)
    f = clf.features(images, batch_size=16)  # batches of 16, 16, 5
    assert f.dtype == np.float64 and f.shape == (37, classifier.FEATURES)
    assert (f >= 0).all() and f.std() > 0  # post-ReLU, not constant
    np.testing.assert_allclose(clf.features(images[:, None]), f, rtol=1e-5, atol=1e-6)  # [N, 1, H, W] too
    np.testing.assert_allclose(clf.features(images.astype(np.float32)), f, rtol=1e-5, atol=1e-6)
    assert clf.predict(torch.from_numpy(images)).shape == (37,)
    assert clf.features(images[:0]).shape == (0, classifier.FEATURES)
    assert clf.predict(images[:0]).shape == (0,)
    with pytest.raises(ValueError, match="channels"):
        clf.features(np.zeros((2, 3, SIZE, SIZE), np.uint8))


def test_takes_other_square_sizes(trained):
    clf, _ = trained
    for size in (8, 28):
        assert clf.features(np.zeros((3, size, size), np.uint8)).shape == (3, classifier.FEATURES)


def test_reports_progress_when_training(trained):
    clf, lines = trained
    assert "training the shapes classifier (once per dataset)" in lines[0]
    assert any("epoch 1/3" in line for line in lines) and any("epoch 3/3" in line for line in lines)
    assert "test accuracy" in lines[-1] and "cached in" in lines[-1]


def test_second_call_loads_from_cache(trained, labelled, module_cache, monkeypatch):
    monkeypatch.setenv("PGEN_CACHE", str(module_cache))
    clf, _ = trained
    path = cache_file(labelled)
    assert path.is_file()
    before = path.stat().st_mtime_ns
    lines: list[str] = []
    again = classifier_for(labelled, epochs=3, progress=lines.append)
    assert path.stat().st_mtime_ns == before
    assert len(lines) == 1 and "loaded from" in lines[0]
    assert not any("training" in line for line in lines)
    assert again.test_accuracy == clf.test_accuracy and again.n_classes == clf.n_classes
    images, _ = shapes(20, seed=5)
    np.testing.assert_array_equal(again.features(images), clf.features(images))
    payload = torch.load(path, weights_only=True)  # tensors and plain values only
    assert payload["n_classes"] == N_CLASSES and payload["value_range"] == [0.0, 255.0]
    assert payload["accuracy_split"] == "test" and "test accuracy" in lines[0]


def test_deterministic_for_a_seed(labelled):
    images, labels = shapes(192, seed=1)
    a = classifier.fit(images, labels, N_CLASSES, (0, 255), epochs=1, seed=7)
    b = classifier.fit(images, labels, N_CLASSES, (0, 255), epochs=1, seed=7)
    c = classifier.fit(images, labels, N_CLASSES, (0, 255), epochs=1, seed=8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_same_seed_same_features(labelled, tmp_path, monkeypatch):
    """Trained twice from scratch (two caches), the same seed gives the same network."""
    images, _ = shapes(50, seed=6)
    features = []
    for folder in ("a", "b"):
        monkeypatch.setenv("PGEN_CACHE", str(tmp_path / folder))
        features.append(classifier_for(labelled, epochs=1, seed=3).features(images))
    np.testing.assert_array_equal(features[0], features[1])


def test_corrupt_cache_is_trained_over(labelled, own_cache):
    path = cache_file(labelled)  # under this test's own PGEN_CACHE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    lines: list[str] = []
    clf = classifier_for(labelled, epochs=1, progress=lines.append)
    assert any("training" in line for line in lines)
    assert clf.test_accuracy > 0.5
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "pgen-classifier"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    lines.clear()
    classifier_for(labelled, progress=lines.append)
    assert "loaded from" in lines[0]


def test_unlabelled_dataset_is_a_clear_error(tiny_dataset, own_cache):
    with pytest.raises(PgenError, match="has no labels") as e:
        classifier_for(tiny_dataset)
    assert "labelled dataset such as mnist" in str(e.value) and str(tiny_dataset) in str(e.value)
    assert not (own_cache / "classifiers").exists() or not os.listdir(own_cache / "classifiers")


# --------------------------------------------------------------------------- metrics


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_mean_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    b = rng.normal(size=(20000, 4)) + shift
    assert frechet_distance(a, b) == pytest.approx(float(shift @ shift), rel=0.03)


def test_frechet_scale_change():
    """Same mean, covariance I vs 4I: Tr(I + 4I - 2 * 2I) = F."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20000, 3)), 2 * rng.normal(size=(20000, 3))
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.05)


def test_frechet_symmetric_and_non_negative():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.normal(size=(50, 6)) * rng.uniform(0.5, 2, 6)
        b = rng.normal(size=(60, 6)) + rng.normal(size=6)
        d = frechet_distance(a, b)
        assert d >= 0
        assert frechet_distance(b, a) == pytest.approx(d, rel=1e-6, abs=1e-8)


def test_frechet_singular_covariances():
    """Dead feature units (constant columns) and fewer samples than features: still finite, ~0 for equal sets."""
    rng = np.random.default_rng(4)
    a = np.zeros((10, 32))
    a[:, :5] = rng.normal(size=(10, 5))
    d = frechet_distance(a, a.copy())
    assert np.isfinite(d) and d == pytest.approx(0.0, abs=1e-4)
    b = a.copy()
    b[:, 0] += 3.0
    assert frechet_distance(a, b) == pytest.approx(9.0, rel=1e-3)


def test_frechet_retries_with_eps_when_the_square_root_fails(monkeypatch):
    """Where sqrtm of the product fails (non-finite), eps * I is added to both covariances."""
    import scipy.linalg

    real, calls = scipy.linalg.sqrtm, []

    def failing_once(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real(m)

    monkeypatch.setattr(scipy.linalg, "sqrtm", failing_once)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(400, 3))
    b = rng.normal(size=(400, 3)) + np.array([0.0, 0.0, 2.0])
    d = frechet_distance(a, b, eps=1e-6)
    assert len(calls) == 2
    monkeypatch.setattr(scipy.linalg, "sqrtm", real)
    assert d == pytest.approx(frechet_distance(a, b), rel=1e-4)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_class_histogram():
    h = class_histogram(np.array([0, 1, 1, 3, 3, 3, 3, 3]), 5)
    np.testing.assert_allclose(h, [1 / 8, 2 / 8, 0, 5 / 8, 0])
    assert h.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        class_histogram(np.array([0, 5]), 5)


def test_mode_coverage():
    data = np.full(10, 0.1)
    assert mode_coverage(data, data) == 10
    collapsed = np.zeros(10)
    collapsed[3] = 1.0
    assert mode_coverage(collapsed, data) == 1
    samples = np.array([0.005, 0.02, 0.2, 0.2, 0.2, 0.085, 0.1, 0.1, 0.1, 0.0])
    assert mode_coverage(samples, data) == 8  # 0.005 and 0.0 fall below 0.1 x 0.1
    assert mode_coverage(samples, data, min_share=0.5) == 7
    absent = np.array([0.5, 0.5, 0.0])  # a class the data lacks is not a mode
    assert mode_coverage(np.array([0.4, 0.4, 0.2]), absent) == 2
