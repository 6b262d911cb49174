"""What the logged pyfunc models (one-stage and two-stage) share: reading a request, shaping the answer."""

from __future__ import annotations

from typing import Callable

import numpy as np


def latents(model_input, params, dim: int, draw: Callable[[int, "object"], "object"]):
    """``[[n]]`` -> ``draw(n, rng)`` seeded by ``params["seed"]`` (default 0); ``[B, dim]`` -> those latent vectors."""
    import torch

    values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
    values = np.asarray(values, dtype=np.float32)
    if values.size == 1:
        n = int(values.reshape(-1)[0])
        if n < 1:
            raise ValueError(f"number of samples must be at least 1, got {n}")
        return draw(n, torch.Generator().manual_seed(int((params or {}).get("seed", 0))))
    z = torch.from_numpy(values.reshape(len(values), -1))
    if z.shape[1] != dim:
        raise ValueError(f"latent vectors must have {dim} components, got {z.shape[1]}")
    return z


def images_out(images) -> np.ndarray:
    """Model output in data units as float32 ``[B, H, W]`` (or ``[B, C, H, W]`` for several channels)."""
    out = images.numpy().astype(np.float32)
    return out[:, 0] if out.shape[1] == 1 else out
