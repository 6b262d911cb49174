"""MNIST from the four standard IDX files (gzip or raw), MD5-verified, into a pgen dataset."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from pgen.data.store import write_arrays
from pgen.errors import PgenError

# file stem -> MD5 of the uncompressed IDX file (the published checksums)
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def read_idx(path: Path, expected_md5: str | None = None) -> np.ndarray:
    """Parse one IDX file (``.gz`` or raw), checking its MD5 (of the uncompressed bytes)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise PgenError(f"{path}: cannot be read or decompressed (truncated or corrupt gzip?): {e}") from None
    if expected_md5 is not None:
        digest = hashlib.md5(raw).hexdigest()
        if digest != expected_md5:
            raise PgenError(f"{path}: MD5 {digest} does not match the published {expected_md5}; the file is corrupt, fetch it again")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PgenError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise PgenError(f"{path}: {len(raw) - offset} data bytes for shape {tuple(dims)} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def find_files(folder: Path) -> dict[str, Path]:
    """Each of the four files in ``folder``, as ``.gz`` or raw (the dash-or-dot variants too)."""
    if not folder.is_dir():
        raise PgenError(f"{folder}: MNIST source folder does not exist")
    found: dict[str, Path] = {}
    for stem in FILES:
        for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                found[stem] = folder / name
                break
        else:
            raise PgenError(f"{folder}: missing {stem}.gz (or {stem}); the folder needs the four standard MNIST IDX files")
    return found


def download(dest: Path, mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Download the four files into ``dest`` from the first mirror that serves them all."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem, md5 in FILES.items():
        target = dest / f"{stem}.gz"
        if target.exists():
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{stem}.gz"
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{stem}.")
            try:
                with urllib.request.urlopen(url, timeout=60) as r, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(r, out)
                read_idx(Path(tmp), md5)  # verify before keeping
                os.replace(tmp, target)
                break
            except (OSError, PgenError) as e:
                errors.append(f"{url}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise PgenError(f"could not download {stem}.gz from any mirror ({'; '.join(errors)}); pass --source DIR with the files")
    return dest


def load(source: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Read and verify the four files from a folder: ``{"train": {...}, "test": {...}}``."""
    files = find_files(Path(source))
    arrays = {stem: read_idx(path, FILES[stem]) for stem, path in files.items()}
    return {
        "train": {"images": arrays["train-images-idx3-ubyte"], "labels": arrays["train-labels-idx1-ubyte"]},
        "test": {"images": arrays["t10k-images-idx3-ubyte"], "labels": arrays["t10k-labels-idx1-ubyte"]},
    }


def write(out: str | os.PathLike, source: str | os.PathLike) -> Path:
    """Write MNIST (train 60,000 and test 10,000, with labels) as a pgen dataset."""
    splits = load(source)
    return write_arrays(out, splits, source="mnist", value_range=(0, 255), description="MNIST handwritten digits (LeCun, Cortes, Burges; CC BY-SA 3.0)")
