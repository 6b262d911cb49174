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
    return "\n".join(lines)


# --------------------------------------------------------------------------- not yet available


def _not_yet(name: str) -> None:
    typer.echo(f"pgen {name}: not yet available in pgen {__version__}", err=True)
    raise typer.Exit(2)


@app.command("deploy", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def deploy_cmd() -> None:
    """Sample images from a trained run into a pgen dataset (not yet available)."""
    _not_yet("deploy")


@app.command("evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate_cmd() -> None:
    """Evaluate a run: memorisation (Hamming), diversity, image statistics, plots (not yet available)."""
    _not_yet("evaluate")


@app.command("compare", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def compare_cmd() -> None:
    """Rank evaluated runs by their eval.* metrics (not yet available)."""
    _not_yet("compare")


@app.command("tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune_cmd() -> None:
    """Search latent dimension and learning rates with Optuna (not yet available)."""
    _not_yet("tune")


def main() -> None:
    app(prog_name="pgen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
