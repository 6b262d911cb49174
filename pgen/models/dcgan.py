"""The conv GAN (DCGAN, Radford et al. 2015) for square power-of-two images from 8 to 512 pixels.

Generator: z -> ConvTranspose(4x4) to a 4x4 map, then stride-2 ConvTranspose + BatchNorm + ReLU
layers doubling the size and halving the channels, the last one to C channels + Tanh.
Discriminator: the mirror, stride-2 Conv + BatchNorm + LeakyReLU(0.2) down to 4x4, then a 4x4
Conv to one logit. ``base_channels`` is the width at full resolution (capped at 512 deeper in).

Images whose side is not a power of two (MNIST's 28x28) or that are not square are padded with
empty pixels to the next power of two (28 -> 32): the discriminator sees padded data, the
generator draws the padded canvas and its centre is cropped. Sides above 512 are refused.
The losses are the ones in `pgen.models.gan`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgen.errors import PgenError

MIN_SIZE, MAX_SIZE = 8, 512


def canvas(shape: tuple[int, int, int], *, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE, what: str = "the conv GAN") -> int:
    """The power-of-two side a conv model works at for images of ``shape`` (C, H, W)."""
    _, h, w = shape
    side = max(h, w)
    if side > max_size:
        raise PgenError(f"{what} takes images up to {max_size}x{max_size}; {h}x{w} is too large: crop the data (`pgen data synth --crop`)")
    if min(h, w) < 1:
        raise PgenError(f"{what} cannot take {h}x{w} images")
    p = max(min_size, 1 << (side - 1).bit_length())
    return p


def pad(x: torch.Tensor, size: int, value: float) -> torch.Tensor:
    """Centre ``x`` [B, C, H, W] on a ``size`` x ``size`` canvas filled with ``value`` (the empty pixel)."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=value)


def crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The centre ``h`` x ``w`` of ``x`` (the inverse of `pad`)."""
    size_h, size_w = x.shape[-2:]
    if size_h == h and size_w == w:
        return x
    top, left = (size_h - h) // 2, (size_w - w) // 2
    return x[..., top : top + h, left : left + w]


def _widths(size: int, base: int) -> list[int]:
    """Channels of the hidden maps at 4x4, 8x8, ..., size/2 (coarsest first): ``base`` at size/2, doubling per halving."""
    n = size.bit_length() - 3  # stride-2 layers between 4x4 and the full size
    return [min(base * 2 ** (n - 1 - i), 512) for i in range(n)]


class Generator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], base_channels: int = 64):
        super().__init__()
        self.latent_dim = latent_dim
        self.shape = tuple(shape)
        self.size = canvas(shape)
        widths = _widths(self.size, base_channels)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], shape[0], 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return crop(self.net(z.view(len(z), -1, 1, 1)), *self.shape[1:])


class Discriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], base_channels: int = 64, pad_value: float = -1.0):
        super().__init__()
        self.size = canvas(shape)
        self.pad_value = pad_value
        widths = _widths(self.size, base_channels)[::-1]  # finest first
        layers: list[nn.Module] = [nn.Conv2d(shape[0], widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        return self.net(pad(x, self.size, self.pad_value)).view(-1)


def build(latent_dim: int, shape: tuple[int, int, int], base_channels: int = 64) -> tuple[Generator, Discriminator]:
    return Generator(latent_dim, shape, base_channels), Discriminator(shape, base_channels, pad_value=-1.0)
