"""The CLI surface: help, groups, `data info` / `data show`, and bad input as one clear line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from pgen.cli import app
from pgen.data import store

runner = CliRunner()


def test_help_lists_command_groups():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "train", "deploy", "evaluate", "compare", "tune"):
        assert group in result.output


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from pgen.cli import app; bad = [m for m in ('torch', 'mlflow', 'optuna', 'matplotlib', 'h5py') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "pgen", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("pgen ")


def test_info_prints_splits_and_occupancy(tiny_dataset):
    result = runner.invoke(app, ["data", "info", str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    assert "train       96 x 16x16 float32" in result.output
    assert "val         32 x 16x16 float32" in result.output
    assert "occupancy mean" in result.output
    result = runner.invoke(app, ["data", "info", str(tiny_dataset), "--json"])
    import json

    info = json.loads(result.output)
    assert info["splits"]["test"]["n"] == 32


def test_show_writes_an_event_display_grid(tiny_dataset, tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["data", "show", str(tiny_dataset), "--out", str(out), "--n", "9", "--split", "val"])
    assert result.exit_code == 0, result.output
    rgb = imread(out)
    # 3x3 tiles of 16 px enlarged 8x to 128 px, 2 px borders
    assert rgb.shape[:2] == (3 * 130 + 2, 3 * 130 + 2)
    # dark background: most pixels of a sparse event display are black
    assert (rgb[..., :3].sum(axis=-1) == 0).mean() > 0.7


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "info", "missing.h5"], "missing.h5: no such file"),
        (["data", "show", "missing.h5", "--out", "g.png"], "missing.h5: no such file"),
        (["data", "show", "{data}", "--split", "nope", "--out", "g.png"], "no split 'nope'"),
        (["data", "show", "{data}", "--n", "0", "--out", "g.png"], "--n must be at least 1"),
        (["data", "show", "{data}", "--out", "nofolder/g.png"], "does not exist"),
        (["data", "info", "{notpgen}"], "not a pgen dataset"),
        (["data", "info", "{garbage}"], "not a readable HDF5 file"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path, tiny_dataset, monkeypatch):
    import h5py

    monkeypatch.chdir(tmp_path)
    h5py.File(tmp_path / "other.h5", "w").close()
    (tmp_path / "garbage.h5").write_bytes(b"\x00" * 100)
    args = [a.format(data=tiny_dataset, notpgen=tmp_path / "other.h5", garbage=tmp_path / "garbage.h5") for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


def test_show_on_uint8_and_multichannel(tmp_path):
    rng = np.random.default_rng(0)
    store.write_arrays(
        tmp_path / "d.h5",
        {"train": {"images": rng.integers(0, 255, (4, 3, 8, 8), dtype=np.uint8)}},
        source="t",
        value_range=(0, 255),
    )
    out = tmp_path / "g.png"
    result = runner.invoke(app, ["data", "show", str(tmp_path / "d.h5"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()
