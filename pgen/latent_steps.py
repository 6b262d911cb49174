"""Pure steps of the two-stage families: a generator of a VAE's latent codes (flow, ewm, gmm).

Same contract as `pgen.steps` (``step(state, batch, rng) -> (state, metrics)``, ``evaluate_batch``
sums, ``summarize``), with batches of codes ``[B, latent_dim]`` instead of images. The state
holds the latent model and, frozen, the VAE (``nets["vae"]``): ``sample`` draws codes and decodes
them, so the loop's per-epoch grid shows images. Importing this module registers the families
``latent-flow``, ``latent-ewm`` and ``latent-gmm`` in ``pgen.steps.FAMILIES``.

- ``flow``: one Adam step on the negative log-likelihood per dimension of the batch.
- ``ewm``: ``ot_steps`` stochastic ascent steps (Adam) on the semi-discrete OT dual potential
  over the whole training code set (kept in the state as ``nets["psi"].targets``), with fresh
  generated codes each, then one L1 regression step of ``len(batch)`` generated codes onto their
  targets ``argmin_j c(g, y_j) - psi_j``. The batch's codes set only how many codes are drawn.
- ``gmm``: one EM iteration over the batch (the shell hands the whole code set as one batch).

Validation (``val.loss``): flow and gmm, the negative log-likelihood per dimension of the
validation codes; ewm, the sliced Wasserstein distance to them (reported by all three as ``swd``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from pgen import steps
from pgen.models import latent as lm

METHODS = ("flow", "ewm", "gmm")
Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LatentHyper:
    """Settings of the latent model, fixed for the run (logged as ``latent.*`` params)."""

    method: str = "flow"
    dim: int = 0  # the VAE's latent dimension (filled in from the VAE)
    codes: str = "mean"  # mean: posterior means; sample: one draw from q(z|x) per image
    depth: int = 6  # flow coupling layers / ewm generator hidden layers (default 3 for ewm)
    width: int = 128  # hidden units per layer
    noise_dim: int = 0  # ewm noise dimension (0: the latent dimension)
    cost: str = "l1"  # ewm transport cost: l1 | l2 (squared Euclidean)
    ot_steps: int = 5  # ewm dual-potential ascent steps per generator step
    ot_lr: float = 0.1  # ewm Adam learning rate of the dual potential
    k: int = 10  # gmm components
    covariance: str = "full"  # gmm: full | diag
    lr: float = 1e-3  # flow / ewm generator learning rate
    # the step contract expects these on the hyper (the VAE's values; unused by the latent steps)
    family: str = "latent"
    latent_dim: int = 0


class Potential(nn.Module):
    """The ewm dual potential psi [N] over the training codes (held as a buffer ``targets`` [N, D])."""

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        self.register_buffer("targets", targets.clone())
        self.psi = nn.Parameter(torch.zeros(len(targets)))


def sampler_nets(hp: LatentHyper) -> dict[str, nn.Module]:
    """The nets that draw codes (no VAE, no ewm potential): what the pyfunc model bundles."""
    if hp.method == "flow":
        return {"flow": lm.RealNVP(hp.dim, hp.depth, hp.width)}
    if hp.method == "ewm":
        return {"g": lm.Mlp(hp.noise_dim or hp.dim, hp.dim, hp.depth, hp.width)}
    return {"gmm": lm.Mixture(hp.dim, hp.k, hp.covariance)}


def init(hp: LatentHyper, codes: torch.Tensor, vae_net: nn.Module, device, rng: torch.Generator) -> steps.State:
    """Fresh latent model (weights from ``rng``, a CPU generator) beside the frozen VAE."""
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = sampler_nets(hp)
    hp = dataclasses.replace(hp, family=f"latent-{hp.method}", latent_dim=hp.dim)
    opts: dict[str, torch.optim.Optimizer] = {}
    if hp.method == "flow":
        opts["flow"] = torch.optim.Adam(nets["flow"].parameters(), lr=hp.lr)
    elif hp.method == "ewm":
        nets["psi"] = Potential(codes)
        opts["g"] = torch.optim.Adam(nets["g"].parameters(), lr=hp.lr, betas=(0.5, 0.999))
        opts["psi"] = torch.optim.Adam(nets["psi"].parameters(), lr=hp.ot_lr)
    else:  # k-means++-free start: K distinct codes as means, the codes' covariance for every component
        gmm = nets["gmm"]
        pick = torch.randperm(len(codes), generator=rng)[: hp.k]
        gmm.means.data.copy_(codes[pick] if len(pick) == hp.k else codes[torch.randint(0, len(codes), (hp.k,), generator=rng)])
        centred = codes - codes.mean(0)
        cov = lm.positive_definite(centred.T @ centred / max(len(codes) - 1, 1))
        gmm.cov.data.copy_(cov.expand(hp.k, hp.dim, hp.dim) if hp.covariance == "full" else torch.diagonal(cov).expand(hp.k, hp.dim))
    vae_net.requires_grad_(False)
    vae_net.eval()
    nets = {k: v.to(device) for k, v in nets.items()}
    nets["vae"] = vae_net.to(device)
    return steps.State(nets, opts, hp)  # type: ignore[arg-type]


def draw_codes(nets: dict[str, nn.Module], hp: LatentHyper, n: int, rng: torch.Generator) -> torch.Tensor:
    """``n`` codes from the latent model, without gradients."""
    net = next(iter(v for k, v in nets.items() if k in ("flow", "g", "gmm")))
    device = next(net.parameters()).device
    with steps.evaluating(net):
        if hp.method == "flow":
            return net.sample(n, rng)
        if hp.method == "ewm":
            return net(torch.randn(n, net.noise_dim, generator=rng, device=device))
        return net.sample(n, rng)


def sample(state: steps.State, n: int, rng: torch.Generator) -> torch.Tensor:
    """Images in [0, 1]: codes from the latent model through the VAE's decoder."""
    return steps.decode(state.nets["vae"], draw_codes(state.nets, state.hp, n, rng), "vae")


# --------------------------------------------------------------------------- steps


def flow_step(state: steps.State, batch: torch.Tensor, rng: torch.Generator) -> tuple[steps.State, Metrics]:
    flow, opt = state.nets["flow"], state.opts["flow"]
    loss = -flow.log_prob(batch).mean() / batch.shape[1]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return dataclasses.replace(state, step=state.step + 1), {"loss": loss.detach()}


def ewm_step(state: steps.State, batch: torch.Tensor, rng: torch.Generator) -> tuple[steps.State, Metrics]:
    g, pot, hp = state.nets["g"], state.nets["psi"], state.hp
    opt_g, opt_psi = state.opts["g"], state.opts["psi"]
    b, device = len(batch), batch.device
    # (1) the dual potential: stochastic ascent on the semi-discrete OT dual
    for _ in range(hp.ot_steps):
        with torch.no_grad():
            x = g(torch.randn(b, g.noise_dim, generator=rng, device=device))
        dual = lm.dual_objective(x, pot.targets, pot.psi, hp.cost)
        opt_psi.zero_grad(set_to_none=True)
        (-dual).backward()
        opt_psi.step()
    # (2) the generator: regress generated codes onto their nearest (offset) targets
    x = g(torch.randn(b, g.noise_dim, generator=rng, device=device))
    with torch.no_grad():
        index, _ = lm.assign(x, pot.targets, pot.psi, hp.cost)
        target = pot.targets[index]
    fit = (x - target).abs().sum(1).mean()
    opt_g.zero_grad(set_to_none=True)
    fit.backward()
    opt_g.step()
    with torch.no_grad():
        d = x.detach() - target
        cost = d.abs().sum(1).mean() if hp.cost == "l1" else d.pow(2).sum(1).mean()
    metrics = {"loss": fit.detach(), "fit": fit.detach(), "transport_cost": cost, "dual": dual.detach()}
    return dataclasses.replace(state, step=state.step + 1), metrics


def gmm_step(state: steps.State, batch: torch.Tensor, rng: torch.Generator) -> tuple[steps.State, Metrics]:
    ll = state.nets["gmm"].em_step(batch)
    return dataclasses.replace(state, step=state.step + 1), {"loss": -ll / batch.shape[1]}


def evaluate_batch(state: steps.State, batch: torch.Tensor, rng: torch.Generator) -> Metrics:
    hp, b = state.hp, len(batch)
    fake = draw_codes(state.nets, hp, b, rng)
    sums = {"n": torch.tensor(b, device=batch.device), "dims": torch.tensor(b * batch.shape[1], device=batch.device),
            "swd": lm.sliced_wasserstein(fake, batch, rng) * b}
    with torch.no_grad():
        if hp.method == "flow":
            sums["nll"] = -state.nets["flow"].log_prob(batch).sum()
        elif hp.method == "gmm":
            sums["nll"] = -state.nets["gmm"].log_prob(batch).sum()
        else:
            index, _ = lm.assign(fake, state.nets["psi"].targets, state.nets["psi"].psi, hp.cost)
            diff = fake - state.nets["psi"].targets[index]
            sums["transport_cost"] = diff.abs().sum() if hp.cost == "l1" else diff.pow(2).sum()
    return sums


def summarize(s: Metrics) -> dict[str, float]:
    n = float(s["n"])
    d = float(s["dims"]) / n
    out = {"swd": float(s["swd"]) / n}
    if "nll" in s:
        out["nll_per_dim"] = float(s["nll"]) / (n * d)
        out["loss"] = out["nll_per_dim"]
    else:
        out["transport_cost"] = float(s["transport_cost"]) / n
        out["loss"] = out["swd"]
    return out


FAMILIES = {
    "latent-flow": steps.Family(init, flow_step, sample, evaluate_batch, summarize),
    "latent-ewm": steps.Family(init, ewm_step, sample, evaluate_batch, summarize),
    "latent-gmm": steps.Family(init, gmm_step, sample, evaluate_batch, summarize),
}
steps.FAMILIES.update(FAMILIES)
