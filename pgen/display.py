"""Event-display grids: log-scaled colour on a dark background, as physicists look at LArTPC images.

One numpy function serves ``pgen data show``, the per-epoch sample grids logged to MLflow and
the plots in ``docs/``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np

BORDER = (48, 48, 48)


def event_grid(
    images: np.ndarray,
    *,
    ncols: int | None = None,
    vmax: float | None = None,
    tile: int = 128,
    cmap: str = "inferno",
) -> np.ndarray:
    """Images ``[N, H, W]`` or ``[N, 1, H, W]`` -> one RGB uint8 grid.

    Values are clipped at 0 (induction-plane negatives are not charge) and shown on a log scale,
    ``log1p(x) / log1p(vmax)``, with ``vmax`` the 99.5th percentile of the non-zero values of the
    whole grid unless given, so every tile shares one colour scale. Tiles smaller than ``tile``
    pixels are enlarged by an integer factor (nearest neighbour) so 28x28 digits stay legible.
    """
    from matplotlib import colormaps

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"expected a non-empty [N, H, W] stack, got shape {x.shape}")
    x = np.clip(x, 0, None)
    if vmax is None:
        nz = x[x > 0]
        vmax = float(np.percentile(nz, 99.5)) if nz.size else 1.0
    v = np.log1p(np.minimum(x, vmax)) / np.log1p(max(vmax, 1e-12))
    rgb = (colormaps[cmap](v)[..., :3] * 255).astype(np.uint8)
    rgb[x <= 0] = 0  # empty pixels are black, not the colour map's darkest tint
    n, h, w = x.shape
    k = max(1, tile // max(h, w))
    if k > 1:
        rgb = rgb.repeat(k, axis=1).repeat(k, axis=2)
        h, w = h * k, w * k
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    pad = 2
    grid = np.empty((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.uint8)
    grid[:] = BORDER
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = rgb[i]
    return grid


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write an RGB uint8 array as PNG, atomically (temporary file, then rename)."""
    from matplotlib.image import imsave

    with atomic_png(path) as tmp:
        imsave(tmp, rgb)


@contextmanager
def atomic_png(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary PNG path beside ``path``; renamed onto ``path`` when the block succeeds, removed otherwise."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}.png")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
