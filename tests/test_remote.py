"""A remote MLflow tracking server (a real `mlflow server` with proxied artifacts on 127.0.0.1):
every command works unchanged, and training survives the server going away mid-run."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

import mlflow_ui as ui
from pgen import tracking, train
from pgen.cli import app
from pgen.errors import PgenError

runner = CliRunner()
TINY = {"train.epochs": 5, "train.batch_size": 16, "train.log_every": 2, "train.samples": 4, "train.log_model": False,
        "model.hidden": "32", "model.latent_dim": 4}


@pytest.fixture
def server(tmp_path, _mlflow_template, monkeypatch):
    """A real `mlflow server` (sqlite backend, artifacts served through it), and MLflow pointed at it."""
    db = tmp_path / "server.db"
    shutil.copy(_mlflow_template, db)
    s = ui.Server(f"sqlite:///{db}", tmp_path / "server-artifacts", serve_artifacts=True).start()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server fails fast here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(s.url)
    yield s
    while mlflow.active_run() is not None:
        try:
            mlflow.end_run()
        except Exception:  # noqa: BLE001 - a test that took the server away
            break
    s.stop()
    mlflow.set_tracking_uri(None)


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_every_command_works_against_a_tracking_server(server, tiny_dataset, tmp_path):
    def pgen(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, (args, result.output)
        return result.output

    out = pgen("train", "vae", "--data", tiny_dataset, "--epochs", 2, "--batch-size", 16, "--hidden", 32, "--latent-dim", 4,
               "--experiment", "remote")
    run_id = re.search(r"run ([0-9a-f]{32}) FINISHED", out).group(1)
    assert "FINISHED after 3 epochs" in pgen("train", "vae", "--resume", run_id, "--epochs", 3)  # checkpoint downloaded
    pgen("deploy", run_id, "-n", 8, "--out", tmp_path / "s.h5")
    ev = re.search(r"evaluate run ([0-9a-f]{32})", pgen("evaluate", run_id, "--n-samples", 32)).group(1)
    assert pgen("compare", "remote:*").splitlines()[2].split()[2] == "vae"
    pgen("tune", "vae", "--trials", 2, "--epochs", 1, "--data", tiny_dataset, "--batch-size", 16,
         "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--experiment", "remote-tune")

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = tmp_path / "server-artifacts"  # what the server itself holds: uploaded through it
    assert len(list(stored.rglob(f"{run_id}/artifacts/checkpoints/last.pt"))) == 1
    assert list(stored.rglob(f"{ev}/artifacts/report.json")) and list(stored.rglob(f"{ev}/artifacts/plots/statistics.png"))
    trials = client.search_runs([client.get_experiment_by_name("remote-tune").experiment_id], "tags.`pgen.kind` = 'train'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)


def test_training_rides_out_a_server_outage(server, tiny_dataset, capsys):
    def on_epoch(done, metrics):
        if done == 1:
            server.stop()  # the server goes away after epoch 1 ...
        if done == 3:
            server.start()  # ... and comes back, on the same port, after epoch 3

    result = train.run("vae", overrides={"data.path": str(tiny_dataset), **TINY}, progress=False, on_epoch=on_epoch,
                       experiment="outage")
    err = capsys.readouterr().err
    assert "unreachable" in err and "training goes on" in err and "reachable again" in err
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # nothing was lost: every epoch's validation metrics reached the server, and the final checkpoint
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "val.loss")) == [1, 2, 3, 4, 5]
    assert tracking.load_checkpoint(result.run_id, "last.pt")["epoch"] == 5


def test_a_server_that_never_comes_back(server, tiny_dataset, monkeypatch, capsys):
    monkeypatch.setenv("PGEN_TRACKING_GRACE_S", "2")

    def on_epoch(done, metrics):
        if done == 2:
            server.stop()

    with pytest.raises(PgenError) as failure:
        train.run("vae", overrides={"data.path": str(tiny_dataset), **TINY}, progress=False, on_epoch=on_epoch, experiment="gone")
    message = str(failure.value)
    run_id = re.search(r"run ([0-9a-f]{32}) still shows RUNNING", message).group(1)
    assert "stayed unreachable" in message and "metric values" in message and "checkpoint" in message
    local = tracking.spool_dir(run_id) / "last.pt"
    assert str(local) in message and local.exists()  # the trained weights are safe on this machine

    # the server comes back: the resume continues from the local copy, newer than the server's
    while mlflow.active_run() is not None:
        try:
            mlflow.end_run()
        except Exception:  # noqa: BLE001
            break
    server.start()
    capsys.readouterr()
    resumed = train.run("vae", resume=run_id, overrides={"train.epochs": 6}, progress=False)
    assert resumed.status == "FINISHED" and resumed.epoch == 6
    assert "this machine's copy of checkpoints/last.pt" in capsys.readouterr().err


def test_four_tuning_workers_share_one_study_through_the_server(server, tiny_dataset, tmp_path):
    from test_tune import TINY_TOML, _check_shared, _workers

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    storage = str(tmp_path / "study.log")  # Optuna's journal file: the multi-process storage of one machine
    _workers(storage, tiny_dataset, cfg, 20, env, workers=4)
    _check_shared(storage, 20, workers=4)  # 20 trials, numbered once each, every trial's run FINISHED on the server
