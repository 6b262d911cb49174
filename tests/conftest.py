"""Shared fixtures: the real reference files in ../shared/data, small real datasets, a real MLflow store."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("PGEN_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real reference files (MNIST IDX, LArCV ROOT, larcv3 HDF5)."""
    path = _shared_data()
    if path is None:
        pytest.skip("reference data folder absent: set PGEN_SHARED_DATA or place it at ../shared/data beside the repo")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Built-in datasets never touch the user's cache during tests."""
    monkeypatch.setenv("PGEN_CACHE", str(tmp_path_factory.getbasetemp() / "pgen-cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run tiny models: one torch thread is fastest, and far faster than two on shared cores
    (small ops otherwise stall on OpenMP hand-offs)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """One migrated sqlite MLflow database per session (a fresh one spends seconds migrating)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(_mlflow_template, tmp_path, monkeypatch) -> str:
    """A real, empty MLflow store for one test: sqlite database and artifact folder under tmp_path.

    Sets MLFLOW_TRACKING_URI and changes into tmp_path (so ./mlruns is the test's own).
    Returns the tracking URI.
    """
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    artifacts = tmp_path / "mlruns"
    with sqlite3.connect(db) as con:  # the default experiment's artifacts go under this test's folder
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(artifacts / "0"),))
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id="0")  # the active experiment is process-global: don't inherit one
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def sparse_images(n: int, size: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Small sparse 'track' images with a known structure: one bright line segment each."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        r0, c0 = rng.integers(size // 4, 3 * size // 4, 2)
        dr, dc = rng.normal(size=2)
        norm = np.hypot(dr, dc) + 1e-9
        for t in range(size // 2):
            r = int(round(r0 + t * dr / norm))
            c = int(round(c0 + t * dc / norm))
            if 0 <= r < size and 0 <= c < size:
                images[i, r, c] = 50 + 5 * t
    return images.astype(dtype)


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A real pgen dataset: 96 train / 32 val / 32 test sparse 16x16 images, float32 ADC-like values."""
    from pgen.data.store import write_arrays

    path = tmp_path / "tiny.h5"
    write_arrays(
        path,
        {
            "train": {"images": sparse_images(96, 16, seed=1)},
            "val": {"images": sparse_images(32, 16, seed=2)},
            "test": {"images": sparse_images(32, 16, seed=3)},
        },
        source="test",
        value_range=(0, 255),
    )
    return path
