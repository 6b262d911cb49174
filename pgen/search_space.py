"""The search space of `pgen tune`: each family's defaults, overridable by the [tune] table of a config file.

A dimension is a range ``[low, high]`` (integers on a log scale; floats log-uniform when
``low > 0``, else uniform) or ``{choices = [a, b, ...]}``::

    [tune]
    latent_dim = [2, 256]
    lr = [1e-5, 1e-2]
    batch_size = {choices = [64, 128]}
    startup_trials = 5      # the median pruner's trials before it prunes
    warmup_epochs = 0       # epochs a trial runs before it can be pruned
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pgen.errors import PgenError

SETTINGS = {"startup_trials": 5, "warmup_epochs": 0}  # [tune] keys that configure the median pruner, not the space

# search-space names -> (config key, `pgen train` flag)
PARAMS = {
    "latent_dim": ("model.latent_dim", "--latent-dim"),
    "lr": ("train.lr", "--lr"),
    "lr_g": ("train.lr_g", "--lr-g"),
    "lr_d": ("train.lr_d", "--lr-d"),
    "beta": ("model.beta", "--beta"),
    "batch_size": ("train.batch_size", "--batch-size"),
    "kl_warmup": ("model.kl_warmup", "--kl-warmup"),
    "nonzero_weight": ("model.nonzero_weight", "--nonzero-weight"),
    "base_channels": ("model.base_channels", "--base-channels"),
    "hidden_width": ("model.hidden_width", "--hidden-width"),
    "n_layers": ("model.n_layers", "--n-layers"),
    "d_dropout": ("model.d_dropout", "--d-dropout"),
    "r1_gamma": ("model.r1_gamma", "--r1-gamma"),
    "label_smoothing": ("model.label_smoothing", "--label-smoothing"),
}
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "vae": {"latent_dim": [2, 128], "lr": [1e-4, 1e-2]},
    "gan": {"latent_dim": [8, 256], "lr_g": [1e-5, 1e-3], "lr_d": [1e-5, 1e-3]},
    "dcgan": {"latent_dim": [8, 256], "lr_g": [1e-5, 1e-3], "lr_d": [1e-5, 1e-3]},
}


@dataclass(frozen=True)
class Dim:
    """One search dimension: an int range (log scale), a float range (log-uniform when low > 0), or choices."""

    name: str
    low: Any = None
    high: Any = None
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.low > 0)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.low > 0)


@dataclass(frozen=True)
class Space:
    dims: tuple[Dim, ...]
    settings: dict[str, int]

    def suggest(self, trial) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dims}


def overrides_of(params: Mapping[str, Any]) -> dict[str, Any]:
    return {PARAMS[k][0]: v for k, v in params.items()}


def read_space(family: str, config_file: str | Path | None) -> Space:
    """The family's default space, with entries replaced or added by the config file's [tune] table."""
    table: dict[str, Any] = {}
    source = str(config_file) if config_file else "[tune]"
    if config_file:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise PgenError(f"{config_file}: no such config file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise PgenError(f"{config_file}: cannot be read as TOML: {e}") from None
        table = raw.get("tune", {})
        if not isinstance(table, dict):
            raise PgenError(f"{config_file}: [tune] must be a table of ranges, e.g. lr = [1e-5, 1e-2]")
    space = dict(DEFAULT_SPACE[family])
    settings = dict(SETTINGS)
    for key, value in table.items():
        if key in SETTINGS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PgenError(f"{source}: [tune] {key} must be an integer >= 0, got {value!r}")
            settings[key] = value
        elif key not in PARAMS:
            raise PgenError(f"{source}: [tune] unknown parameter '{key}'; tunable ones are {', '.join(PARAMS)} "
                            f"(and the settings {', '.join(SETTINGS)})")
        else:
            space[key] = value
    dims = tuple(_dim(k, v, source) for k, v in space.items())
    return Space(dims, settings)


def _dim(name: str, value: Any, source: str) -> Dim:
    where = f"{source}: [tune] {name}"
    if isinstance(value, dict):
        choices = value.get("choices")
        if set(value) != {"choices"} or not isinstance(choices, list) or not choices:
            raise PgenError(f"{where}: write a range [low, high] or {{choices = [a, b, ...]}} with at least one choice")
        return Dim(name, choices=tuple(choices))
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise PgenError(f"{where} = {value!r}: write a range [low, high] of two numbers or {{choices = [a, b, ...]}}")
    low, high = value
    if low == high:
        raise PgenError(f"{where} = {value!r} is an empty range; write [low, high] with low < high (or fix it in [model]/[train])")
    if low > high:
        raise PgenError(f"{where} = {value!r} is inverted; write [low, high] with low < high, e.g. [{high!r}, {low!r}]")
    if low < 0:
        raise PgenError(f"{where} = {value!r}: the range must not be negative")
    if isinstance(low, int) and isinstance(high, int) and low < 1:
        raise PgenError(f"{where} = {value!r}: integer ranges are searched on a log scale and must start at 1 or more")
    return Dim(name, low, high)
