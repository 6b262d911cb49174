"""Windows around the charge: the field's centre-of-charge crop, shared by import and the generator."""

from __future__ import annotations

import numpy as np


def window(centre, shape, n: int) -> tuple[int, int]:
    """Corner ``(row0, col0)`` of the ``n x n`` window whose centre is nearest ``centre``, clamped inside ``shape``."""
    return tuple(int(min(max(np.floor(c - (n - 1) / 2 + 0.5), 0), size - n)) for c, size in zip(centre, shape))  # type: ignore[return-value]


def charge_centre(image: np.ndarray) -> tuple[float, float] | None:
    """Intensity-weighted centre ``(row, col)``; negative values (induction planes) weigh nothing. None if no charge."""
    charge = np.clip(image, 0, None).astype(np.float64)
    total = charge.sum()
    if total <= 0:
        return None
    h, w = image.shape
    return float(charge.sum(axis=1) @ np.arange(h) / total), float(charge.sum(axis=0) @ np.arange(w) / total)


def crop_around_charge(image: np.ndarray, n: int, *, refine: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """An ``n x n`` window centred on the charge-weighted centre, shifted to stay inside the image.

    Returns the crop and its ``(row0, col0)``. With ``refine=k`` the centre is recomputed k times
    from the charge inside the current window, so an event made of two distant clusters is cut
    around one of them rather than around the empty space between them (one compact cluster is
    unchanged). An image with no positive charge gives the central window.
    """
    h, w = image.shape
    centre = charge_centre(image) or ((h - 1) / 2, (w - 1) / 2)
    r0, c0 = window(centre, image.shape, n)
    for _ in range(refine):
        inside = charge_centre(image[r0 : r0 + n, c0 : c0 + n])
        if inside is None:  # nothing at the centre of charge: start from the brightest pixel instead
            centre = np.unravel_index(int(np.argmax(image)), image.shape)
        else:
            centre = (r0 + inside[0], c0 + inside[1])
        r0, c0 = window(centre, image.shape, n)
    return image[r0 : r0 + n, c0 : c0 + n].copy(), (r0, c0)


def cluster_crops(image: np.ndarray, n: int, k: int) -> tuple[list[tuple[np.ndarray, tuple[int, int]]], int]:
    """Up to ``k`` windows centred on the largest clusters (8-connected positive pixels, ranked by
    charge). A cluster whose centre already lies in a chosen window is skipped and counted."""
    from scipy import ndimage

    charge = np.clip(image, 0, None)
    labels, m = ndimage.label(charge > 0, structure=np.ones((3, 3)))
    if m == 0:
        return [], 0
    index = np.arange(1, m + 1)
    order = np.argsort(-ndimage.sum_labels(charge, labels, index), kind="stable")
    centres = ndimage.center_of_mass(charge, labels, index)
    windows: list[tuple[np.ndarray, tuple[int, int]]] = []
    overlapping = 0
    for i in order:
        if len(windows) == k:
            break
        rc, cc = centres[i]
        if any(r0 <= rc < r0 + n and c0 <= cc < c0 + n for _, (r0, c0) in windows):
            overlapping += 1
            continue
        r0, c0 = window((rc, cc), image.shape, n)
        windows.append((image[r0 : r0 + n, c0 : c0 + n].copy(), (r0, c0)))
    return windows, overlapping
