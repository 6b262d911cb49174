"""The pgen HDF5 dataset store: one file per dataset, written atomically, read by chunk.

Layout (see DESIGN.md)::

    /                   attrs: format="pgen-images", version=1, source, created_by, value_range
    /<split>/images     [N, H, W] or [N, C, H, W], uint8 or float32, one image per chunk, compressed
    /<split>/labels     optional [N] int64
    /<split>/segmentation  optional [N, H, W] uint8 semantic class per pixel

Splits are usually ``train``, ``val`` and ``test``; ``pgen deploy`` writes ``samples``.
This module needs only h5py and numpy; the torch ``Dataset`` lives in ``pgen.data.dataset``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from pgen import __version__
from pgen.errors import PgenError, first_line

FORMAT = "pgen-images"
VERSION = 1
SPLITS = ("train", "val", "test")
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
COMPRESSION = {"compression": "gzip", "compression_opts": 4}


# --------------------------------------------------------------------------- writing


class SplitWriter:
    """Appends images (and optional labels / segmentation) to one split of an open store."""

    def __init__(self, group: h5py.Group, image_shape: tuple[int, ...], dtype, labels: bool, segmentation: bool):
        self.group = group
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in IMAGE_DTYPES:
            raise PgenError(f"image dtype {self.dtype} is not supported: use uint8 or float32")
        if len(self.image_shape) not in (2, 3):
            raise PgenError(f"images must be [H, W] or [C, H, W], got shape {self.image_shape}")
        self.n = 0
        group.create_dataset(
            "images",
            shape=(0, *self.image_shape),
            maxshape=(None, *self.image_shape),
            dtype=self.dtype,
            chunks=(1, *self.image_shape),
            **COMPRESSION,
        )
        if labels:
            group.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        if segmentation:
            hw = self.image_shape[-2:]
            group.create_dataset(
                "segmentation", shape=(0, *hw), maxshape=(None, *hw), dtype=np.uint8, chunks=(1, *hw), **COMPRESSION
            )

    def append(self, images: np.ndarray, labels: np.ndarray | None = None, segmentation: np.ndarray | None = None) -> None:
        images = np.asarray(images)
        if images.shape[1:] != self.image_shape:
            raise PgenError(f"image shape {images.shape[1:]} does not match the split's {self.image_shape}")
        k = images.shape[0]
        for name, arr in (("labels", labels), ("segmentation", segmentation)):
            if (arr is None) != (name not in self.group):
                raise PgenError(f"split '{self.group.name}' was created {'with' if name in self.group else 'without'} {name}")
            if arr is not None and len(arr) != k:
                raise PgenError(f"{len(arr)} {name} for {k} images")
        lo, hi = self.n, self.n + k
        ds = self.group["images"]
        ds.resize(hi, axis=0)
        ds[lo:hi] = images.astype(self.dtype, copy=False)
        if labels is not None:
            self.group["labels"].resize(hi, axis=0)
            self.group["labels"][lo:hi] = np.asarray(labels, dtype=np.int64)
        if segmentation is not None:
            self.group["segmentation"].resize(hi, axis=0)
            self.group["segmentation"][lo:hi] = np.asarray(segmentation, dtype=np.uint8)
        self.n = hi


class StoreWriter:
    """Writes a pgen dataset atomically.

    Everything goes to a hidden temporary file beside ``path``; leaving the ``with`` block
    normally renames it into place, leaving it by an exception (or Ctrl-C) deletes it, so a
    file at ``path`` is always complete.

    >>> with StoreWriter("d.h5", source="synthetic", value_range=(0, 255)) as w:  # doctest: +SKIP
    ...     w.split("train", (64, 64), np.uint8).append(images)
    """

    def __init__(self, path: str | os.PathLike, *, source: str, value_range: tuple[float, float], **attrs: Any):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise PgenError(f"{self.path}: folder {self.path.parent} does not exist; create it first")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.attrs = {
            "format": FORMAT,
            "version": VERSION,
            "source": source,
            "created_by": f"pgen {__version__}",
            "value_range": np.asarray(value_range, dtype=np.float64),
            **attrs,
        }
        self.file: h5py.File | None = None
        self.splits: dict[str, SplitWriter] = {}

    def __enter__(self) -> "StoreWriter":
        self.file = h5py.File(self.tmp, "w")
        for key, value in self.attrs.items():
            self.file.attrs[key] = _attr(value)
        return self

    def split(self, name: str, image_shape, dtype, *, labels: bool = False, segmentation: bool = False) -> SplitWriter:
        assert self.file is not None, "use StoreWriter as a context manager"
        if name in self.splits:
            return self.splits[name]
        self.splits[name] = SplitWriter(self.file.create_group(name), image_shape, dtype, labels, segmentation)
        return self.splits[name]

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.file is not None
        try:
            self.file.close()
        finally:
            if exc_type is None:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


def write_arrays(
    path: str | os.PathLike,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    *,
    source: str,
    value_range: tuple[float, float],
    **attrs: Any,
) -> Path:
    """Write in-memory arrays: ``splits = {"train": {"images": ..., "labels": ...}, ...}``."""
    with StoreWriter(path, source=source, value_range=value_range, **attrs) as w:
        for name, arrays in splits.items():
            images = np.asarray(arrays["images"])
            sw = w.split(
                name,
                images.shape[1:],
                images.dtype,
                labels=arrays.get("labels") is not None,
                segmentation=arrays.get("segmentation") is not None,
            )
            sw.append(images, arrays.get("labels"), arrays.get("segmentation"))
    return Path(path)


def _attr(value: Any) -> Any:
    """h5py stores scalars, strings and arrays; anything else (dicts, lists of str) as JSON."""
    if isinstance(value, (dict, list, tuple)) and not _is_numeric_sequence(value):
        return json.dumps(value)
    return value


def _is_numeric_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, np.number)) for v in value)


# --------------------------------------------------------------------------- reading


def open_store(path: str | os.PathLike) -> h5py.File:
    """Open and validate a pgen dataset for reading; every failure is one clear PgenError."""
    p = Path(path)
    if not p.exists():
        raise PgenError(f"{p}: no such file; make one with `pgen data synth`, `pgen data mnist` or `pgen data import`")
    if p.is_dir():
        raise PgenError(f"{p}: is a folder, not a pgen dataset file")
    try:
        f = h5py.File(p, "r")
    except PermissionError:
        raise PgenError(f"{p}: permission denied; check the file's permissions") from None
    except OSError as e:
        raise PgenError(f"{p}: not a readable HDF5 file (truncated or corrupt?): {first_line(e)}") from None
    fmt = _text(f.attrs.get("format"))
    if fmt != FORMAT:
        f.close()
        raise PgenError(
            f"{p}: an HDF5 file but not a pgen dataset (format attribute {fmt!r}, expected {FORMAT!r}); "
            "convert it with `pgen data import`"
        )
    version = int(f.attrs.get("version", 0))
    if version > VERSION:
        f.close()
        raise PgenError(f"{p}: written by a newer pgen (format version {version} > {VERSION}); upgrade pgen to read it")
    splits = [k for k in f.keys() if isinstance(f[k], h5py.Group) and "images" in f[k]]
    if not splits:
        f.close()
        raise PgenError(f"{p}: a pgen dataset with no image splits (empty or truncated)")
    return f


def split_names(f: h5py.File) -> list[str]:
    order = {name: i for i, name in enumerate((*SPLITS, "samples"))}
    names = [k for k in f.keys() if isinstance(f[k], h5py.Group) and "images" in f[k]]
    return sorted(names, key=lambda k: (order.get(k, len(order)), k))


def read_split(path: str | os.PathLike, split: str, *, n: int | None = None, start: int = 0) -> dict[str, np.ndarray]:
    """Read (part of) one split into memory: ``{"images", ["labels"], ["segmentation"]}``."""
    with open_store(path) as f:
        g = _split_group(f, path, split)
        stop = len(g["images"]) if n is None else min(len(g["images"]), start + n)
        try:
            return {k: g[k][start:stop] for k in ("images", "labels", "segmentation") if k in g}
        except OSError as e:
            raise PgenError(f"{path}: split '{split}' cannot be read (corrupt or truncated?): {first_line(e)}") from None


def _split_group(f: h5py.File, path, split: str) -> h5py.Group:
    if split not in f or not isinstance(f[split], h5py.Group) or "images" not in f[split]:
        raise PgenError(f"{path}: no split '{split}'; it has {', '.join(split_names(f))}")
    return f[split]


def default_threshold(attrs: dict) -> tuple[float, str]:
    """The binarisation threshold (stored units) for a dataset, from its root attributes, and where it came from:
    the noise floor, half the zero-suppression threshold the file records (synthetic ``threshold_adc``, imported
    ``import_threshold``), else 2% of its value range. `pgen evaluate` and the GANs' validation score use it."""
    for key in ("threshold_adc", "import_threshold", "threshold"):
        value = attrs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value) / 2, f"half the dataset's zero-suppression threshold {key}={value:g}"
    lo, hi = (attrs.get("value_range") or [0.0, 1.0])[:2]
    return float(lo) + 0.02 * (float(hi) - float(lo)), "2% of the dataset's value range (no noise floor recorded)"


def attrs_of(f: h5py.File) -> dict[str, Any]:
    """Root attributes as plain Python values (JSON-encoded ones decoded)."""
    out: dict[str, Any] = {}
    for key, value in f.attrs.items():
        value = _text(value)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def describe(path: str | os.PathLike, *, max_images: int = 2000) -> dict[str, Any]:
    """Splits, shapes, dtypes and value / occupancy statistics (over at most ``max_images`` per split)."""
    with open_store(path) as f:
        info: dict[str, Any] = {"path": str(path), "attrs": attrs_of(f), "splits": {}}
        for name in split_names(f):
            g = f[name]
            images = g["images"]
            n = len(images)
            k = min(n, max_images)
            try:
                stats = _image_stats(images, k)
            except OSError as e:
                raise PgenError(f"{path}: split '{name}' cannot be read (corrupt or truncated?): {first_line(e)}") from None
            entry: dict[str, Any] = {
                "n": n,
                "shape": list(images.shape[1:]),
                "dtype": str(images.dtype),
                "labels": "labels" in g,
                "segmentation": "segmentation" in g,
                "stats_over": k,
                **stats,
            }
            if "labels" in g:
                labels, counts = np.unique(g["labels"][:], return_counts=True)
                entry["label_counts"] = {int(a): int(b) for a, b in zip(labels, counts)}
            entry["attrs"] = {k: _text(v) if not isinstance(v, np.ndarray) else v.tolist() for k, v in g.attrs.items()}
            info["splits"][name] = entry
    return info


def iter_images(path: str | os.PathLike, split: str, *, batch: int = 256) -> Iterator[np.ndarray]:
    """Stream a split's images in batches (bounded memory)."""
    with open_store(path) as f:
        images = _split_group(f, path, split)["images"]
        for lo in range(0, len(images), batch):
            yield images[lo : lo + batch]


def _image_stats(ds: h5py.Dataset, k: int) -> dict[str, Any]:
    """Value and occupancy statistics over ``k`` evenly spaced images, read one at a time (bounded memory)."""
    n = len(ds)
    if k == 0:
        return {}
    idx = np.unique(np.linspace(0, n - 1, k).astype(np.int64))
    occ = np.empty(len(idx))
    lo, hi, total, count = np.inf, -np.inf, 0.0, 0
    for j, i in enumerate(idx):
        x = ds[int(i)]
        occ[j] = np.count_nonzero(x) / x.size
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        total += float(x.sum(dtype=np.float64))
        count += x.size
    return {
        "min": lo,
        "max": hi,
        "mean": total / count,
        "occupancy_mean": float(occ.mean()),
        "occupancy_median": float(np.median(occ)),
        "occupancy_min": float(occ.min()),
        "occupancy_max": float(occ.max()),
        "empty_images": int((occ == 0).sum()),
    }


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
