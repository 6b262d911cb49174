"""`pgen deploy`: N samples from any generative run into a pgen dataset, recorded as a deploy run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from pgen import latent, sample, train
from pgen.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY = {"train.epochs": 1, "train.batch_size": 16, "train.log_every": 2, "train.samples": 4, "train.log_model": False}
SMALL_MODEL = {
    "vae": {"model.hidden": "32", "model.latent_dim": 4},
    "gan": {"model.n_layers": 2, "model.hidden_width": 32, "model.latent_dim": 8},
    "dcgan": {"model.base_channels": 4, "model.latent_dim": 8},
}


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def trained(family: str, data: Path) -> str:
    if family.startswith("latent-"):
        vae_id = trained("vae", data)
        return latent.run(vae_id, family.removeprefix("latent-"), epochs=1, batch_size=16, settings={"depth": 2, "width": 16},
                          log_model=False, progress=False).run_id
    return train.run(family, overrides={"data.path": str(data), **TINY, **SMALL_MODEL[family]}, progress=False).run_id


def read_samples(path: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(path, "r") as f:
        return f["samples"]["images"][:], dict(f.attrs)


@pytest.mark.parametrize("family", ["gan", "dcgan", "vae", "latent-flow", "latent-ewm", "latent-gmm"])
def test_deploy_writes_n_samples_deterministically(family, tiny_dataset, mlflow_store, tmp_path):
    run_id = trained(family, tiny_dataset)
    a = sample.deploy(run_id, 10, tmp_path / "a.h5", grid=tmp_path / "a.png", seed=7, batch_size=4)
    b = sample.deploy(run_id, 10, tmp_path / "b.h5", seed=7, batch_size=4)
    c = sample.deploy(run_id, 10, tmp_path / "c.h5", seed=8, batch_size=4)
    images, attrs = read_samples(tmp_path / "a.h5")
    assert images.shape == (10, 16, 16) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255  # stored units: the scaling undone
    assert attrs["source_run"] == run_id and int(attrs["seed"]) == 7 and list(attrs["value_range"]) == [0, 255]
    assert np.array_equal(images, read_samples(tmp_path / "b.h5")[0])
    assert not np.array_equal(images, read_samples(tmp_path / "c.h5")[0])
    assert (tmp_path / "a.png").exists()
    run = client().get_run(a.run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["pgen.kind"], run.data.tags["pgen.source_run"]) == ("deploy", run_id)
    files = {f.path for f in client().list_artifacts(a.run_id)}
    assert "samples.png" in files and {f.path for f in client().list_artifacts(a.run_id, "samples")} == {"samples/a.h5"}


def test_deploy_cli_and_bad_input(tiny_dataset, mlflow_store, tmp_path):
    runner = CliRunner()
    run_id = trained("gan", tiny_dataset)
    out = tmp_path / "s.h5"
    result = runner.invoke(app, ["deploy", run_id, "-n", "5", "--out", str(out), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and read_samples(out)[0].shape == (5, 16, 16)
    deploy_id = client().search_runs(["0"], filter_string="tags.`pgen.kind` = 'deploy'")[0].info.run_id
    before = len(client().search_runs(["0"]))
    cases = [
        ([run_id, "-n", "0", "--out", str(tmp_path / "x.h5")], "-n"),
        ([run_id, "-n", "3", "--out", str(tmp_path / "nodir" / "x.h5")], "does not exist"),
        ([deploy_id, "-n", "3", "--out", str(tmp_path / "x.h5")], "not a training run"),
        (["nosuch:latest", "-n", "3", "--out", str(tmp_path / "x.h5")], "no experiment"),
    ]
    for args, words in cases:
        result = runner.invoke(app, ["deploy", *args])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1 and words in result.output, result.output
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.h5*"))
    assert len(client().search_runs(["0"])) == before
    assert all(r.info.status != "RUNNING" for r in client().search_runs(["0"]))


def test_mlproject_deploy_entry_point(tiny_dataset, mlflow_store, tmp_path, monkeypatch):
    run_id = trained("vae", tiny_dataset)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "mlp.h5"
    submitted = mlflow.projects.run(str(REPO), "deploy", parameters={"run": run_id, "n": 6, "out": str(out)}, env_manager="local",
                                    experiment_id="0")
    assert submitted.get_status() == "FINISHED"
    assert read_samples(out)[0].shape == (6, 16, 16)
    run = client().get_run(submitted.run_id)
    assert run.data.tags["pgen.kind"] == "deploy" and run.data.tags["pgen.source_run"] == run_id
