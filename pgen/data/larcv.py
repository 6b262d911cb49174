"""Readers for LArCV files without a LArCV or ROOT installation.

* LArCV ROOT files (LArCV1 and larcv2 layouts) through ``uproot``: ``image2d_<producer>_tree``
  trees whose ``_image_v`` holds one flat, column-major float vector per projection, sized by the
  ``_meta`` row / column counts.
* larcv3 HDF5 files (PILArNet's format) through ``h5py``: ``/Data/image2d_<producer>_group``
  (dense images) and ``/Data/sparse2d_<producer>_group`` (voxels, densified here).

Each format has a ``*_scan(path, producer)`` that validates the file and returns a :class:`Table`
(what to read, how many events, pixels per event), and a ``*_events(path, table_name, start, stop)``
that yields events ``[start, stop)`` one at a time as lists of 2-D float32 arrays, one per
projection (plane). Reading streams: memory holds a few events, whatever the file size.
Every failure is one :class:`~pgen.errors.PgenError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pgen.errors import PgenError

ROOT_STEP = "16 MB"  # uproot reads at most this much per step


class LayoutError(ValueError):
    """A tree whose branches do not look like an image2d product."""


@dataclass(frozen=True)
class Table:
    """What a scan found: the tree / group to read, its entry count and pixels in its first event."""

    name: str
    n_events: int
    pixels_per_event: int
    planes: int


# --------------------------------------------------------------------------- LArCV ROOT (uproot)


def root_scan(path: str | Path, producer: str | None = None) -> Table:
    """Open a LArCV ROOT file, pick its image2d tree (by ``producer`` where there are several)."""
    with _root_open(path) as f:
        name = _image_tree(f, path, producer)
        try:
            n = int(f[name].num_entries)
            image_branches(f[name].keys())
        except LayoutError as e:
            raise PgenError(f"{path}: {name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - uproot raises many types on damaged files
            raise PgenError(f"{path}: tree {name} cannot be read (truncated or corrupt?): {_short(e)}") from None
    first = next(root_events(path, name, 0, 1), []) if n else []
    return Table(name, n, sum(int(im.size) for im in first), len(first))


def _image_tree(f, path, producer: str | None) -> str:
    classes = {k.split(";")[0]: v for k, v in f.classnames().items()}
    trees = {k for k, v in classes.items() if v == "TTree"}
    producers = {m.group(1): t for t in trees if (m := re.fullmatch(r"image2d_(.+)_tree", t))}
    clusters = sorted(t for t in trees if t.startswith("cluster2d_"))
    listing = ", ".join(k if v == "TTree" else f"{k} ({v})" for k, v in sorted(classes.items())) or "none"
    if producer is not None and producer not in producers:
        if f"cluster2d_{producer}_tree" in trees:
            raise PgenError(
                f"{path}: cluster2d_{producer}_tree holds cluster2d, which uproot cannot read (ROOT memberwise "
                f"serialisation); image2d producers here: {', '.join(sorted(producers)) or 'none'}"
            )
        raise PgenError(f"{path}: no image2d_{producer}_tree; image2d producers here: {', '.join(sorted(producers)) or 'none'} (it holds: {listing})")
    if not producers:
        if clusters:
            raise PgenError(
                f"{path}: holds only cluster2d trees ({', '.join(clusters)}), which uproot cannot read (ROOT memberwise "
                "serialisation); pgen imports image2d_<producer>_tree trees"
            )
        raise PgenError(f"{path}: no image2d_<producer>_tree in this ROOT file; it holds: {listing}")
    if producer is None:
        if len(producers) > 1:
            raise PgenError(f"{path}: several image2d trees ({', '.join(sorted(producers))}); pick one with --producer")
        producer = next(iter(producers))
    return producers[producer]


def root_events(path: str | Path, tree_name: str, start: int, stop: int) -> Iterator[list[np.ndarray]]:
    """Events ``[start, stop)`` of one image2d tree, as lists of [rows, cols] float32 arrays."""
    try:
        with _root_open(path) as f:
            tree = f[tree_name]
            img, rows, cols = image_branches(tree.keys())
            yield from _tree_events(tree, img, rows, cols, start, stop, path)
    except PgenError:
        raise
    except LayoutError as e:
        raise PgenError(f"{path}: {tree_name}: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise PgenError(f"{path}: {tree_name} cannot be read (truncated or corrupt?): {_short(e)}") from None


def _tree_events(tree, img, rows, cols, start, stop, path) -> Iterator[list[np.ndarray]]:
    try:
        for arrays in tree.iterate([img, rows, cols], entry_start=start, entry_stop=stop, step_size=ROOT_STEP, library="np"):
            for k in range(len(arrays[img])):
                yield [_column_major(v, r, c, path) for v, r, c in zip(arrays[img][k], arrays[rows][k], arrays[cols][k])]
                start += 1
    except PgenError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PgenError(f"{path}: {tree.name} cannot be read from entry {start} (truncated or corrupt?): {_short(e)}") from None


def image_branches(keys: list[str]) -> tuple[str, str, str]:
    """The pixel, row-count and column-count branches among a tree's (full-path) keys.

    larcv2 names them ``..._image_v._img``, ``..._image_v._meta._row_count`` / ``._col_count``;
    LArCV1 and other versions differ in the meta members, so rows / columns are found as the
    ``_meta`` member whose name mentions ``row`` / ``col`` (preferring ``_row_count``, ``_rows``).
    """
    leaf = {k: re.split(r"[./]", k)[-1] for k in keys}
    img = [k for k in keys if leaf[k] == "_img"]
    if len(img) != 1:
        raise LayoutError(f"no single '_img' pixel branch among {len(keys)} branches (found {img or 'none'}); not an image2d tree")
    meta = [k for k in keys if "_meta" in k and k != img[0]]
    return img[0], _member(meta, leaf, "row"), _member(meta, leaf, "col")


def _member(keys: list[str], leaf: dict[str, str], word: str) -> str:
    found = [k for k in keys if word in leaf[k].lower()]
    for preferred in (f"_{word}_count", f"_{word}s", f"_n{word}s", f"_num_{word}s"):
        exact = [k for k in found if leaf[k] == preferred]
        if len(exact) == 1:
            return exact[0]
    if len(found) == 1:
        return found[0]
    raise LayoutError(f"cannot tell the image {word} count among the meta branches ({', '.join(leaf[k] for k in found) or 'none'})")


def _column_major(values, rows, cols, path) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float32)
    rows, cols = int(rows), int(cols)
    if flat.size != rows * cols:
        raise PgenError(f"{path}: an image has {flat.size} pixels but its meta says {rows} x {cols}")
    return np.ascontiguousarray(flat.reshape(cols, rows).T)


def _root_open(path):
    import uproot

    try:
        return uproot.open(path)
    except FileNotFoundError:
        raise PgenError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001
        raise PgenError(f"{path}: not a readable ROOT file (truncated or corrupt?): {_short(e)}") from None


# --------------------------------------------------------------------------- larcv3 HDF5 (h5py)

DENSE, SPARSE = "image2d", "sparse2d"


def larcv3_scan(path: str | Path, producer: str | None = None) -> Table:
    """Open a larcv3 file and pick its image2d or sparse2d group (by ``producer`` where there are several)."""
    with _h5_open(path) as f:
        try:
            name = _larcv3_group(f, path, producer)
            n = len(f["Data"][name]["extents"])
        except (KeyError, OSError, RuntimeError, ValueError) as e:
            raise PgenError(f"{path}: larcv3 layout cannot be read (truncated or corrupt?): {_short(e)}") from None
    first = next(larcv3_events(path, name, 0, 1), []) if n else []
    return Table(name, n, sum(int(im.size) for im in first), len(first))


def _larcv3_group(f, path, producer: str | None) -> str:
    if "Data" not in f:
        if f.attrs.get("format") in ("pgen-images", b"pgen-images"):
            raise PgenError(f"{path}: already a pgen dataset, not a larcv3 file; use it directly")
        raise PgenError(f"{path}: an HDF5 file without larcv3's /Data group; not a larcv3 file")
    groups = sorted(f["Data"].keys())
    usable = [g for g in groups if re.fullmatch(rf"({DENSE}|{SPARSE})_.+_group", g)]
    if not usable and groups and all(g.startswith("cluster2d_") for g in groups):
        raise PgenError(f"{path}: holds only cluster2d ({', '.join(groups)}); pgen imports image2d and sparse2d products")
    if producer is not None:
        usable = [g for g in usable if producer in (g, g[: -len("_group")], _producer(g))]
    if not usable:
        which = f" for producer '{producer}'" if producer else ""
        raise PgenError(f"{path}: no image2d or sparse2d group{which}; groups in /Data: {', '.join(groups) or 'none'}")
    if len(usable) > 1:
        raise PgenError(f"{path}: several image products ({', '.join(usable)}); pick one with --producer")
    return usable[0]


def larcv3_events(path: str | Path, group_name: str, start: int, stop: int) -> Iterator[list[np.ndarray]]:
    """Events ``[start, stop)`` of one larcv3 image2d / sparse2d group, densified, as float32 arrays."""
    with _h5_open(path) as f:
        try:
            g = f["Data"][group_name]
            extents = g["extents"][start:stop]
            if not len(extents):
                return
            lo = int(extents[0]["first"])
            hi = int(extents[-1]["first"]) + int(extents[-1]["N"])
            meta = g["image_meta"][lo:hi]
            dense = group_name.startswith(DENSE)
            per_image = g["image_extents" if dense else "voxel_extents"][lo:hi]
        except (KeyError, OSError, ValueError) as e:
            raise PgenError(f"{path}: group {group_name} cannot be read (truncated or corrupt?): {_short(e)}") from None
        for e in extents:
            first, count = int(e["first"]) - lo, int(e["N"])
            try:
                yield [
                    _larcv3_image(g, dense, per_image[j], meta[j])
                    for j in range(first, first + count)
                ]
            except (KeyError, OSError, ValueError) as err:
                raise PgenError(f"{path}: group {group_name} cannot be read (truncated or corrupt?): {_short(err)}") from None


def _larcv3_image(g, dense: bool, extent, meta) -> np.ndarray:
    shape = tuple(int(s) for s in meta["number_of_voxels"])
    a, n = int(extent["first"]), int(extent["N"])
    if dense:
        flat = g["images"][a : a + n]
        if flat.size != np.prod(shape):
            raise ValueError(f"an image has {flat.size} pixels but its meta says {' x '.join(map(str, shape))}")
        return flat.astype(np.float32, copy=False).reshape(shape)
    voxels = g["voxels"][a : a + n]
    image = np.zeros(int(np.prod(shape)), dtype=np.float32)
    ids = voxels["id"].astype(np.int64)
    if len(ids) and (ids.max() >= image.size):
        raise ValueError(f"voxel id {ids.max()} outside the {' x '.join(map(str, shape))} image")
    image[ids] = voxels["value"]
    return image.reshape(shape)


def _producer(group: str) -> str:
    return group.split("_", 1)[1][: -len("_group")]


def _h5_open(path):
    import h5py

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise PgenError(f"{path}: no such file") from None
    except OSError as e:
        raise PgenError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {_short(e)}") from None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(e).__name__)
