"""The MLflow UI as people use it: real pgen runs, `mlflow ui` on 127.0.0.1, headless Chromium.

Marked slow. Needs Debian's chromium and chromium-driver (`.ci/run` installs them) and selenium;
skips with the reason otherwise. PGEN_UI_SCREENSHOTS=DIR keeps the screenshots there.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

import mlflow_ui as ui
from pgen.evaluate import report
from test_deploy import trained

pytestmark = pytest.mark.slow


def test_the_mlflow_ui_shows_what_pgen_logged(tiny_dataset, mlflow_store, tmp_path):
    reason = ui.available()
    if reason:
        pytest.skip(reason)
    shots = Path(os.environ.get("PGEN_UI_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    mlflow.set_experiment("ui-check")
    exp_id = mlflow.get_experiment_by_name("ui-check").experiment_id
    gan = trained("gan", tiny_dataset)
    vae = trained("vae", tiny_dataset)
    names = {r: mlflow.MlflowClient().get_run(r).info.run_name for r in (gan, vae)}
    ev = report.evaluate(vae, n_samples=32, echo=lambda line: None)
    report.evaluate(gan, n_samples=32, echo=lambda line: None)
    latent_dims = {r: mlflow.MlflowClient().get_run(r).data.params["model.latent_dim"] for r in (gan, vae)}

    with ui.mlflow_ui(mlflow_store, tmp_path / "mlruns") as base, ui.chromium() as browser:
        # the experiment's runs table: both training runs and their evaluations by name
        ui.show(browser, ui.experiment_url(base, exp_id), [*names.values(), f"eval-{names[vae]}"],
                screenshot=shots / "experiment.png")
        # the compare view of the two models: params, the eval.* summary metrics, the tags
        text = ui.show(browser, ui.compare_url(base, exp_id, [gan, vae]),
                       ["model.latent_dim", "eval.score", "eval.copy_rate", "val.dark_fraction", *names.values()],
                       screenshot=shots / "compare.png")
        assert all(v in text for v in latent_dims.values())
        score = mlflow.MlflowClient().get_run(vae).data.metrics["eval.score"]
        assert f"{score:.3g}"[:4] in text  # the value itself, as the UI rounds it
        # the evaluate run's artifacts: the sample grid pgen logged is displayed as an image
        ui.show(browser, ui.run_url(base, exp_id, ev.run_id) + "/artifacts/samples.png", ["samples.png", "report.json", "plots"],
                screenshot=shots / "samples.png")
        widths = browser.execute_script("return Array.from(document.querySelectorAll('img')).map(i => i.naturalWidth)")
        assert any(w > 100 for w in widths), f"no sample image rendered: {widths}"
    assert (shots / "compare.png").stat().st_size > 10_000
