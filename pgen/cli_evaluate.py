"""The `pgen evaluate` and `pgen compare` commands (registered on the root app by `pgen.cli`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from pgen.cli import WhichCheckpointOpt, app, handled


@app.command("evaluate")
@handled
def evaluate_cmd(
    run: Annotated[str, typer.Argument(help="The run to evaluate: RUN_ID, EXPERIMENT:latest or EXPERIMENT:best.")],
    n_samples: Annotated[int, typer.Option(help="Samples to draw (or read from --samples).")] = 5000,
    data: Annotated[Optional[str], typer.Option(help="Dataset to measure against [default: the run's own].")] = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="A pixel is lit above this value (stored units) [default: the data's noise floor].")
    ] = None,
    samples: Annotated[Optional[Path], typer.Option("--samples", help="Evaluate the samples of this deploy file instead of drawing.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the plots and report.json to this folder.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA where present), cpu or cuda: sampling and Hamming search.")] = "auto",
    checkpoint: WhichCheckpointOpt = "best",
    seed: Annotated[int, typer.Option(help="Random seed of the samples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Samples drawn at a time (bounds the memory).")] = 256,
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment of the evaluate run [default: the evaluated run's].")] = None,
) -> None:
    """Evaluate a run: memorisation and diversity (Hamming), image statistics, FID on labelled data, plots.

    Recorded as an `evaluate` MLflow run (metrics eval.*, plots, report.json); the evaluated run
    gets the summary metrics. Rank several with `pgen compare`.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pgen.evaluate import report

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    r = report.evaluate(run, n_samples=n_samples, data=data, threshold=threshold, device=device, samples_file=samples, out=out,
                        seed=seed, batch_size=batch_size, checkpoint=checkpoint, experiment=experiment,
                        attach_run_id=os.environ.get("MLFLOW_RUN_ID"), echo=echo)
    m = r.metrics
    typer.echo(f"run {r.source_run} ({r.model}): score {m['eval.score']:.3f} (mean W1/spread of the image statistics; lower is better)")
    lit = f", among lit images {m['eval.copy_rate_lit']:.3f}" if "eval.copy_rate_lit" in m else ""
    typer.echo(f"  memorisation: copy rate {m['eval.copy_rate']:.3f}{lit} (held-out data: ~0.01), nearest-train median "
               f"{m['eval.nn_gen_train_median']:.0f} vs test {m['eval.nn_test_train_median']:.0f} px")
    typer.echo(f"  diversity: nearest-sample median {m['eval.nn_gen_gen_median']:.0f} vs test-test {m['eval.nn_test_test_median']:.0f} px "
               f"(ratio {m['eval.diversity_ratio']:.2f}); dark samples {m['eval.dark_fraction']:.3f}")
    stats = ", ".join(f"{k} {m[f'eval.w1_norm.{k}']:.3f}" for k in ("occupancy", "charge", "pixel_value", "clusters", "length", "width"))
    typer.echo(f"  W1/spread: {stats}")
    if "eval.fid" in m:
        typer.echo(f"  FID {m['eval.fid']:.2f} (train vs test {m['eval.fid_baseline']:.2f}), classes covered "
                   f"{m['eval.classes_covered']:.0f}")
    where = f"; plots in {r.out}" if r.out else ""
    typer.echo(f"evaluate run {r.run_id}{where}")


@app.command("compare")
@handled
def compare_cmd(
    runs: Annotated[list[str], typer.Argument(help="Runs: RUN_ID (training or evaluate run), EXPERIMENT:latest|best, or EXPERIMENT:*.")],
    out: Annotated[Optional[Path], typer.Option(help="Also draw the ranked eval.* metrics to this PNG.")] = None,
) -> None:
    """Rank evaluated runs by their eval.* metrics (summary score first): a table, and a figure with --out."""
    from pgen.evaluate import compare

    if out is not None and not out.parent.is_dir():
        raise typer.BadParameter(f"folder {out.parent} does not exist", param_hint="--out")
    ranked = compare.rows(runs)
    typer.echo(compare.table(ranked))
    if out is not None:
        compare.figure(ranked, out)
        typer.echo(f"wrote {out}")
