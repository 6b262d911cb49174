"""The shell around one two-stage run: a generator of a trained VAE's latent codes (flow, ewm, gmm).

`run` resolves the VAE run, loads its ``best.pt``, checks the dataset against it, encodes the
training and validation splits (or reuses the codes an earlier run logged on the VAE run, under
``codes/<mean|sample-seedS>-<file digest>/<split>.npy``), builds the latent model and only then
opens the MLflow run (tags ``pgen.kind=train``, ``pgen.model=latent-<method>``,
``pgen.source_run=<VAE run>``). Training goes through `pgen.loop.fit`; a finished run logs both
stages as one pyfunc model (``generator``): codes from the latent model, decoded by the VAE.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from pgen import __version__, config, latent_steps, loop, steps, tracking
from pgen.config import Config
from pgen.errors import PgenError
from pgen.latent_steps import LatentHyper


@dataclass
class Result:
    run_id: str
    status: str
    config: Config
    hyper: LatentHyper
    val: dict[str, float]
    epoch: int
    model_uri: str | None = None


METHOD_DEFAULTS = {"flow": {"depth": 6, "width": 128}, "ewm": {"depth": 3, "width": 256}, "gmm": {}}


def hyper(method: str, values: Mapping[str, Any] | None = None) -> LatentHyper:
    """Latent-model settings: method defaults, then ``values`` (None entries ignored), validated."""
    if method not in latent_steps.METHODS:
        raise PgenError(f"--method must be one of {', '.join(latent_steps.METHODS)}, got '{method}'")
    given = {k: v for k, v in (values or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(LatentHyper)}
    unknown = set(given) - known
    if unknown:
        raise PgenError(f"unknown latent setting(s) {', '.join(sorted(unknown))}; valid ones are {', '.join(sorted(known))}")
    hp = LatentHyper(method=method, **{**METHOD_DEFAULTS[method], **given})
    checks = [
        (hp.codes in ("mean", "sample"), f"--codes must be mean or sample, got '{hp.codes}'"),
        (hp.depth >= 1 and hp.width >= 1, "--depth and --width must be at least 1"),
        (hp.cost in ("l1", "l2"), f"--cost must be l1 or l2, got '{hp.cost}'"),
        (hp.ot_steps >= 1 and hp.ot_lr > 0, "--ot-steps must be at least 1 and --ot-lr > 0"),
        (hp.k >= 1, f"--k must be at least 1, got {hp.k}"),
        (hp.covariance in ("full", "diag"), f"--covariance must be full or diag, got '{hp.covariance}'"),
        (hp.lr > 0, f"--lr must be > 0, got {hp.lr}"),
        (hp.noise_dim >= 0, f"--noise-dim must be >= 0, got {hp.noise_dim}"),
    ]
    for ok, message in checks:
        if not ok:
            raise PgenError(message)
    return hp


# --------------------------------------------------------------------------- the VAE


def load_vae(ref: str) -> tuple[Any, dict, Config]:
    """(the VAE run, its best checkpoint, its config); anything but a VAE training run is a PgenError."""
    run = tracking.resolve_run(ref)
    model = run.data.tags.get("pgen.model")
    if model != "vae":
        raise PgenError(f"--vae {ref}: run {run.info.run_id} trained a '{model}' model, not a VAE; "
                        "pass a run of `pgen train vae`")
    ckpt = tracking.load_checkpoint(run.info.run_id, "best.pt")
    if ckpt.get("family") != "vae":
        raise PgenError(f"--vae {ref}: checkpoints/best.pt of run {run.info.run_id} is a '{ckpt.get('family')}' checkpoint")
    return run, ckpt, config.from_flat(ckpt["config"], source=f"run {run.info.run_id} checkpoint")


def vae_net(cfg: Config, ckpt: Mapping[str, Any]) -> torch.nn.Module:
    net = steps.build_generator(cfg)
    net.load_state_dict(ckpt["state"]["nets"]["vae"])
    return net.eval()


def with_data(cfg: Config, data: str | None, ref: str) -> Config:
    """The VAE's data settings, pointed at ``data`` if given (same image size required; same scaling kept)."""
    from pgen import train
    from pgen.data import builtin

    path = builtin.resolve(data) if data else Path(cfg.data.file)
    if not path.exists():
        raise PgenError(f"{path}: the VAE's dataset file is gone; pass --data with the dataset it was trained on")
    facts = train.data_facts(path)
    if tuple(facts.shape) != tuple(cfg.shape):
        c, h, w = facts.shape
        raise PgenError(f"{path}: images are {h}x{w} ({c} channel(s)) but VAE run {ref} was trained on "
                        f"{cfg.data.height}x{cfg.data.width} ({cfg.data.channels}); pass --data with images of its size")
    val = cfg.data.val_split if cfg.data.val_split in facts.splits else ("val" if "val" in facts.splits else "test")
    if val not in facts.splits:
        raise PgenError(f"{path}: no 'val' or 'test' split to validate on (it has {', '.join(facts.splits)})")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data or cfg.data.path), file=str(path), val_split=val))


@torch.no_grad()
def encode(net: torch.nn.Module, cfg: Config, split: str, device: torch.device, *, mode: str, seed: int) -> np.ndarray:
    """Codes [N, latent_dim] of a split: posterior means, or one draw from q(z|x) each (``mode="sample"``)."""
    from pgen import train

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=256))
    rng = torch.Generator(device=device).manual_seed(loop.derive_seed(seed, f"codes:{split}"))
    out = []
    net = net.to(device)
    for batch in train.make_batches(cfg, split, device, train=False).epoch(0):
        mu, logvar = net.encode(batch)
        out.append(mu if mode == "mean" else torch.randn(mu.shape, generator=rng, device=device) * (0.5 * logvar).exp() + mu)
    return torch.cat(out).float().cpu().numpy()


def codes(vae_id: str, net, cfg: Config, split: str, device, *, mode: str, seed: int) -> np.ndarray:
    """The split's codes, from the VAE run's artifacts when an earlier run logged them, else encoded and logged there."""
    import mlflow

    key = ("mean" if mode == "mean" else f"sample-seed{seed}") + "-" + tracking.file_digest(cfg.data.file)
    artifact = f"codes/{key}/{split}.npy"
    with tempfile.TemporaryDirectory() as d:
        have = {f.path for f in tracking.client().list_artifacts(vae_id, f"codes/{key}")}
        if artifact in have:
            path = mlflow.artifacts.download_artifacts(run_id=vae_id, artifact_path=artifact, dst_path=d)
            return np.load(path, allow_pickle=False)
        values = encode(net, cfg, split, device, mode=mode, seed=seed)
        local = Path(d) / f"{split}.npy"
        np.save(local, values)
        tracking.client().log_artifact(vae_id, str(local), f"codes/{key}")
    return values


# --------------------------------------------------------------------------- one run


def run(
    vae: str,
    method: str,
    *,
    data: str | None = None,
    settings: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    log_every: int | None = None,
    log_model: bool = True,
    experiment: str | None = None,
    run_name: str | None = None,
    attach_run_id: str | None = None,
    on_step: Callable | None = None,
    progress: bool | None = None,
) -> Result:
    """Train a latent-code generator on VAE run ``vae`` as one MLflow run. Bad input raises PgenError first."""
    from pgen import train

    hp = hyper(method, settings)
    epochs = 20 if epochs is None else epochs
    seed = 0 if seed is None else seed
    if epochs < 1:
        raise PgenError(f"--epochs must be at least 1, got {epochs}")
    if batch_size is not None and batch_size < 0:
        raise PgenError(f"--batch-size must be at least 1 (0: the method's default), got {batch_size}")
    batch_size = batch_size or None
    vae_run, ckpt, vcfg = load_vae(vae)
    vae_id = vae_run.info.run_id
    vcfg = with_data(vcfg, data, vae)
    dev = train.resolve_device(device or "auto")
    net = vae_net(vcfg, ckpt)
    hp = dataclasses.replace(hp, dim=vcfg.model.latent_dim)
    train_codes = torch.from_numpy(codes(vae_id, net, vcfg, "train", dev, mode=hp.codes, seed=seed))
    val_codes = torch.from_numpy(codes(vae_id, net, vcfg, vcfg.data.val_split, dev, mode=hp.codes, seed=seed))
    n = len(train_codes)
    bs = n if method == "gmm" and batch_size is None else (batch_size or 256)
    if bs > n:
        raise PgenError(f"--batch-size {bs} is larger than the training split ({n} codes); lower it")
    t = vcfg.train
    cfg = dataclasses.replace(
        vcfg,
        model=dataclasses.replace(vcfg.model, family=f"latent-{method}"),
        train=dataclasses.replace(t, epochs=epochs, batch_size=bs, lr=hp.lr, lr_g=hp.lr, lr_d=hp.lr, seed=seed, device=dev.type,
                                  log_every=log_every or t.log_every, checkpoint_every=0, log_model=log_model),
    )
    init_rng = torch.Generator().manual_seed(loop.derive_seed(seed, "init"))
    state = latent_steps.init(hp, train_codes, net, dev, init_rng)
    train_batches = train.MemoryBatches(train_codes.to(dev), bs, seed=seed, drop_last=True)
    val_batches = train.MemoryBatches(val_codes.to(dev), len(val_codes), seed=None, drop_last=False)

    name = train.dataset_name(cfg)
    tags = {"pgen.kind": "train", "pgen.model": f"latent-{method}", "pgen.dataset": name, "pgen.source_run": vae_id}
    run_id = tracking.start(attach_id=attach_run_id, experiment=None if attach_run_id else experiment, run_name=run_name, tags=tags)
    try:
        with tracking.ending_on_error(plain=(loop.Diverged,)):
            params = {**config.flatten(cfg), **{f"latent.{k}": v for k, v in dataclasses.asdict(hp).items()},
                      "seed": seed, "pgen.version": __version__, "source_run": vae_id}
            tracking.log_params(run_id, params)
            tracking.log_text(config.to_toml(cfg), "config.toml")
            tracking.log_text("\n".join(f"{k} = {v!r}" for k, v in dataclasses.asdict(hp).items()) + "\n", "latent.toml")
            train._log_inputs(cfg, name)  # the encoded splits, as in every training run
            outcome = loop.fit(cfg, state, train_batches, val_batches, run_id, on_step=on_step, progress=progress)
            model_uri = None
            if outcome.status == "FINISHED" and log_model:
                model_uri = log_two_stage(outcome.state, cfg, hp)
    except loop.Diverged as e:
        raise PgenError(f"{e} [run {run_id} FAILED]") from None
    tracking.end(outcome.status)
    return Result(run_id, outcome.status, cfg, hp, outcome.val, outcome.position.epoch, model_uri)


# --------------------------------------------------------------------------- both stages as one model


def bundle(state: steps.State, cfg: Config, hp: LatentHyper) -> dict:
    """Tensors and plain values only: the latent model's sampling nets, the VAE, the configs."""
    keep = set(latent_steps.sampler_nets(hp)) | {"vae"}
    return {
        "config": config.flatten(cfg),
        "latent": dataclasses.asdict(hp),
        "nets": {k: {p: v.detach().cpu() for p, v in net.state_dict().items()} for k, net in state.nets.items() if k in keep},
    }


def from_bundle(payload: Mapping[str, Any]) -> tuple[Config, LatentHyper, dict[str, torch.nn.Module]]:
    """Rebuild (config, latent settings, nets incl. ``vae``) from `bundle`'s payload or a checkpoint's."""
    cfg = config.from_flat(payload["config"], source="two-stage model")
    hp = LatentHyper(**payload["latent"])
    nets = latent_steps.sampler_nets(hp)
    vae_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, family="vae"))
    nets["vae"] = steps.build_generator(vae_cfg)
    for k, net in nets.items():
        net.load_state_dict(payload["nets"][k])
        net.eval()
    return cfg, hp, nets


def log_two_stage(state: steps.State, cfg: Config, hp: LatentHyper) -> str:
    """Log both stages as the pyfunc model ``generator`` (same interface as `tracking.log_generator`)."""
    import warnings

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    import pgen

    shape = tuple(cfg.shape[1:]) if cfg.shape[0] == 1 else tuple(cfg.shape)
    signature = ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                               params=ParamSchema([ParamSpec("seed", "long", 0)]))
    package = Path(pgen.__file__).parent
    with tempfile.TemporaryDirectory() as d:
        weights = Path(d) / "two_stage.pt"
        torch.save(bundle(state, cfg, hp), weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="generator", python_model=str(package / "models" / "two_stage_pyfunc.py"),
                artifacts={"weights": str(weights)}, code_paths=[str(package)],
                pip_requirements=tracking.pip_requirements(), signature=signature,
            )
    mlflow.set_tag("pgen.model_uri", info.model_uri)
    return info.model_uri
