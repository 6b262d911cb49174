"""Variational autoencoders (Kingma & Welling 2013): an MLP and a conv architecture, one loss.

``arch = "mlp"``: C*H*W -> hidden widths (ReLU) -> (mu, logvar); the decoder mirrors it back to
C*H*W logits. ``arch = "conv"``: stride-2 4x4 convs (LeakyReLU) from the image down to 4x4, a
linear layer to (mu, logvar); the decoder goes linear -> 4x4 maps -> (nearest upsample x2 + 3x3
conv + LeakyReLU) up to full size -> 3x3 conv to logits. Non-power-of-two or non-square images
are padded with empty pixels to the next power of two (as in `pgen.models.dcgan`).

Both decode to logits; the decoder's mean image is ``sigmoid(logits)`` in [0, 1].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pgen import distributed
from pgen.models.dcgan import canvas, crop, pad


class MlpVAE(nn.Module):
    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 20, hidden: tuple[int, ...] = (400,)):
        super().__init__()
        self.shape = tuple(shape)
        self.latent_dim = latent_dim
        d = math.prod(shape)
        enc: list[nn.Module] = []
        for width in hidden:
            enc += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.encoder = nn.Sequential(*enc)
        self.to_stats = nn.Linear(d, 2 * latent_dim)
        dec: list[nn.Module] = []
        d = latent_dim
        for width in reversed(hidden):
            dec += [nn.Linear(d, width), nn.ReLU()]
            d = width
        dec.append(nn.Linear(d, math.prod(shape)))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.shape)

    def forward(self, x: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, rng)), mu, logvar


def _widths(size: int, base: int) -> list[int]:
    """Channels at size/2, size/4, ..., 4 (finest first): ``base``, doubling per halving, capped at 256."""
    n = size.bit_length() - 3
    return [min(base * 2**i, 256) for i in range(n)]


class ConvVAE(nn.Module):
    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 20, base_channels: int = 32):
        super().__init__()
        self.shape = tuple(shape)
        self.latent_dim = latent_dim
        self.size = canvas(shape, what="the conv VAE")
        widths = _widths(self.size, base_channels)
        enc: list[nn.Module] = []
        cin = shape[0]
        for w in widths:
            enc += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = w
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.to_stats = nn.Linear(cin * 16, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, cin * 16)
        self.top = cin
        dec: list[nn.Module] = []
        for w in reversed(widths[:-1]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, w, 3, 1, 1), nn.LeakyReLU(0.2)]
            cin = w
        dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, 1, 1), nn.LeakyReLU(0.2),
                nn.Conv2d(cin, shape[0], 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(pad(x, self.size, 0.0))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.from_latent(z), 0.2).view(len(z), self.top, 4, 4)
        return crop(self.decoder(h), *self.shape[1:])

    def forward(self, x: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, rng)), mu, logvar


def build(arch: str, shape: tuple[int, int, int], latent_dim: int, hidden: tuple[int, ...] = (400,), base_channels: int = 32) -> nn.Module:
    if arch == "mlp":
        return MlpVAE(shape, latent_dim, hidden)
    return ConvVAE(shape, latent_dim, base_channels)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, 1) drawn from ``rng``."""
    eps = distributed.normal(mu.shape, rng, mu.device, mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


class VaeLoss(NamedTuple):
    loss: torch.Tensor  # the training objective: weighted reconstruction + beta * KL
    recon: torch.Tensor  # negative log-likelihood of x under the decoder (unweighted)
    kl: torch.Tensor  # KL(q(z|x) || N(0, 1))


def vae_loss(
    logits: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    *,
    recon: str = "bernoulli",
    sigma: float = 0.1,
    nonzero_weight: float = 1.0,
) -> VaeLoss:
    """ELBO terms, each summed over pixels (latent dims) and averaged over the batch.

    ``recon = "bernoulli"``: BCE of ``sigmoid(logits)`` against x in [0, 1] (the PyTorch example's
    loss); ``"gaussian"``: the negative log density of x under N(sigmoid(logits), sigma^2), i.e. a
    scaled squared error plus a constant. ``nonzero_weight`` multiplies the reconstruction error
    of pixels where x > 0 in the training objective (sparse detector images, where empty pixels
    would otherwise dominate); ``recon`` and ``kl`` are reported unweighted, so
    ``recon + kl`` is always the negative ELBO.
    """
    n = x.shape[0]
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
    if recon == "bernoulli" and nonzero_weight == 1.0:  # the common case, without a per-pixel temporary
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
        return VaeLoss(nll + beta * kl, nll, kl)
    if recon == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        mean = torch.sigmoid(logits)
        per_pixel = 0.5 * ((x - mean) / sigma) ** 2 + math.log(sigma * math.sqrt(2 * math.pi))
    nll = per_pixel.sum() / n
    if nonzero_weight != 1.0:
        weighted = torch.where(x > 0, per_pixel * nonzero_weight, per_pixel).sum() / n
    else:
        weighted = nll
    return VaeLoss(weighted + beta * kl, nll, kl)
