"""Training configuration: frozen dataclasses built once from a TOML file plus CLI flags.

A config has three parts, flattened into MLflow params as ``data.*``, ``model.*`` and ``train.*``::

    [data]                     # the dataset and how its pixels are scaled for the model
    path = "lartpc64"
    scale = "log"
    [model]                    # family ("gan", "dcgan", "vae") and architecture
    family = "vae"
    latent_dim = 20
    [train]                    # optimisation
    epochs = 10

``build`` reads TOML + overrides and validates; ``complete`` fills in what only the dataset
knows (image shape, value range, the default scaling and validation split). Both are pure:
the shell (``pgen.train``) opens files and calls them.

Pixel scaling is part of the dataset spec: ``to_model`` maps stored values into the model's
range (``[0, 1]`` for VAEs, ``[-1, 1]`` for Tanh generators) and ``from_model`` undoes it.
``scale = "linear"`` is ``(x - min) / (max - min)``; ``scale = "log"`` is
``log1p(x - min) / log1p(max - min)``, which spreads sparse ADC images whose charge sits far
below the saturation value. Values outside ``[min, max]`` are clipped.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from pgen.errors import PgenError

FAMILIES = ("gan", "dcgan", "vae")
SCALES = ("auto", "linear", "log")
DEVICES = ("auto", "cpu", "cuda")
LOG_SCALE_ABOVE = 255.0  # `scale = "auto"` picks log when max - min exceeds this (ADC data, not 8-bit pictures)
IN_MEMORY_MAX_BYTES = 2 * 1024**3  # `in_memory = "auto"` holds a split in memory (as float32) below this size


@dataclass(frozen=True)
class DataConfig:
    path: str = "lartpc64"  # a pgen dataset file or a built-in name
    scale: str = "auto"  # linear | log | auto (log when the value range spans more than 255)
    value_min: float | None = None  # stored value mapped to the model's lowest value [default: file's value_range]
    value_max: float | None = None  # stored value mapped to the highest (e.g. the ADC saturation)
    val_split: str = "auto"  # split validated on [default: val, else test]
    in_memory: str = "auto"  # yes | no | auto (yes below 2 GiB)
    workers: int = 0  # DataLoader worker processes when streaming from disk
    lit_threshold: float = 0.02  # a pixel is lit above this fraction of the scaled range (dark samples, occupancy)
    threshold: float | None = None  # GANs' validation score: lit above this stored value [default: as pgen evaluate]
    # filled in by `complete` from the file
    file: str = ""
    pixel_range: str = ""  # unit ([0, 1]) or symmetric ([-1, 1]), set by the model family
    channels: int = 0
    height: int = 0
    width: int = 0


@dataclass(frozen=True)
class ModelConfig:
    family: str = "vae"
    latent_dim: int = 0  # 0: the family's default (gan/dcgan 100, vae 20)
    # gan (MLP)
    n_layers: int = 4  # generator hidden layers of `hidden_width` units
    hidden_width: int = 512
    d_dropout: float = 0.0  # dropout on the discriminator's hidden units
    init: str = "normal"  # gan/dcgan weights: normal (N(0, 0.02), the DCGAN paper's) | torch (PyTorch's default, Kaiming-uniform)
    r1_gamma: float = 0.0  # gan/dcgan: weight of the R1 gradient penalty on D at real images (0: off)
    label_smoothing: float = 0.0  # gan/dcgan: D's target for real images is 1 - this (one-sided smoothing)
    # dcgan, conv vae
    base_channels: int = 32  # channels of the highest-resolution conv layer (dcgan default 64)
    # vae
    arch: str = "mlp"  # mlp | conv
    hidden: tuple[int, ...] = (400,)  # MLP VAE hidden widths, encoder order
    recon: str = "bernoulli"  # bernoulli (BCE) | gaussian (MSE with fixed sigma)
    sigma: float = 0.1  # gaussian decoder's standard deviation (in scaled units)
    beta: float = 1.0  # weight of the KL term
    kl_warmup: float = 0.0  # epochs over which beta rises linearly from 0
    nonzero_weight: float = 1.0  # reconstruction weight of non-zero pixels (sparse images)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.0  # vae learning rate (0: family default 1e-3)
    lr_g: float = 0.0  # gan generator learning rate (0: default 2e-4)
    lr_d: float = 0.0  # gan discriminator learning rate (0: default 2e-4)
    beta1: float = -1.0  # Adam betas (-1: family default; GANs 0.5, VAE 0.9)
    beta2: float = 0.999
    seed: int = 0
    device: str = "auto"
    log_every: int = 50  # steps between logged training losses
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: at the end of each epoch only)
    samples: int = 64  # images in the per-epoch sample grid
    log_model: bool = True  # log the generator / decoder as an MLflow pyfunc model at the end


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data.channels, self.data.height, self.data.width)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
FAMILY_DEFAULTS = {
    "gan": {"model.latent_dim": 100, "model.r1_gamma": 1.0, "train.lr_g": 2e-4, "train.lr_d": 2e-4, "train.beta1": 0.5},
    "dcgan": {"model.latent_dim": 100, "model.base_channels": 64, "train.lr_g": 2e-4, "train.lr_d": 2e-4, "train.beta1": 0.5},
    "vae": {"model.latent_dim": 20, "train.lr": 1e-3, "train.beta1": 0.9},
}
# settings that stay fixed when a run is resumed (anything else may change, e.g. epochs, device)
RESUMABLE = {"data.path", "data.file", "data.workers", "data.in_memory", "train.epochs", "train.device", "train.log_every",
             "train.checkpoint_every", "train.samples", "train.log_model"}


# --------------------------------------------------------------------------- building


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse an experiment file into flat ``{"section.key": value}`` (errors name the file)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise PgenError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PgenError(f"{p}: cannot be read: {e}") from None
    return parse_toml(text, source=str(p))


def parse_toml(text: str, *, source: str = "config") -> dict[str, Any]:
    """TOML text -> flat ``{"section.key": value}``."""
    p = source
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PgenError(f"{p}: not valid TOML: {e}") from None
    flat: dict[str, Any] = {}
    for section, table in raw.items():
        if section == "tune":  # the search space of `pgen tune` (pgen.tune reads it)
            continue
        if section not in SECTIONS or not isinstance(table, dict):
            raise PgenError(f"{p}: unknown section [{section}]; a config has [data], [model] and [train]")
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat


def build(family: str, file_values: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None, *,
          source: str = "config") -> Config:
    """One config from the family's defaults, then a TOML file's values, then CLI overrides (flags win)."""
    if family not in FAMILIES:
        raise PgenError(f"unknown model '{family}'; choose one of {', '.join(FAMILIES)}")
    file_values = dict(file_values or {})
    declared = file_values.pop("model.family", family)
    if declared != family:
        raise PgenError(f"{source}: is a config for model '{declared}', not '{family}'; use `pgen train {declared}` or another file")
    values: dict[str, Any] = {"model.family": family, **FAMILY_DEFAULTS[family]}
    values.update(file_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate(from_flat(values, source=source))


def from_flat(values: Mapping[str, Any], *, source: str = "config") -> Config:
    """A config from flat ``section.key`` values (unknown keys are an error naming the valid ones)."""
    parts: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        section, _, name = key.partition(".")
        cls = SECTIONS.get(section)
        known = {f.name: f for f in fields(cls)} if cls else {}
        if name not in known:
            valid = ", ".join(sorted(known)) if known else ", ".join(SECTIONS)
            raise PgenError(f"{source}: unknown setting '{key}'; valid ones are {valid}")
        parts[section][name] = _coerce(known[name], value, f"{source}: {key}")
    return Config(**{name: SECTIONS[name](**kw) for name, kw in parts.items()})


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in value.replace("x", ",").split(",") if v.strip()]
            return tuple(int(v) for v in value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return None if value is None else float(value)
        if kind == "str" or kind.startswith("str"):
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError):
        raise PgenError(f"{where}: {value!r} is not a valid {kind}") from None
    return value


def validate(cfg: Config) -> Config:
    """Check every setting; the first problem is a PgenError saying what to change."""
    d, m, t = cfg.data, cfg.model, cfg.train
    checks = [
        (m.family in FAMILIES, f"unknown model '{m.family}'; choose one of {', '.join(FAMILIES)}"),
        (m.arch in ("mlp", "conv"), f"unknown --arch '{m.arch}'; choose mlp or conv"),
        (m.latent_dim >= 1, f"--latent-dim must be at least 1, got {m.latent_dim}"),
        (m.recon in ("bernoulli", "gaussian"), f"model.recon must be bernoulli or gaussian, got '{m.recon}'"),
        (m.beta >= 0, f"--beta must be >= 0, got {m.beta}"),
        (m.kl_warmup >= 0, f"--kl-warmup must be >= 0 epochs, got {m.kl_warmup}"),
        (m.nonzero_weight > 0, f"--nonzero-weight must be > 0, got {m.nonzero_weight}"),
        (m.sigma > 0, f"model.sigma must be > 0, got {m.sigma}"),
        (m.init in ("normal", "torch"), f"--init must be normal or torch, got '{m.init}'"),
        (0 <= m.d_dropout < 1, f"--d-dropout must be in [0, 1), got {m.d_dropout}"),
        (m.r1_gamma >= 0, f"--r1-gamma must be >= 0, got {m.r1_gamma}"),
        (0 <= m.label_smoothing < 0.5, f"--label-smoothing must be in [0, 0.5), got {m.label_smoothing}"),
        (m.n_layers >= 1 and m.hidden_width >= 1, "model.n_layers and model.hidden_width must be at least 1"),
        (all(h >= 1 for h in m.hidden) and len(m.hidden) >= 1, f"--hidden needs positive widths, got {m.hidden}"),
        (m.base_channels >= 1, f"--base-channels must be at least 1, got {m.base_channels}"),
        (d.scale in SCALES, f"--scale must be linear, log or auto, got '{d.scale}'"),
        (d.in_memory in ("auto", "yes", "no"), f"data.in_memory must be auto, yes or no, got '{d.in_memory}'"),
        (d.workers >= 0, f"--workers must be >= 0, got {d.workers}"),
        (0 < d.lit_threshold < 1, f"data.lit_threshold must be in (0, 1), got {d.lit_threshold}"),
        (t.epochs >= 1, f"--epochs must be at least 1, got {t.epochs}"),
        (t.batch_size >= 1, f"--batch-size must be at least 1, got {t.batch_size}"),
        (t.device in DEVICES, f"--device must be auto, cpu or cuda, got '{t.device}'"),
        (t.log_every >= 1, f"--log-every must be at least 1, got {t.log_every}"),
        (t.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {t.checkpoint_every}"),
        (t.samples >= 1, f"train.samples must be at least 1, got {t.samples}"),
        (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, f"Adam betas must be in [0, 1), got ({t.beta1}, {t.beta2})"),
    ]
    if m.family == "vae":
        checks.append((t.lr > 0, f"--lr must be > 0, got {t.lr}"))
    else:
        checks += [(t.lr_g > 0, f"--lr-g must be > 0, got {t.lr_g}"), (t.lr_d > 0, f"--lr-d must be > 0, got {t.lr_d}")]
    if d.value_min is not None and d.value_max is not None:
        checks.append((d.value_max > d.value_min, f"data.value_max ({d.value_max}) must exceed data.value_min ({d.value_min})"))
    for ok, message in checks:
        if not ok:
            raise PgenError(message)
    return cfg


# --------------------------------------------------------------------------- completing from the dataset


@dataclass(frozen=True)
class DataFacts:
    """What the shell read from the dataset file: everything `complete` needs, nothing else."""

    file: str
    shape: tuple[int, int, int]  # (C, H, W)
    value_range: tuple[float, float] | None
    splits: tuple[str, ...]
    n_train: int
    train_bytes: int  # train split as float32
    threshold: float | None = None  # the dataset's binarisation threshold (`pgen.data.store.default_threshold`)


def complete(cfg: Config, facts: DataFacts) -> Config:
    """Fill in the dataset-dependent settings (shape, value range, scaling, validation split, pixel range)."""
    d = cfg.data
    lo, hi = d.value_min, d.value_max
    if lo is None or hi is None:
        if facts.value_range is None:
            raise PgenError(f"{facts.file}: no value_range attribute; set data.value_min and data.value_max in the config")
        lo = facts.value_range[0] if lo is None else lo
        hi = facts.value_range[1] if hi is None else hi
    if not hi > lo:
        raise PgenError(f"{facts.file}: value range ({lo}, {hi}) is empty; set data.value_min < data.value_max")
    if d.threshold is not None and not lo <= d.threshold < hi:
        raise PgenError(f"data.threshold {d.threshold:g} is outside the data's range [{lo:g}, {hi:g}): every pixel would be "
                        f"{'lit' if d.threshold < lo else 'dark'}")
    scale = d.scale if d.scale != "auto" else ("log" if hi - lo > LOG_SCALE_ABOVE else "linear")
    val = d.val_split
    if val == "auto":
        val = "val" if "val" in facts.splits else "test" if "test" in facts.splits else ""
        if not val:
            raise PgenError(f"{facts.file}: no 'val' or 'test' split to validate on (it has {', '.join(facts.splits)})")
    elif val not in facts.splits:
        raise PgenError(f"{facts.file}: no split '{val}' to validate on (it has {', '.join(facts.splits)})")
    if "train" not in facts.splits:
        raise PgenError(f"{facts.file}: no 'train' split (it has {', '.join(facts.splits)})")
    if cfg.train.batch_size > facts.n_train:
        raise PgenError(f"--batch-size {cfg.train.batch_size} is larger than the training split ({facts.n_train} images); lower it")
    in_memory = d.in_memory if d.in_memory != "auto" else ("yes" if facts.train_bytes <= IN_MEMORY_MAX_BYTES else "no")
    c, h, w = facts.shape
    data = dataclasses.replace(
        d, file=str(facts.file), value_min=float(lo), value_max=float(hi), scale=scale, val_split=val, in_memory=in_memory,
        pixel_range="unit" if cfg.family == "vae" else "symmetric", channels=c, height=h, width=w,
        threshold=d.threshold if d.threshold is not None else facts.threshold,
    )
    return dataclasses.replace(cfg, data=data)


# --------------------------------------------------------------------------- flat dict and TOML out


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"data.path": ..., "model.family": ..., "train.epochs": ...}`` (tuples as "512,256")."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        part = getattr(cfg, section)
        for f in fields(part):
            value = getattr(part, f.name)
            out[f"{section}.{f.name}"] = ",".join(str(v) for v in value) if isinstance(value, tuple) else value
    return out


def to_toml(cfg: Config) -> str:
    """The config as a TOML experiment file (reads back through `read_toml` + `build`)."""
    lines: list[str] = []
    for section in SECTIONS:
        part = getattr(cfg, section)
        lines.append(f"[{section}]")
        for f in fields(part):
            value = getattr(part, f.name)
            if value is None:
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not (isinstance(value, float) and math.isinf(value)) else ("inf" if value > 0 else "-inf")
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- pixel scaling (the dataset spec)


def to_model(x, data: DataConfig):
    """Stored values (a float tensor) -> the model's range: [0, 1] (unit) or [-1, 1] (symmetric)."""
    import torch

    lo, hi = data.value_min, data.value_max
    if data.scale == "log":
        u = torch.log1p((x - lo).clamp(0, hi - lo)) / math.log1p(hi - lo)
    else:
        u = ((x - lo) / (hi - lo)).clamp(0, 1)
    return u * 2 - 1 if data.pixel_range == "symmetric" else u


def from_model(y, data: DataConfig):
    """The inverse of `to_model` (values outside the model's range are clipped first)."""
    import torch

    lo, hi = data.value_min, data.value_max
    u = (y + 1) / 2 if data.pixel_range == "symmetric" else y
    u = u.clamp(0, 1)
    if data.scale == "log":
        return torch.expm1(u * math.log1p(hi - lo)) + lo
    return u * (hi - lo) + lo


def to_unit(y, data: DataConfig):
    """Model-range values -> [0, 1] (for thresholds shared by both pixel ranges)."""
    return (y + 1) / 2 if data.pixel_range == "symmetric" else y
