"""Untrusted files: a checkpoint whose pickle would run code is refused by every command, and nothing runs."""

from __future__ import annotations

import pathlib
from pathlib import Path

import mlflow
import torch
from typer.testing import CliRunner

from pgen.cli import app
from test_deploy import trained

runner = CliRunner()


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: proof of code execution if the marker appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tiny_dataset, mlflow_store, tmp_path):
    marker = tmp_path / "code-ran"
    run_id = trained("vae", tiny_dataset)
    artifacts = Path("mlruns") / "0" / run_id / "artifacts" / "checkpoints"
    payload = {"format": "pgen-checkpoint", "state": RunsCode(marker)}
    for name in ("last.pt", "previous.pt", "best.pt"):
        torch.save(payload, artifacts / name)
    torch.load(artifacts / "last.pt", weights_only=False)  # the file is armed: a plain load runs the payload
    assert marker.exists()
    marker.unlink()

    commands = [
        ["train", "vae", "--resume", run_id, "--epochs", "3"],
        ["deploy", run_id, "-n", "4", "--out", str(tmp_path / "s.h5")],
        ["evaluate", run_id, "--n-samples", "8"],
        ["evaluate", run_id, "--n-samples", "8", "--checkpoint", "last"],
    ]
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "pickled objects pgen will not load" in result.output and "Traceback" not in result.output, result.output
        assert not marker.exists(), f"`pgen {' '.join(args)}` ran the checkpoint's code"
    assert not mlflow.MlflowClient().search_runs(["0"], filter_string="attributes.status = 'RUNNING'")
    assert not (tmp_path / "s.h5").exists()
