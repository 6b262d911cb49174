"""Data speed: synthetic event generation, and reading a pgen dataset against plain h5py.

    python benchmarks/data.py [--quick]

Prints synthetic events/s at 64 and 512 pixels with 1 and 2 worker processes (whole
``synth.generate`` calls: process start-up and the compressed writes included), then images/s
through ``make_loader(ImageDataset(...), batch_size=128)`` (streaming from disk, shuffled and
in order, and ``in_memory=True``; dataset construction included) against a plain h5py loop
over the same images (one ``ds[i]`` per image, and one bulk slice), all in the same run, with
the ratios. A couple of minutes on 2 cores. The load average is printed too: on a machine
shared with other work the 2-worker figures say more about the neighbours than about pgen;
the single-process CPU ms per event does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def _synth_rate(folder: Path, size: int, events: int, workers: int) -> tuple[float, float]:
    """(events/s of wall time, CPU ms per event in this process: meaningful with 1 worker)."""
    from pgen.data import synth

    path = folder / f"synth-{size}-{workers}.h5"
    start, cpu = time.perf_counter(), time.process_time()
    synth.generate(path, events=events, size=size, crop=None, seed=0, workers=workers, val_fraction=0.1, test_fraction=0.1)
    rate = events / (time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) / events * 1000
    path.unlink()
    return rate, cpu_ms


def _timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0

    import torch

    from pgen.data import synth
    from pgen.data.dataset import ImageDataset, make_loader

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"synthetic LArTPC events (synth.generate, whole call); {os.cpu_count()} CPUs, load average {load:.1f}")
        rates = {}
        for size, events in ((64, int(1600 * scale)), (512, int(320 * scale))):
            for workers in (1, 2):
                rates[size, workers], cpu_ms = _synth_rate(folder, size, events, workers)
                cpu = f", {cpu_ms:.1f} CPU ms/event" if workers == 1 else ""
                print(f"  size {size:3d}, {workers} worker{'s' if workers > 1 else ' '}: {rates[size, workers]:8.1f} events/s"
                      f"  ({events} events{cpu})")
            print(f"  size {size:3d}: 2 workers / 1 worker = {rates[size, 2] / rates[size, 1]:.2f}x")

        n_events = int(4000 * scale)
        path = folder / "lartpc.h5"
        start = time.perf_counter()
        synth.generate(path, events=n_events, size=256, crop=64, seed=0, workers=2, val_fraction=0.1, test_fraction=0.1)
        print(f"\nreading: {n_events} events 256 -> 64x64 crops (made in {time.perf_counter() - start:.1f} s with 2 workers),"
              " split 'train'")

        def loader(in_memory: bool, shuffle: bool = True):
            def run():
                n = 0
                for batch in make_loader(ImageDataset(path, "train", in_memory=in_memory), batch_size=128, shuffle=shuffle):
                    n += len(batch)
                return n

            return run

        def h5py_per_image():
            with h5py.File(path, "r") as f:
                ds = f["train/images"]
                total = 0.0
                for i in range(len(ds)):
                    total += float(ds[i][0, 0])
                return len(ds)

        def h5py_bulk():
            with h5py.File(path, "r") as f:
                return len(f["train/images"][:])

        figures = {}
        for name, fn in (
            ("pgen loader, streaming (shuffled)", loader(False)),
            ("pgen loader, streaming (in order)", loader(False, shuffle=False)),
            ("pgen loader, in_memory=True (shuffled)", loader(True)),
            ("h5py, f['train/images'][i] per image", h5py_per_image),
            ("h5py, one bulk slice [:]", h5py_bulk),
        ):
            fn()  # warm the page cache and imports
            seconds, n = _timed(fn)
            figures[name] = n / seconds
            print(f"  {name:40s} {figures[name]:10.0f} images/s")
        stream, ordered, memory, per_image, bulk = figures.values()
        print(f"  streaming loader / h5py per image = {stream / per_image:.2f}x (shuffled), {ordered / per_image:.2f}x (in order)")
        print(f"  in-memory loader / h5py per image = {memory / per_image:.2f}x")
        print(f"  in-memory loader / h5py bulk read = {memory / bulk:.2f}x  (the bulk read is a lower bound on a full pass)")


if __name__ == "__main__":
    main()
