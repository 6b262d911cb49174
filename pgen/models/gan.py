"""The linear (MLP) GAN baseline and the GAN losses shared with the conv GAN.

Generator: z -> ``n_layers`` x (Linear(width) + LeakyReLU(0.2)) -> Linear(C*H*W) + Tanh, so images
come out in [-1, 1]. Discriminator: C*H*W -> 4 x (Linear(512) + LeakyReLU(0.2)) -> one logit.
Weights start N(0, 0.02), biases 0. Optional dropout on D's hidden units (as in Goodfellow et al.)
counters the mode collapse this small MLP pair is prone to. The loss is the non-saturating one of Goodfellow et al.:
D minimises BCE(D(x), 1) + BCE(D(G(z)), 0); G minimises BCE(D(G(z)), 1). Optional one-sided
label smoothing replaces D's real target 1 by 1 - s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgen import distributed
from pgen.errors import PgenError

MAX_PIXELS = 256 * 256  # beyond this the dense layers are too large: use the conv GAN


class Generator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], n_layers: int = 4, width: int = 512):
        super().__init__()
        self.latent_dim = latent_dim
        self.shape = tuple(shape)
        layers: list[nn.Module] = []
        d = latent_dim
        for _ in range(n_layers):
            layers += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
            d = width
        layers += [nn.Linear(d, math.prod(shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class Discriminator(nn.Module):
    """``dropout`` > 0 drops hidden units in training, with masks drawn from the ``rng`` given to `forward`."""

    def __init__(self, shape: tuple[int, int, int], n_layers: int = 4, width: int = 512, dropout: float = 0.0):
        super().__init__()
        d = math.prod(shape)
        self.hidden = nn.ModuleList()
        for _ in range(n_layers):
            self.hidden.append(nn.Linear(d, width))
            d = width
        self.out = nn.Linear(d, 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = F.leaky_relu(layer(h), 0.2)
            if self.training and self.dropout > 0 and rng is not None:
                keep = distributed.uniform(h.shape, rng, h.device) >= self.dropout
                h = h * keep / (1 - self.dropout)
        return self.out(h).squeeze(1)


def build(latent_dim: int, shape: tuple[int, int, int], n_layers: int = 4, width: int = 512,
          dropout: float = 0.0) -> tuple[Generator, Discriminator]:
    c, h, w = shape
    if h * w * c > MAX_PIXELS:
        raise PgenError(f"the linear GAN takes images up to {MAX_PIXELS} pixels; {c}x{h}x{w} is too large: use `pgen train dcgan`")
    return Generator(latent_dim, shape, n_layers, width), Discriminator(shape, 4, width, dropout)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """DCGAN-paper initialisation: weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Discriminator loss: BCE(D(x), 1 - smoothing) + BCE(D(G(z)), 0), each a mean over the batch.

    ``smoothing`` > 0 is one-sided label smoothing (Salimans et al. 2016): it keeps D from
    becoming certain, which starves the generator of gradient.
    """
    return F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1.0 - smoothing)) + \
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mescheder et al.'s R1: the mean squared norm of D's gradient at real images (``real`` must require grad).

    Added to D's loss as ``gamma / 2 * r1``, it stops D from growing infinitely confident, which is
    what collapses the generator of an unregularised GAN.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: BCE(D(G(z)), 1) = -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
