"""Training runs against a real MLflow store: the run contract, determinism, resume, KILLED / FAILED, bad input."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pgen import train
from pgen.errors import PgenError

REPO = Path(__file__).resolve().parents[1]
TINY = {"train.epochs": 2, "train.batch_size": 16, "train.log_every": 2, "train.samples": 16}
SMALL_MODEL = {
    "vae": {"model.hidden": "32", "model.latent_dim": 4},
    "gan": {"model.n_layers": 2, "model.hidden_width": 32, "model.latent_dim": 8},
    "dcgan": {"model.base_channels": 4, "model.latent_dim": 8},
}




def tiny_run(data: Path, family: str = "vae", *, log_model: bool = False, **kw):
    over = {"data.path": str(data), **TINY, **SMALL_MODEL[family], "train.log_model": log_model, **kw.pop("over", {})}
    return train.run(family, overrides=over, progress=False, **kw)


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def weights(run_id: str, name: str = "last.pt") -> dict:
    from pgen import tracking

    return tracking.load_checkpoint(run_id, name)


def same_weights(a: dict, b: dict) -> bool:
    na, nb = a["state"]["nets"], b["state"]["nets"]
    return na.keys() == nb.keys() and all(torch.equal(na[k][p], nb[k][p]) for k in na for p in na[k])


def no_run_left_running() -> bool:
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    return all(r.info.status != "RUNNING" for r in runs)


# --------------------------------------------------------------------------- the run contract


@pytest.mark.parametrize("family", ["vae", "gan", "dcgan"])
def test_a_training_run_keeps_the_contract(family, tiny_dataset, mlflow_store):
    result = tiny_run(tiny_dataset, family, log_model=family == "vae")
    run = client().get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert (tags["pgen.kind"], tags["pgen.model"], tags["pgen.dataset"]) == ("train", family, "tiny")
    assert params["model.family"] == family and params["data.file"] == str(tiny_dataset)
    assert params["data.val_split"] == "val" and params["data.scale"] == "linear" and params["train.epochs"] == "2"
    assert params["seed"] == "0" and params["pgen.version"] and params["train.device"] == "cpu"
    assert any(k.startswith("data.") for k in params) and any(k.startswith("model.") for k in params)
    # training losses every 2 steps (6 steps per epoch), validation and throughput per epoch
    loss_key = "train.loss" if family == "vae" else "train.loss_d"
    history = client().get_metric_history(result.run_id, loss_key)
    assert [m.step for m in history] == [2, 4, 6, 8, 10, 12]
    expected = ["val.loss", "perf.images_per_s", "perf.epoch_time_s"]
    expected += ["val.elbo", "val.recon", "val.kl"] if family == "vae" else ["val.loss_d", "val.loss_g", "val.d_real", "val.d_fake",
                                                                            "val.score", "val.collapse", "val.diversity_ratio", "val.sample_distance"]
    expected += ["val.dark_fraction", "val.occupancy_samples", "val.occupancy_data"]
    for key in expected:
        assert key in metrics, key
        assert [m.step for m in client().get_metric_history(result.run_id, key)] == [1, 2]
    assert metrics["perf.images_per_s"] > 0
    if family != "vae":  # pgen evaluate's summary score, at the dataset's threshold (2% of its range: no noise floor recorded)
        assert metrics["val.loss"] == pytest.approx(metrics["val.score"] + metrics["val.collapse"])
        assert 0 <= metrics["val.collapse"] <= 1 and float(params["data.threshold"]) == pytest.approx(5.1)
    # artifacts: config, checkpoints, sample grids
    files = {f.path for f in client().list_artifacts(result.run_id)}
    assert {"config.toml", "checkpoints"} <= files
    assert {f.path for f in client().list_artifacts(result.run_id, "checkpoints")} == {"checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/previous.pt"}
    assert f'[model]\nfamily = "{family}"' in mlflow.artifacts.load_text(f"runs:/{result.run_id}/config.toml")
    images = [f.path for f in client().list_artifacts(result.run_id, "images")]
    assert len([p for p in images if p.startswith("images/samples") and p.endswith(".png")]) == 2
    ckpt = weights(result.run_id)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["family"]) == (2, 0, family)
    torch.load(Path(mlflow_store.removeprefix("sqlite:///")).parent / "mlruns" / "0" / result.run_id / "artifacts" / "checkpoints" / "last.pt",
               weights_only=True)
    # the dataset as inputs: the file as source, a digest
    inputs = run.inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"tiny:train", "tiny:val"}
    assert all(str(tiny_dataset) in i.dataset.source and len(i.dataset.digest) == 16 for i in inputs)


def test_the_generator_is_a_pyfunc_model_that_samples(tiny_dataset, mlflow_store):
    result = tiny_run(tiny_dataset, "gan", log_model=True)
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/generator")
    images = model.predict(np.array([[5]]))
    assert images.shape == (5, 16, 16) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255  # stored units: the scaling undone
    again = model.predict(np.array([[5]]), params={"seed": 0})
    assert np.array_equal(images, again)
    z = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    assert model.predict(z).shape == (3, 16, 16)
    assert client().get_run(result.run_id).data.tags["pgen.model_uri"].startswith("models:/")


def test_vae_pyfunc_decodes_latent_vectors(tiny_dataset, mlflow_store):
    result = tiny_run(tiny_dataset, "vae", log_model=True)
    model = mlflow.pyfunc.load_model(result.model_uri)
    assert model.predict(np.zeros((2, 4), dtype=np.float32)).shape == (2, 16, 16)


# --------------------------------------------------------------------------- determinism and resume


def test_same_seed_and_config_give_identical_weights(tiny_dataset, mlflow_store):
    a, b = tiny_run(tiny_dataset, "dcgan"), tiny_run(tiny_dataset, "dcgan")
    assert same_weights(weights(a.run_id), weights(b.run_id))
    c = tiny_run(tiny_dataset, "dcgan", over={"train.seed": 1})
    assert not same_weights(weights(a.run_id), weights(c.run_id))
    streamed = tiny_run(tiny_dataset, "dcgan", over={"data.in_memory": "no"})  # read from disk batch by batch: same data, same order
    assert client().get_run(streamed.run_id).data.params["data.in_memory"] == "no"
    assert same_weights(weights(a.run_id), weights(streamed.run_id))


@pytest.mark.parametrize("family, stop_at", [("vae", 9), ("gan", 4)])
def test_interrupted_then_resumed_equals_uninterrupted(family, stop_at, tiny_dataset, mlflow_store):
    full = tiny_run(tiny_dataset, family, over={"train.epochs": 3})

    def interrupt(state, epoch, batch):
        if state.step == stop_at:
            raise KeyboardInterrupt

    killed = tiny_run(tiny_dataset, family, over={"train.epochs": 3}, experiment="resume", on_step=interrupt)
    assert killed.status == "KILLED" and client().get_run(killed.run_id).info.status == "KILLED"
    ckpt = weights(killed.run_id)
    assert (ckpt["epoch"], ckpt["batch"]) == divmod(stop_at, 6)
    resumed = train.run(family, resume="resume:latest", overrides={}, progress=False)
    assert resumed.run_id == killed.run_id and resumed.status == "FINISHED"
    assert client().get_run(killed.run_id).info.status == "FINISHED"
    assert same_weights(weights(full.run_id), weights(killed.run_id))
    # extend the finished run by one more epoch
    longer = train.run(family, resume=killed.run_id, overrides={"train.epochs": 4}, progress=False)
    assert longer.epoch == 4 and weights(killed.run_id)["epoch"] == 4


def test_sigterm_ends_the_run_killed_with_a_checkpoint(tiny_dataset, mlflow_store):
    def terminate(state, epoch, batch):
        if state.step == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    result = tiny_run(tiny_dataset, "vae", on_step=terminate)
    assert result.status == "KILLED" and client().get_run(result.run_id).info.status == "KILLED"
    ckpt = weights(result.run_id)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)  # stopped before the next step
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tiny_dataset, mlflow_store):
    def poison(state, epoch, batch):
        if epoch == 1 and batch == 2:
            with torch.no_grad():
                next(state.nets["vae"].parameters()).fill_(float("nan"))

    with pytest.raises(PgenError, match="lower the learning rate"):
        tiny_run(tiny_dataset, "vae", on_step=poison, experiment="nan")
    run = client().search_runs([client().get_experiment_by_name("nan").experiment_id])[0]
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["pgen.error"]
    ckpt = weights(run.info.run_id)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["state"]["nets"]["vae"].values())


def test_an_exception_fails_the_run_with_the_reason_and_keeps_the_mid_epoch_checkpoint(tiny_dataset, mlflow_store):
    def crash(state, epoch, batch):
        if state.step == 5:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        tiny_run(tiny_dataset, "gan", on_step=crash, over={"train.checkpoint_every": 4})
    run = client().search_runs(["0"])[0]
    assert run.info.status == "FAILED" and run.data.tags["pgen.error"] == "RuntimeError: disk on fire"
    ckpt = weights(run.info.run_id)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["state"]["step"]) == (0, 4, 4)
    assert [m.step for m in client().get_metric_history(run.info.run_id, "train.loss_d")] == [2, 4]


# --------------------------------------------------------------------------- bad input


def _write(path: Path, size: int) -> Path:
    from conftest import sparse_images

    from pgen.data.store import write_arrays

    return write_arrays(path, {"train": {"images": sparse_images(32, size)}, "val": {"images": sparse_images(8, size)}},
                        source="test", value_range=(0, 255))


def test_bad_resume_references_and_checkpoints_are_refused(tiny_dataset, mlflow_store, tmp_path):
    with pytest.raises(PgenError, match="no such run"):
        train.run("vae", resume="0123456789abcdef0123456789abcdef")
    with pytest.raises(PgenError, match="no experiment named"):
        train.run("vae", resume="nowhere:latest")
    with mlflow.start_run() as other:
        mlflow.set_tag("pgen.kind", "evaluate")
    with pytest.raises(PgenError, match="not a training run"):
        train.run("vae", resume=other.info.run_id)
    done = tiny_run(tiny_dataset, "vae")
    with pytest.raises(PgenError, match="trained a 'vae' model"):
        train.run("gan", resume=done.run_id)
    with pytest.raises(PgenError, match="already trained 2 epochs"):
        train.run("vae", resume=done.run_id)
    with pytest.raises(PgenError, match="cannot change when resuming"):
        train.run("vae", resume=done.run_id, overrides={"train.epochs": 3, "model.latent_dim": 9})
    with pytest.raises(PgenError, match="images are 8x8 .* trained on 16x16"):
        train.run("vae", resume=done.run_id, overrides={"train.epochs": 3, "data.path": str(_write(tmp_path / "small.h5", 8))})
    ckpt = Path("mlruns") / "0" / done.run_id / "artifacts" / "checkpoints" / "last.pt"
    previous = ckpt.with_name("previous.pt")
    assert weights(done.run_id, "previous.pt")["epoch"] == 1  # epoch 1's last.pt, kept when epoch 2's replaced it
    previous.write_bytes(previous.read_bytes()[:100])
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(PgenError, match="corrupt"):  # no good checkpoint left: a clear stop
        train.run("vae", resume=done.run_id, overrides={"train.epochs": 3})
    previous.unlink()

    import argparse

    torch.save({"format": "pgen-checkpoint", "evil": argparse.Namespace(x=1)}, ckpt)  # an arbitrary pickled object
    with pytest.raises(PgenError, match="pickled objects"):
        train.run("vae", resume=done.run_id, overrides={"train.epochs": 3})
    assert no_run_left_running()


@pytest.mark.parametrize(
    "family, over, match",
    [
        ("vae", {"model.arch": "rnn"}, "unknown --arch"),
        ("vae", {"model.latent_dim": 0}, "at least 1"),
        ("gan", {"train.lr": 0.0}, "must be > 0"),
        ("dcgan", {"data.path": "BIG"}, "up to 512"),
        ("vae", {"train.batch_size": 500}, "larger than the training split"),
        ("vae", {"data.path": "no/such/file.h5"}, "no such file"),
    ],
)
def test_bad_input_is_refused_before_a_run_starts(family, over, match, tiny_dataset, mlflow_store, tmp_path):
    if over.get("data.path") == "BIG":
        over = {**over, "data.path": str(_write(tmp_path / "big.h5", 600)), "train.batch_size": 8}
    with pytest.raises(PgenError, match=match):
        train.run(family, overrides={"data.path": str(tiny_dataset), **over})
    assert client().search_runs(["0"]) == []


# --------------------------------------------------------------------------- the command line and MLproject


def test_cli_trains_and_reports_bad_flags_in_one_line(tiny_dataset, mlflow_store):
    from pgen.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["train", "vae", "--data", str(tiny_dataset), "--epochs", "1", "--batch-size", "16", "--hidden", "16",
                             "--latent-dim", "2", "--experiment", "cli", "--run-name", "first"])
    assert ok.exit_code == 0, ok.output
    assert "FINISHED after 1 epochs" in ok.output
    run = client().search_runs([client().get_experiment_by_name("cli").experiment_id])[0]
    assert run.info.run_name == "first" and run.data.params["model.hidden"] == "16"
    bad = runner.invoke(app, ["train", "vae", "--data", str(tiny_dataset), "--arch", "rnn"])
    assert bad.exit_code == 1 and bad.output.strip().count("\n") == 0 and "unknown --arch 'rnn'" in bad.output
    bad = runner.invoke(app, ["train", "gan", "--data", str(tiny_dataset), "--lr", "-1"])
    assert bad.exit_code == 1 and "must be > 0" in bad.output


def test_mlflow_project_entry_point_attaches_to_its_run(tiny_dataset, mlflow_store, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    submitted = mlflow.projects.run(
        str(REPO), "train_vae", env_manager="local", experiment_name="project",
        parameters={"data": str(tiny_dataset), "epochs": 1, "batch_size": 16, "latent_dim": 2, "hidden": "16"},
    )
    assert submitted.get_status() == "FINISHED"
    runs = client().search_runs([client().get_experiment_by_name("project").experiment_id])
    assert len(runs) == 1  # pgen attached to the run `mlflow run` made
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["pgen.kind"] == "train" and "val.elbo" in run.data.metrics
    assert run.data.params["data"] == str(tiny_dataset) and run.data.params["model.hidden"] == "16"
