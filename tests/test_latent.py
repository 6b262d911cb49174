"""Two-stage generation: flow / ewm / gmm on a small VAE's codes, against a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pgen import latent, train
from pgen.cli import app
from pgen.models import latent as lm

TINY_VAE = {"train.epochs": 2, "train.batch_size": 16, "train.log_every": 2, "train.samples": 16, "model.hidden": "32",
            "model.latent_dim": 4, "train.log_model": False}
SMALL = {"flow": {"depth": 2, "width": 16}, "ewm": {"depth": 2, "width": 32}, "gmm": {"k": 3}}


def tiny_vae(data: Path, **over) -> str:
    return train.run("vae", overrides={"data.path": str(data), **TINY_VAE, **over}, progress=False).run_id


def tiny_latent(vae_id: str, method: str, **kw):
    kw.setdefault("epochs", 4)
    kw.setdefault("batch_size", None if method == "gmm" else 16)
    kw.setdefault("log_model", False)
    kw.setdefault("settings", SMALL[method])
    kw["settings"] = {"lr": 3e-3, **kw["settings"]} if method != "gmm" else kw["settings"]
    return latent.run(vae_id, method, log_every=2, progress=False, **kw)


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def no_run_left_running() -> bool:
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    return all(r.info.status != "RUNNING" for r in runs)


# --------------------------------------------------------------------------- training through the loop


@pytest.mark.parametrize("method", ["flow", "ewm", "gmm"])
def test_each_method_learns_the_codes_of_a_small_vae(method, tiny_dataset, mlflow_store):
    vae_id = tiny_vae(tiny_dataset)
    result = tiny_latent(vae_id, method)
    run = client().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["pgen.kind"], tags["pgen.model"], tags["pgen.source_run"]) == ("train", f"latent-{method}", vae_id)
    losses = [m.value for m in client().get_metric_history(result.run_id, "train.loss")]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    swd = client().get_metric_history(result.run_id, "val.swd")
    assert [m.step for m in swd] == [1, 2, 3, 4]
    assert "val.nll_per_dim" in run.data.metrics if method != "ewm" else "train.transport_cost" in run.data.metrics
    grids = [f.path for f in client().list_artifacts(result.run_id, "images") if f.path.endswith(".png")]
    assert len(grids) == 4
    assert run.data.params["latent.method"] == method and run.data.params["source_run"] == vae_id
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"tiny:train", "tiny:val"}


def test_codes_are_logged_on_the_vae_run_and_reused(tiny_dataset, mlflow_store, monkeypatch):
    vae_id = tiny_vae(tiny_dataset)
    tiny_latent(vae_id, "gmm", epochs=1)
    folders = [f.path for f in client().list_artifacts(vae_id, "codes")]
    assert len(folders) == 1 and folders[0].startswith("codes/mean-")
    files = {f.path.rsplit("/", 1)[1] for f in client().list_artifacts(vae_id, folders[0])}
    assert files == {"train.npy", "val.npy"}
    stored = np.load(mlflow.artifacts.download_artifacts(run_id=vae_id, artifact_path=f"{folders[0]}/train.npy"))
    assert stored.shape == (96, 4) and stored.dtype == np.float32

    def no_encoding(*a, **k):
        raise AssertionError("codes should have been reused")

    monkeypatch.setattr(latent, "encode", no_encoding)
    tiny_latent(vae_id, "gmm", epochs=1)  # reuses them


def test_the_two_stage_pyfunc_model_samples_images(tiny_dataset, mlflow_store):
    vae_id = tiny_vae(tiny_dataset)
    result = tiny_latent(vae_id, "flow", epochs=1, log_model=True)
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/generator")
    images = model.predict(np.array([[5]]), params={"seed": 3})
    assert images.shape == (5, 16, 16) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    assert np.array_equal(images, model.predict(np.array([[5]]), params={"seed": 3}))
    assert model.predict(np.zeros((2, 4), dtype=np.float32)).shape == (2, 16, 16)


# --------------------------------------------------------------------------- the pieces, by hand


def test_ewm_assignment_picks_the_nearest_target_after_the_offset():
    y = torch.tensor([[0.0], [1.0], [3.0]])
    g = torch.tensor([[0.4], [2.1], [2.9]])
    # no potential: plainly the nearest code
    index, _ = lm.assign(g, y, torch.zeros(3), "l1")
    assert index.tolist() == [0, 2, 2]
    # psi = (0, 0.8, 0): c - psi for g = 0.4 is (0.4, -0.2, 2.6) -> 1; for 2.1, (2.1, 0.3, 0.9) -> 1; for 2.9, (2.9, 1.1, 0.1) -> 2
    psi = torch.tensor([0.0, 0.8, 0.0])
    index, values = lm.assign(g, y, psi, "l1")
    assert index.tolist() == [1, 1, 2]
    assert torch.allclose(values, torch.tensor([-0.2, 0.3, 0.1]), atol=1e-6)
    # squared L2: for g = 0.4, (0.16, 0.36 - 0.8, 6.76) -> 1
    assert lm.assign(g[:1], y, psi, "l2")[0].tolist() == [1]


def test_ewm_dual_ascent_lowers_the_potential_of_overused_targets():
    y = torch.tensor([[0.0], [1.0], [3.0]])
    g = torch.full((6, 1), 0.4)  # every generated code goes to target 0 at first
    psi = torch.zeros(3, requires_grad=True)
    lm.dual_objective(g, y, psi, "l1").backward()
    # d/dpsi_j = 1/3 - (fraction assigned to j): ascent lowers psi_0, raises the unused ones
    assert torch.allclose(psi.grad, torch.tensor([1 / 3 - 1, 1 / 3, 1 / 3]))


def test_identity_flow_has_the_standard_normal_density():
    flow = lm.RealNVP(3, depth=4, width=8)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-5)


def test_flow_density_follows_the_change_of_variables_and_inverts():
    torch.manual_seed(0)
    flow = lm.RealNVP(2, depth=3, width=8)
    for layer in flow.layers:  # leave the identity start
        torch.nn.init.normal_(layer.net[-1].weight, std=0.3)
    x = torch.randn(5, 2)
    for i in range(5):
        def forward(v):
            for layer in flow.layers:
                v, _ = layer(v)
            return v

        jac = torch.autograd.functional.jacobian(lambda v: forward(v[None])[0], x[i])
        z = forward(x[i : i + 1])
        closed = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum() + torch.slogdet(jac)[1]
        assert torch.allclose(flow.log_prob(x[i : i + 1])[0], closed, atol=1e-4)
    # sampling runs the coupling layers backwards: the round trip is the identity
    z = torch.randn(4, 2)
    v = z
    for layer in reversed(flow.layers):
        v = layer.inverse(v)
    for layer in flow.layers:
        v, _ = layer(v)
    assert torch.allclose(v, z, atol=1e-5)


def test_fitted_flow_matches_a_known_gaussian():
    rng = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    x = torch.randn(2000, 2, generator=rng) * std + mean
    flow = lm.RealNVP(2, depth=4, width=32)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (-flow.log_prob(x).mean()).backward()
        opt.step()
    entropy = float(torch.distributions.Normal(mean, std).entropy().sum())  # the best achievable mean NLL
    assert abs(float(-flow.log_prob(x).mean().detach()) - entropy) < 0.1


def test_em_recovers_a_two_component_mixture():
    rng = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 1, generator=rng) * 0.3 - 2, torch.randn(100, 1, generator=rng) * 0.3 + 2])
    for covariance in ("full", "diag"):
        gmm = lm.Mixture(1, 2, covariance)
        gmm.means.data.copy_(torch.tensor([[-0.5], [0.5]]))
        lls = [float(gmm.em_step(x)) for _ in range(30)]
        assert all(b >= a - 1e-5 for a, b in zip(lls, lls[1:]))
        assert torch.allclose(gmm.means.data.flatten(), torch.tensor([-2.0, 2.0]), atol=0.1)
        assert torch.allclose(gmm.log_weights.exp(), torch.tensor([0.75, 0.25]), atol=0.02)


def test_em_on_codes_spanning_fewer_dimensions_than_the_latent_space():
    """Inactive VAE dimensions: 16-d codes on a 2-d plane at scale 50. A fixed 1e-4 jitter left float32 covariances
    that Cholesky refused (a LinAlgError traceback); the jitter relative to the codes' variance keeps EM going."""
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=rng) @ torch.randn(2, 16, generator=rng) * 50
    gmm = lm.Mixture(16, 10)
    gmm.means.data.copy_(x[:10])
    gmm.cov.data.copy_(lm.positive_definite(torch.cov(x.T)).expand(10, 16, 16))
    lls = [float(gmm.em_step(x)) for _ in range(30)]
    assert all(math.isfinite(v) for v in lls) and lls[-1] > lls[0]
    assert bool((torch.linalg.cholesky_ex(gmm.cov.data).info == 0).all())
    assert gmm.sample(100, rng).isfinite().all()


# --------------------------------------------------------------------------- bad input


def test_bad_vae_references_fail_with_one_line_and_leave_nothing_running(tiny_dataset, mlflow_store, tmp_path):
    from conftest import sparse_images
    from pgen.data.store import write_arrays

    runner = CliRunner()
    gan_id = train.run("gan", overrides={"data.path": str(tiny_dataset), "train.epochs": 1, "train.batch_size": 16, "model.n_layers": 1,
                                         "model.hidden_width": 8, "model.latent_dim": 4, "train.log_model": False,
                                         "train.samples": 4}, progress=False).run_id
    vae_id = tiny_vae(tiny_dataset)
    other = tmp_path / "big.h5"
    write_arrays(other, {"train": {"images": sparse_images(8, 32)}, "val": {"images": sparse_images(4, 32)}}, source="t",
                 value_range=(0, 255))
    before = len(client().search_runs(["0"]))
    cases = [
        (["--vae", gan_id], "not a VAE"),
        (["--vae", vae_id, "--data", str(other)], "32x32"),
        (["--vae", vae_id, "--method", "nope"], "--method"),
        (["--vae", "nosuchexp:latest"], "no experiment"),
    ]
    for args, words in cases:
        result = runner.invoke(app, ["train", "latent", *args])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1 and words in result.output, result.output
    # a VAE run without its best checkpoint
    artifacts = Path(client().get_run(vae_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / "checkpoints" / "best.pt").unlink()
    result = runner.invoke(app, ["train", "latent", "--vae", vae_id])
    assert result.exit_code == 1 and "checkpoints/best.pt" in result.output
    assert len(client().search_runs(["0"])) == before and no_run_left_running()


def test_mlproject_train_latent_entry_point(tiny_dataset, mlflow_store, monkeypatch):
    import os
    import sys

    from pgen.tracking import client

    vae_id = tiny_vae(tiny_dataset)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    repo = Path(__file__).resolve().parents[1]
    submitted = mlflow.projects.run(str(repo), "train_latent", parameters={"vae_run": vae_id, "method": "gmm", "epochs": 3},
                                    env_manager="local", experiment_id="0")
    assert submitted.get_status() == "FINISHED"
    run = client().get_run(submitted.run_id)
    assert run.data.tags["pgen.model"] == "latent-gmm" and run.data.tags["pgen.source_run"] == vae_id
    assert "val.swd" in run.data.metrics
