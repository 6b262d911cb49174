"""Pure training steps, one set per model family: ``init``, ``step``, ``sample``, ``evaluate_batch``, ``summarize``.

``step(state, batch, rng) -> (state, metrics)`` reads no globals, environment or files and logs
nothing; its randomness comes only from ``rng`` (a ``torch.Generator`` on the batch's device).
Modules and optimizers update in place (that is how PyTorch is fast) and the step returns the
state it was given, its step count advanced. Metrics are 0-d tensors, left on the device so
the loop decides when to synchronise.

``evaluate_batch(state, batch, rng)`` returns sums over the batch (tensors) that the loop adds
up over the validation split; the optional ``evaluate_each`` per-image values (keys ``each.*``)
that it concatenates over the first `SCORE_IMAGES` validation images;
``summarize(sums)`` turns the totals into metrics (floats), ``"loss"`` among them: the number the
best checkpoint, ``EXPERIMENT:best`` and `pgen tune` minimise (VAE: negative ELBO per image;
GANs: ``score + collapse``, below).

GAN validation draws one sample per validation image and compares the two sets; ``score`` and
``diversity_ratio`` use the first `SCORE_IMAGES` of them (``evaluate_each``).
``score`` is `pgen evaluate`'s summary score: the mean over the
physics-style statistics of `pgen.evaluate.stats` (occupancy, charge, pixel spectrum, clusters,
largest cluster's length and width, dark fraction) of their 1-D Wasserstein distance divided by
the data's spread, in stored units with ``data.threshold`` (default: the dataset's noise floor).
Those distributions alone can favour a collapsed generator (one plausible event repeated sits
closer to them than a diverse but poor one), so the GANs' ``loss`` adds ``collapse`` =
max(0, 1 - ``diversity_ratio``), the median Hamming distance of each sample to its nearest other
sample over the same for the validation images (`pgen evaluate`'s diversity ratio): 0 for
samples as varied as data, 1 for one image repeated.
Also logged, in the scaled [0, 1] range with a pixel *lit* above ``data.lit_threshold``:
``sample_distance = |ln(occ_s/occ_d)| + |ln(int_s/int_d)| + |m_s - m_d|_1 / |m_d|_1 + dark``,
with occ the mean fraction of lit pixels, int the mean value of lit pixels, m the mean image
and dark the fraction of samples with no lit pixel (the all-dark collapse of sparse-image GANs);
it is the loss of multi-channel images, which the statistics do not cover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pgen import config, distributed
from pgen.config import Config, DataConfig
from pgen.models import dcgan, gan, vae

Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Hyper:
    """Settings a step needs, fixed for the run."""

    family: str
    latent_dim: int
    symmetric: bool  # images in [-1, 1] (Tanh generators) rather than [0, 1]
    lit: float  # lit-pixel threshold in [0, 1] units
    beta: float = 1.0
    warmup_steps: int = 0
    recon: str = "bernoulli"
    sigma: float = 0.1
    nonzero_weight: float = 1.0
    label_smoothing: float = 0.0
    r1_gamma: float = 0.0
    data: DataConfig | None = None  # GANs: scaling and threshold for the validation score in stored units


@dataclass(frozen=True)
class State:
    nets: dict[str, nn.Module]
    opts: dict[str, torch.optim.Optimizer]
    hp: Hyper
    step: int = 0


@dataclass(frozen=True)
class Family:
    init: Callable[..., State]
    step: Callable[[State, torch.Tensor, torch.Generator], tuple[State, Metrics]]
    sample: Callable[[State, int, torch.Generator], torch.Tensor]
    evaluate_batch: Callable[[State, torch.Tensor, torch.Generator], Metrics]
    summarize: Callable[[Metrics], dict[str, float]]
    # per-image values (keys ``each.*``, concatenated) over the first `SCORE_IMAGES` validation images
    evaluate_each: Callable[[State, torch.Tensor, torch.Generator], Metrics] | None = None


SCORE_IMAGES = 2048  # validation images in the GANs' score and diversity (all of lartpc64's 1,200; MNIST's first 2,048)
SCORE_PIXELS = 8192  # lit-pixel values kept per batch for the pixel spectrum (evenly spaced; `stats.image_statistics`)


# --------------------------------------------------------------------------- building


def build_generator(cfg: Config) -> nn.Module:
    """The network that turns latent vectors into images: the GAN generator or the whole VAE."""
    return _build(cfg)[0]


def decode(net: nn.Module, z: torch.Tensor, family: str) -> torch.Tensor:
    """Images in the model's range from latent vectors ``z`` (the VAE's decoder mean), without gradients."""
    if family == "vae":
        with evaluating(net):
            return torch.sigmoid(net.decode(z))
    with batch_statistics(net):
        return net(z)


def _build(cfg: Config) -> tuple[nn.Module, ...]:
    m, shape = cfg.model, cfg.shape
    if m.family == "gan":
        return gan.build(m.latent_dim, shape, m.n_layers, m.hidden_width, m.d_dropout)
    if m.family == "dcgan":
        return dcgan.build(m.latent_dim, shape, m.base_channels)
    return (vae.build(m.arch, shape, m.latent_dim, m.hidden, m.base_channels),)


def init(cfg: Config, steps_per_epoch: int, device: torch.device | str, rng: torch.Generator) -> State:
    """Fresh networks and optimizers; the initial weights depend only on ``rng`` (a CPU generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):  # PyTorch's default initialisers draw from the global RNG
        torch.manual_seed(seed)
        nets_list = _build(cfg)
        if cfg.family != "vae" and cfg.model.init == "normal":
            for net in nets_list:
                gan.init_weights(net, rng)
    m, t = cfg.model, cfg.train
    hp = Hyper(
        family=m.family, latent_dim=m.latent_dim, symmetric=cfg.data.pixel_range == "symmetric", lit=cfg.data.lit_threshold,
        beta=m.beta, warmup_steps=round(m.kl_warmup * steps_per_epoch), recon=m.recon, sigma=m.sigma,
        nonzero_weight=m.nonzero_weight, label_smoothing=m.label_smoothing, r1_gamma=m.r1_gamma, data=cfg.data,
    )
    betas = (t.beta1, t.beta2)
    if cfg.family == "vae":
        net = nets_list[0].to(device)
        return State({"vae": net}, {"vae": torch.optim.Adam(net.parameters(), lr=t.lr, betas=betas)}, hp)
    g, d = (n.to(device) for n in nets_list)
    opts = {"g": torch.optim.Adam(g.parameters(), lr=t.lr_g, betas=betas), "d": torch.optim.Adam(d.parameters(), lr=t.lr_d, betas=betas)}
    return State({"g": g, "d": d}, opts, hp)


@contextlib.contextmanager
def evaluating(*nets: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; each net's previous mode restored after."""
    modes = [n.training for n in nets]
    try:
        for n in nets:
            n.eval()
        with torch.no_grad():
            yield
    finally:
        for n, mode in zip(nets, modes):
            n.train(mode)


@contextlib.contextmanager
def batch_statistics(*nets: nn.Module) -> Iterator[None]:
    """No gradients; batch norm normalises with the batch's own statistics, as in training, and its
    running statistics stay untouched (GAN samples drawn with running statistics lag behind the
    fast-moving generator and come out hazy)."""
    saved = []
    for n in nets:
        for m in n.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                saved.append((m, m.training, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
                m.train()
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode, momentum, tracked in saved:
            m.train(mode)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _latent(state: State, n: int, rng: torch.Generator, device) -> torch.Tensor:
    return distributed.normal((n, state.hp.latent_dim), rng, device)


def _unit(x: torch.Tensor, hp: Hyper) -> torch.Tensor:
    return (x + 1) / 2 if hp.symmetric else x


def _sample_sums(fake: torch.Tensor, real: torch.Tensor, hp: Hyper) -> Metrics:
    """Sums over a batch for the sample-vs-data statistics (see the module docstring)."""
    fu, ru = _unit(fake, hp).clamp(0, 1), _unit(real, hp).clamp(0, 1)
    f_lit, r_lit = fu > hp.lit, ru > hp.lit
    return {
        "dark": (~f_lit.flatten(1).any(1)).sum(),
        "lit_samples": f_lit.sum(),
        "lit_data": r_lit.sum(),
        "value_samples": (fu * f_lit).sum(),
        "value_data": (ru * r_lit).sum(),
        "mean_samples": fu.sum(0),
        "mean_data": ru.sum(0),
        "pixels": torch.tensor(fu[0].numel() * len(fu), device=fu.device),
    }


def _sample_summary(s: Metrics) -> dict[str, float]:
    n = float(s["n"])
    occ_s = float(s["lit_samples"]) / float(s["pixels"])
    occ_d = float(s["lit_data"]) / float(s["pixels"])
    int_s = float(s["value_samples"]) / max(float(s["lit_samples"]), 1.0)
    int_d = float(s["value_data"]) / max(float(s["lit_data"]), 1.0)
    mean_d = s["mean_data"].double()
    l1 = float((s["mean_samples"].double() - mean_d).abs().sum() / mean_d.abs().sum().clamp_min(1e-12))
    dark = float(s["dark"]) / n
    distance = abs(math.log(max(occ_s, 1e-6) / max(occ_d, 1e-6))) + abs(math.log(max(int_s, 1e-6) / max(int_d, 1e-6))) + l1 + dark
    return {
        "dark_fraction": dark,
        "occupancy_samples": occ_s,
        "occupancy_data": occ_d,
        "intensity_samples": int_s,
        "intensity_data": int_d,
        "mean_image_l1": l1,
        "sample_distance": distance,
    }


# --------------------------------------------------------------------------- GANs (linear and conv)


def gan_step(state: State, batch: torch.Tensor, rng: torch.Generator) -> tuple[State, Metrics]:
    g, d = state.nets["g"], state.nets["d"]
    opt_g, opt_d = state.opts["g"], state.opts["d"]
    fake = g(_latent(state, len(batch), rng, batch.device))
    # discriminator: real -> 1, fake -> 0 (plus the R1 penalty on its gradient at real images)
    opt_d.zero_grad(set_to_none=True)
    r1 = state.hp.r1_gamma
    real = batch.detach().requires_grad_(True) if r1 > 0 else batch
    real_logits = d(real, rng)
    fake_logits = d(fake.detach(), rng)
    loss_d = gan.d_loss(real_logits, fake_logits, state.hp.label_smoothing)
    penalty = gan.r1_penalty(real_logits, real) if r1 > 0 else torch.zeros((), device=batch.device)
    (loss_d + 0.5 * r1 * penalty).backward()
    opt_d.step()
    # generator: make D call the fakes real (non-saturating loss); D's gradients are not kept
    opt_g.zero_grad(set_to_none=True)
    d.requires_grad_(False)
    try:  # through D itself, not its DistributedDataParallel wrapper: D's parameters get no gradient here
        loss_g = gan.g_loss(distributed.unwrap(d)(fake, rng))
        loss_g.backward()
    finally:
        d.requires_grad_(True)
    opt_g.step()
    metrics = {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": torch.sigmoid(real_logits.detach()).mean(),
        "d_fake": torch.sigmoid(fake_logits.detach()).mean(),
    }
    if r1 > 0:
        metrics["r1"] = penalty.detach()
    return dataclasses.replace(state, step=state.step + 1), metrics


def gan_sample(state: State, n: int, rng: torch.Generator) -> torch.Tensor:
    g = state.nets["g"]
    device = next(g.parameters()).device
    with batch_statistics(g):
        return g(_latent(state, n, rng, device))


def gan_evaluate_batch(state: State, batch: torch.Tensor, rng: torch.Generator) -> Metrics:
    g, d = state.nets["g"], state.nets["d"]
    with batch_statistics(g, d):
        fake = g(_latent(state, len(batch), rng, batch.device))
        real_logits, fake_logits = d(batch), d(fake)
        b = len(batch)
        sums = {
            "n": torch.tensor(b, device=batch.device),
            "loss_d": gan.d_loss(real_logits, fake_logits) * b,
            "loss_g": gan.g_loss(fake_logits) * b,
            "d_real": torch.sigmoid(real_logits).sum(),
            "d_fake": torch.sigmoid(fake_logits).sum(),
        }
        sums.update(_sample_sums(fake, batch, state.hp))
    return sums


def gan_evaluate_each(state: State, batch: torch.Tensor, rng: torch.Generator) -> Metrics:
    """Per-image statistics (`pgen.evaluate.stats`) and bit-packed images of samples and data in stored units,
    ``each.<side>.<stat>``; none for multi-channel images or without a threshold."""
    d = state.hp.data
    if d is None or d.threshold is None or batch.shape[1] != 1:
        return {}
    from pgen.evaluate import hamming, stats

    g = state.nets["g"]
    with batch_statistics(g):
        fake = g(_latent(state, len(batch), rng, batch.device))
    out = {}
    for side, x in (("samples", fake), ("data", batch)):
        values = config.from_model(x.detach().float(), d).cpu().numpy()
        for k, v in stats.image_statistics(values, d.threshold, max_pixels=SCORE_PIXELS).items():
            out[f"each.{side}.{k}"] = torch.from_numpy(v)
        out[f"each.{side}.bits"] = torch.from_numpy(hamming.pack(values, d.threshold).view(np.uint8))  # for diversity
    return out


def gan_summarize(s: Metrics) -> dict[str, float]:
    n = float(s["n"])
    out = {k: float(s[k]) / n for k in ("loss_d", "loss_g", "d_real", "d_fake")}
    out.update(_sample_summary(s))
    out["loss"] = out["sample_distance"]
    sides = {side: {k[len(f"each.{side}."):]: v.numpy() for k, v in s.items() if k.startswith(f"each.{side}.")}
             for side in ("samples", "data")}
    if sides["samples"]:
        from pgen.evaluate import hamming, stats

        bits = {side: sides[side].pop("bits") for side in sides}
        out["score"] = stats.summary_score(stats.compare(sides["data"], sides["samples"]))
        if len(bits["samples"]) >= 2:
            nn_s, nn_d = (hamming.nearest(bits[side], bits[side], exclude_self=True)[0] for side in ("samples", "data"))
            out["diversity_ratio"] = hamming.median_ratio(nn_s, nn_d)
        out["collapse"] = max(0.0, 1.0 - out.get("diversity_ratio", 1.0))
        out["loss"] = out["score"] + out["collapse"]
    return out


# --------------------------------------------------------------------------- VAE


def _beta(state: State) -> float:
    hp = state.hp
    if hp.warmup_steps <= 0:
        return hp.beta
    return hp.beta * min(1.0, (state.step + 1) / hp.warmup_steps)


def vae_step(state: State, batch: torch.Tensor, rng: torch.Generator) -> tuple[State, Metrics]:
    net, opt, hp = state.nets["vae"], state.opts["vae"], state.hp
    beta = _beta(state)
    logits, mu, logvar = net(batch, rng)
    terms = vae.vae_loss(logits, batch, mu, logvar, beta, recon=hp.recon, sigma=hp.sigma, nonzero_weight=hp.nonzero_weight)
    opt.zero_grad(set_to_none=True)
    terms.loss.backward()
    opt.step()
    metrics = {"loss": terms.loss.detach(), "recon": terms.recon.detach(), "kl": terms.kl.detach()}
    if hp.warmup_steps > 0:  # otherwise beta is a constant (model.beta)
        metrics["beta"] = torch.tensor(beta, device=batch.device)
    return dataclasses.replace(state, step=state.step + 1), metrics


def vae_sample(state: State, n: int, rng: torch.Generator) -> torch.Tensor:
    net = state.nets["vae"]
    device = next(net.parameters()).device
    with evaluating(net):
        return torch.sigmoid(net.decode(_latent(state, n, rng, device)))


def vae_evaluate_batch(state: State, batch: torch.Tensor, rng: torch.Generator) -> Metrics:
    net, hp = state.nets["vae"], state.hp
    b = len(batch)
    with evaluating(net):
        logits, mu, logvar = net(batch, rng)
        terms = vae.vae_loss(logits, batch, mu, logvar, 1.0, recon=hp.recon, sigma=hp.sigma)
        fake = torch.sigmoid(net.decode(_latent(state, b, rng, batch.device)))
        sums = {"n": torch.tensor(b, device=batch.device), "recon": terms.recon * b, "kl": terms.kl * b}
        sums.update(_sample_sums(fake, batch, hp))
    return sums


def vae_summarize(s: Metrics) -> dict[str, float]:
    n = float(s["n"])
    recon, kl = float(s["recon"]) / n, float(s["kl"]) / n
    out = {"recon": recon, "kl": kl, "elbo": -(recon + kl), "nelbo": recon + kl}
    out.update(_sample_summary(s))
    out["loss"] = out["nelbo"]
    return out


_SAMPLE_METRICS = ("dark_fraction", "occupancy_samples", "occupancy_data", "intensity_samples", "intensity_data",
                   "mean_image_l1", "sample_distance")
VAL_METRICS = {  # what each family's summarize returns (logged as val.*): the objectives `pgen tune` can optimise
    "vae": ("loss", "nelbo", "elbo", "recon", "kl", *_SAMPLE_METRICS),
    "gan": ("loss", "score", "collapse", "diversity_ratio", "loss_d", "loss_g", "d_real", "d_fake", *_SAMPLE_METRICS),
}
VAL_METRICS["dcgan"] = VAL_METRICS["gan"]

GAN = Family(init, gan_step, gan_sample, gan_evaluate_batch, gan_summarize, gan_evaluate_each)
VAE = Family(init, vae_step, vae_sample, vae_evaluate_batch, vae_summarize)
FAMILIES = {"gan": GAN, "dcgan": GAN, "vae": VAE}


# --------------------------------------------------------------------------- state <-> checkpoint payload


def state_dict(state: State) -> dict:
    """Tensors and plain values only (loadable with ``torch.load(weights_only=True)``)."""
    return {
        "nets": {k: v.state_dict() for k, v in state.nets.items()},
        "opts": {k: v.state_dict() for k, v in state.opts.items()},
        "step": state.step,
    }


def load_state(state: State, payload: dict) -> State:
    """Put a checkpoint's weights and optimizer state into ``state`` (same architecture)."""
    for k, net in state.nets.items():
        net.load_state_dict(payload["nets"][k])
    for k, opt in state.opts.items():
        opt.load_state_dict(payload["opts"][k])
    return dataclasses.replace(state, step=int(payload["step"]))


# the two-stage families (latent-flow, latent-ewm, latent-gmm) add themselves to FAMILIES
from pgen import latent_steps as _latent_steps  # noqa: E402,F401
