"""A torch ``Dataset`` over one split of a pgen store, and a seeded ``DataLoader``.

The HDF5 file is opened lazily, once per process, so the dataset pickles into DataLoader
worker processes cleanly. Images stream from disk by chunk unless ``in_memory`` asks for
the whole split to be read once (fast for small datasets such as ``lartpc64``).
"""

from __future__ import annotations

import os
from typing import Callable

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pgen.data.store import _split_group, open_store
from pgen.errors import PgenError, first_line


class ImageDataset(Dataset):
    """Images of one split as float32 tensors ``[C, H, W]`` (a channel axis is added to 2-D images).

    ``transform`` maps a float tensor batch ``[B, C, H, W]`` (raw stored values) to what the model
    sees, e.g. pixel scaling; it must be picklable when ``num_workers > 0``. With ``labels=True``
    items are ``(image, label)``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        *,
        labels: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        in_memory: bool = False,
    ):
        self.path = str(path)
        self.split = split
        self.want_labels = labels
        self.transform = transform
        with open_store(self.path) as f:
            g = _split_group(f, self.path, split)
            self.n = len(g["images"])
            self.image_shape = tuple(g["images"].shape[1:])
            if labels and "labels" not in g:
                raise PgenError(f"{self.path}: split '{split}' has no labels")
            # labels are small: always held in memory
            self._labels = torch.from_numpy(g["labels"][:]) if labels else None
            self._images = None
            if in_memory:
                try:
                    self._images = torch.from_numpy(g["images"][:])
                except OSError as e:
                    raise PgenError(f"{self.path}: split '{split}' cannot be read (corrupt?): {first_line(e)}") from None
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` as the model sees it."""
        s = self.image_shape
        return (1, *s) if len(s) == 2 else s  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.n

    def _group(self) -> h5py.Group:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.split]

    def read(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of raw images ``[B, C, H, W]`` (float32) and labels, read in index order."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = self._labels[torch.as_tensor(idx)] if self._labels is not None else None
        if self._images is not None:
            images = self._images[torch.as_tensor(idx)]
        else:
            g = self._group()
            order = np.argsort(idx, kind="stable")
            ds = g["images"]
            buf = np.empty((len(idx), *self.image_shape), dtype=ds.dtype)
            for j in order:  # sorted reads walk the file forwards; ds[i] is h5py's fastest path
                buf[j] = ds[int(idx[j])]
            images = torch.from_numpy(buf)
        images = images.to(torch.float32)
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if self.transform is not None:
            images = self.transform(images)
        return images, labels

    def __getitem__(self, i: int):
        images, labels = self.read([i])
        return (images[0], labels[0]) if labels is not None else images[0]

    def __getitems__(self, indices: list[int]):
        """Batched fetch (used by DataLoader): one call per batch instead of one per image."""
        images, labels = self.read(indices)
        return [(images, labels)] if labels is not None else [images]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


def _first(batch):
    """Collate for ``__getitems__``: the batch is already assembled."""
    return batch[0]


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on ``seed`` (and the epoch: iterate it again)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=_first,
        persistent_workers=num_workers > 0,
    )
