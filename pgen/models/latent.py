"""Generators on a VAE's latent codes (the second stage of two-stage generation), and their pure losses.

``flow``: a RealNVP normalising flow (Dinh et al. 2017): ``depth`` affine coupling layers with
alternating binary masks, each an MLP of width ``width`` giving a log-scale (tanh-bounded) and a
shift for the unmasked half; base N(0, I). The last layer of each coupling starts at zero, so a
fresh flow is the identity map and its density is the base density. Trained by maximum likelihood.

``ewm``: an MLP generator noise -> codes fitted by explicit Wasserstein minimisation: a
semi-discrete optimal-transport dual potential ``psi`` over the training codes assigns each
generated code ``g`` the target ``argmin_j c(g, y_j) - psi_j`` (the *nearest* code after the
offset), and the generator regresses onto its targets (L1).

``gmm``: a Gaussian mixture (full or diagonal covariance) fitted by EM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- RealNVP


class Coupling(nn.Module):
    def __init__(self, dim: int, width: int, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, x_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(x_masked).chunk(2, dim=1)
        keep = 1 - self.mask
        return torch.tanh(s) * keep, t * keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """data -> base direction: y = x_m + (1 - m) * (x * exp(s) + t); returns (y, log|det|)."""
        s, t = self._scale_shift(x * self.mask)
        return x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t), s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._scale_shift(y * self.mask)
        return y * self.mask + (1 - self.mask) * ((y - t) * torch.exp(-s))


class RealNVP(nn.Module):
    def __init__(self, dim: int, depth: int = 6, width: int = 128):
        super().__init__()
        self.dim = dim
        masks = [(torch.arange(dim) % 2 == i % 2).float() for i in range(depth)]
        if dim == 1:  # one dimension cannot be split: alternate between identity and a learned shift of x
            masks = [torch.zeros(1) for _ in range(depth)]
        self.layers = nn.ModuleList(Coupling(dim, width, m) for m in masks)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row (nats)."""
        logdet = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return -0.5 * (x.pow(2).sum(1) + self.dim * LOG_2PI) + logdet

    def sample(self, n: int, rng: torch.Generator) -> torch.Tensor:
        device = self.layers[0].mask.device
        z = torch.randn(n, self.dim, generator=rng, device=device)
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


# --------------------------------------------------------------------------- EWM (semi-discrete OT)


class Mlp(nn.Module):
    """noise [N, noise_dim] -> codes [N, dim]."""

    def __init__(self, noise_dim: int, dim: int, depth: int = 3, width: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        d = noise_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, dim))
        self.net = nn.Sequential(*layers)
        self.noise_dim = noise_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def transport_cost(g: torch.Tensor, y: torch.Tensor, cost: str = "l1") -> torch.Tensor:
    """c(g_i, y_j) for every pair: [N, M] (``l1``: sum |g - y|; ``l2``: squared Euclidean)."""
    if cost == "l1":
        return torch.cdist(g, y, p=1)
    return torch.cdist(g, y, p=2).pow(2)


def assign(g: torch.Tensor, y: torch.Tensor, psi: torch.Tensor, cost: str = "l1") -> tuple[torch.Tensor, torch.Tensor]:
    """The semi-discrete OT assignment: for each generated code, ``argmin_j c(g, y_j) - psi_j`` (nearest after the offset).

    Returns (target indices [N], the offset costs ``min_j c - psi_j`` [N])."""
    offset = transport_cost(g, y, cost) - psi
    values, index = offset.min(dim=1)
    return index, values


def dual_objective(g: torch.Tensor, y: torch.Tensor, psi: torch.Tensor, cost: str = "l1") -> torch.Tensor:
    """The semi-discrete OT dual ``mean_j psi_j + mean_i min_j (c(g_i, y_j) - psi_j)``, to be *maximised* over psi."""
    return psi.mean() + assign(g, y, psi, cost)[1].mean()


# --------------------------------------------------------------------------- Gaussian mixture


class Mixture(nn.Module):
    """K Gaussians: log weights [K], means [K, D], covariances [K, D, D] (full) or variances [K, D] (diagonal).

    The values are parameters (so they move with ``.to`` and live in the state dict) but no
    gradient ever flows through them: EM updates them in place."""

    def __init__(self, dim: int, k: int, covariance: str = "full"):
        super().__init__()
        self.dim, self.k, self.covariance = dim, k, covariance
        self.log_weights = nn.Parameter(torch.full((k,), -math.log(k)), requires_grad=False)
        self.means = nn.Parameter(torch.zeros(k, dim), requires_grad=False)
        cov = torch.eye(dim).expand(k, dim, dim).clone() if covariance == "full" else torch.ones(k, dim)
        self.cov = nn.Parameter(cov, requires_grad=False)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x | mu_k, Sigma_k): [N, K]."""
        diff = x[:, None, :] - self.means[None]  # [N, K, D]
        if self.covariance == "full":
            chol = torch.linalg.cholesky(self.cov)  # [K, D, D]
            sol = torch.linalg.solve_triangular(chol[None], diff[..., None], upper=False)[..., 0]
            maha = sol.pow(2).sum(-1)
            logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        else:
            maha = (diff.pow(2) / self.cov[None]).sum(-1)
            logdet = torch.log(self.cov).sum(-1)
        return self.log_weights[None] - 0.5 * (maha + logdet[None] + self.dim * LOG_2PI)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    @torch.no_grad()
    def em_step(self, x: torch.Tensor, reg: float = 1e-4) -> torch.Tensor:
        """One EM iteration on ``x`` in place; returns the mean log-likelihood before the update."""
        comp = self.component_log_prob(x)
        ll = torch.logsumexp(comp, dim=1)
        resp = torch.exp(comp - ll[:, None])  # [N, K]
        nk = resp.sum(0) + 1e-10
        means = resp.T @ x / nk[:, None]
        diff = x[:, None, :] - means[None]
        if self.covariance == "full":
            cov = positive_definite(torch.einsum("nk,nkd,nke->kde", resp, diff, diff) / nk[:, None, None], reg)
        else:
            cov = (resp[..., None] * diff.pow(2)).sum(0) / nk[:, None] + reg
        self.log_weights.copy_(torch.log(nk / nk.sum()))
        self.means.copy_(means)
        self.cov.copy_(cov)
        return ll.mean()

    @torch.no_grad()
    def sample(self, n: int, rng: torch.Generator) -> torch.Tensor:
        device = self.means.device
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=rng)
        eps = torch.randn(n, self.dim, generator=rng, device=device)
        if self.covariance == "full":
            chol = torch.linalg.cholesky(self.cov)[k]
            return self.means[k] + (chol @ eps[..., None])[..., 0]
        return self.means[k] + eps * self.cov[k].sqrt()


def positive_definite(cov: torch.Tensor, reg: float = 1e-4, tries: int = 8) -> torch.Tensor:
    """``cov`` ([..., D, D]) symmetrised plus ``reg`` times its mean variance on the diagonal, the jitter growing
    tenfold where a Cholesky factorisation still fails. Codes that span fewer dimensions than the latent space
    (inactive VAE dimensions) give singular covariances whose float32 rounding, at the codes' scale, exceeds
    any fixed absolute jitter."""
    cov = (cov + cov.mT) / 2
    eye = torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(1.0)[..., None, None]
    jitter = torch.full_like(scale, reg)
    for _ in range(tries):
        fixed = cov + jitter * scale * eye
        failed = torch.linalg.cholesky_ex(fixed).info > 0
        if not failed.any():
            return fixed
        jitter = torch.where(failed[..., None, None], jitter * 10, jitter)
    raise ValueError("gmm: a covariance stays singular even with jitter (are the VAE's codes finite?); "
                     "try --covariance diag or a smaller --k")


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, rng: torch.Generator, projections: int = 128) -> torch.Tensor:
    """Sliced 1-Wasserstein distance between two equal-sized point sets (random unit directions from ``rng``)."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    dirs = torch.randn(a.shape[1], projections, generator=rng, device=a.device, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return (pa - pb).abs().mean()
