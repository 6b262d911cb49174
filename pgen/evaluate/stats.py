"""Physics-style statistics of detector images, and how far generated ones sit from data.

A pixel is **lit** when ``value > threshold`` (a value exactly at the threshold is dark).
:func:`image_statistics` measures every image of a set at once and returns one value per image
for each statistic of :data:`STATISTICS` (and, for ``pixel_value``, the pooled values of all lit
pixels): the distributions a physicist compares between data and a generator's samples.
:func:`compare` puts a data set's distributions beside a sample set's as 1-D Wasserstein
distances, each normalised by the spread of the data, and :func:`summary_score` averages those
into one number (lower is better, 0 = identical distributions).

How it is vectorised: a chunk of images ``[n, H, W]`` is labelled in one call of
``scipy.ndimage.label`` with a 3x3x3 structure whose only non-zero plane is the middle one:
8-connectivity inside an image, none across images. Labels come out in raster order, so an
image's labels are its clusters in the order a per-image labelling would number them. Per-image
counts, largest clusters and their second moments are then grouped sums (``np.bincount``,
``np.maximum.at``, ``np.*.reduceat``) over the lit pixels of the whole chunk, and the principal
axes of all largest clusters come from one stacked ``numpy.linalg.eigh``.

Pure functions: no files, no MLflow, no torch.
"""

from __future__ import annotations

import numpy as np

STATISTICS = ("occupancy", "charge", "pixel_value", "clusters", "length", "width", "dark")
PER_IMAGE = ("occupancy", "charge", "clusters", "length", "width", "dark")  # one value per image
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True  # 8-connected inside an image, never across images


def image_statistics(
    images, threshold: float, *, dark_pixels: int = 2, chunk: int = 1024, max_pixels: int = 1_000_000
) -> dict[str, np.ndarray]:
    """Per-image statistics of lit pixels (``value > threshold``) for a set of images.

    ``images``: array ``[N, H, W]`` or ``[N, 1, H, W]`` of any real dtype, values in stored units
    (e.g. ADC counts); anything sliceable along its first axis into numpy arrays works (a memmap).
    Returns a dict, keys in :data:`STATISTICS` order, of float64 arrays:

    - ``occupancy`` ``[N]``: lit pixels / pixels of the image;
    - ``charge`` ``[N]``: sum of the values of the lit pixels;
    - ``clusters`` ``[N]``: number of 8-connected clusters of lit pixels;
    - ``length``, ``width`` ``[N]``: extent of the image's largest cluster (most pixels; ties go
      to the lowest label, i.e. the cluster whose first pixel comes first in raster order) along
      the principal axes of its pixel coordinates ``(row, col)``: eigenvectors of their
      covariance (``numpy.linalg.eigh``); ``length`` = max - min of the projections on the major
      axis + 1, ``width`` the same on the minor axis. A single pixel gives 1 and 1, an image with
      no lit pixel 0 and 0. The covariance is computed exactly in integers, so a cluster with
      equal principal moments (a square, a cross) always gets the image axes, ``col`` as major;
    - ``dark`` ``[N]``: 1.0 where the image has fewer than ``dark_pixels`` lit pixels, else 0.0
      (the all-dark collapse of a generator);
    - ``pixel_value`` ``[<= max_pixels]``: the values of the lit pixels of all images pooled (image
      order, raster order inside an image), the pixel-value spectrum. Where there are more than
      ``max_pixels`` of them, the ones at positions ``k * total // max_pixels`` for
      ``k < max_pixels`` are kept: evenly spaced, deterministic, independent of ``chunk``.

    Works through ``chunk`` images at a time: besides the outputs and the kept pixel values,
    memory stays within about ``chunk * H * W * 5`` bytes (a chunk's lit mask and int32 labels)
    plus ~100 bytes per lit pixel of the chunk. When there may be more than ``max_pixels`` lit
    pixels, a first cheap pass counts them (thresholding only).
    """
    shape = tuple(images.shape)
    if len(shape) == 4 and shape[1] == 1:
        shape = (shape[0], shape[2], shape[3])
    elif len(shape) != 3:
        raise ValueError(f"images must be [N, H, W] or [N, 1, H, W], got shape {tuple(images.shape)}")
    n, h, w = shape
    if h * w == 0:
        raise ValueError(f"images have no pixels: shape {tuple(images.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk!r}")
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be at least 0, got {max_pixels!r}")

    def block(lo: int) -> np.ndarray:
        return np.asarray(images[lo : lo + chunk]).reshape(-1, h, w)

    if n * h * w <= max_pixels:
        total = 0  # every lit pixel is kept: no need to count them first
    else:
        total = sum(int(np.count_nonzero(block(lo) > threshold)) for lo in range(0, n, chunk))
    keep = None if total <= max_pixels else np.arange(max_pixels, dtype=np.int64) * total // max_pixels

    out = {k: np.zeros(n, dtype=np.float64) for k in PER_IMAGE}
    values: list[np.ndarray] = []
    seen = 0  # lit pixels of earlier chunks
    for lo in range(0, n, chunk):
        part = _chunk_statistics(block(lo), threshold)
        hi = lo + len(part["lit"])
        lit, pv = part.pop("lit"), part.pop("values")
        for k, v in part.items():
            out[k][lo:hi] = v
        out["occupancy"][lo:hi] = lit / (h * w)
        out["dark"][lo:hi] = lit < dark_pixels
        start, seen = seen, seen + len(pv)
        if keep is not None:
            a, b = np.searchsorted(keep, [start, seen])
            pv = pv[keep[a:b] - start]
        values.append(pv)
    pooled = np.concatenate(values) if values else np.zeros(0, dtype=np.float64)
    return {k: (pooled if k == "pixel_value" else out[k]) for k in STATISTICS}


def _chunk_statistics(x: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Statistics of a chunk ``[m, H, W]``: ``lit`` (lit pixels per image), ``values`` (of the lit
    pixels, C order), ``charge``, ``clusters``, ``length``, ``width``."""
    from scipy import ndimage

    m, h, w = x.shape
    mask = x > threshold
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    flat = np.flatnonzero(mask)  # ascending, hence grouped by image
    lab = labels.reshape(-1)[flat].astype(np.int64)
    del labels
    img = flat // (h * w)
    rest = flat - img * (h * w)
    row, col = rest // w, rest % w

    values = x.reshape(-1)[flat].astype(np.float64)  # the lit pixels' values, C order
    lit = np.bincount(img, minlength=m)
    charge = np.bincount(img, weights=values, minlength=m)
    label_img = np.zeros(count + 1, dtype=np.int64)
    label_img[lab] = img
    clusters = np.bincount(label_img[1:], minlength=m)

    # largest cluster per image: most pixels, then the lowest label (key decodes to both)
    size = np.bincount(lab, minlength=count + 1)
    labels_ = np.arange(count + 1, dtype=np.int64)
    key = size * (count + 1) + (count - labels_)
    best = np.full(m, -1, dtype=np.int64)
    np.maximum.at(best, label_img[1:], key[1:])
    has = best >= 0
    is_best = np.zeros(count + 1, dtype=bool)
    is_best[count - best[has] % (count + 1)] = True

    sel = is_best[lab]
    g, r, c = img[sel], row[sel], col[sel]
    length, width = np.zeros(m), np.zeros(m)
    if len(g):
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # one segment per image with pixels
        which = g[starts]
        seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(g)]))  # segment of each pixel
        axes = _principal_axes(r, c, starts, seg, max(h, w), h * w)  # [k, 2, 2] columns: minor, major
        for j, target in ((1, length), (0, width)):
            proj = r * axes[seg, 0, j] + c * axes[seg, 1, j]
            target[which] = np.maximum.reduceat(proj, starts) - np.minimum.reduceat(proj, starts) + 1.0
    return {
        "lit": lit,
        "values": values,
        "charge": charge,
        "clusters": clusters.astype(np.float64),
        "length": length,
        "width": width,
    }


def _principal_axes(r, c, starts, seg, side: int, pixels: int) -> np.ndarray:
    """Eigenvectors ``[k, 2, 2]`` (columns: minor then major axis) of the ``(row, col)`` covariance
    of each segment of pixels (segments start at ``starts``; ``seg``: each pixel's segment).

    Moments are taken about each segment's first pixel and the covariance scaled by ``n**2``
    (``n * sum(dr * dr) - sum(dr) * sum(dr)`` ...), which is exact in int64 while
    ``pixels**2 * side**2 < 2**62``; beyond that (images over ~1000 x 1000) in float64.
    """
    n_pix = np.diff(np.r_[starts, len(r)])
    dr = r - r[starts][seg]
    dc = c - c[starts][seg]
    exact = float(pixels) ** 2 * float(side) ** 2 < 2.0**62
    t = np.int64 if exact else np.float64
    s = [np.add.reduceat(a.astype(t), starts) for a in (dr, dc, dr * dr, dc * dc, dr * dc)]
    n = n_pix.astype(t)
    srr = n * s[2] - s[0] * s[0]
    scc = n * s[3] - s[1] * s[1]
    src = n * s[4] - s[0] * s[1]
    cov = np.empty((len(starts), 2, 2), dtype=np.float64)
    cov[:, 0, 0], cov[:, 1, 1] = srr, scc
    cov[:, 0, 1] = cov[:, 1, 0] = src
    return np.linalg.eigh(cov).eigenvectors


def compare(data: dict[str, np.ndarray], samples: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Distance between the data's and the samples' distribution of every statistic.

    ``data``, ``samples``: dicts from :func:`image_statistics` (each must hold every key of
    :data:`STATISTICS`). Returns, per statistic, ``w1`` (1-D Wasserstein distance,
    ``scipy.stats.wasserstein_distance``, in the statistic's units), ``spread`` (standard
    deviation of the data), ``w1_norm`` (``w1 / spread``: unit-free, comparable across
    statistics), ``mean_data`` and ``mean_samples``.

    Special cases: ``dark`` is an indicator, already unit-free: its spread is reported as 1.0
    and ``w1_norm`` is ``w1`` (= the difference of the dark fractions). A statistic constant in
    the data (spread 0) also gets spread 1.0, so its ``w1_norm`` is its raw ``w1``. An empty array
    (no lit pixel at all, so no ``pixel_value``) is treated as a point mass at 0: its distance to
    the other side is that side's mean absolute value, which keeps the score finite; both empty
    give 0, and the mean of an empty array is NaN.
    """
    from scipy.stats import wasserstein_distance

    missing = [k for k in STATISTICS if k not in data or k not in samples]
    if missing:
        raise ValueError(f"statistics missing from data or samples: {', '.join(missing)}")
    result = {}
    for k in STATISTICS:
        d = np.asarray(data[k], dtype=np.float64).ravel()
        s = np.asarray(samples[k], dtype=np.float64).ravel()
        if d.size and s.size:
            w1 = float(wasserstein_distance(s, d))
        elif d.size or s.size:
            w1 = float(np.mean(np.abs(d if d.size else s)))
        else:
            w1 = 0.0
        spread = float(np.std(d)) if d.size and k != "dark" else 0.0
        if spread == 0.0:
            spread = 1.0
        result[k] = {
            "w1": w1,
            "spread": spread,
            "w1_norm": w1 / spread,
            "mean_data": float(np.mean(d)) if d.size else float("nan"),
            "mean_samples": float(np.mean(s)) if s.size else float("nan"),
        }
    return result


def summary_score(comparison: dict[str, dict[str, float]]) -> float:
    """Mean of ``w1_norm`` over the statistics of a :func:`compare` result (lower is better; 0 = identical)."""
    if not comparison:
        raise ValueError("summary_score needs at least one statistic")
    return float(np.mean([v["w1_norm"] for v in comparison.values()]))
