"""Crash safety: a training process killed with SIGKILL mid-epoch resumes to the same weights as an
uninterrupted run; a corrupt last.pt falls back to the checkpoint before it; stale RUNNING runs are closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from pgen import tracking, train
from pgen.cli import app
from pgen.errors import PgenError

SETTINGS = {"train.epochs": 2, "train.batch_size": 16, "train.log_every": 2, "train.samples": 4, "train.log_model": False,
            "model.hidden": "32", "model.latent_dim": 4, "train.checkpoint_every": 2}
runner = CliRunner()


def final_weights(run_id: str) -> dict[str, torch.Tensor]:
    return tracking.load_checkpoint(run_id, "last.pt")["state"]["nets"]["vae"]


def killed_mid_epoch(data: Path, kill_at_step: int) -> str:
    """Train in a child process that SIGKILLs itself after step ``kill_at_step`` (no handler, no cleanup runs)."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from pgen import train
        def on_step(state, epoch, batch):
            if state.step == {kill_at_step}:
                print("killing at epoch", epoch, "batch", batch, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        train.run("vae", overrides={{"data.path": {str(data)!r}, **{SETTINGS!r}}}, on_step=on_step, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "killing at epoch 1 batch" in proc.stdout  # in the second epoch, mid-way
    (run,) = mlflow.MlflowClient().search_runs(["0"], "attributes.status = 'RUNNING'")
    return run.info.run_id


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_dataset, mlflow_store):
    reference = train.run("vae", overrides={"data.path": str(tiny_dataset), **SETTINGS}, progress=False)
    run_id = killed_mid_epoch(tiny_dataset, kill_at_step=9)  # 6 steps per epoch: step 9 is batch 3 of epoch 2
    ckpt = tracking.load_checkpoint(run_id, "last.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)  # the step-8 checkpoint (--checkpoint-every 2), mid-epoch
    assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"  # the dead process never ended it

    result = runner.invoke(app, ["train", "vae", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert "was left RUNNING by process" in result.output and "marked KILLED" in result.output
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "pgen.stale" in run.data.tags
    a, b = final_weights(reference.run_id), final_weights(run_id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_run_whose_process_is_alive(tiny_dataset, mlflow_store):
    done = train.run("vae", overrides={"data.path": str(tiny_dataset), **SETTINGS}, progress=False)
    client = mlflow.MlflowClient()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        client.update_run(done.run_id, status="RUNNING")
        client.set_tag(done.run_id, "pgen.pid", str(sleeper.pid))  # as if that process were training it here
        with pytest.raises(PgenError, match=f"still being trained by process {sleeper.pid}"):
            train.run("vae", resume=done.run_id, overrides={"train.epochs": 3})
    finally:
        sleeper.kill()
        sleeper.wait()
    assert client.get_run(done.run_id).info.status == "RUNNING"  # refused: left as it was


def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(tiny_dataset, mlflow_store, capsys):
    done = train.run("vae", overrides={"data.path": str(tiny_dataset), **SETTINGS}, progress=False)
    folder = Path("mlruns") / "0" / done.run_id / "artifacts" / "checkpoints"
    before = tracking.load_checkpoint(done.run_id, "previous.pt")
    assert (before["epoch"], before["batch"]) == (1, 6)  # the step-12 mid-epoch checkpoint before the epoch-end one
    (folder / "last.pt").write_bytes(b"half a checkpoint")  # e.g. a disk that filled up under another tool
    resumed = train.run("vae", resume=done.run_id, overrides={"train.epochs": 3}, progress=False)
    assert resumed.status == "FINISHED" and resumed.epoch == 3
    assert "resuming from the checkpoint before it (epoch 1, batch 6)" in capsys.readouterr().err
