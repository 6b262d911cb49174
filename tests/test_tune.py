"""`pgen tune`: Optuna studies on real storages (sqlite, journal file, PostgreSQL if given) and a real MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from pgen import tune
from pgen.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY_TOML = """\
[model]
hidden = [16]
[train]
batch_size = 32
log_every = 3
samples = 4
log_model = false
[tune]
latent_dim = [2, 8]
lr = [1e-4, 1e-2]
startup_trials = 2
"""


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def tune_tiny(data, cfg, storage, trials=4, **kw):
    return tune.run("vae", trials=trials, storage=storage, config_file=cfg, echo=lambda *_: None,
                    overrides={"data.path": str(data), "train.epochs": 2}, **kw)


def runs_of(parent: str):
    exp = client().get_run(parent).info.experiment_id
    return client().search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_a_study_logs_nested_trials_best_params_and_plots(tiny_dataset, tiny_config, mlflow_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = tune_tiny(tiny_dataset, tiny_config, storage, study_name="s", pruner="none")
    assert result.ran == 4 and result.best_value is not None
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert study.user_attrs["model"] == "vae" and study.user_attrs["objective"] == "val.loss"
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # reported every epoch
    parent = client().get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pgen.kind"] == "tune" and parent.data.tags["pgen.model"] == "vae"
    assert parent.data.params["study"] == "s" and parent.data.params["trials"] == "4" and parent.data.params["pruner"] == "none"
    children = runs_of(result.parent_run_id)
    assert len(children) == 4
    assert sorted(int(r.data.tags["pgen.trial"]) for r in children) == [0, 1, 2, 3]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["pgen.kind"] == "train" and r.data.tags["pgen.trial_state"] == "COMPLETE"
        t = study.trials[int(r.data.tags["pgen.trial"])]
        assert r.data.metrics["val.loss"] == pytest.approx(t.value)
        assert r.data.params["model.latent_dim"] == str(t.params["latent_dim"])
    assert parent.data.metrics["best.value"] == pytest.approx(study.best_value)
    assert parent.data.metrics["best.latent_dim"] == study.best_params["latent_dim"]
    best = json.loads(mlflow.artifacts.load_text(f"runs:/{result.parent_run_id}/best_params.json"))
    assert best["trial"] == study.best_trial.number and best["params"] == study.best_params
    plots = {f.path for f in client().list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "plots/contour_latent_dim_lr.png"} <= plots
    # --best prints the trial and the command that retrains it
    out = CliRunner().invoke(app, ["tune", "--best", "s", "--storage", storage])
    assert out.exit_code == 0, out.output
    assert f"best trial {study.best_trial.number}" in out.output
    assert f"pgen train vae --config {tiny_config}" in out.output and "--latent-dim" in out.output and "--lr" in out.output


def test_the_pruner_stops_a_bad_trial_and_a_rerun_continues_the_study(tiny_dataset, tiny_config, mlflow_store, tmp_path):
    storage = str(tmp_path / "study.journal")
    good = {"latent_dim": 4, "lr": 1e-2}
    study = tune.load_or_create(tune.open_storage(storage), "p", "vae")
    for params in (good, good, {"latent_dim": 4, "lr": 1e-4}):  # the third learns 100x slower: worse than the median at epoch 1
        study.enqueue_trial(params)
    first = tune_tiny(tiny_dataset, tiny_config, storage, trials=3, study_name="p", pruner="median")
    study = optuna.load_study(study_name="p", storage=tune.open_storage(storage))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert len(study.trials[2].intermediate_values) == 1  # stopped after its first epoch
    pruned = [r for r in runs_of(first.parent_run_id) if r.data.tags["pgen.trial"] == "2"][0]
    assert pruned.info.status == "KILLED" and pruned.data.tags["pgen.trial_state"] == "PRUNED"
    assert [m.step for m in client().get_metric_history(pruned.info.run_id, "val.loss")] == [1]
    assert client().get_run(first.parent_run_id).info.status == "FINISHED"
    # the same study again, now to 5 trials: numbering continues, a second parent run
    second = tune_tiny(tiny_dataset, tiny_config, storage, trials=5, study_name="p", pruner="none")
    assert second.parent_run_id != first.parent_run_id and second.ran == 2
    assert sorted(int(r.data.tags["pgen.trial"]) for r in runs_of(second.parent_run_id)) == [3, 4]
    study = optuna.load_study(study_name="p", storage=tune.open_storage(storage))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    # already full: nothing runs, no parent run
    again = tune_tiny(tiny_dataset, tiny_config, storage, trials=5, study_name="p")
    assert again.ran == 0 and again.parent_run_id is None


def test_a_trial_of_a_killed_worker_is_failed_and_retried(tiny_dataset, tiny_config, mlflow_store, tmp_path):
    import socket

    storage = str(tmp_path / "orphan.journal")
    study = tune.load_or_create(tune.open_storage(storage), "o", "vae")
    orphan = study.ask({"latent_dim": optuna.distributions.IntDistribution(2, 8, log=True),
                        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a worker process that no longer exists (as after SIGKILL)
    orphan.set_user_attr("pgen.worker", f"{socket.gethostname()}:{dead.pid}")
    tune_tiny(tiny_dataset, tiny_config, storage, trials=2, study_name="o", pruner="none")
    study = optuna.load_study(study_name="o", storage=tune.open_storage(storage))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params and study.trials[1].user_attrs["pgen.retry_of"] == 0


def _workers(storage: str, data: Path, cfg: Path, trials: int, env: dict, workers: int = 2) -> None:
    cmd = [sys.executable, "-m", "pgen", "tune", "vae", "--trials", str(trials), "--study", "shared", "--storage", storage,
           "--data", str(data), "--epochs", "1", "--config", str(cfg), "--pruner", "none", "--sampler", "random"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(workers)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out


def _check_shared(storage, trials: int, workers: int = 2) -> None:
    study = optuna.load_study(study_name="shared", storage=tune.open_storage(storage, heartbeat=False))
    counted = [t for t in study.trials if not t.user_attrs.get("pgen.surplus")]
    assert len(counted) == trials and all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.number for t in counted}) == trials
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()], filter_string="tags.`pgen.kind` = 'train'")
    assert sorted(int(r.data.tags["pgen.trial"]) for r in runs) == sorted(t.number for t in counted)
    parents = client().search_runs([e.experiment_id for e in client().search_experiments()], filter_string="tags.`pgen.kind` = 'tune'")
    assert len(parents) == workers and all(p.info.status == "FINISHED" for p in parents)
    assert all(r.info.status == "FINISHED" for r in runs)  # every trial's run complete


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_two_workers_on_a_journal_file_share_one_study(tiny_dataset, tiny_config, mlflow_store, tmp_path):
    storage = str(tmp_path / "shared.log")
    _workers(storage, tiny_dataset, tiny_config, 5, _env())
    _check_shared(storage, 5)


def test_two_workers_on_postgresql_share_one_study(tiny_dataset, tiny_config, mlflow_store, tmp_path):
    url = os.environ.get("PGEN_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PostgreSQL not available: set PGEN_TEST_POSTGRES_URL (e.g. postgresql://user:pass@host/db) to run this test")
    name = "shared"
    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:
        pass
    _workers(url, tiny_dataset, tiny_config, 5, _env())
    _check_shared(url, 5)


def test_another_objective_maximised(tiny_dataset, tiny_config, mlflow_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = tune_tiny(tiny_dataset, tiny_config, storage, trials=3, study_name="elbo", pruner="none",
                       objective="val.elbo", direction="maximize")
    study = optuna.load_study(study_name="elbo", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.user_attrs["objective"] == "val.elbo"
    values = {}
    for r in runs_of(result.parent_run_id):
        t = study.trials[int(r.data.tags["pgen.trial"])]
        assert t.value == pytest.approx(r.data.metrics["val.elbo"]) == pytest.approx(-r.data.metrics["val.loss"])
        values[t.number] = t.value
    assert len(values) == 3 and study.best_value == max(values.values()) and result.best_value == study.best_value
    parent = client().get_run(result.parent_run_id)
    assert parent.data.params["objective"] == "val.elbo" and parent.data.params["direction"] == "maximize"
    assert parent.data.metrics["best.value"] == pytest.approx(study.best_value)  # the highest, logged as it improved
    out = CliRunner().invoke(app, ["tune", "--best", "elbo", "--storage", storage])
    assert out.exit_code == 0 and f"val.elbo {study.best_value:.6g}" in out.output, out.output
    # the study continues only with its own objective and direction
    for extra, match in (([], "maximises its objective, not --direction minimize"),
                         (["--direction", "maximize", "--objective", "val.recon"], "pass --objective val.elbo")):
        out = CliRunner().invoke(app, ["tune", "vae", "--trials", "4", "--study", "elbo", "--storage", storage, "--data",
                                       str(tiny_dataset), "--batch-size", "32", *extra])
        assert out.exit_code == 1 and match in out.output and out.output.strip().count("\n") == 0, out.output


# --------------------------------------------------------------------------- bad input


def _no_run_left_running() -> bool:
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    return all(r.info.status != "RUNNING" for r in runs)


@pytest.mark.parametrize(
    "args, toml, match",
    [
        (["transformer", "--trials", "2"], None, "unknown model 'transformer'"),
        (["vae", "--trials", "0"], None, "--trials must be at least 1"),
        (["vae", "--trials", "2", "--storage", "nosuchdb://u:hunter2@host/x"], None, "--storage nosuchdb://u:\\*\\*\\*@host/x: cannot open"),
        (["vae", "--trials", "2", "--storage", "optuna.txt"], None, "not a storage URL"),
        (["vae", "--trials", "2", "--storage", "sqlite:////no/such/folder/o.db"], None, "cannot open"),
        (["vae", "--trials", "2"], "[tune]\nlr = [1e-2, 1e-5]\n", "inverted"),
        (["vae", "--trials", "2"], "[tune]\nlatent_dim = [8, 8]\n", "empty range"),
        (["vae", "--trials", "2"], "[tune]\nwidth = [8, 16]\n", "unknown parameter 'width'"),
        (["vae", "--trials", "2", "--objective", "val.score"], None, "'val.score' is not a validation metric of vae runs; choose one of val.loss"),
        (["gan", "--trials", "2", "--objective", "loss"], None, "'loss' is not a validation metric of gan runs"),
        (["vae", "--trials", "2", "--direction", "up"], None, "--direction must be minimize or maximize"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run(args, toml, match, tiny_dataset, mlflow_store, tmp_path):
    extra = ["--data", str(tiny_dataset), "--batch-size", "32", "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
        extra += ["--config", str(tmp_path / "bad.toml")]
    if "--storage" in args:
        extra = extra[:4]
    out = CliRunner().invoke(app, ["tune", *args, *extra])
    assert out.exit_code == 1, out.output
    assert out.output.strip().count("\n") == 0 and out.output.startswith("error: "), out.output
    import re

    assert re.search(match, out.output), out.output
    assert "hunter2" not in out.output
    assert client().search_runs(["0"]) == [] and _no_run_left_running()


def test_a_study_of_another_model_or_direction_is_refused(tiny_dataset, mlflow_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    tune.load_or_create(tune.open_storage(storage), "gans", "gan")
    optuna.create_study(study_name="max", storage=storage, direction="maximize")
    old = optuna.create_study(study_name="old-gan", storage=storage)  # a GAN study from before val.score was its loss
    old.set_user_attr("model", "gan")
    old.set_user_attr("objective", "val.loss")
    for model, study, match in (("vae", "gans", "tunes model 'gan'"), ("vae", "max", "maximises"),
                                ("gan", "old-gan", "former sample distance, not val.score + val.collapse")):
        out = CliRunner().invoke(app, ["tune", model, "--trials", "2", "--study", study, "--storage", storage, "--data", str(tiny_dataset),
                                    "--batch-size", "32"])
        assert out.exit_code == 1 and match in out.output and out.output.strip().count("\n") == 0, out.output
    out = CliRunner().invoke(app, ["tune", "--best", "nope", "--storage", storage])
    assert out.exit_code == 1 and "no study named 'nope'" in out.output
    assert client().search_runs(["0"]) == []


def test_mlflow_project_entry_point_nests_trials_under_its_run(mlflow_store, tmp_path, monkeypatch):
    from conftest import sparse_images

    from pgen.data.store import write_arrays

    data = write_arrays(tmp_path / "d.h5", {"train": {"images": sparse_images(160, 16, seed=1)}, "val": {"images": sparse_images(32, 16)}},
                        source="test", value_range=(0, 255))  # the entry point trains with the default batch size (128)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    submitted = mlflow.projects.run(str(REPO), "tune", env_manager="local", experiment_name="project",
                                    parameters={"model": "vae", "trials": 2, "study": "proj", "data": str(data), "epochs": 1,
                                                "storage": f"sqlite:///{tmp_path / 'optuna.db'}"})
    assert submitted.get_status() == "FINISHED"
    runs = client().search_runs([client().get_experiment_by_name("project").experiment_id])
    parent = [r for r in runs if r.info.run_id == submitted.run_id][0]
    assert parent.data.tags["pgen.kind"] == "tune" and parent.info.status == "FINISHED"
    trials = [r for r in runs if r.info.run_id != submitted.run_id]
    assert len(trials) == 2 and all(r.data.tags["mlflow.parentRunId"] == submitted.run_id for r in trials)
    study = optuna.load_study(study_name="proj", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 2


def test_a_gan_study_tunes_both_learning_rates_with_hyperband(tiny_dataset, mlflow_store, tmp_path):
    cfg = tmp_path / "gan.toml"
    cfg.write_text("[model]\nn_layers = 2\nhidden_width = 16\n[train]\nbatch_size = 32\nsamples = 4\nlog_model = false\n"
                   "[tune]\nlatent_dim = [4, 16]\nbatch_size = {choices = [16, 32]}\n")
    storage = f"sqlite:///{tmp_path / 'gan.db'}"
    result = tune.run("gan", trials=3, storage=storage, config_file=cfg, pruner="hyperband", sampler="random",
                      overrides={"data.path": str(tiny_dataset), "train.epochs": 2}, echo=lambda *_: None)
    study = optuna.load_study(study_name="gan-tiny", storage=storage)
    assert result.study == "gan-tiny" and len(study.trials) == 3
    assert set(study.trials[0].params) == {"latent_dim", "lr_g", "lr_d", "batch_size"}
    for r in runs_of(result.parent_run_id):
        t = study.trials[int(r.data.tags["pgen.trial"])]
        assert r.data.params["train.lr_g"] == str(t.params["lr_g"]) and r.data.params["train.batch_size"] == str(t.params["batch_size"])
        if t.state == TrialState.COMPLETE:  # the GAN objective: the evaluation's summary score after the last epoch
            assert r.data.metrics["val.loss"] == pytest.approx(t.value)
            assert t.value == pytest.approx(r.data.metrics["val.score"] + r.data.metrics["val.collapse"])
            assert len(t.intermediate_values) == 2
    assert study.user_attrs["loss_metric"] == "val.score + val.collapse"
    assert "--lr-g" in result.command and "--batch-size" in result.command
    plots = {f.path for f in client().list_artifacts(result.parent_run_id, "plots")}
    assert "plots/optimization_history.png" in plots
