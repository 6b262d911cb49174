"""Built-in datasets by name: ``--data lartpc64`` or ``--data mnist`` instead of a path.

A built-in dataset is made on first use in the cache folder and reused afterwards. The cache
folder is ``$PGEN_CACHE`` or the platform's cache folder (``~/.cache/pgen`` on Linux).
This module is part of the shell: it reads the environment; the core functions it calls do not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pgen.errors import PgenError

# name -> what it is (shown by `pgen data --help` and in errors)
BUILTINS = {
    "lartpc64": "synthetic LArTPC events, 64x64 centre-of-charge crops, 12,000 events (generated on first use)",
    "mnist": "MNIST digits 28x28, train 60,000 / test 10,000 (from $PGEN_MNIST_DIR or downloaded once)",
}
DEFAULT = "lartpc64"
# cache file per name; the suffix changes whenever the generator's output changes, so a stale cache is never reused
CACHE_FILES = {"lartpc64": "lartpc64-synth1.h5", "mnist": "mnist.h5"}
LARTPC64 = dict(events=12000, size=256, crop=64, seed=0, val_fraction=0.1, test_fraction=0.1)


def cache_dir() -> Path:
    if os.environ.get("PGEN_CACHE"):
        return Path(os.environ["PGEN_CACHE"])
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pgen"


def resolve(data: str, *, workers: int | None = None, progress: bool = True) -> Path:
    """A path to a pgen dataset for ``data``: an existing file, or a built-in name made on demand."""
    if data in BUILTINS:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CACHE_FILES[data]
        if not path.exists():
            _make(data, path, workers=workers, progress=progress)
        return path
    p = Path(data)
    if not p.exists():
        names = ", ".join(BUILTINS)
        raise PgenError(f"{data}: no such file, and not a built-in dataset ({names})")
    return p


def _make(name: str, path: Path, *, workers: int | None, progress: bool) -> None:
    if progress:
        print(f"pgen: making built-in dataset '{name}' in {path} (first use only)", file=sys.stderr)
    if name == "lartpc64":
        from pgen.data import synth
        from pgen.progress import progress_bar

        with progress_bar(LARTPC64["events"], f"synth {name}", enabled=progress) as advance:
            synth.generate(path, workers=workers or os.cpu_count() or 1, progress=advance, **LARTPC64)
    elif name == "mnist":
        from pgen.data import mnist

        source = os.environ.get("PGEN_MNIST_DIR")
        if not source:
            source = str(mnist.download(cache_dir() / "mnist-idx"))
        mnist.write(path, source)
