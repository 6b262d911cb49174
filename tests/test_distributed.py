"""DistributedDataParallel under torchrun: 2 gloo processes on the CPU follow the single-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
import torch

from pgen import tracking, train

FLAGS = {
    "vae": ["--hidden", "32", "--latent-dim", "4"],
    "gan": ["--n-layers", "2", "--hidden-width", "32", "--latent-dim", "8", "--d-dropout", "0.2"],  # R1 on by default
}
OVERRIDES = {
    "vae": {"model.hidden": "32", "model.latent_dim": 4},
    "gan": {"model.n_layers": 2, "model.hidden_width": 32, "model.latent_dim": 8, "model.d_dropout": 0.2},
}


def torchrun(*args: str, procs: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", "pgen", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def nets(run_id: str) -> dict[str, dict[str, torch.Tensor]]:
    return tracking.load_checkpoint(run_id, "last.pt")["state"]["nets"]


def assert_same_weights(a: str, b: str) -> None:
    wa, wb = nets(a), nets(b)
    assert wa.keys() == wb.keys()
    for net in wa:
        for k in wa[net]:
            torch.testing.assert_close(wa[net][k], wb[net][k], rtol=1e-4, atol=1e-5, msg=f"{net}.{k}")


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_two_gloo_processes_match_one_process(family, tiny_dataset, mlflow_store):
    single = train.run(family, overrides={"data.path": str(tiny_dataset), "train.epochs": 2, "train.batch_size": 16,
                                          "train.log_model": False, **OVERRIDES[family]}, progress=False)
    mlflow.set_experiment("ddp")
    done = torchrun("train", family, "--data", str(tiny_dataset), "--epochs", "2", "--batch-size", "16", *FLAGS[family],
                    "--experiment", "ddp")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1  # rank 1 never opened a run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert done.stdout.count("FINISHED after 2 epochs") == 1 and done.stderr.count("epoch 2/2") == 1  # rank 0 speaks
    assert_same_weights(single.run_id, run.info.run_id)
    key = "train.loss" if family == "vae" else "train.loss_d"
    h1 = sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(single.run_id, key))
    h2 = sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, key))
    assert [s for s, _ in h1] == [s for s, _ in h2]
    assert [v for _, v in h2] == pytest.approx([v for _, v in h1], rel=1e-5)  # reduced over the ranks before logging


def test_resume_under_torchrun_and_an_uneven_batch(tiny_dataset, mlflow_store):
    reference = train.run("vae", overrides={"data.path": str(tiny_dataset), "train.epochs": 3, "train.batch_size": 16,
                                            "train.log_model": False, **OVERRIDES["vae"]}, progress=False)
    mlflow.set_experiment("ddp")
    first = torchrun("train", "vae", "--data", str(tiny_dataset), "--epochs", "2", "--batch-size", "16", *FLAGS["vae"],
                     "--experiment", "ddp")
    assert first.returncode == 0, first.stdout + first.stderr
    (run,) = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("ddp").experiment_id])
    resumed = torchrun("train", "vae", "--resume", run.info.run_id, "--epochs", "3")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "FINISHED after 3 epochs" in resumed.stdout
    assert_same_weights(reference.run_id, run.info.run_id)

    bad = torchrun("train", "vae", "--data", str(tiny_dataset), "--epochs", "1", "--batch-size", "15", *FLAGS["vae"])
    assert bad.returncode != 0
    assert "error: --batch-size 15 is not divisible by the 2 processes" in bad.stderr
    # one clear line from pgen in each process; the only traceback is torchrun's own report of a failed child
    assert not [line for line in bad.stderr.splitlines() if line.strip().startswith("File ") and "/pgen/" in line]
