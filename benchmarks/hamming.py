"""Exact Hamming nearest neighbours: pgen's engines against faiss and scipy on the same data.

    python benchmarks/hamming.py [--quick] [--threads N] [--repeat N] [--scipy-queries N]

Two workloads, each a nearest-training-image search for 2,000 query images:

* MNIST 28 x 28 (784 bits), binarised at ``pixel > 127`` (uint8), 2,000 test digits against
  the 60,000 training digits (``builtin.resolve("mnist")``: set ``PGEN_MNIST_DIR`` offline);
* ``lartpc64`` 64 x 64 (4,096 bits, ~6 % of pixels on), binarised at ``ADC > 0``: the 1,200
  test + 800 val crops against 50,000 references: the 9,600 training crops and copies of them
  shifted by 4 pixels (right, down, left, up, diagonal; zero fill, no wrap-around), the first
  50,000 of those 57,600. Shifted copies keep the images' sparsity and track structure; they are
  not new events (generating 40,000 more takes minutes).

For each: pgen's CPU engines (``auto``, which is int8 ``torch._int_mm`` where oneDNN is present;
``float32``; numpy ``popcount`` on a query subset), faiss ``IndexBinaryFlat`` (if ``faiss-cpu``
is installed) on the same packed codes, and scipy ``cdist(metric="hamming")`` on a query subset
(extrapolated linearly in the number of queries: marked ``~``). Reported: best wall time of
``--repeat`` runs, throughput in bit-pairs/s (``Nq * Nr * pixels / s``), peak memory (the rise of
the process's resident set size over its value before the call, sampled every millisecond from
/proc/self/statm after returning freed heap to the OS; it sees torch, faiss and numpy alike,
unlike tracemalloc), the ratio to faiss's throughput, and whether the results equal pgen's
(distances, and indices: faiss's ties may pick another index at the same distance, counted).
With CUDA present, the CUDA path too. torch and faiss use ``--threads`` threads; numpy and
scipy one. The load average is printed: on a shared machine the absolute numbers move, the
ratios (same data, same run) much less.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import threading
import time

import numpy as np

from pgen.evaluate import hamming


class PeakRSS:
    """Peak resident-set growth (bytes) over the start of a ``with`` block, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the high-water mark (only rises, so deltas may read 0)
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: give freed heap back so reuse shows as growth
        except (OSError, AttributeError):
            pass
        self.base = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss() - self.base)


def timed(fn, repeat: int):
    """(result, best seconds, peak bytes of the first run)."""
    best, peak, result = float("inf"), 0, None
    for r in range(repeat):
        with PeakRSS() as mem:
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        if r == 0:
            peak = mem.peak
    return result, best, peak


def mnist_data(n_queries: int):
    import h5py

    from pgen.data import builtin

    with h5py.File(builtin.resolve("mnist"), "r") as f:
        train = f["train/images"][:]
        test = f["test/images"][:n_queries]
    return test, train, 127


def lartpc_data(n_queries: int, n_refs: int):
    import h5py

    from pgen.data import builtin

    with h5py.File(builtin.resolve("lartpc64"), "r") as f:
        train = f["train/images"][:]
        queries = np.concatenate([f["test/images"][:], f["val/images"][:]])[:n_queries]
    shifted = [train]
    for dy, dx in ((0, 4), (4, 0), (0, -4), (-4, 0), (4, 4)):
        if sum(len(s) for s in shifted) >= n_refs:
            break
        out = np.zeros_like(train)
        h, w = train.shape[1:]
        out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = train[
            :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        shifted.append(out)
    return queries, np.concatenate(shifted)[:n_refs], 0


def faiss_search(faiss, q: np.ndarray, r: np.ndarray):
    index = faiss.IndexBinaryFlat(r.shape[1] * 64)
    index.add(r.view(np.uint8))
    d, i = index.search(q.view(np.uint8), 1)
    return d[:, 0].astype(np.int64), i[:, 0]


def scipy_search(q_images: np.ndarray, r_images: np.ndarray, threshold: float, bits: int):
    from scipy.spatial.distance import cdist

    qb = q_images.reshape(len(q_images), -1) > threshold
    rb = r_images.reshape(len(r_images), -1) > threshold
    d = np.rint(cdist(qb, rb, metric="hamming") * bits).astype(np.int64)
    i = d.argmin(axis=1)
    return d[np.arange(len(i)), i], i


def bench(name: str, q_images, r_images, threshold, args, faiss) -> None:
    bits = int(np.prod(q_images.shape[1:]))
    nq, nr = len(q_images), len(r_images)
    Q, R = hamming.pack(q_images, threshold), hamming.pack(r_images, threshold)
    pairs = nq * nr * bits
    print(f"\n{name}: {nq:,} queries x {nr:,} references, {bits} bits: {pairs:.3g} bit-pairs")
    # warm-up (oneDNN kernels, faiss and torch thread pools) on a small slice
    hamming.nearest(Q[:64], R[:4096])
    if faiss is not None:
        faiss_search(faiss, Q[:64], R[:4096])

    (ref_d, ref_i), t_auto, m_auto = timed(lambda: hamming.nearest(Q, R), args.repeat)
    rows = [(f"pgen auto ({hamming.engine_for('cpu')})", t_auto, m_auto, "", "reference")]

    def compare(d, i, lo=0, hi=None):
        hi = nq if hi is None else hi
        if not np.array_equal(d, ref_d[lo:hi]):
            return f"DISTANCES DIFFER ({int((d != ref_d[lo:hi]).sum())})"
        ties = int((i != ref_i[lo:hi]).sum())
        return "equal" if ties == 0 else f"distances equal, {ties} tie(s) with another index"

    (d, i), t, m = timed(lambda: hamming.nearest(Q, R, engine="float32"), args.repeat)
    rows.append(("pgen float32", t, m, "", compare(d, i)))
    k = min(nq, args.popcount_queries)
    (d, i), t, m = timed(lambda: hamming.nearest(Q[:k], R, engine="popcount"), 1)
    rows.append((f"pgen popcount ({k} q)", t * nq / k, m, "~", compare(d, i, 0, k)))
    t_faiss = None
    if faiss is not None:
        (d, i), t_faiss, m = timed(lambda: faiss_search(faiss, Q, R), args.repeat)
        rows.append(("faiss IndexBinaryFlat", t_faiss, m, "", compare(d, i)))
    else:
        print("faiss: not installed (pip install faiss-cpu), skipped")
    k = min(nq, args.scipy_queries)
    (d, i), t, m = timed(lambda: scipy_search(q_images[:k], r_images, threshold, bits), 1)
    rows.append((f"scipy cdist ({k} q)", t * nq / k, m, "~", compare(d, i, 0, k)))
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        hamming.nearest(Q[:64], R[:4096], device="cuda")
        (d, i), t, m = timed(lambda: hamming.nearest(Q, R, device="cuda"), args.repeat)
        rows.append(("pgen cuda (" + torch.cuda.get_device_name() + ")", t, m, "", compare(d, i)))

    print(f"{'engine':<30} {'time s':>9} {'bit-pairs/s':>12} {'peak MB':>8} {'vs faiss':>9}  result")
    for label, t, m, approx, result in rows:
        ratio = f"{t_faiss / t:.2f}x" if t_faiss else "-"
        print(f"{label:<30} {approx + format(t, '.3f'):>9} {pairs / t:>12.3g} {m / 2**20:>8.0f} {ratio:>9}  {result}")
    if not cuda:
        print("cuda: no GPU here, skipped")
    # how much a perfect popcount-bound pruning (skip refs with ||a|-|b|| > best) could have skipped
    qp, rp = hamming.popcount(Q), np.sort(hamming.popcount(R))
    kept = np.searchsorted(rp, qp + ref_d, side="right") - np.searchsorted(rp, qp - ref_d, side="left")
    print(f"popcount bound | |a|-|b| | <= nearest distance keeps {kept.sum() / (nq * nr):.0%} of the pairs "
          f"(the most a popcount-sorted pruning could skip: {1 - kept.sum() / (nq * nr):.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 queries, 20,000 references (a smoke run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and faiss threads")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per engine (best is shown)")
    parser.add_argument("--scipy-queries", type=int, default=20, help="queries scipy runs (extrapolated)")
    parser.add_argument("--popcount-queries", type=int, default=200, help="queries the numpy engine runs (extrapolated)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
    nq = 500 if args.quick else 2000
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads {args.threads}, load average {load:.2f}, torch {torch.__version__}, numpy {np.__version__}, "
          f"faiss {getattr(faiss, '__version__', 'absent')}")
    q, r, threshold = mnist_data(nq)
    if args.quick:
        r = r[:20000]
    bench("MNIST 28x28, pixel > 127", q, r, threshold, args, faiss)
    q, r, threshold = lartpc_data(nq, 20000 if args.quick else 50000)
    bench("lartpc64 64x64, ADC > 0 (train + shifted copies)", q, r, threshold, args, faiss)


if __name__ == "__main__":
    main()
