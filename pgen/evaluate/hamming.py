"""Exact Hamming nearest neighbours between binarised images (memorisation and diversity).

An image is binarised at ``value > threshold`` and bit-packed (:func:`pack`); the distance
between two images is the number of pixels where exactly one of them is on. :func:`nearest`
finds, for every query, its nearest reference exactly, in chunks of bounded memory, with ties
broken by the **lowest reference index**. :func:`copy_rate` turns generated-to-train and
test-to-train distances into the fraction of generated images that sit suspiciously close to a
training image.

How distances are computed: ``d(a, b) = |a| + |b| - 2 |a AND b|``, and ``|a AND b|`` for a
whole block of queries against a block of references is one matrix product of 0/1 matrices.
Integer products of 0/1 values are exact in any arithmetic that holds the counts: int8 inputs
with int32 accumulation (``torch._int_mm``: AMX / VNNI through oneDNN on a CPU, tensor cores on
a GPU), or float32 (exact while counts stay below 2**24). In the int8 engine the ``-|b|`` term
rides along in extra columns of the product (query column 1, reference column ``-min(64, ...)``)
and the query bits are doubled, so the product is directly the score ``2|a AND b| - |b|`` whose
row maximum is the nearest reference; the same code runs on ``device="cpu"`` and ``"cuda"``.
``engine="popcount"`` is the plain numpy alternative (XOR + ``np.bitwise_count``), slower, kept
as an independent check. Byte columns that are empty in every query or in every reference (an
MNIST digit's border) are dropped from the products: they cannot contribute to ``a AND b``.

Pure functions: no files, no MLflow; ``progress(n)`` is called with the number of queries
finished after each block of queries.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

ENGINES = ("auto", "int8", "float32", "popcount")
EXTRA = 64  # largest |value| in one int8 popcount column: pair sums stay far from int16 limits
ALIGN = 64  # product inner dimension padded to a multiple of this (AMX / tensor-core friendly)
MAX_QUERIES = 4096  # queries per block (more gains nothing and costs memory)
MAX_REFS = 8192  # references per block
NUMPY_ON_CPU = True  # on a CPU, unpack bits and take row maxima in numpy (False: the GPU code, for tests)
_INT8_OK: dict[str, bool] = {}


# --------------------------------------------------------------------------- packing


def pack(images, threshold: float = 0.0, *, batch_bytes: int = 1 << 26) -> np.ndarray:
    """Binarise ``images`` at ``value > threshold`` and bit-pack each to ``uint64`` words.

    ``images``: numpy array or torch tensor (any device, any dtype) of shape ``[N, H, W]``,
    ``[N, C, H, W]`` or any ``[N, ...]``; each image's pixels are taken in C order. Returns a
    C-contiguous ``uint64`` array ``[N, ceil(pixels / 64)]``; bit ``j`` of the flattened image is
    bit ``j % 64`` of word ``j // 64`` (little-endian), padding bits are zero (so they never
    change a distance). Works through ``batch_bytes`` of images at a time.
    """
    shape = tuple(images.shape)
    if len(shape) < 2:
        raise ValueError(f"images must be [N, H, W] or [N, C, H, W], got shape {shape}")
    n, bits = shape[0], math.prod(shape[1:])
    words = max(1, -(-bits // 64))
    out = np.zeros((n, words * 8), dtype=np.uint8)
    step = max(1, batch_bytes // max(bits, 1))
    for lo in range(0, n, step):
        block = images[lo : lo + step].reshape(min(step, n - lo), bits) > threshold
        if not isinstance(block, np.ndarray):  # a torch tensor: compare on its device, pack here
            block = block.cpu().numpy()
        out[lo : lo + step, : -(-bits // 8)] = np.packbits(block, axis=1, bitorder="little")
    return out.view(np.uint64)


def popcount(packed) -> np.ndarray:
    """Number of set bits per row of a packed array (``[N, words]`` of any unsigned int) as int64 ``[N]``."""
    b = _as_bytes(packed)
    out = np.empty(len(b), np.int64)
    for lo in range(0, len(b), 8192):  # bounded temporaries
        block = b[lo : lo + 8192]
        if b.shape[1] % 8 == 0 and hasattr(np, "bitwise_count"):  # numpy >= 2
            out[lo : lo + 8192] = np.bitwise_count(block.view(np.uint64)).sum(axis=1, dtype=np.int64)
        else:
            out[lo : lo + 8192] = _POPCOUNT8[block].sum(axis=1, dtype=np.int64)
    return out


_BITS8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")  # [256, 8] 0/1
_POPCOUNT8 = _BITS8.sum(axis=1).astype(np.uint8)
# byte value -> its 8 bits as 8 bytes of 0 / v, read as one little-endian uint64 (v = 1, 2)
_SPREAD = {v: np.ascontiguousarray(_BITS8 * np.uint8(v)).view("<u8").ravel() for v in (1, 2)}


def _as_bytes(packed) -> np.ndarray:
    a = np.asarray(packed)
    if a.ndim != 2 or a.dtype.kind != "u":
        raise ValueError(f"packed images must be a 2-D array of unsigned integers (from pack), got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(a.shape[0], a.shape[1] * a.dtype.itemsize)


# --------------------------------------------------------------------------- nearest neighbours


def nearest(
    queries,
    refs,
    *,
    exclude_self: bool = False,
    device="cpu",
    engine: str = "auto",
    memory: int = 1 << 30,
    chunk: int | tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest reference of every query by Hamming distance.

    ``queries`` ``[Nq, words]`` and ``refs`` ``[Nr, words]``: packed images from :func:`pack`
    (or any unsigned-integer bit rows of the same width in bytes). Returns ``(distances,
    indices)``, both int64 ``[Nq]``: ``distances[i]`` is the smallest Hamming distance from query
    ``i`` to any reference and ``indices[i]`` the **lowest** reference index at that distance.

    ``exclude_self``: the within-set case, ``nearest(x, x, exclude_self=True)``: reference ``i``
    is never the answer for query ``i`` (an identical image elsewhere in the set still is).

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device`` or ``"auto"``.
    ``engine``: ``"int8"`` (int8 matrix products with int32 accumulation), ``"float32"``
    (float32 products, exact below 2**23 pixels), ``"popcount"`` (numpy XOR + popcount, CPU
    only), or ``"auto"``: int8 where the device runs ``torch._int_mm`` fast (CUDA; a CPU with
    oneDNN), else float32. All engines give identical results.

    Work goes in blocks of at most ``chunk`` queries x ``chunk`` references (an int, or a pair
    ``(queries, references)``); by default blocks are sized so the working buffers stay within
    about ``memory`` bytes (besides the inputs and outputs), whatever ``Nq`` and ``Nr``: the
    ``Nq x Nr`` distance matrix is never held. ``progress(n)`` is called after each block of
    ``n`` queries.
    """
    qb, rb = _as_bytes(queries), _as_bytes(refs)
    if qb.shape[1] != rb.shape[1]:
        raise ValueError(f"queries have {qb.shape[1] * 8} bits per image but references {rb.shape[1] * 8}: pack both alike")
    nq, nr = len(qb), len(rb)
    if exclude_self and nq != nr:
        raise ValueError(f"exclude_self needs the same images as queries and references, got {nq} and {nr}")
    if nq == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if nr == 0 or (exclude_self and nr < 2):
        raise ValueError(f"no reference images to compare {nq} queries against")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if chunk is not None:
        cq, cr = (chunk, chunk) if isinstance(chunk, (int, np.integer)) else tuple(chunk)
        if cq < 1 or cr < 1:
            raise ValueError(f"chunk sizes must be at least 1, got {chunk!r}")
        chunk = (int(cq), int(cr))
    if engine == "popcount":
        return _nearest_popcount(qb, rb, exclude_self, memory, chunk, progress)
    q_pop, r_pop = popcount(qb), popcount(rb)
    import torch

    dev = _device(device)
    if engine == "auto":
        engine = engine_for(dev)
    # byte columns with no bit in any query or in any reference add nothing to |a AND b|
    active = np.flatnonzero(np.bitwise_or.reduce(qb, axis=0) & np.bitwise_or.reduce(rb, axis=0))
    if len(active) == qb.shape[1]:
        active = None
    return _nearest_matmul(torch, qb, rb, active, q_pop, r_pop, exclude_self, dev, engine, memory, chunk, progress)


def _nearest_matmul(torch, qb, rb, active, q_pop, r_pop, exclude_self, dev, engine, memory, chunk, progress):
    """Blocks of queries x references through one matrix product each (int8 or float32).

    The products and buffers are torch tensors on ``dev``; on a CPU the bit unpacking and the
    row arg-max run in numpy on the same memory (a lookup table and a SIMD argmax: several times
    faster there than their torch equivalents), unless ``NUMPY_ON_CPU`` is off, which runs the
    exact code a GPU runs. ``active``: the byte columns to use (None: all).
    """
    nq, nr = len(qb), len(rb)
    nbytes = qb.shape[1] if active is None else len(active)
    nbits = nbytes * 8
    int8 = engine == "int8"
    host = dev.type == "cpu" and NUMPY_ON_CPU
    extra = -(-int(r_pop.max()) // EXTRA) if int8 else 0
    if not int8 and 2 * nbits >= 1 << 24:
        raise ValueError(f"{nbits} bits per image is beyond exact float32 products; use engine='int8'")
    k = max(ALIGN, -(-(nbits + extra) // ALIGN) * ALIGN)
    cq, cr = chunk or _plan(nq, nr, k, 1 if int8 else 5, memory)
    cq, cr = min(cq, nq), min(cr, nr)
    pq, pr = max(32, -(-cq // 8) * 8), max(8, -(-cr // 8) * 8)  # cuBLAS int8: rows > 16, multiples of 8
    qbuf = torch.zeros(pq, k, dtype=torch.uint8, device=dev)
    rbuf = torch.zeros(pr, k, dtype=torch.uint8, device=dev)
    if int8:
        qbuf[:, nbits : nbits + extra] = 1
        tile = torch.empty(pq, pr, dtype=torch.int32, device=dev)
        steps = np.arange(extra, dtype=np.int32) * EXTRA
    else:
        qf = torch.zeros(pq, k, dtype=torch.float32, device=dev)
        rf = torch.zeros(pr, k, dtype=torch.float32, device=dev)
        tile = torch.empty(pq, pr, dtype=torch.float32, device=dev)
    shifts = torch.arange(8, dtype=torch.uint8, device=dev)
    lowest = int(np.iinfo(np.int32).min)
    dist = np.empty(nq, np.int64)
    index = np.empty(nq, np.int64)

    def unpack(src: np.ndarray, buf, value: int) -> None:
        """Bits of ``src`` [n, all bytes] (its active columns) into ``buf[:n, :nbits]`` as 0 / ``value``."""
        n = len(src)
        if active is not None:
            src = src[:, active]
        if host:  # a lookup per byte, in row blocks of ~16 MB (bounded temporaries)
            words = buf.numpy()[:n, :nbits].view(np.uint64)
            step = max(1, (1 << 21) // max(nbytes, 1))
            for lo in range(0, n, step):
                words[lo : lo + step] = _SPREAD[value][src[lo : lo + step]]
            return
        bits = buf[:n, :nbits].view(n, nbytes, 8)
        torch.bitwise_right_shift(torch.from_numpy(src).to(dev)[:, :, None], shifts, out=bits)
        bits.bitwise_and_(1)
        if value != 1:
            bits.mul_(value)

    for q0 in range(0, nq, cq):
        q1 = min(q0 + cq, nq)
        m = q1 - q0
        unpack(qb[q0:q1], qbuf, 2 if int8 else 1)  # int8: score = 2 |a AND b| - |b|
        if not int8:
            qf.copy_(qbuf)
        best = np.full(m, lowest, np.int64) if host else torch.full((m,), lowest, dtype=torch.int64, device=dev)
        best_idx = np.zeros(m, np.int64) if host else torch.zeros(m, dtype=torch.int64, device=dev)
        for r0 in range(0, nr, cr):
            r1 = min(r0 + cr, nr)
            n = r1 - r0
            unpack(rb[r0:r1], rbuf, 1)
            if int8:  # -|b| spread over columns of at most EXTRA each
                rest = -np.clip(r_pop[r0:r1, None].astype(np.int32) - steps, 0, EXTRA).astype(np.int8)
                rbuf[:n, nbits : nbits + extra].view(torch.int8).copy_(torch.from_numpy(rest))
                torch._int_mm(qbuf.view(torch.int8), rbuf.view(torch.int8).t(), out=tile)
            else:
                rf.copy_(rbuf)
                torch.mm(qf, rf.t(), out=tile)
            diag = exclude_self and q0 < r1 and r0 < q1
            if host:
                scores = tile.numpy()[:m, :n]
                if not int8:
                    scores *= 2
                    scores -= r_pop[r0:r1].astype(np.float32)
                if diag:
                    i = np.arange(max(q0, r0), min(q1, r1))
                    scores[i - q0, i - r0] = lowest
                j = _argmax_rows(scores)  # first (lowest) index among equal maxima
                values = scores[np.arange(m), j].astype(np.int64)
                better = values > best  # strict: an earlier block keeps its tie
                best[better], best_idx[better] = values[better], j[better] + r0
            else:
                scores = tile[:m, :n]
                if not int8:
                    scores.mul_(2).sub_(torch.from_numpy(r_pop[r0:r1].astype(np.float32)).to(dev))
                if diag:
                    scores.diagonal(q0 - r0).fill_(lowest)
                values, j = scores.max(dim=1)  # first (lowest) index among equal maxima
                values = values.to(torch.int64)
                better = values > best  # strict: an earlier block keeps its tie
                best = torch.where(better, values, best)
                best_idx = torch.where(better, j + r0, best_idx)
        if not host:
            best, best_idx = best.cpu().numpy(), best_idx.cpu().numpy()
        dist[q0:q1] = q_pop[q0:q1] - best
        index[q0:q1] = best_idx
        if progress is not None:
            progress(m)
    return dist, index


_POOL = None


def _argmax_rows(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(axis=1)``, its rows split over torch's CPU threads (numpy's argmax releases the GIL)."""
    global _POOL
    import torch

    threads = torch.get_num_threads()
    if threads < 2 or scores.size < 1 << 20:
        return scores.argmax(axis=1)
    if _POOL is None or _POOL._max_workers != threads:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(threads)
    bounds = np.linspace(0, len(scores), threads + 1).astype(int)
    parts = _POOL.map(lambda ab: scores[ab[0] : ab[1]].argmax(axis=1), zip(bounds[:-1], bounds[1:]))
    return np.concatenate(list(parts))


def _plan(nq: int, nr: int, k: int, bytes_per_bit: int, memory: int) -> tuple[int, int]:
    """Block sizes: a quarter of ``memory`` for the query block, a quarter for the reference block
    (counted twice: BLAS may repack it), a quarter for the score tile."""
    quarter = max(memory, 1 << 20) // 4
    cq = int(np.clip(quarter // (k * bytes_per_bit), 32, MAX_QUERIES))
    cq = min(cq, nq)
    cr = int(np.clip(quarter // (2 * k * bytes_per_bit), 8, MAX_REFS))
    cr = max(8, min(cr, quarter // (8 * cq), nr))
    return cq, cr


def engine_for(device="cpu") -> str:
    """The engine ``engine="auto"`` picks on ``device``: ``"int8"`` where ``torch._int_mm`` runs
    fast (CUDA; a CPU with oneDNN), else ``"float32"`` (log it beside the results)."""
    return "int8" if _int8_fast(_device(device)) else "float32"


def _device(device):
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _int8_fast(dev) -> bool:
    """Whether ``torch._int_mm`` runs (fast) on this device: on a CPU only through oneDNN."""
    import torch

    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    key = f"{dev} {onednn}"
    if key not in _INT8_OK:
        ok = hasattr(torch, "_int_mm")
        if ok and dev.type == "cpu":
            ok = onednn  # without it torch._int_mm is a plain loop, ~100x slower than float32 BLAS
        if ok:
            try:
                a = torch.ones(32, 64, dtype=torch.int8, device=dev)
                ok = int(torch._int_mm(a, a[:8].t())[0, 0]) == 64
            except RuntimeError:
                ok = False
        _INT8_OK[key] = ok
    return _INT8_OK[key]


def _nearest_popcount(qb, rb, exclude_self, memory, chunk, progress):
    """numpy XOR + popcount over blocks of queries x references (the independent engine)."""
    nq, nr = len(qb), len(rb)
    pad = -qb.shape[1] % 8
    if pad:
        qb, rb = (np.pad(x, ((0, 0), (0, pad))) for x in (qb, rb))
    q64, r64 = qb.view(np.uint64), rb.view(np.uint64)
    words = q64.shape[1]
    if chunk is None:
        pairs = max(1, max(memory, 1 << 20) // (words * 10 + 8))
        cq = min(nq, max(1, min(256, pairs // 1024)))
        cr = min(nr, max(1, min(MAX_REFS // 2, pairs // cq)))
    else:
        cq, cr = min(chunk[0], nq), min(chunk[1], nr)
    count = np.bitwise_count if hasattr(np, "bitwise_count") else lambda x: _POPCOUNT8[x.view(np.uint8)]
    dist = np.empty(nq, np.int64)
    index = np.empty(nq, np.int64)
    big = np.iinfo(np.int64).max
    for q0 in range(0, nq, cq):
        q1 = min(q0 + cq, nq)
        best = np.full(q1 - q0, big, np.int64)
        best_idx = np.zeros(q1 - q0, np.int64)
        for r0 in range(0, nr, cr):
            r1 = min(r0 + cr, nr)
            d = count(q64[q0:q1, None, :] ^ r64[None, r0:r1, :]).sum(axis=2, dtype=np.int64)
            if exclude_self and q0 < r1 and r0 < q1:
                i = np.arange(max(q0, r0), min(q1, r1))
                d[i - q0, i - r0] = big
            j = d.argmin(axis=1)  # first (lowest) index among equal minima
            v = d[np.arange(len(j)), j]
            better = v < best
            best[better], best_idx[better] = v[better], j[better] + r0
        dist[q0:q1], index[q0:q1] = best, best_idx
        if progress is not None:
            progress(q1 - q0)
    return dist, index


# --------------------------------------------------------------------------- memorisation


class CopyRate(NamedTuple):
    rate: float  # fraction of generated images strictly closer to the training set than `threshold`
    threshold: float  # the `percentile`-th percentile of held-out-to-train distances


def median_ratio(generated: Sequence[float], held_out: Sequence[float]) -> float:
    """median(generated) / median(held_out) of nearest-neighbour distances: the memorisation ratio (to train) or the
    diversity ratio (to the nearest other image of the same set). 1 when both medians are 0, inf when only
    the held-out one is."""
    a, b = float(np.median(generated)), float(np.median(held_out))
    return a / b if b > 0 else (1.0 if a == 0 else float("inf"))


def copy_rate(gen_to_train: Sequence[float], test_to_train: Sequence[float], percentile: float = 1.0) -> CopyRate:
    """Fraction of generated images closer to their nearest training image than held-out data is.

    ``threshold`` is the ``percentile``-th percentile (numpy's linear interpolation) of the
    held-out test images' nearest-training distances; ``rate`` the fraction of generated images
    whose nearest-training distance is strictly below it. Held-out data itself scores about
    ``percentile / 100`` (less where distances tie); a generator that replays training images
    scores 1 (unless ``threshold`` is 0: held-out images that duplicate training images).
    """
    gen = np.asarray(gen_to_train, dtype=np.float64).ravel()
    test = np.asarray(test_to_train, dtype=np.float64).ravel()
    if gen.size == 0 or test.size == 0:
        raise ValueError("copy_rate needs at least one generated and one held-out distance")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    threshold = float(np.percentile(test, percentile))
    return CopyRate(float(np.mean(gen < threshold)), threshold)
