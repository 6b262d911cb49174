"""A small classifier per labelled dataset: Frechet distance on its features (FID-like) and mode coverage.

For a labelled dataset (MNIST) ``pgen evaluate`` judges generated images through a small CNN
trained once on the dataset's train split: the Frechet distance between Gaussians fitted to
its penultimate-layer features of real and generated images (:func:`frechet_distance`, the
FID recipe with a dataset-specific network instead of Inception), and the histogram of the
classes it assigns to generated images (:func:`class_histogram`, :func:`mode_coverage`): a
generator that has dropped digits shows it there.

:func:`classifier_for` trains the network once per dataset file and caches it in
``<cache dir>/classifiers/<digest>-v1.pt``, keyed by the file's content digest, so every
evaluation of every run on the same file uses the same network and its numbers compare. The
cache holds tensors and plain values only (read back with ``torch.load(weights_only=True)``),
is written atomically, and a corrupt or foreign cache file is trained over. ``epochs`` and
``seed`` take effect only when the network is trained: a cached one is reused as it is.

Training is deterministic on the CPU for a given ``seed`` (weights initialised and batches
shuffled from seeded generators). The train split is read into memory (a labelled dataset of
MNIST size is tens of MB).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pgen.data.builtin import cache_dir
from pgen.data.store import attrs_of, open_store, split_names
from pgen.errors import PgenError, first_line
from pgen.tracking import file_digest

FORMAT = "pgen-classifier"
VERSION = 1  # part of the cache file name: bump whenever the network or its training changes
WIDTHS = (32, 64)  # channels of the two conv blocks
POOL = 4  # last block max-pooled to POOL x POOL (MNIST, 2 epochs: 98.6%; global average 77%, 4x4 average 96.8%)
FEATURES = 128  # width of the penultimate (feature) layer
BATCH = 128
LR = 1e-3
MIN_SIZE = 8


# --------------------------------------------------------------------------- the network


class SmallCNN(nn.Module):
    """Two conv3x3 + ReLU + maxpool blocks, adaptive max pooling to 4x4, a ReLU feature layer, a linear head.

    Takes images ``[N, C, H, W]`` in [0, 1] of any size from 8x8 up (centred to [-1, 1] inside,
    which trains faster); ``features`` is the penultimate layer, ``forward`` the class logits.
    """

    def __init__(self, in_channels: int, n_classes: int, widths: tuple[int, ...] = WIDTHS, pool: int = POOL,
                 features: int = FEATURES):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        layers += [nn.AdaptiveMaxPool2d(pool), nn.Flatten(), nn.Linear(c * pool * pool, features), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(2 * x - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- the trained classifier


@dataclass
class Classifier:
    """A trained dataset classifier, ready to embed and label images given in the store's units."""

    net: SmallCNN  # eval mode, on the device it was asked for
    n_classes: int
    value_range: tuple[float, float]  # the store's value_range: stored units -> [0, 1]
    test_accuracy: float  # on the file's test split (val, else train, where it has none)
    digest: str  # the dataset file's digest (the cache key)

    def features(self, images, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features ``[N, 128]`` float64 of images ``[N, H, W]`` or ``[N, C, H, W]``."""
        return self._map(images, batch_size, self.net.features, (FEATURES,)).astype(np.float64)

    def predict(self, images, batch_size: int = 512) -> np.ndarray:
        """Class ids ``[N]`` int64 of images ``[N, H, W]`` or ``[N, C, H, W]``."""
        return self._map(images, batch_size, lambda x: self.net(x).argmax(dim=1), ()).astype(np.int64)

    def labels_of(self, features: np.ndarray) -> np.ndarray:
        """Class ids ``[N]`` int64 of already computed `features` (the head alone: no second pass over the images)."""
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            f = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device)
            return self.net.head(f).argmax(dim=1).cpu().numpy().astype(np.int64)

    def _map(self, images, batch_size: int, fn, width: tuple[int, ...]) -> np.ndarray:
        images = _as_nchw(images)
        in_channels = self.net.body[0].in_channels
        if images.shape[1] != in_channels:
            raise ValueError(f"images have {images.shape[1]} channels; the classifier takes {in_channels}")
        device = next(self.net.parameters()).device
        out = []
        with torch.inference_mode():
            for lo in range(0, len(images), batch_size):
                x = _scaled(images[lo : lo + batch_size], self.value_range).to(device)
                out.append(fn(x).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, *width))


def classifier_for(
    file: str | os.PathLike,
    *,
    epochs: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Classifier:
    """The classifier of a labelled pgen dataset: from the cache, else trained (and cached) now.

    Raises PgenError when the file's train split has no labels.
    """
    file = Path(file)
    say = progress or (lambda line: None)
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    digest = file_digest(file)
    name = file.stem
    cache = cache_dir() / "classifiers" / f"{digest}-v{VERSION}.pt"

    cached = _load(cache, digest, device)
    if cached is not None:
        clf, split = cached
        say(f"{name} classifier: loaded from {cache} ({split} accuracy {clf.test_accuracy:.2%})")
        return clf

    train, evaluation, split, value_range = _read(file)
    images, labels = train
    n_classes = int(labels.max()) + 1
    prefix = f"training the {name} classifier (once per dataset)"
    say(f"{prefix}: {len(images):,} images, {n_classes} classes, {epochs} epochs")
    net = fit(images, labels, n_classes, value_range, epochs=epochs, seed=seed, device=device,
              progress=lambda line: say(f"{prefix}: {line}"))
    clf = Classifier(net, n_classes, value_range, 0.0, digest)
    clf.test_accuracy = float((clf.predict(evaluation[0]) == evaluation[1]).mean())
    _save(cache, clf, split=split, seed=seed, epochs=epochs)
    say(f"{name} classifier: {split} accuracy {clf.test_accuracy:.2%}, cached in {cache}")
    return clf


def fit(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    value_range: tuple[float, float],
    *,
    epochs: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> SmallCNN:
    """Train a :class:`SmallCNN` with Adam on images in stored units; deterministic on the CPU for a seed."""
    images = _as_nchw(images)
    if min(images.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} are smaller than the classifier's {MIN_SIZE}x{MIN_SIZE}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(images.shape[1], n_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(x_all)
    net.train()
    for epoch in range(epochs):
        start, total, count = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(n, generator=g).split(BATCH):
            x = _scaled(x_all[idx], value_range).to(device)
            y = y_all[idx].to(device)
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        if progress:
            progress(f"epoch {epoch + 1}/{epochs}, loss {total / max(count, 1):.4f} ({time.perf_counter() - start:.0f} s)")
    return net.eval()


# --------------------------------------------------------------------------- metrics


def frechet_distance(a: np.ndarray, b: np.ndarray, *, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a [N, F]`` and ``b [M, F]``.

    ``||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 sqrtm(C_a C_b))``, the FID formula. Where the
    product of the covariances is singular (dead feature units, fewer samples than features)
    ``eps * I`` is added to both; a tiny imaginary part of the square root is dropped, and
    the result is clipped at 0.
    """
    import scipy.linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, F] with the same F, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))

    def sqrt_of_product(ca, cb):
        prod = ca @ cb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "matrix is singular": judged below by the residual
            root = scipy.linalg.sqrtm(prod)
        scale = max(np.linalg.norm(prod), 1e-300)
        ok = np.isfinite(root).all() and np.linalg.norm(root @ root - prod) / scale < 1e-5
        return root, ok

    root, ok = sqrt_of_product(ca, cb)
    if not ok:
        offset = eps * np.eye(len(ca))
        root, _ = sqrt_of_product(ca + offset, cb + offset)
    root = np.real(root)
    diff = mu_a - mu_b
    d = float(diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(root))
    return max(d, 0.0)


def class_histogram(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of ``labels`` in each class ``0 .. n_classes - 1`` (float64, summing to 1)."""
    labels = np.asarray(labels).ravel()
    if len(labels) == 0:
        raise ValueError("no labels to count")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels outside 0..{n_classes - 1}: {labels.min()}..{labels.max()}")
    return np.bincount(labels.astype(np.int64), minlength=n_classes) / len(labels)


def mode_coverage(hist_samples: np.ndarray, hist_data: np.ndarray, *, min_share: float = 0.1) -> int:
    """Number of classes (of those present in the data) whose share among the samples is at
    least ``min_share`` times their share in the data: 10 of 10 for a generator that makes
    every MNIST digit at least a tenth as often as the data has it."""
    hs, hd = np.asarray(hist_samples, dtype=np.float64), np.asarray(hist_data, dtype=np.float64)
    if hs.shape != hd.shape:
        raise ValueError(f"histograms of different lengths: {hs.shape} and {hd.shape}")
    present = hd > 0
    return int(np.count_nonzero(present & (hs >= min_share * hd)))


# --------------------------------------------------------------------------- data and cache


def _read(file: Path):
    """((train images, labels), (evaluation images, labels), evaluation split name, value_range)."""
    with open_store(file) as f:
        attrs = attrs_of(f)
        splits = split_names(f)
        if "train" not in splits or "labels" not in f["train"]:
            raise PgenError(
                f"{file} has no labels: the classifier metrics (FID, class histogram) need a labelled dataset such as mnist"
            )
        split = next((s for s in ("test", "val") if s in splits and "labels" in f[s]), "train")
        try:
            train = f["train"]["images"][:], f["train"]["labels"][:]
            evaluation = train if split == "train" else (f[split]["images"][:], f[split]["labels"][:])
        except OSError as e:
            raise PgenError(f"{file}: cannot be read (corrupt or truncated?): {first_line(e)}") from None
    lo, hi = (float(v) for v in attrs.get("value_range", (0.0, 1.0)))
    if not hi > lo:
        raise PgenError(f"{file}: value_range {lo}..{hi} is empty; the classifier needs it to scale images")
    images, labels = train
    if len(labels) == 0 or labels.min() < 0:
        found = labels.min() if len(labels) else "none"
        raise PgenError(f"{file}: the train split's labels must be class ids 0, 1, 2, ... (found {found})")
    if images.ndim not in (3, 4) or min(images.shape[-2:]) < MIN_SIZE:
        raise PgenError(
            f"{file}: images of shape {images.shape[1:]} are too small for the classifier (at least {MIN_SIZE}x{MIN_SIZE})"
        )
    return train, evaluation, split, (lo, hi)


def _save(path: Path, clf: Classifier, *, split: str, seed: int, epochs: int) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "digest": clf.digest,
        "net": {k: v.detach().cpu() for k, v in clf.net.state_dict().items()},
        "in_channels": int(clf.net.body[0].in_channels),
        "widths": list(WIDTHS),
        "pool": POOL,
        "features": FEATURES,
        "n_classes": int(clf.n_classes),
        "value_range": [float(v) for v in clf.value_range],
        "test_accuracy": float(clf.test_accuracy),
        "accuracy_split": split,
        "seed": int(seed),
        "epochs": int(epochs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path, digest: str, device: torch.device) -> tuple[Classifier, str] | None:
    """The cached classifier and the split its accuracy is on, or None where there is none or it is
    corrupt / foreign (then it is retrained)."""
    if not path.is_file():
        return None
    try:
        p = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(p, dict) or p.get("format") != FORMAT or p.get("version") != VERSION or p.get("digest") != digest:
            return None
        net = SmallCNN(int(p["in_channels"]), int(p["n_classes"]), tuple(p["widths"]), int(p["pool"]), int(p["features"]))
        net.load_state_dict(p["net"])
        value_range = (float(p["value_range"][0]), float(p["value_range"][1]))
        accuracy = float(p["test_accuracy"])
        split = str(p["accuracy_split"])
    except Exception:  # noqa: BLE001 - truncated zip, pickled objects, missing keys, wrong shapes: train again
        return None
    if not math.isfinite(accuracy):
        return None
    return Classifier(net.to(device).eval(), int(p["n_classes"]), value_range, accuracy, digest), split


def _as_nchw(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        return images
    raise ValueError(f"images must be [N, H, W] or [N, C, H, W], got shape {images.shape}")


def _scaled(x, value_range: tuple[float, float]) -> torch.Tensor:
    """A batch in stored units as float32 in [0, 1] (by the store's value_range)."""
    x = torch.as_tensor(x)
    lo, hi = value_range
    return (x.float() - lo) / (hi - lo)
