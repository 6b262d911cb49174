"""`pgen evaluate` and `pgen compare` against a real temporary MLflow store and real pgen datasets."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import sparse_images
from pgen.cli import app
from pgen.data.store import write_arrays
from pgen.evaluate import compare, report
from test_deploy import trained

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def artifacts(run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client().list_artifacts(run_id, path)}


def samples_file(path: Path, images: np.ndarray) -> Path:
    write_arrays(path, {"samples": {"images": images.astype(np.float32)}}, source="test", value_range=(0, 255))
    return path


def train_images(data: Path) -> np.ndarray:
    import h5py

    with h5py.File(data, "r") as f:
        return f["train"]["images"][:]


@pytest.mark.parametrize("family", ["gan", "dcgan", "vae", "latent-flow"])
def test_evaluate_records_an_evaluate_run(family, tiny_dataset, mlflow_store, tmp_path):
    run_id = trained(family, tiny_dataset)
    r = report.evaluate(run_id, n_samples=40, batch_size=16, out=tmp_path / "ev", echo=lambda line: None)
    run = client().get_run(r.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pgen.kind"] == "evaluate" and run.data.tags["pgen.source_run"] == run_id
    assert run.data.tags["pgen.model"] == family
    assert float(run.data.params["threshold"]) == pytest.approx(0.02 * 255)  # tiny.h5 records no noise floor
    m = run.data.metrics
    for key in ("eval.score", "eval.copy_rate", "eval.diversity_ratio", "eval.memorisation_ratio", "eval.dark_fraction",
                "eval.w1_norm.occupancy", "eval.w1.charge", "eval.w1_norm.length", "eval.nn_test_train_median"):
        assert key in m and np.isfinite(m[key]), key
    assert 0 <= m["eval.copy_rate"] <= 1 and 0 <= m["eval.dark_fraction"] <= 1 and m["eval.score"] >= 0
    assert m == pytest.approx(r.metrics)
    # the statistics of the held-out data are the data's: 32 test images, one line each
    assert m["eval.data_mean.clusters"] >= 1 and m["eval.data_mean.dark"] == 0
    expected = {"report.json", "samples.png", "plots"}
    assert expected <= artifacts(r.run_id)
    assert artifacts(r.run_id, "plots") == {f"plots/{n}.png" for n in ("loss_curves", "nn_distances", "statistics", "nearest_train")}
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["n_samples"] == 40 and rep["n_train"] == 96 and rep["n_held_out"] == 32 and rep["source_run"] == run_id
    assert rep["metrics"]["eval.score"] == pytest.approx(m["eval.score"])
    source = client().get_run(run_id)
    assert source.data.metrics["eval.score"] == pytest.approx(m["eval.score"])  # summary metrics on the source run
    assert source.data.tags["pgen.evaluation"] == r.run_id
    assert "eval.w1.charge" not in source.data.metrics  # only the summary goes there


def test_copy_rate_flags_a_generator_that_replays_training_images(tiny_dataset, mlflow_store, tmp_path):
    run_id = trained("gan", tiny_dataset)
    copies = samples_file(tmp_path / "copies.h5", train_images(tiny_dataset)[:64])
    fresh = samples_file(tmp_path / "fresh.h5", sparse_images(64, 16, seed=11))
    replayed = report.evaluate(run_id, samples_file=copies, echo=lambda line: None).metrics
    held_out = report.evaluate(run_id, samples_file=fresh, echo=lambda line: None).metrics
    assert replayed["eval.copy_rate"] == 1.0 and replayed["eval.exact_copy_fraction"] == 1.0
    assert replayed["eval.nn_gen_train_median"] == 0 and replayed["eval.memorisation_ratio"] == 0
    assert held_out["eval.copy_rate"] <= 0.1 and held_out["eval.exact_copy_fraction"] <= 0.05  # short lines can coincide
    assert 0.5 < held_out["eval.memorisation_ratio"] < 2
    # both are made like the data: their image statistics match it far better than the tiny gan does
    gan = report.evaluate(run_id, n_samples=64, echo=lambda line: None).metrics
    assert held_out["eval.score"] < gan["eval.score"] and replayed["eval.score"] < gan["eval.score"]


def test_default_threshold_is_the_recorded_noise_floor():
    assert report.default_threshold({"threshold_adc": 7.0, "value_range": [0, 4095]})[0] == 3.5
    assert report.default_threshold({"import_threshold": 10, "value_range": [0, 100]})[0] == 5.0
    assert report.default_threshold({"import_threshold": "none", "value_range": [0, 255]})[0] == pytest.approx(5.1)
    assert report.default_threshold({"value_range": [0, 1]})[0] == pytest.approx(0.02)


def labelled_dataset(path: Path) -> Path:
    """Two classes of 12x12 images: horizontal and vertical bars."""
    rng = np.random.default_rng(0)

    def split(n, seed):
        r = np.random.default_rng(seed)
        labels = r.integers(0, 2, n)
        images = np.zeros((n, 12, 12), np.float32)
        for i, y in enumerate(labels):
            k = r.integers(2, 10)
            if y == 0:
                images[i, k, 2:10] = 200
            else:
                images[i, 2:10, k] = 200
        images += rng.uniform(0, 3, images.shape).astype(np.float32)
        return {"images": images, "labels": labels.astype(np.int64)}

    write_arrays(path, {"train": split(200, 1), "test": split(64, 2)}, source="test", value_range=(0, 255))
    return path


def test_labelled_data_gets_fid_and_class_histogram(mlflow_store, tmp_path):
    data = labelled_dataset(tmp_path / "bars.h5")
    run_id = trained("gan", data)
    import h5py

    with h5py.File(data, "r") as f:
        test_like = f["test"]["images"][:]
    horizontal_only = test_like.copy()
    horizontal_only[:] = 0
    horizontal_only[:, 5, 2:10] = 200
    good = report.evaluate(run_id, samples_file=samples_file(tmp_path / "good.h5", test_like), echo=lambda line: None).metrics
    one_mode = report.evaluate(run_id, samples_file=samples_file(tmp_path / "one.h5", horizontal_only), echo=lambda line: None).metrics
    assert good["eval.classifier_accuracy"] > 0.9
    assert good["eval.classes_covered"] == 2 and one_mode["eval.classes_covered"] == 1
    assert good["eval.fid"] < one_mode["eval.fid"]
    assert good["eval.class_kl"] < 0.05 < one_mode["eval.class_kl"]


def test_evaluate_bad_input_one_line_and_no_run_left_running(tiny_dataset, mlflow_store, tmp_path):
    run_id = trained("gan", tiny_dataset)
    deploy = runner.invoke(app, ["deploy", run_id, "-n", "4", "--out", str(tmp_path / "d.h5")])
    assert deploy.exit_code == 0, deploy.output
    deploy_id = client().search_runs(["0"], filter_string="tags.`pgen.kind` = 'deploy'")[0].info.run_id
    with mlflow.start_run(tags={"pgen.kind": "train", "pgen.model": "gan"}) as bare:  # a training run that died at once
        pass
    wrong_size = samples_file(tmp_path / "big.h5", np.zeros((4, 32, 32)))
    cases = [
        ([bare.info.run_id], "no checkpoints/last.pt"),
        ([deploy_id], "not a training run"),
        (["nosuch:latest"], "no experiment"),
        ([run_id, "--threshold", "300"], "outside the data's range"),
        ([run_id, "--threshold", "-1"], "outside the data's range"),
        ([run_id, "--samples", str(wrong_size)], "32x32"),
        ([run_id, "--samples", str(tmp_path / "d.h5"), "--n-samples", "1"], "at least 2"),
        ([run_id, "--out", str(wrong_size)], "is a file"),
        ([run_id, "--checkpoint", "middle"], "best or last"),
    ]
    for args, words in cases:
        result = runner.invoke(app, ["evaluate", *args])
        assert result.exit_code == 1, (args, result.output)
        assert words in result.output and "Traceback" not in result.output, (args, result.output)
    assert not client().search_runs(["0"], filter_string="tags.`pgen.kind` = 'evaluate'")  # refused before any run opened
    assert not client().search_runs(["0"], filter_string="attributes.status = 'RUNNING'")
    # a deploy file of the right size evaluates, and more samples than one batch are drawn in batches
    ok = runner.invoke(app, ["evaluate", run_id, "--samples", str(tmp_path / "d.h5")])
    assert ok.exit_code == 0, ok.output
    big = runner.invoke(app, ["evaluate", run_id, "--n-samples", "300", "--batch-size", "64", "--checkpoint", "last"])
    assert big.exit_code == 0 and "score" in big.output, big.output
    ev = client().get_run(big.output.strip().splitlines()[-1].split()[2])
    assert ev.data.params["n_samples"] == "300" and ev.data.params["checkpoint"] == "last"


def test_compare_ranks_runs_by_score(tiny_dataset, mlflow_store, tmp_path):
    mlflow.set_experiment("cmp")
    gan = trained("gan", tiny_dataset)
    vae = trained("vae", tiny_dataset)
    unevaluated = trained("vae", tiny_dataset)
    # a 'generator' that replays held-out-like images is the best possible: it must rank first
    fresh = samples_file(tmp_path / "fresh.h5", sparse_images(64, 16, seed=11))
    scores = {gan: report.evaluate(gan, n_samples=64, echo=lambda line: None).metrics["eval.score"],
              vae: report.evaluate(vae, samples_file=fresh, echo=lambda line: None).metrics["eval.score"]}
    ranked = compare.rows(["cmp:*"])
    assert [r.source_run for r in ranked] == sorted(scores, key=scores.get)
    assert [r.model for r in ranked] == ["vae", "gan"]
    assert compare.rows([gan, vae])[0].source_run == vae  # training run ids: their latest evaluation
    result = runner.invoke(app, ["compare", gan, vae, "--out", str(tmp_path / "cmp.png")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["#", "run", "model", "score"]
    assert lines[2].split()[2] == "vae" and lines[3].split()[2] == "gan"
    assert f"{scores[vae]:.3f}" in lines[2] and (tmp_path / "cmp.png").stat().st_size > 1000
    for args, words in (([unevaluated], "no finished evaluation"), (["nosuch:*"], "no experiment"),
                        ([gan, "--out", str(tmp_path / "no" / "x.png")], "does not exist")):
        bad = runner.invoke(app, ["compare", *args])
        assert bad.exit_code != 0 and words in bad.output and "Traceback" not in bad.output, bad.output


def test_mlflow_project_evaluate_entry_point(tiny_dataset, mlflow_store, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_id = trained("gan", tiny_dataset)
    submitted = mlflow.projects.run(str(REPO), "evaluate", env_manager="local", experiment_name="ev",
                                    parameters={"run": run_id, "n_samples": 50})
    assert submitted.get_status() == "FINISHED"
    runs = client().search_runs([client().get_experiment_by_name("ev").experiment_id])
    assert len(runs) == 1  # pgen attached to the run `mlflow run` made
    run = runs[0]
    assert run.data.tags["pgen.kind"] == "evaluate" and run.data.tags["pgen.source_run"] == run_id
    assert run.data.params["n_samples"] == "50" and "eval.score" in run.data.metrics
