"""Generation from a trained run (``pgen deploy``): N samples into a pgen dataset, recorded as a deploy run.

`generator` rebuilds a training run's sampler from its ``checkpoints/best.pt`` (``last.pt`` if it
has no best): gan / dcgan (latent noise through the generator), vae (prior sampling: z ~ N(0, I)
through the decoder) and the two-stage ``latent-*`` runs (codes from the latent model through
the VAE's decoder). `deploy` draws N images in batches of ``batch_size`` (memory bounded by one
batch; the last one drawn full and cut, since batch-norm generators normalise with the batch's
statistics) from one ``torch.Generator`` seeded with ``seed``, so the same seed (and batch size) gives
the same samples; undoes the pixel scaling; and writes split ``samples`` through
`pgen.data.store.StoreWriter` (atomic: a failed deploy leaves no file). The deploy run carries
tags ``pgen.kind=deploy``, ``pgen.source_run``; the grid, and the file itself below
``ARTIFACT_MAX_BYTES``, as artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pgen import config, steps, tracking
from pgen.config import Config
from pgen.errors import PgenError

ARTIFACT_MAX_BYTES = 50 * 1024**2
GRID_IMAGES = 64


@dataclass
class Generator:
    run_id: str
    model: str  # gan, dcgan, vae, latent-flow, ...
    config: Config  # data settings for undoing the pixel scaling
    draw: Callable[[int, torch.Generator], torch.Tensor]  # n images in the model's range
    device: torch.device


@dataclass
class Deployed:
    run_id: str  # the deploy run
    source_run: str
    path: Path
    n: int
    grid: Path | None
    logged_file: bool


def generator(ref: str, device: str = "auto", checkpoint: str = "best") -> Generator:
    """A run's sampler from its ``best`` checkpoint (``last`` where it has none) or its ``last``;
    a run that is not a generative training run is a PgenError."""
    from pgen import latent, train

    run = tracking.resolve_run(ref)  # deploy, evaluate and tune runs are refused here
    run_id, model = run.info.run_id, run.data.tags.get("pgen.model", "")
    if model not in ("gan", "dcgan", "vae") and not model.startswith("latent-"):
        raise PgenError(f"run {run_id} is a '{model or 'non-pgen'}' run, not a generative model (gan, dcgan, vae, latent-*)")
    if checkpoint not in ("best", "last"):
        raise PgenError(f"--checkpoint must be best or last, got '{checkpoint}'")
    try:
        ckpt = tracking.load_checkpoint(run_id, f"{checkpoint}.pt")
    except PgenError:
        if checkpoint == "last":
            raise
        ckpt = tracking.load_checkpoint(run_id, "last.pt")
    dev = train.resolve_device(device)
    if model.startswith("latent-"):
        cfg, hp, nets = latent.from_bundle({"config": ckpt["config"], "latent": _latent_hyper(run), "nets": ckpt["state"]["nets"]})
        nets = {k: v.to(dev) for k, v in nets.items()}
        from pgen.latent_steps import draw_codes

        def draw(n: int, rng: torch.Generator) -> torch.Tensor:
            return steps.decode(nets["vae"], draw_codes(nets, hp, n, rng), "vae")

        return Generator(run_id, model, cfg, draw, dev)
    cfg = config.from_flat(ckpt["config"], source=f"run {run_id} checkpoint")
    net = steps.build_generator(cfg)
    net.load_state_dict(ckpt["state"]["nets"]["vae" if model == "vae" else "g"])
    net = net.to(dev).eval()
    latent_dim = cfg.model.latent_dim

    def draw(n: int, rng: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, latent_dim, generator=rng, device=dev)
        return steps.decode(net, z, model)

    return Generator(run_id, model, cfg, draw, dev)


def _latent_hyper(run) -> dict:
    """The latent settings from a two-stage run's ``latent.*`` params."""
    from dataclasses import fields

    from pgen.latent_steps import LatentHyper

    p = {k[len("latent."):]: v for k, v in run.data.params.items() if k.startswith("latent.")}
    out = {}
    for f in fields(LatentHyper):
        if f.name in p:
            out[f.name] = {"int": int, "float": float}.get(str(f.type), str)(p[f.name])
    return out


def samples(gen: Generator, n: int, *, seed: int = 0, batch_size: int = 256):
    """Yield images in stored units (float32 numpy ``[b, C, H, W]``), ``n`` in all, ``batch_size`` at a time."""
    rng = torch.Generator(device=gen.device).manual_seed(seed)
    done, b = 0, min(batch_size, n)
    while done < n:  # every batch full-sized (a batch-norm generator normalises with the batch's own statistics)
        with torch.no_grad():
            images = config.from_model(gen.draw(b, rng), gen.config.data)[: n - done]
        yield images.float().cpu().numpy()
        done += len(images)


def _value_range(cfg: Config) -> tuple[float, float]:
    from pgen.data import store

    try:
        with store.open_store(cfg.data.file) as f:
            vr = store.attrs_of(f).get("value_range")
        if vr is not None and len(vr) == 2:
            return float(vr[0]), float(vr[1])
    except (PgenError, OSError):
        pass
    return float(cfg.data.value_min), float(cfg.data.value_max)


def deploy(ref: str, n: int, out: str | os.PathLike, *, grid: str | os.PathLike | None = None, seed: int = 0,
           batch_size: int = 256, device: str = "auto", experiment: str | None = None,
           attach_run_id: str | None = None, checkpoint: str = "best") -> Deployed:
    """Write ``n`` samples of run ``ref`` to ``out`` (split ``samples``) and record a deploy run."""
    import mlflow

    from pgen.data.store import StoreWriter
    from pgen.display import event_grid, save_png

    out = Path(out)
    if n < 1:
        raise PgenError(f"-n must be at least 1, got {n}")
    if batch_size < 1:
        raise PgenError(f"--batch-size must be at least 1, got {batch_size}")
    for what, path in (("--out", out), ("--grid", Path(grid) if grid else None)):
        if path is not None and not path.parent.is_dir():
            raise PgenError(f"{what} {path}: folder {path.parent} does not exist; create it first")
    if out.is_dir():
        raise PgenError(f"--out {out} is a folder; give a file name such as {out / 'samples.h5'}")
    gen = generator(ref, device, checkpoint)
    cfg = gen.config
    shape = cfg.shape[1:] if cfg.shape[0] == 1 else cfg.shape
    tags = {"pgen.kind": "deploy", "pgen.model": gen.model, "pgen.source_run": gen.run_id,
            "pgen.dataset": Path(cfg.data.file).stem}
    run_id = tracking.start(attach_id=attach_run_id, experiment=None if attach_run_id else experiment, tags=tags)
    with tracking.ending_on_error():
        tracking.log_params(run_id, {"n": n, "seed": seed, "batch_size": batch_size, "out": str(out), "source_run": gen.run_id,
                                     "checkpoint": checkpoint})
        first: list[np.ndarray] = []
        kept = 0
        with StoreWriter(out, source=f"pgen deploy of run {gen.run_id}", value_range=_value_range(cfg),
                         source_run=gen.run_id, seed=seed, model=gen.model) as w:
            split = w.split("samples", shape, np.float32)
            for images in samples(gen, n, seed=seed, batch_size=batch_size):
                if kept < GRID_IMAGES:
                    first.append(images[: GRID_IMAGES - kept])
                    kept += len(first[-1])
                split.append(images[:, 0] if cfg.shape[0] == 1 else images)
        rgb = event_grid(np.concatenate(first))
        mlflow.log_image(rgb, "samples.png")
        if grid:
            save_png(rgb, grid)
        logged = out.stat().st_size <= ARTIFACT_MAX_BYTES
        if logged:
            mlflow.log_artifact(str(out), "samples")
        mlflow.set_tag("pgen.samples_file", str(out.resolve()))
    tracking.end("FINISHED")
    return Deployed(run_id, gen.run_id, out, n, Path(grid) if grid else None, logged)
