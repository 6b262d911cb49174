"""The detector response of the synthetic LArTPC generator: one wire plane read out as an image.

Charge proportional to deposited energy (no recombination quenching, like the reference LArCV
files, so Bragg peaks stay bright) is projected onto the plane (rows: drift time, columns: wire),
3 mm per pixel like MicroBooNE's wire pitch and ticks, blurred by diffusion (Gaussian, wider
along drift), given electronics noise, zero-suppressed at a threshold and quantised to 12-bit ADC
counts. The segmentation takes, per pixel, the class that brought the most charge.
"""

from __future__ import annotations

import math

import numpy as np

PITCH = 0.3  # cm per pixel: wire pitch, and drift per tick (1.6 mm/us x 2 us, rounded)
ADC_PER_MEV = 160.0  # ADC counts per MeV deposited (a MIP crossing a pixel: ~100)
NOISE = 1.5  # electronics noise, ADC counts (rms)
THRESHOLD = 7.0  # zero suppression, ADC counts
SATURATION = 4095.0  # 12-bit ADC
DIFFUSION = (0.35, 0.7)  # blur sigma in pixels: across wires, and the largest along drift


def respond(rng: np.random.Generator, deposits, size: int, t_off: float, u_off: float, e_u, noise: bool = True):
    """Deposits ``(p0, p1, energy, label)`` (segments in cm, MeV) -> (image float32, segmentation uint8).

    The wire plane sees drift coordinate x as rows (``t_off`` cm at row 0) and ``position . e_u``
    as columns (``u_off`` at column 0), ``PITCH`` cm per pixel.
    """
    from scipy.ndimage import gaussian_filter

    p0, p1, energy, label = deposits
    charge = energy * ADC_PER_MEV
    # project: row = drift time, col = wire
    r0, r1 = (p0[:, 0] - t_off) / PITCH, (p1[:, 0] - t_off) / PITCH
    c0, c1 = (p0 @ e_u - u_off) / PITCH, (p1 @ e_u - u_off) / PITCH
    m = np.maximum(1, np.ceil(2 * np.hypot(r1 - r0, c1 - c0))).astype(np.int64)  # points every <= 0.5 px
    seg = np.repeat(np.arange(len(m)), m)
    f = (np.arange(len(seg)) - np.repeat(np.cumsum(m) - m, m) + 0.5) / m[seg]
    rows = np.floor(r0[seg] + f * (r1 - r0)[seg]).astype(np.int64)
    cols = np.floor(c0[seg] + f * (c1 - c0)[seg]).astype(np.int64)
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    rows, cols, lab, q = rows[ok], cols[ok], label[seg][ok], (charge / m)[seg][ok]
    sigma = (rng.uniform(DIFFUSION[0], DIFFUSION[1]), DIFFUSION[0])  # (drift, wire), pixels
    total = np.zeros((size, size), dtype=np.float32)
    seg_img = np.zeros((size, size), dtype=np.uint8)
    box = (0, 0, 0, 0)
    if len(rows):
        # diffusion: blur the charge's bounding box (plus the kernel's reach), one map per label present
        pad = 4
        ra, rb = max(int(rows.min()) - pad, 0), min(int(rows.max()) + pad + 1, size)
        ca, cb = max(int(cols.min()) - pad, 0), min(int(cols.max()) + pad + 1, size)
        h, w = rb - ra, cb - ca
        present, which = np.unique(lab, return_inverse=True)
        flat = which * (h * w) + (rows - ra) * w + (cols - ca)
        maps = np.bincount(flat, weights=q, minlength=len(present) * h * w).astype(np.float32)
        maps = gaussian_filter(maps.reshape(len(present), h, w), sigma=(0, *sigma), mode="constant", truncate=3.0)
        tot = maps.sum(axis=0) if len(present) > 1 else maps[0]
        total[ra:rb, ca:cb] = tot
        labels = present[maps.argmax(axis=0)] if len(present) > 1 else present[0]
        seg_img[ra:rb, ca:cb] = np.where(tot > 0.5, labels, 0)
        box = (ra, rb, ca, cb)
    if noise:
        _add_noise(rng, total, box)
    image = np.minimum(np.rint(total), SATURATION)
    image[image < THRESHOLD] = 0
    seg_img[image == 0] = 0  # a noise-only pixel above threshold stays background
    return image.astype(np.float32), seg_img


def _add_noise(rng, total: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Gaussian electronics noise on every pixel. Outside the charge's box only the rare pixels
    that will pass the threshold matter, so those are drawn directly from the noise tail (the
    same distribution as drawing them all, at a fraction of the cost)."""
    from scipy.special import ndtri

    ra, rb, ca, cb = box
    total[ra:rb, ca:cb] += rng.standard_normal((rb - ra, cb - ca), dtype=np.float32) * NOISE
    size = total.shape[0]
    p_tail = 0.5 * math.erfc((THRESHOLD - 0.5) / NOISE / math.sqrt(2))  # P(rint(noise) >= THRESHOLD)
    k = rng.binomial(size * size - (rb - ra) * (cb - ca), p_tail)
    while k > 0:
        r, c = rng.integers(0, size, 2)
        if not (ra <= r < rb and ca <= c < cb):
            total[r, c] += -NOISE * ndtri(p_tail * rng.random())
            k -= 1
