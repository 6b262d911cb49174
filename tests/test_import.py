"""`pgen data import` on the real reference files in ../shared/data (LArCV ROOT, larcv3 HDF5),
PNG / NPY round trips, the preprocessing rules, event splits, and every kind of bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pgen.cli import app
from pgen.data import imports, larcv
from pgen.data.crop import crop_around_charge
from pgen.data.store import read_split

runner = CliRunner()


@pytest.fixture
def larcv_dir(shared_data):
    return shared_data / "larcv"


@pytest.fixture
def larcv3_dir(shared_data):
    return shared_data / "larcv3"


def run(*args, ok=True):
    result = runner.invoke(app, ["data", "import", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def attrs(path):
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def fails(result, *words, out=None):
    """Bad input: exit 1, one 'error:' line naming the problem, no output file or temporary left."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for w in words:
        assert w in errors[0], errors[0]
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return errors[0]


def stats(x):
    return int((x != 0).sum()), float(x.sum(dtype=np.float64))


# --------------------------------------------------------------------------- readers: the README's reference figures


def test_larcv_root_readers_match_the_reference_figures(larcv_dir):
    def events(name, n):
        table = larcv.root_scan(larcv_dir / name)
        return table, list(larcv.root_events(larcv_dir / name, table.name, 0, n))

    table, ev = events("electron.root", 2)
    assert (table.name, table.n_events, table.planes) == ("image2d_data_tree", 10, 3)
    assert [x.shape for x in ev[0]] == [(256, 256)] * 3 and ev[0][0].dtype == np.float32
    assert [stats(x)[0] for x in ev[0]] == [269, 205, 238]
    assert stats(ev[0][0])[1] == pytest.approx(28377.5, abs=0.1)
    assert stats(ev[1][0]) == (636, pytest.approx(60950.9, abs=0.1))

    table, ev = events("proton.root", 7)
    assert table.n_events == 10
    assert stats(ev[0][0]) == (54, pytest.approx(12053.1, abs=0.1)) and ev[0][0].max() == pytest.approx(2400.0)
    assert stats(ev[6][0])[0] == 44 and ev[6][0].max() == pytest.approx(2840.2, abs=0.05)

    table, ev = events("example_larcv.root", 1)
    assert (table.name, table.n_events) == ("image2d_wire_tree", 5)
    assert [x.shape for x in ev[0]] == [(512, 512)] * 3
    # the README's "nz" for this file counts positive pixels; induction planes are bipolar
    assert [int((x > 0).sum()) for x in ev[0]] == [34606, 38914, 7172]
    assert [stats(x)[1] for x in ev[0]] == [pytest.approx(s, abs=0.1) for s in (5493.5, -8066.0, 6245.4)]
    assert ev[0][1].min() < 0


def test_larcv3_readers_match_the_reference_figures(larcv3_dir):
    table = larcv.larcv3_scan(larcv3_dir / "image2d.h5")
    assert (table.name, table.n_events) == ("image2d_test_group", 4)
    ev = next(larcv.larcv3_events(larcv3_dir / "image2d.h5", table.name, 0, 1))
    assert [x.shape for x in ev] == [(40, 60), (41, 59), (42, 58)]
    assert [float(x.sum(dtype=np.float64)) for x in ev] == [pytest.approx(s, abs=1e-3) for s in (1192.116, 1211.581, 1205.824)]

    table = larcv.larcv3_scan(larcv3_dir / "sparse2d.h5")
    assert (table.name, table.n_events) == ("sparse2d_test_group", 5)
    ev = list(larcv.larcv3_events(larcv3_dir / "sparse2d.h5", table.name, 0, 5))
    assert len(ev) == 5 and [x.shape for x in ev[0]] == [(128, 128)] * 3
    assert [stats(x)[0] for x in ev[0]] == [48, 36, 38]
    assert [stats(x)[1] for x in ev[0]] == [pytest.approx(s, abs=1e-3) for s in (5378.138, 241.852, 207.729)]


def test_image_branches_generalise_to_larcv1_style_meta_names():
    larcv2 = ["b/_image_v/_image_v._img", "b/_image_v/_image_v._meta._p1.x", "b/_image_v/_image_v._meta._col_count", "b/_image_v/_image_v._meta._row_count"]
    assert larcv.image_branches(larcv2) == (larcv2[0], larcv2[3], larcv2[2])
    larcv1 = ["b/_image_v._img", "b/_image_v._meta._origin.x", "b/_image_v._meta._width", "b/_image_v._meta._rows", "b/_image_v._meta._cols", "b/_image_v._meta._plane"]
    assert larcv.image_branches(larcv1) == (larcv1[0], larcv1[3], larcv1[4])
    with pytest.raises(larcv.LayoutError, match="_img"):
        larcv.image_branches(["b/_cluster_v._voxel_vv"])


# --------------------------------------------------------------------------- the command on real files


def test_import_root_files_counts_shapes_and_values(larcv_dir, tmp_path):
    out = tmp_path / "ep.h5"
    result = run(larcv_dir / "electron.root", larcv_dir / "proton.root", "--out", out, "--val-fraction", "0", "--test-fraction", "0", "--workers", "1")
    assert "train       60 x 256x256 float32" in result.output
    with h5py.File(out, "r") as f:
        images, events, planes = f["train/images"], f["train/event"][:], f["train/plane"][:]
        assert list(events) == [e for e in range(20) for _ in range(3)] and list(planes) == [0, 1, 2] * 20
        assert [stats(images[i])[0] for i in range(3)] == [269, 205, 238]
        assert stats(images[30]) == (54, pytest.approx(12053.1, abs=0.1))  # proton event 0, plane 0
        assert set(f) == {"train"}
    a = attrs(out)
    assert (a["import_events_read"], a["import_images_read"], a["import_images_written"], a["import_files_read"]) == (20, 60, 60, 2)
    assert tuple(a["value_range"]) == pytest.approx((0.0, 2840.2), abs=0.05)  # keep: data max observed
    info = runner.invoke(app, ["data", "info", str(out)])
    assert "import: 20 events from 2 files (larcv-root), 60 images read, 60 written" in info.output
    assert "dropped: empty 0, occupancy 0, overlap 0" in info.output


def test_collection_plane_crops_and_the_occupancy_rule(larcv_dir, tmp_path):
    out = tmp_path / "crops.h5"
    run(larcv_dir / "proton.root", "--out", out, "--plane", "2", "--crop", "64", "--min-occupancy", "0.005", "--workers", "1")
    # the rule by hand: a 64x64 window keeps a proton when >= 0.5% (21 pixels) are non-zero
    table = larcv.root_scan(larcv_dir / "proton.root")
    expected = sum(
        np.count_nonzero(crop_around_charge(ev[2], 64)[0]) >= 0.005 * 64 * 64
        for ev in larcv.root_events(larcv_dir / "proton.root", table.name, 0, 10)
    )
    a = attrs(out)
    assert 0 < expected < 10
    assert (a["import_images_read"], a["import_images_written"], a["import_dropped_occupancy"]) == (10, expected, 10 - expected)
    assert a["import_crop"] == 64 and a["import_plane"] == 2 and a["import_min_occupancy"] == 0.005
    n = sum(len(read_split(out, s)["images"]) for s in ("train", "val", "test"))
    assert n == expected


def test_crop_keeps_the_centre_of_charge_at_the_window_centre(larcv_dir):
    table = larcv.root_scan(larcv_dir / "electron.root")
    for ev in larcv.root_events(larcv_dir / "electron.root", table.name, 0, 4):
        x = ev[2]
        crop, (r0, c0) = crop_around_charge(x, 64)
        assert crop.shape == (64, 64) and np.array_equal(crop, x[r0 : r0 + 64, c0 : c0 + 64])
        w = x.astype(np.float64)
        rc = (w.sum(1) @ np.arange(256)) / w.sum()
        cc = (w.sum(0) @ np.arange(256)) / w.sum()
        if 32 <= rc <= 224 and 32 <= cc <= 224:  # away from the edges: not clamped
            assert abs(rc - r0 - 31.5) <= 0.5 and abs(cc - c0 - 31.5) <= 0.5
    corner = np.zeros((100, 100), np.float32)
    corner[1, 2] = 5
    assert crop_around_charge(corner, 32)[1] == (0, 0)  # clamped inside the image
    corner[:] = 0
    corner[99, 98] = 5
    assert crop_around_charge(corner, 32)[1] == (68, 68)


def test_threshold_zeroes_values_below_it_including_negatives(larcv_dir, tmp_path):
    out = tmp_path / "wire.h5"
    run(larcv_dir / "example_larcv.root", "--out", out, "--plane", "1", "--threshold", "10", "--val-fraction", "0", "--test-fraction", "0", "--workers", "1")
    x = read_split(out, "train")["images"][0]
    raw = next(larcv.root_events(larcv_dir / "example_larcv.root", "image2d_wire_tree", 0, 1))[1]
    assert x.min() == 0 and np.all((x == 0) | (x >= 10))
    assert np.array_equal(x, np.where(raw < 10, 0, raw))
    assert attrs(out)["import_threshold"] == 10


def test_several_crops_around_the_largest_clusters(larcv_dir):
    ev = next(larcv.root_events(larcv_dir / "electron.root", "image2d_data_tree", 1, 2))
    windows, overlapping = imports.cluster_crops(ev[2], 32, 3)
    assert 1 <= len(windows) <= 3 and all(w.shape == (32, 32) for w, _ in windows)
    assert len({o for _, o in windows}) == len(windows)
    kept, counts = imports.prepare(ev[2], imports.Settings(crop=32, max_crops=3, min_occupancy=0), False, "e")
    assert len(kept) == len(windows) and counts["dropped_overlap"] == overlapping


def test_scale_clip_maps_to_uint8(larcv_dir, tmp_path):
    out = tmp_path / "clip.h5"
    run(larcv_dir / "electron.root", "--out", out, "--plane", "0", "--scale", "clip", "--clip-max", "100", "--val-fraction", "0", "--test-fraction", "0", "--workers", "1")
    x = read_split(out, "train")["images"][0]
    raw = next(larcv.root_events(larcv_dir / "electron.root", "image2d_data_tree", 0, 1))[0]
    assert x.dtype == np.uint8 and tuple(attrs(out)["value_range"]) == (0, 255)
    assert np.array_equal(x, np.floor(np.clip(raw, 0, 100) * 2.55 + 0.5).astype(np.uint8))


def test_larcv3_dense_and_sparse_import(larcv3_dir, tmp_path):
    for plane, shape, total in ((0, (40, 60), 1192.116), (2, (42, 58), 1205.824)):
        out = tmp_path / f"dense{plane}.h5"
        run(larcv3_dir / "image2d.h5", "--out", out, "--plane", plane, "--val-fraction", "0", "--test-fraction", "0")
        x = read_split(out, "train")["images"]
        assert x.shape == (4, *shape) and float(x[0].sum(dtype=np.float64)) == pytest.approx(total, abs=1e-3)
    out = tmp_path / "sparse.h5"
    run(larcv3_dir / "sparse2d.h5", "--out", out, "--val-fraction", "0", "--test-fraction", "0")
    x = read_split(out, "train")["images"]
    assert x.shape == (15, 128, 128) and [stats(x[i])[0] for i in range(3)] == [48, 36, 38]


def test_split_is_by_event_deterministic_and_the_same_with_workers(larcv_dir, tmp_path):
    files = [larcv_dir / "electron.root", larcv_dir / "proton.root"]
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    run(*files, "--out", a, "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "3", "--workers", "1")
    run(*files, "--out", b, "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "3", "--workers", "2")
    run(*files, "--out", c, "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "4", "--workers", "1")
    seen = {}
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb, h5py.File(c, "r") as fc:
        for split in ("train", "val", "test"):
            events = fa[f"{split}/event"][:]
            assert np.array_equal(events, fb[f"{split}/event"][:]) and np.array_equal(fa[f"{split}/images"][:], fb[f"{split}/images"][:])
            for e in set(events.tolist()):
                assert e not in seen and (events == e).sum() == 3  # all planes of an event in one split
                seen[e] = split
        assert sorted(seen) == list(range(20)) and list(seen.values()).count("val") == 4
        assert any(not np.array_equal(fa[f"{s}/event"][:], fc[f"{s}/event"][:]) for s in ("train", "val", "test"))


def test_minmax_scales_each_image_by_its_own_maximum():
    x = np.array([[0, -3, 50], [100, 25, 0]], np.float32)
    y = imports.scale(x, imports.Settings(scale="minmax"), False)
    assert y.dtype == np.uint8 and y.tolist() == [[0, 0, 128], [255, 64, 0]]


# --------------------------------------------------------------------------- PNG and NPY


def test_png_folder_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, x in enumerate(images):
        Image.fromarray(x, mode="L").save(folder / f"img_{i:03d}.png")
    out = tmp_path / "png.h5"
    run(folder, "--out", out, "--val-fraction", "0", "--test-fraction", "0")
    back = read_split(out, "train")["images"]
    assert back.dtype == np.uint8 and np.array_equal(back, images)
    assert tuple(attrs(out)["value_range"]) == (0, 255)


def test_npy_and_npz_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(size=(7, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "npy.h5"
    run(tmp_path / "x.npy", "--out", out, "--val-fraction", "0", "--test-fraction", "0")
    assert np.array_equal(read_split(out, "train")["images"], x)
    planes = np.random.default_rng(2).random((5, 2, 16, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "p.npz", images=planes, labels=np.arange(5))
    out = tmp_path / "npz.h5"
    run(tmp_path / "p.npz", "--out", out, "--plane", "1", "--val-fraction", "0", "--test-fraction", "0")
    assert np.array_equal(read_split(out, "train")["images"], planes[:, 1])
    renamed = tmp_path / "p.data"  # content decides, not the name; --format forces
    renamed.write_bytes((tmp_path / "p.npz").read_bytes())
    run(renamed, "--out", out, "--format", "npy", "--plane", "0", "--val-fraction", "0", "--test-fraction", "0")
    assert np.array_equal(read_split(out, "train")["images"], planes[:, 0])


# --------------------------------------------------------------------------- bad input


def damaged(src, tmp_path, how):
    data = bytearray(src.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # corrupt the middle of the file (compressed baskets / chunks)
        mid = len(data) // 2
        data[mid : mid + 4096] = bytes(b ^ 0x5A for b in data[mid : mid + 4096])
    path = tmp_path / f"{how}_{src.name}"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_root_and_hdf5_files(larcv_dir, larcv3_dir, tmp_path, how):
    out = tmp_path / "out.h5"
    for src in (larcv_dir / "electron.root", larcv3_dir / "image2d.h5"):
        bad = damaged(src, tmp_path, how)
        fails(run(bad, "--out", out, "--plane", "0", "--workers", "1", ok=False), str(bad), "truncated or corrupt", out=out)


def test_root_files_without_image2d_trees(larcv_dir, tmp_path):
    import uproot

    other, clusters, several = tmp_path / "other.root", tmp_path / "clusters.root", tmp_path / "several.root"
    def root_file(path, *trees):
        with uproot.recreate(path) as f:
            for name in trees:
                f.mktree(name, {"x": np.int32}).extend({"x": np.arange(3, dtype=np.int32)})

    root_file(other, "particle_mcst_tree")
    root_file(clusters, "cluster2d_mcst_tree", "cluster2d_keypt_tree")
    root_file(several, "image2d_wire_tree", "image2d_segment_tree")
    out = tmp_path / "out.h5"
    fails(run(other, "--out", out, ok=False), str(other), "no image2d_<producer>_tree", "particle_mcst_tree", out=out)
    fails(run(clusters, "--out", out, ok=False), "only cluster2d", "cluster2d_keypt_tree", "memberwise", out=out)
    fails(run(several, "--out", out, ok=False), "segment, wire", "--producer", out=out)
    fails(run(larcv_dir / "example_larcv.root", "--producer", "keypt", "--out", out, ok=False), "cluster2d", "memberwise", "wire", out=out)


def test_larcv3_cluster2d_only_file(larcv3_dir, tmp_path):
    out = tmp_path / "out.h5"
    fails(run(larcv3_dir / "cluster2d.h5", "--out", out, ok=False), "cluster2d.h5", "only cluster2d", out=out)


def test_plane_that_does_not_exist(larcv_dir, tmp_path):
    out = tmp_path / "out.h5"
    fails(run(larcv_dir / "electron.root", "--plane", "3", "--out", out, ok=False), "electron.root", "--plane 3 does not exist", out=out)


def test_pngs_of_mixed_sizes(tmp_path):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.full((28, 28), 9, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((32, 28), 9, np.uint8)).save(folder / "b.png")
    out = tmp_path / "out.h5"
    fails(run(folder, "--out", out, "--val-fraction", "0", "--test-fraction", "0", ok=False), "b.png", "32x28", "28x28", "mixed sizes", out=out)


def test_empty_result_says_what_each_rule_dropped(larcv_dir, tmp_path):
    out = tmp_path / "out.h5"
    line = fails(run(larcv_dir / "proton.root", "--plane", "2", "--crop", "64", "--min-occupancy", "0.5", "--out", out, ok=False), out=out)
    assert "no images left after filtering" in line and "10 below --min-occupancy 0.5" in line
    line = fails(run(larcv_dir / "proton.root", "--plane", "2", "--threshold", "1e6", "--out", out, ok=False), out=out)
    assert "10 with no charge above --threshold 1e+06" in line


def test_skip_bad_skips_unreadable_files_with_a_warning(larcv_dir, tmp_path):
    bad = damaged(larcv_dir / "electron.root", tmp_path, "truncated")
    junk = tmp_path / "notes.root"
    junk.write_text("not a detector file")
    out = tmp_path / "out.h5"
    fails(run(larcv_dir / "proton.root", bad, "--out", out, ok=False), str(bad), out=out)
    result = run(larcv_dir / "proton.root", bad, junk, larcv_dir / "electron.root", "--out", out, "--skip-bad", "--workers", "1")
    assert result.output.count("warning: skipping") == 2 and str(bad) in result.output
    a = attrs(out)
    assert (a["import_files_read"], a["import_files_skipped"], a["import_events_read"]) == (2, 2, 20)
    assert "skipped 2 unreadable files" in runner.invoke(app, ["data", "info", str(out)]).output


def test_unrecognised_file_and_bad_options(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    out = tmp_path / "out.h5"
    fails(run(junk, "--out", out, ok=False), "notes.txt", "unrecognised content", "--format", out=out)
    fails(run(junk, "--out", out, "--scale", "clip", ok=False), "--clip-max", out=out)
    fails(run(junk, "--out", out, "--max-crops-per-image", "3", ok=False), "--crop", out=out)
