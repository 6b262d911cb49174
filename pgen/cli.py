"""The `pgen` command line: parses, validates, calls. No logic lives here.

Heavy libraries (torch, mlflow, optuna, matplotlib) are imported inside commands so that
`pgen --help` answers at once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from pgen import __version__
from pgen.errors import PgenError

app = typer.Typer(
    name="pgen",
    help="Generative models of particle-detector (LArTPC) images: prepare data, train, tune, evaluate, deploy. "
    "Every run is an MLflow run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Prepare datasets: synthetic LArTPC events, MNIST, real detector files; inspect them.", no_args_is_help=True)
train_app = typer.Typer(help="Train a model (gan, dcgan, vae); every run is an MLflow run.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    _state["debug"] = debug


def handled(fn: Callable) -> Callable:
    """Bad input becomes one line on stderr and exit code 1 (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PgenError as e:
            if _state["debug"]:
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _fail(message: str) -> None:
    raise PgenError(message)


# --------------------------------------------------------------------------- data


@data_app.command("synth")
@handled
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output pgen HDF5 file.")],
    events: Annotated[int, typer.Option(help="Number of events (train + val + test).")] = 1000,
    size: Annotated[int, typer.Option(help="Image size in pixels (wires x time ticks): 64, 128, 256 or 512.")] = 256,
    crop: Annotated[
        Optional[int], typer.Option(help="Cut an N x N window around each event's centre of charge (e.g. 64).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical images.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes [default: all CPU cores].")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of events in the val split.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Fraction of events in the test split.")] = 0.1,
    plane_angle: Annotated[float, typer.Option(help="Wire-plane angle in degrees from vertical (collection plane: 0).")] = 0.0,
    rain: Annotated[float, typer.Option(help="Mean number of uncorrelated 'rain' particles per event.")] = 0.5,
) -> None:
    """Generate synthetic LArTPC events (tracks, showers, Michel electrons) as a pgen dataset."""
    if events < 1:
        _fail(f"--events must be at least 1, got {events}")
    if size not in (64, 128, 256, 512):
        _fail(f"--size must be a power of two from 64 to 512 (64, 128, 256 or 512), got {size}")
    if crop is not None and (crop < 8 or crop > size or crop & (crop - 1)):
        _fail(f"--crop must be a power of two from 8 to --size ({size}), got {crop}")
    _check_fractions(val_fraction, test_fraction)
    if workers is not None and workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    from pgen.data import synth
    from pgen.progress import progress_bar

    with progress_bar(events, "synth") as advance:
        synth.generate(
            out,
            events=events,
            size=size,
            crop=crop,
            seed=seed,
            workers=workers or os.cpu_count() or 1,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            plane_angle=plane_angle,
            rain=rain,
            progress=advance,
        )
    _print_summary(out)


@data_app.command("mnist")
@handled
def data_mnist(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output pgen HDF5 file.")],
    source: Annotated[
        Optional[str],
        typer.Option(help="Folder with the four IDX files (.gz or raw), or a mirror URL [default: $PGEN_MNIST_DIR, else download]."),
    ] = None,
) -> None:
    """Import MNIST (train 60,000 / test 10,000, with labels), verifying the published MD5s."""
    from pgen.data import builtin, mnist

    source = source or os.environ.get("PGEN_MNIST_DIR")
    if source is None:
        source = str(mnist.download(builtin.cache_dir() / "mnist-idx"))
    elif source.startswith(("http://", "https://")):
        source = str(mnist.download(builtin.cache_dir() / "mnist-idx", mirrors=(source,)))
    mnist.write(out, source)
    _print_summary(out)


@data_app.command("info")
@handled
def data_info(
    file: Annotated[str, typer.Argument(help="A pgen dataset file or a built-in name (lartpc64, mnist).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Splits, shapes, dtype, value range and occupancy statistics of a dataset."""
    from pgen.data import builtin, store

    info = store.describe(builtin.resolve(file))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    typer.echo(_format_info(info))


@data_app.command("show")
@handled
def data_show(
    file: Annotated[str, typer.Argument(help="A pgen dataset file or a built-in name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG.")] = Path("grid.png"),
    split: Annotated[str, typer.Option(help="Split to draw.")] = "train",
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = 16,
    start: Annotated[int, typer.Option(help="Index of the first image.")] = 0,
) -> None:
    """Draw a grid of images like an event display (log-scaled colour, dark background)."""
    if n < 1:
        _fail(f"--n must be at least 1, got {n}")
    if not out.parent.is_dir():
        _fail(f"{out}: folder {out.parent} does not exist")
    from pgen.data import builtin, store
    from pgen.display import event_grid, save_png

    arrays = store.read_split(builtin.resolve(file), split, n=n, start=start)
    if len(arrays["images"]) == 0:
        _fail(f"{file}: split '{split}' has no images at index {start}")
    save_png(event_grid(arrays["images"]), out)
    typer.echo(f"wrote {out} ({len(arrays['images'])} images from split '{split}')")


@data_app.command("import")
@handled
def data_import(
    sources: Annotated[
        list[Path],
        typer.Argument(metavar="SRC", help="LArCV ROOT, larcv3 HDF5, PNG, .npy or .npz files, or folders of them.", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output pgen HDF5 file.")],
    fmt: Annotated[
        str, typer.Option("--format", help="Input format: auto (from each file's first bytes), larcv-root, larcv3, png or npy.")
    ] = "auto",
    producer: Annotated[
        Optional[str], typer.Option(help="Producer of the image2d tree / larcv3 group to read, where a file has several.")
    ] = None,
    plane: Annotated[
        Optional[int], typer.Option(help="Import only this projection (2: the collection plane) [default: every plane as its own image].")
    ] = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="Set values below T to 0 (negative induction-plane values included).")
    ] = None,
    crop: Annotated[
        Optional[int], typer.Option(help="Cut an N x N window centred on the charge-weighted centre, kept inside the image.")
    ] = None,
    min_occupancy: Annotated[
        Optional[float],
        typer.Option(help="Keep an image only if at least this fraction of its pixels is non-zero [default: 0.01 with --crop, else 0]."),
    ] = None,
    max_crops_per_image: Annotated[
        int, typer.Option(help="With --crop: up to K windows per image, centred on its K largest clusters (by charge).")
    ] = 1,
    scale: Annotated[
        str,
        typer.Option(
            help="keep: store values unchanged (float32 ADC; uint8 PNGs stay uint8); clip: map [0, --clip-max] linearly "
            "to uint8 0..255; minmax: per-image [0, max] -> 0..255 (WARNING: destroys the energy scale between images)."
        ),
    ] = "keep",
    clip_max: Annotated[Optional[float], typer.Option(help="With --scale clip: the value that becomes 255.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of events in the val split (whole events: planes and crops together).")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Fraction of events in the test split.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed of the event split.")] = 0,
    workers: Annotated[
        Optional[int], typer.Option(help="Decoding processes [default: one per input file, at most the CPU cores].")
    ] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="With several inputs, skip unreadable files with a warning.")] = False,
) -> None:
    """Import real detector images (LArCV ROOT, larcv3 HDF5, PNG, NPY) into a pgen dataset, streaming."""
    from pgen.data import imports

    if fmt != "auto" and fmt not in imports.FORMATS:
        _fail(f"--format must be auto, {', '.join(imports.FORMATS)}; got {fmt!r}")
    if scale not in imports.SCALES:
        _fail(f"--scale must be one of {', '.join(imports.SCALES)}; got {scale!r}")
    if scale == "clip" and (clip_max is None or clip_max <= 0):
        _fail("--scale clip needs --clip-max M > 0, the value that maps to 255")
    if clip_max is not None and scale != "clip":
        _fail("--clip-max only applies with --scale clip")
    if crop is not None and crop < 2:
        _fail(f"--crop must be at least 2, got {crop}")
    if max_crops_per_image < 1 or (max_crops_per_image > 1 and crop is None):
        _fail(f"--max-crops-per-image must be at least 1 and needs --crop when above 1, got {max_crops_per_image}")
    if min_occupancy is not None and not 0 <= min_occupancy <= 1:
        _fail(f"--min-occupancy must be in [0, 1], got {min_occupancy}")
    if plane is not None and plane < 0:
        _fail(f"--plane must be 0 or more, got {plane}")
    if workers is not None and workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    _check_fractions(val_fraction, test_fraction)
    from pgen.progress import progress_bar

    settings = imports.Settings(
        format=None if fmt == "auto" else fmt, producer=producer, plane=plane, threshold=threshold, crop=crop,
        min_occupancy=min_occupancy, max_crops=max_crops_per_image, scale=scale, clip_max=clip_max,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad,
    )
    warn = lambda message: typer.echo(f"warning: {message}", err=True)  # noqa: E731
    plan = imports.scan(sources, settings, warn=warn)
    n_workers = workers or min(len(plan.sources), os.cpu_count() or 1)
    with progress_bar(plan.n_events, "import") as advance:
        imports.write(plan, out, settings, workers=n_workers, progress=advance, warn=warn)
    _print_summary(out)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, v in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= v < 1:
            _fail(f"{name} must be in [0, 1), got {v}")
    if val_fraction + test_fraction >= 1:
        _fail(f"--val-fraction + --test-fraction must be below 1 (no events left to train on), got {val_fraction + test_fraction}")


def _print_summary(path: Path) -> None:
    from pgen.data import store

    typer.echo(_format_info(store.describe(path, max_images=500)))


def _format_info(info: dict) -> str:
    attrs = info["attrs"]
    lines = [f"{info['path']}: {attrs.get('format')} v{attrs.get('version')}, source={attrs.get('source')}, value_range={attrs.get('value_range')}"]
    for name, s in info["splits"].items():
        shape = "x".join(str(d) for d in s["shape"])
        extra = " labels" if s["labels"] else ""
        extra += " segmentation" if s["segmentation"] else ""
        lines.append(f"  {name:<6} {s['n']:>7} x {shape} {s['dtype']}{extra}")
        if s["stats_over"]:
            over = "" if s["stats_over"] == s["n"] else f" (over {s['stats_over']} images)"
            lines.append(
                f"         values {s['min']:.4g}..{s['max']:.4g} mean {s['mean']:.4g}; occupancy mean {100 * s['occupancy_mean']:.3f}% "
                f"median {100 * s['occupancy_median']:.3f}% range {100 * s['occupancy_min']:.3f}%..{100 * s['occupancy_max']:.3f}%{over}"
            )
        if "label_counts" in s:
            lines.append(f"         labels {s['label_counts']}")
    lines += _format_import(attrs)
    return "\n".join(lines)


def _format_import(attrs: dict) -> list[str]:
    """The `import_*` attributes `pgen data import` records: what was read and dropped, and the settings."""
    a = {k[len("import_") :]: v for k, v in attrs.items() if k.startswith("import_")}
    if "events_read" not in a:
        return []
    dropped = ", ".join(f"{k[len('dropped_'):]} {v}" for k, v in a.items() if k.startswith("dropped_"))
    lines = [
        f"  import: {a['events_read']} events from {a.get('files_read')} files ({a.get('format')}), "
        f"{a.get('images_read')} images read, {a.get('images_written')} written; dropped: {dropped}"
    ]
    if a.get("files_skipped") or a.get("events_skipped"):
        lines.append(f"         skipped {a.get('files_skipped')} unreadable files, {a.get('events_skipped')} unreadable events")
    counters = ("_read", "_written", "_skipped")
    settings = [f"{k}={v}" for k, v in a.items() if k != "files" and not k.startswith("dropped_") and not k.endswith(counters)]
    lines.append(f"         settings: {' '.join(settings)}")
    return lines


# --------------------------------------------------------------------------- train

DataOpt = Annotated[
    Optional[str], typer.Option("--data", help="A pgen dataset file or a built-in name (lartpc64, mnist) [default: lartpc64].")
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Experiment TOML file (experiments/*.toml); flags override it.")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Training epochs [default: 10].")]
BatchOpt = Annotated[Optional[int], typer.Option(help="Batch size [default: 128].")]
LatentOpt = Annotated[Optional[int], typer.Option(help="Latent dimension [default: gan/dcgan 100, vae 20].")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed; same seed and config give identical weights on the CPU [default: 0].")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="auto (CUDA where present), cpu or cuda [default: auto].")]
ExperimentOpt = Annotated[Optional[str], typer.Option(help="MLflow experiment [default: MLflow's active/default one].")]
RunNameOpt = Annotated[Optional[str], typer.Option(help="MLflow run name.")]
ResumeOpt = Annotated[
    Optional[str], typer.Option(help="Continue a run from its last checkpoint: RUN_ID, EXPERIMENT:latest or EXPERIMENT:best.")
]
LogEveryOpt = Annotated[Optional[int], typer.Option(help="Log training losses every N steps [default: 50].")]
WhichCheckpointOpt = Annotated[str, typer.Option(help="best (lowest val.loss; last where none) or last (the final weights).")]
CheckpointOpt = Annotated[
    Optional[int], typer.Option(help="Also write checkpoints/last.pt every N steps inside an epoch [default: 0, epoch ends only].")
]
ScaleOpt = Annotated[
    Optional[str], typer.Option(help="Pixel scaling: linear, log or auto (log for ADC data spanning more than 255) [default: auto].")
]
WorkersOpt = Annotated[Optional[int], typer.Option(help="DataLoader workers when a dataset streams from disk [default: 0].")]
LrGOpt = Annotated[Optional[float], typer.Option("--lr-g", help="Generator learning rate [default: 2e-4].")]
LrDOpt = Annotated[Optional[float], typer.Option("--lr-d", help="Discriminator learning rate [default: 2e-4].")]
BaseOpt = Annotated[Optional[int], typer.Option(help="Channels of the full-resolution conv layer [default: dcgan 64, vae 32].")]
R1Opt = Annotated[
    Optional[float], typer.Option("--r1-gamma", help="R1 gradient penalty on D at real images, weight gamma/2 (0: off) [default: gan 1, dcgan 0].")
]
SmoothingOpt = Annotated[
    Optional[float], typer.Option(help="One-sided label smoothing: D's target for real images is 1 - S [default: 0].")
]


def _train(family: str, config_file: Optional[Path], resume: Optional[str], experiment: Optional[str],
           run_name: Optional[str], overrides: dict) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pgen import train

    result = train.run(
        family, config_file=config_file, overrides=overrides, resume=resume, experiment=experiment, run_name=run_name,
        attach_run_id=os.environ.get("MLFLOW_RUN_ID"),
    )
    if result.run_id is None:  # a torchrun process other than rank 0: rank 0 reports
        return
    loss = result.val.get("loss")
    detail = f", val.loss {loss:.4g}" if loss is not None else ""
    if result.status == "KILLED":
        where = f"{result.epoch} epochs" + (f" and {result.batch} batches" if result.batch else "")
        typer.echo(f"run {result.run_id} KILLED after {where} (checkpoint written); continue it with --resume {result.run_id}", err=True)
        raise typer.Exit(130)
    typer.echo(f"run {result.run_id} {result.status} after {result.epoch} epochs{detail}")


def _common(data, epochs, batch_size, lr, latent_dim, seed, device, log_every, checkpoint_every, scale, workers) -> dict:
    return {
        "data.path": data, "data.scale": scale, "data.workers": workers, "train.epochs": epochs, "train.batch_size": batch_size,
        "train.lr": lr, "model.latent_dim": latent_dim, "train.seed": seed, "train.device": device,
        "train.log_every": log_every, "train.checkpoint_every": checkpoint_every,
    }


@train_app.command("gan")
@handled
def train_gan(
    data: DataOpt = None, config: ConfigOpt = None, epochs: EpochsOpt = None, batch_size: BatchOpt = None,
    lr: Annotated[Optional[float], typer.Option(help="Both learning rates (--lr-g / --lr-d win) [default: 2e-4].")] = None,
    lr_g: LrGOpt = None, lr_d: LrDOpt = None, latent_dim: LatentOpt = None,
    n_layers: Annotated[Optional[int], typer.Option(help="Generator hidden layers [default: 4].")] = None,
    hidden_width: Annotated[Optional[int], typer.Option(help="Units per hidden layer [default: 512].")] = None,
    d_dropout: Annotated[Optional[float], typer.Option(help="Dropout on the discriminator's hidden units [default: 0].")] = None,
    init: Annotated[
        Optional[str], typer.Option(help="Initial weights: normal (N(0, 0.02)) or torch (PyTorch's default) [default: normal].")
    ] = None,
    r1_gamma: R1Opt = None, label_smoothing: SmoothingOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = None, experiment: ExperimentOpt = None, run_name: RunNameOpt = None,
    resume: ResumeOpt = None, log_every: LogEveryOpt = None, checkpoint_every: CheckpointOpt = None, scale: ScaleOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train the linear (MLP) GAN baseline."""
    overrides = _common(data, epochs, batch_size, lr, latent_dim, seed, device, log_every, checkpoint_every, scale, workers)
    overrides.update({"train.lr_g": lr_g, "train.lr_d": lr_d, "model.n_layers": n_layers, "model.hidden_width": hidden_width,
                      "model.d_dropout": d_dropout, "model.init": init, "model.r1_gamma": r1_gamma,
                      "model.label_smoothing": label_smoothing})
    _train("gan", config, resume, experiment, run_name, overrides)


@train_app.command("dcgan")
@handled
def train_dcgan(
    data: DataOpt = None, config: ConfigOpt = None, epochs: EpochsOpt = None, batch_size: BatchOpt = None,
    lr: Annotated[Optional[float], typer.Option(help="Both learning rates (--lr-g / --lr-d win) [default: 2e-4].")] = None,
    lr_g: LrGOpt = None, lr_d: LrDOpt = None, latent_dim: LatentOpt = None, base_channels: BaseOpt = None,
    r1_gamma: R1Opt = None, label_smoothing: SmoothingOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = None, experiment: ExperimentOpt = None, run_name: RunNameOpt = None,
    resume: ResumeOpt = None, log_every: LogEveryOpt = None, checkpoint_every: CheckpointOpt = None, scale: ScaleOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train the conv GAN (DCGAN; images up to 512x512, other sizes padded to a power of two)."""
    overrides = _common(data, epochs, batch_size, lr, latent_dim, seed, device, log_every, checkpoint_every, scale, workers)
    overrides.update({"train.lr_g": lr_g, "train.lr_d": lr_d, "model.base_channels": base_channels,
                      "model.r1_gamma": r1_gamma, "model.label_smoothing": label_smoothing})
    _train("dcgan", config, resume, experiment, run_name, overrides)


@train_app.command("vae")
@handled
def train_vae(
    data: DataOpt = None, config: ConfigOpt = None, epochs: EpochsOpt = None, batch_size: BatchOpt = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate [default: 1e-3].")] = None,
    latent_dim: LatentOpt = None,
    arch: Annotated[Optional[str], typer.Option(help="mlp or conv [default: mlp].")] = None,
    hidden: Annotated[Optional[str], typer.Option(help="MLP hidden widths, encoder order, e.g. 512,256 [default: 400].")] = None,
    base_channels: BaseOpt = None,
    beta: Annotated[Optional[float], typer.Option(help="Weight of the KL term [default: 1].")] = None,
    kl_warmup: Annotated[Optional[float], typer.Option(help="Epochs over which beta rises from 0 [default: 0].")] = None,
    recon: Annotated[Optional[str], typer.Option(help="Reconstruction loss: bernoulli (BCE) or gaussian (MSE) [default: bernoulli].")] = None,
    nonzero_weight: Annotated[
        Optional[float], typer.Option(help="Up-weight the reconstruction error of non-zero pixels (sparse images) [default: 1].")
    ] = None,
    seed: SeedOpt = None, device: DeviceOpt = None, experiment: ExperimentOpt = None, run_name: RunNameOpt = None,
    resume: ResumeOpt = None, log_every: LogEveryOpt = None, checkpoint_every: CheckpointOpt = None, scale: ScaleOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train a variational autoencoder (MLP or conv)."""
    overrides = _common(data, epochs, batch_size, lr, latent_dim, seed, device, log_every, checkpoint_every, scale, workers)
    overrides.update({"model.arch": arch, "model.hidden": hidden, "model.base_channels": base_channels, "model.beta": beta,
                      "model.kl_warmup": kl_warmup, "model.recon": recon, "model.nonzero_weight": nonzero_weight})
    _train("vae", config, resume, experiment, run_name, overrides)


@train_app.command("latent")
@handled
def train_latent(
    vae: Annotated[str, typer.Option(help="The VAE run whose codes to model: RUN_ID, EXPERIMENT:latest or EXPERIMENT:best.")],
    method: Annotated[str, typer.Option(help="flow (RealNVP), ewm (optimal-transport generator) or gmm (Gaussian mixture, EM).")] = "flow",
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset to encode [default: the VAE's own].")] = None,
    codes: Annotated[str, typer.Option(help="mean: posterior means; sample: one draw from q(z|x) per image.")] = "mean",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (gmm: EM iterations) [default: 20].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Codes per step (0: the default) [default: 256; gmm: all codes in each EM iteration].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the flow / ewm generator [default: 1e-3].")] = None,
    depth: Annotated[Optional[int], typer.Option(help="Flow coupling layers / ewm hidden layers [default: flow 6, ewm 3].")] = None,
    width: Annotated[Optional[int], typer.Option(help="Hidden units per layer [default: flow 128, ewm 256].")] = None,
    cost: Annotated[Optional[str], typer.Option(help="ewm transport cost: l1 or l2 (squared) [default: l1].")] = None,
    ot_steps: Annotated[Optional[int], typer.Option(help="ewm dual-potential steps per generator step [default: 5].")] = None,
    ot_lr: Annotated[Optional[float], typer.Option(help="ewm dual-potential learning rate [default: 0.1].")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="gmm components [default: 10].")] = None,
    covariance: Annotated[Optional[str], typer.Option(help="gmm covariance: full or diag [default: full].")] = None,
    seed: SeedOpt = None, device: DeviceOpt = None, experiment: ExperimentOpt = None, run_name: RunNameOpt = None,
    log_every: LogEveryOpt = None,
) -> None:
    """Train a generator of a VAE's latent codes (two-stage generation): flow, ewm or gmm."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pgen import latent

    settings = {"codes": codes, "lr": lr, "depth": depth, "width": width, "cost": cost, "ot_steps": ot_steps, "ot_lr": ot_lr,
                "k": k, "covariance": covariance}
    result = latent.run(vae, method, data=data, settings=settings, epochs=epochs, batch_size=batch_size, seed=seed,
                        device=device, log_every=log_every, experiment=experiment, run_name=run_name,
                        attach_run_id=os.environ.get("MLFLOW_RUN_ID"))
    loss = result.val.get("loss")
    detail = f", val.loss {loss:.4g}, val.swd {result.val.get('swd', float('nan')):.4g}" if loss is not None else ""
    if result.status == "KILLED":
        typer.echo(f"run {result.run_id} KILLED at epoch {result.epoch}", err=True)
        raise typer.Exit(130)
    typer.echo(f"run {result.run_id} {result.status} after {result.epoch} epochs{detail}")


@app.command("deploy")
@handled
def deploy_cmd(
    run: Annotated[str, typer.Argument(help="The run to sample: RUN_ID, EXPERIMENT:latest or EXPERIMENT:best.")],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output pgen HDF5 file (split 'samples').")],
    grid: Annotated[Optional[Path], typer.Option(help="Also save a PNG grid of the first samples here.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed (and batch size) gives the same samples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Samples drawn at a time (bounds the memory).")] = 256,
    device: Annotated[str, typer.Option(help="auto (CUDA where present), cpu or cuda.")] = "auto",
    checkpoint: WhichCheckpointOpt = "best",
    experiment: ExperimentOpt = None,
) -> None:
    """Sample N images from a trained run (gan, dcgan, vae, latent-*) into a pgen dataset; recorded as a deploy run."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pgen import sample

    result = sample.deploy(run, n, out, grid=grid, seed=seed, batch_size=batch_size, device=device, experiment=experiment,
                           attach_run_id=os.environ.get("MLFLOW_RUN_ID"), checkpoint=checkpoint)
    logged = "logged as an artifact" if result.logged_file else "too large to log as an artifact"
    typer.echo(f"wrote {result.path} ({result.n} samples of run {result.source_run}; {logged}); deploy run {result.run_id}")


@app.command("tune")
@handled
def tune_cmd(
    model: Annotated[Optional[str], typer.Argument(help="Model family to tune: gan, dcgan or vae.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Total trials the study should hold (all workers together).")] = None,
    study: Annotated[Optional[str], typer.Option(help="Study name; the same name continues the study [default: MODEL-DATASET].")] = None,
    storage: Annotated[
        str, typer.Option(help="Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file ending in .log/.journal.")
    ] = "sqlite:///optuna.db",
    timeout: Annotated[Optional[float], typer.Option(help="Stop starting trials after S seconds.")] = None,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none.")] = "median",
    sampler: Annotated[str, typer.Option(help="tpe or random.")] = "tpe",
    objective: Annotated[
        str, typer.Option(help="Validation metric to optimise: val.loss (VAE: negative ELBO; GANs: val.score + val.collapse), "
                               "or any val.* metric the model logs, e.g. val.score, val.recon.")
    ] = "val.loss",
    direction: Annotated[str, typer.Option(help="minimize or maximize the objective.")] = "minimize",
    best: Annotated[
        Optional[str], typer.Option("--best", help="Print study STUDY's best trial and the `pgen train` command that retrains it.")
    ] = None,
    data: DataOpt = None, config: ConfigOpt = None, epochs: EpochsOpt = None, batch_size: BatchOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = None, experiment: ExperimentOpt = None,
) -> None:
    """Search latent dimension and learning rates with Optuna; every trial is a nested MLflow training run.

    The search space is the family's default, overridable in the --config file's [tune] table
    (e.g. latent_dim = [2, 256], lr = [1e-5, 1e-2], batch_size = {choices = [64, 128]}).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pgen import tune

    if best is not None:
        trial, command, measured = tune.best(best, storage)
        params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        typer.echo(f"study '{best}': best trial {trial.number}, {measured} {trial.value:.6g} ({params})")
        typer.echo(command)
        return
    if model is None:
        _fail("give the MODEL to tune (gan, dcgan or vae), or --best STUDY")
    if trials is None:
        _fail("--trials N is required: the total number of trials the study should hold")
    overrides = {"data.path": data, "train.epochs": epochs, "train.batch_size": batch_size, "train.seed": seed,
                 "train.device": device}
    result = tune.run(model, trials=trials, study_name=study, storage=storage, timeout=timeout, pruner=pruner, sampler=sampler,
                      objective=objective, direction=direction, config_file=config, overrides=overrides, experiment=experiment,
                      attach_run_id=os.environ.pop("MLFLOW_RUN_ID", None),  # popped: else MLflow reopens it for each trial
                      echo=typer.echo)
    if result.best_number is None:
        typer.echo(f"study '{result.study}': no complete trial yet ({result.ran} run now)")
        return
    typer.echo(f"study '{result.study}': {result.ran} trials run now; best trial {result.best_number}, "
               f"{result.objective} {result.best_value:.6g}" + (f"; tune run {result.parent_run_id}" if result.parent_run_id else ""))
    typer.echo(f"retrain it: {result.command}")


from pgen import cli_evaluate  # noqa: E402,F401  (registers evaluate and compare)


def main() -> None:
    app(prog_name="pgen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
