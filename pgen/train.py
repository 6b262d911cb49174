"""The shell around one training run: config + data + loop + tracking.

`run` builds the config once (TOML file, then flags), resolves the dataset, builds the model
and the batches, and only then opens the MLflow run, so bad input never leaves a run behind.
Inside the run it logs the contract (tags, params, config.toml, dataset inputs), hands over to
`pgen.loop.fit`, and ends the run FINISHED (logging the generator as a pyfunc model), KILLED
(interrupted; resumable) or FAILED (with the reason as the ``pgen.error`` tag).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from pgen import distributed, __version__, config, loop, steps, tracking
from pgen.config import Config
from pgen.errors import PgenError, first_line


@dataclass
class Result:
    run_id: str
    status: str  # FINISHED or KILLED
    config: Config
    val: dict[str, float]
    epoch: int  # completed epochs
    batch: int = 0  # batches done in the next epoch (a run stopped mid-epoch)
    model_uri: str | None = None


# --------------------------------------------------------------------------- batches


class MemoryBatches:
    """A split held on the device (already scaled); each epoch's order comes from (seed, epoch) only."""

    def __init__(self, images: torch.Tensor, batch_size: int, *, seed: int | None, drop_last: bool):
        self.images = images
        self.n = len(images)
        self.batch_size = batch_size
        self.seed = seed  # None: in order (validation)
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        b = self.batch_size
        if self.seed is None:
            for i in range(skip, len(self)):
                yield self.images[i * b : (i + 1) * b]
            return
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(loop.derive_seed(self.seed, f"order:{epoch}")))
        order = order.to(self.images.device)
        part = distributed.rank_slice(b)  # under torchrun: this process's share of each global batch
        for i in range(skip, len(self)):
            yield self.images.index_select(0, order[i * b : (i + 1) * b][part])


class StreamBatches:
    """A split read from disk by chunk (bounded memory), scaled in the DataLoader workers."""

    def __init__(self, dataset, batch_size: int, *, seed: int | None, drop_last: bool, workers: int, device: torch.device):
        self.dataset = dataset
        self.n = len(dataset)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.workers = workers
        self.device = device

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        from torch.utils.data import DataLoader

        if self.seed is None:
            order = torch.arange(self.n)
        else:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(loop.derive_seed(self.seed, f"order:{epoch}")))
        b = self.batch_size
        part = distributed.rank_slice(b) if self.seed is not None else slice(None)  # torchrun: this process's share
        chunks = [order[i * b : (i + 1) * b][part].tolist() for i in range(skip, len(self))]
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=self.workers, collate_fn=_images,
                            pin_memory=self.device.type == "cuda")
        for images in loader:
            yield images.to(self.device, non_blocking=True)


def _images(batch):
    """Collate for ImageDataset.__getitems__ (the batch arrives assembled); images only."""
    item = batch[0]
    return item[0] if isinstance(item, tuple) else item


def make_batches(cfg: Config, split: str, device: torch.device, *, train: bool):
    from pgen.data.dataset import ImageDataset

    d = cfg.data
    transform = functools.partial(config.to_model, data=d)
    seed = cfg.train.seed if train else None
    if d.in_memory == "yes":
        ds = ImageDataset(d.file, split, in_memory=True)
        images = transform(ds.read(range(len(ds)))[0]).contiguous()
        return MemoryBatches(images.to(device), cfg.train.batch_size, seed=seed, drop_last=train)
    ds = ImageDataset(d.file, split, transform=transform)
    return StreamBatches(ds, cfg.train.batch_size, seed=seed, drop_last=train, workers=d.workers, device=device)


# --------------------------------------------------------------------------- the dataset's facts


def data_facts(path: Path) -> config.DataFacts:
    from pgen.data import store

    with store.open_store(path) as f:
        attrs = store.attrs_of(f)
        splits = tuple(store.split_names(f))
        if "train" not in splits:
            raise PgenError(f"{path}: no 'train' split to train on (it has {', '.join(splits)})")
        images = f["train"]["images"]
        shape = tuple(int(s) for s in images.shape[1:])
        n = int(images.shape[0])
    if len(shape) == 2:
        shape = (1, *shape)
    vr = attrs.get("value_range")
    value_range = (float(vr[0]), float(vr[1])) if vr is not None and len(vr) == 2 else None
    return config.DataFacts(file=str(path), shape=shape, value_range=value_range, splits=splits, n_train=n,
                            train_bytes=n * math.prod(shape) * 4, threshold=store.default_threshold(attrs)[0])


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PgenError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def dataset_name(cfg: Config) -> str:
    from pgen.data import builtin

    return cfg.data.path if cfg.data.path in builtin.BUILTINS else Path(cfg.data.file).stem


# --------------------------------------------------------------------------- one run


def _gan_lr(family: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """`--lr` on a GAN sets both learning rates (an explicit --lr-g / --lr-d wins)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if family != "vae" and "train.lr" in overrides:
        lr = overrides.pop("train.lr")
        overrides.setdefault("train.lr_g", lr)
        overrides.setdefault("train.lr_d", lr)
    return overrides


def _resume_config(family: str, run, overrides: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    kind = run.data.tags.get("pgen.model")
    if kind != family:
        raise PgenError(f"run {run.info.run_id} trained a '{kind}' model; resume it with `pgen train {kind} --resume ...`")
    stored = config.parse_toml(tracking.read_text(run.info.run_id, "config.toml"), source=f"run {run.info.run_id} config.toml")
    for key, value in overrides.items():
        if key not in config.RESUMABLE and key in stored and str(stored[key]) != str(value):
            raise PgenError(f"{key} cannot change when resuming (the run has {stored[key]!r}); start a new run instead")
    values = {**stored, **{k: v for k, v in overrides.items() if k in config.RESUMABLE or k not in stored}}
    return config.build(family, values, source=f"run {run.info.run_id}"), stored


def run(
    family: str,
    *,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    attach_run_id: str | None = None,
    on_step: Callable | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Result:
    """Train one model as one MLflow run (see the module docstring). Bad input raises PgenError first.

    Under ``torchrun`` every process runs this; rank 0 alone opens the MLflow run (see `pgen.distributed`)."""
    world = distributed.setup()
    try:
        result = _run(family, config_file=config_file, overrides=overrides, resume=resume, experiment=experiment,
                      run_name=run_name, attach_run_id=attach_run_id if world.main else None, on_step=on_step,
                      progress=progress, on_epoch=on_epoch, tags=tags, world=world)
    except BaseException:
        distributed.teardown(clean=False)
        raise
    distributed.teardown()
    return result


def _run(family, *, config_file, overrides, resume, experiment, run_name, attach_run_id, on_step, progress, on_epoch, tags,
         world) -> Result:
    from pgen.data import builtin

    overrides = _gan_lr(family, dict(overrides or {}))
    resumed = checkpoint = None
    if resume:
        if config_file:
            raise PgenError("--config cannot be combined with --resume: a resumed run keeps its own config.toml")
        resumed = tracking.resolve_run(resume)
        cfg, _ = _resume_config(family, resumed, overrides)
        checkpoint = tracking.load_resumable(resumed.info.run_id, warn=_warn)
    else:
        cfg = config.build(family, config.read_toml(config_file) if config_file else {}, overrides,
                           source=str(config_file) if config_file else "flags")
    path = builtin.resolve(cfg.data.path)
    cfg = config.complete(cfg, data_facts(path))
    distributed.local_batch(cfg.train.batch_size)  # the global batch must split evenly over the processes
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device.type))

    position = loop.Position()
    if checkpoint is not None:
        if checkpoint.get("family") != family:
            raise PgenError(f"run {resumed.info.run_id}: its checkpoint is of a '{checkpoint.get('family')}' model, not '{family}'")
        if list(checkpoint.get("shape", [])) != list(cfg.shape):
            c, h, w = checkpoint.get("shape", [0, 0, 0])
            raise PgenError(f"{cfg.data.file}: images are {cfg.data.height}x{cfg.data.width} ({cfg.data.channels} channel(s)) "
                            f"but run {resumed.info.run_id} was trained on {h}x{w} ({c}); resume with the run's own dataset")
        position = loop.Position(int(checkpoint["epoch"]), int(checkpoint["batch"]), float(checkpoint["best"]), checkpoint["rng"])
        if position.epoch >= cfg.train.epochs:
            raise PgenError(f"run {resumed.info.run_id} has already trained {position.epoch} epochs; "
                            f"pass --epochs above {position.epoch} to continue it")

    init_rng = torch.Generator().manual_seed(loop.derive_seed(cfg.train.seed, "init"))
    train_batches = make_batches(cfg, "train", device, train=True)
    val_batches = make_batches(cfg, cfg.data.val_split, device, train=False)
    state = steps.init(cfg, len(train_batches), device, init_rng)
    if checkpoint is not None:
        try:
            state = steps.load_state(state, _to_device(checkpoint["state"], device))
        except (KeyError, RuntimeError, ValueError) as e:
            raise PgenError(f"run {resumed.info.run_id}: checkpoint does not fit the model ({first_line(e)[:200]}); "
                            "start a new run") from None

    if not world.main:  # another torchrun process: trains its share, never opens or touches the MLflow run
        outcome = loop.fit(cfg, state, train_batches, val_batches, None, position=position, on_step=on_step, progress=False,
                           on_epoch=on_epoch)
        return Result(None, outcome.status, cfg, outcome.val, outcome.position.epoch, outcome.position.batch, None)
    if resumed is not None:
        tracking.close_if_stale(resumed, warn=_warn)
    name = dataset_name(cfg)
    tags = {"pgen.kind": "train", "pgen.model": family, "pgen.dataset": name, **tracking.process_tags(), **(tags or {})}
    run_id = tracking.start(attach_id=attach_run_id, resume_id=resumed.info.run_id if resumed else None,
                            experiment=None if attach_run_id else experiment, run_name=run_name, tags=tags)
    try:
        with tracking.ending_on_error(plain=(loop.Diverged,)):
            params = {**config.flatten(cfg), "seed": cfg.train.seed, "pgen.version": __version__, "world_size": world.size}
            tracking.log_params(run_id, params)
            tracking.log_text(config.to_toml(cfg), "config.toml")
            _log_inputs(cfg, name)
            outage = tracking.Outage(run_id, warn=_warn)
            outcome = loop.fit(cfg, state, train_batches, val_batches, run_id, position=position, on_step=on_step, progress=progress,
                               on_epoch=on_epoch, outage=outage)
            model_uri = None
            if outcome.status == "FINISHED" and cfg.train.log_model:
                net = steps.build_generator(cfg)
                source = outcome.state.nets["vae" if family == "vae" else "g"]
                net.load_state_dict(source.state_dict())
                logged: list[str] = []
                outage.call("model", lambda: logged.append(
                    tracking.log_generator({k: v.cpu() for k, v in net.state_dict().items()}, config.flatten(cfg), cfg.shape)))
                model_uri = logged[0] if logged else None
    except loop.Diverged as e:
        raise PgenError(f"{e} [run {run_id} FAILED]") from None
    outage.finish(outcome.status, outcome.log)  # with a lost tracking server: retries, then says what was not logged
    return Result(run_id, outcome.status, cfg, outcome.val, outcome.position.epoch, outcome.position.batch, model_uri)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _to_device(tree, device: torch.device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_device(v, device) for v in tree]
    return tree


def _log_inputs(cfg: Config, name: str) -> None:
    from pgen.data import store

    digest = tracking.file_digest(cfg.data.file)
    with store.open_store(cfg.data.file) as f:
        for split, context in (("train", "training"), (cfg.data.val_split, "validation")):
            ds = f[split]["images"]
            tracking.log_dataset(cfg.data.file, name=name, split=split, n=int(ds.shape[0]), image_shape=tuple(ds.shape[1:]),
                                 dtype=str(ds.dtype), digest=digest, context=context)
