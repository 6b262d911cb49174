"""The one training loop: epochs, wall time, checkpoints, MLflow logging, progress and signals.

Every model family trains through `fit`, contributing only its pure functions (`pgen.steps`).
The loop keeps the per-step metrics on the device and synchronises once every
``train.log_every`` steps; metrics go to MLflow in batches at the end of each epoch.

Randomness: the initial weights, the step generator, the data order of each epoch, the
validation noise and the per-epoch sample grid each come from their own stream derived from
``train.seed``; the data order depends on (seed, epoch) only, so a resumed run (which restores
the step generator from its checkpoint) sees exactly what an uninterrupted run would.

Ctrl-C or SIGTERM stops at the next step boundary: the checkpoint of the current position
(epoch and batch) is written and `fit` returns ``KILLED``. A non-finite loss raises `Diverged`
before anything from that epoch is checkpointed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch

from pgen import __version__, config, distributed, steps, tracking
from pgen.config import Config

CHECKPOINT_FORMAT = "pgen-checkpoint"


class Diverged(Exception):
    """A loss or validation metric became NaN or infinite."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM asked the loop to stop."""


class Batches(Protocol):
    n: int  # images in the split

    def __len__(self) -> int: ...  # batches per epoch

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]: ...


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one named random stream of a run."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


@dataclass
class Position:
    """Where training stands: completed epochs, batches done in the current one, best val.loss."""

    epoch: int = 0
    batch: int = 0
    best: float = math.inf
    rng_state: torch.Tensor | None = None


@dataclass
class Outcome:
    status: str  # FINISHED or KILLED
    state: steps.State
    position: Position
    val: dict[str, float] = field(default_factory=dict)
    log: Any = None  # the run's MetricLog: values a lost tracking server left unsent are still in it


def checkpoint_payload(cfg: Config, state: steps.State, rng: torch.Generator, pos: Position) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "pgen": __version__,
        "family": cfg.family,
        "shape": list(cfg.shape),
        "config": config.flatten(cfg),
        "epoch": pos.epoch,
        "batch": pos.batch,
        "best": pos.best,
        "state": steps.state_dict(state),
        "rng": rng.get_state(),
    }


class _Signals:
    """SIGINT / SIGTERM set a flag (the loop stops at the next step); a second Ctrl-C raises at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Display:
    """A rich bar (epochs and batches, losses, images/s) on a terminal; one line per epoch otherwise."""

    def __init__(self, epochs: int, batches: int, enabled: bool | None, *, silent: bool = False):
        self.silent = silent  # another torchrun process: rank 0 shows the progress
        self.tty = not silent and (sys.stderr.isatty() if enabled is None else enabled)
        self.epochs, self.batches = epochs, batches
        self.bar = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False, console=Console(stderr=True))
            self.bar.start()
            self.epoch_task = self.bar.add_task("epochs", total=epochs, info="")
            self.batch_task = self.bar.add_task("batches", total=batches, info="")

    def start_epoch(self, epoch: int, done: int) -> None:
        if self.bar:
            self.bar.update(self.epoch_task, completed=epoch)
            self.bar.reset(self.batch_task, total=self.batches, completed=done, info="")

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.batch_task)

    def info(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.batch_task, info=text)

    def end_epoch(self, epoch: int, line: str, short: str) -> None:
        if self.bar:
            self.bar.update(self.epoch_task, completed=epoch + 1, info=short)
            self.bar.console.print(f"epoch {epoch + 1}/{self.epochs}: {line}", highlight=False, markup=False)
        elif not self.silent:
            print(f"epoch {epoch + 1}/{self.epochs}: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def _fmt(values: dict[str, float], keys) -> str:
    return " ".join(f"{k} {values[k]:.4g}" for k in keys if k in values)


def _check_finite(values: dict[str, float], where: str, cfg: Config) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        k, v = next(iter(bad.items()))
        lr = f"--lr (now {cfg.train.lr:g})" if cfg.family == "vae" else f"--lr-g/--lr-d (now {cfg.train.lr_g:g}/{cfg.train.lr_d:g})"
        raise Diverged(f"training diverged: {k} is {v} {where}; lower the learning rate {lr} and start again "
                       "(the last good checkpoint is kept)")


def evaluate(family: steps.Family, state: steps.State, batches: Batches, rng: torch.Generator) -> dict[str, float]:
    """Validation metrics over a whole split (sums per batch, added on the device, one sync at the end), and the
    family's per-image values (``evaluate_each``, keys ``each.*``, concatenated) over its first `steps.SCORE_IMAGES`."""
    totals: dict[str, torch.Tensor] = {}
    each: dict[str, list[torch.Tensor]] = {}
    seen = 0
    for batch in batches.epoch(0):
        for k, v in family.evaluate_batch(state, batch, rng).items():
            totals[k] = totals[k] + v if k in totals else v
        if family.evaluate_each is not None and seen < steps.SCORE_IMAGES:
            part = batch[: steps.SCORE_IMAGES - seen]
            seen += len(part)
            for k, v in family.evaluate_each(state, part, rng).items():
                each.setdefault(k, []).append(v)
    return family.summarize({**{k: v.cpu() for k, v in totals.items()}, **{k: torch.cat(v).cpu() for k, v in each.items()}})


def fit(
    cfg: Config,
    state: steps.State,
    train: Batches,
    val: Batches,
    run_id: str,
    *,
    position: Position | None = None,
    on_step: Callable[[steps.State, int, int], None] | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    outage: tracking.Outage | None = None,
) -> Outcome:
    """Train ``state`` to ``cfg.train.epochs`` epochs, logging to run ``run_id``.

    ``on_epoch(epochs_done, val_metrics)`` is called after each epoch's checkpoint; returning True
    stops training there (``KILLED``, the checkpoint kept): how `pgen tune` prunes a trial.
    """
    from pgen.display import event_grid

    family = steps.FAMILIES[cfg.family]
    t = cfg.train
    device = next(next(iter(state.nets.values())).parameters()).device
    pos = position or Position()
    rng = torch.Generator(device=device).manual_seed(derive_seed(t.seed, "step"))
    if pos.rng_state is not None:
        rng.set_state(pos.rng_state)
    main = distributed.world().main  # under torchrun only rank 0 logs, saves and shows progress
    log = tracking.MetricLog(run_id)
    outage = outage or tracking.Outage(run_id)
    display = _Display(t.epochs, len(train), progress, silent=not main)
    state = dataclasses.replace(state, nets=distributed.wrap(state.nets, device))  # DDP for the step under torchrun
    consistent = True
    stopped = False
    val_metrics: dict[str, float] = {}
    acc: dict[str, torch.Tensor] = {}  # step metrics since the last logged interval, summed on the device
    count = 0

    def save(name: str) -> None:
        if main:
            outage.call("checkpoint", tracking.save_checkpoint, run_id, name, checkpoint_payload(cfg, _plain(state), rng, pos))

    def flush() -> None:
        if main:
            outage.call("metrics", log.flush)

    def log_interval(epoch: int) -> dict[str, float]:
        """Log the mean step metrics since the last call (one host sync) after checking they are finite."""
        nonlocal acc, count
        if not count:
            return {}
        values = distributed.mean(_drain(acc, count))  # averaged over the processes under torchrun
        acc, count = {}, 0
        _check_finite(values, f"at step {state.step} (epoch {epoch + 1})", cfg)
        if main:
            log.add({f"train.{k}": v for k, v in values.items()}, state.step)
        return values

    try:
        with _Signals() as signals:
            while pos.epoch < t.epochs:
                epoch = pos.epoch
                display.start_epoch(epoch, pos.batch)
                images = 0
                start = time.perf_counter()
                for batch in train.epoch(epoch, skip=pos.batch):
                    if signals.requested:
                        raise Interrupted(signals.requested)
                    consistent = False
                    with distributed.sharded():
                        state, m = family.step(state, batch, rng)
                    pos.batch += 1
                    consistent = True
                    images += len(batch)
                    for k, v in m.items():
                        acc[k] = acc[k] + v if k in acc else v
                    count += 1
                    if state.step % t.log_every == 0:
                        values = log_interval(epoch)
                        display.info(f"{_fmt(values, ('loss', 'loss_d', 'loss_g'))} {images / (time.perf_counter() - start):.0f} img/s")
                    if t.checkpoint_every and state.step % t.checkpoint_every == 0:
                        log_interval(epoch)  # never checkpoint unchecked steps
                        flush()
                        save("last.pt")
                    if on_step is not None:
                        on_step(state, epoch, pos.batch)
                    display.advance()
                log_interval(epoch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_time = time.perf_counter() - start
                plain = _plain(state)
                val_metrics = evaluate(family, plain, val, torch.Generator(device=device).manual_seed(derive_seed(t.seed, "val")))
                _check_finite(val_metrics, f"on the validation split after epoch {epoch + 1}", cfg)
                samples = family.sample(plain, t.samples, torch.Generator(device=device).manual_seed(derive_seed(t.seed, "samples")))
                if main:
                    outage.call("sample grid", tracking.log_grid,
                                event_grid(config.from_model(samples, cfg.data).float().cpu().numpy()), epoch + 1)
                pos.epoch, pos.batch = epoch + 1, 0
                epoch_values = {f"val.{k}": v for k, v in val_metrics.items()}
                epoch_values["perf.images_per_s"] = images / max(train_time, 1e-9)
                epoch_values["perf.train_time_s"] = train_time
                epoch_values["perf.epoch_time_s"] = time.perf_counter() - start
                epoch_values["epoch"] = epoch + 1
                log.add(epoch_values, epoch + 1)
                flush()
                improved = val_metrics["loss"] < pos.best
                if improved:
                    pos.best = val_metrics["loss"]
                save("last.pt")
                if improved:
                    save("best.pt")
                keys = ("loss", "nelbo", "recon", "kl", "loss_d", "loss_g", "dark_fraction", "occupancy_samples")
                display.end_epoch(epoch, f"val {_fmt(val_metrics, keys)}; {epoch_values['perf.images_per_s']:.0f} img/s, "
                                         f"{epoch_values['perf.epoch_time_s']:.1f} s", f"val.loss {val_metrics['loss']:.4g}")
                if on_epoch is not None and on_epoch(pos.epoch, dict(val_metrics)):
                    stopped = True
                    break
    except (Interrupted, KeyboardInterrupt):
        display.close()
        if consistent:  # stopped between steps: the current position is a valid checkpoint (if its losses are finite)
            log_interval(pos.epoch)
            save("last.pt")
        flush()
        return Outcome("KILLED", _plain(state), pos, val_metrics, log)
    except BaseException:
        display.close()
        try:
            log.flush()
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    display.close()
    return Outcome("KILLED" if stopped else "FINISHED", _plain(state), pos, val_metrics, log)


def _plain(state: steps.State) -> steps.State:
    """The state with its nets out of their DistributedDataParallel wrappers (checkpoints, sampling)."""
    return dataclasses.replace(state, nets={k: distributed.unwrap(v) for k, v in state.nets.items()})


def _drain(acc: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Means of the accumulated step metrics: one host synchronisation for all of them."""
    keys = list(acc)
    values = torch.stack([acc[k].float() for k in keys]).div(count).tolist()
    return dict(zip(keys, values))
