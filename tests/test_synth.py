"""The synthetic LArTPC generator: determinism, file layout, physics sanity, CLI and bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pgen.cli import app
from pgen.data import particles, synth
from pgen.data.store import attrs_of
from pgen.errors import PgenError

runner = CliRunner()
IN_PLANE = (1.0, 0.0, 1.0)  # drift and beam axes: the whole track shows on the collection plane


def _write(path, **kw):
    args = dict(events=40, size=128, crop=64, seed=7, workers=1, val_fraction=0.1, test_fraction=0.2)
    args.update(kw)
    return synth.generate(path, **args)


def _read(path):
    with h5py.File(path, "r") as f:
        return {f"{s}/{k}": f[s][k][:] for s in ("train", "val", "test") for k in ("images", "segmentation", "particles", "vertex")}


# --------------------------------------------------------------------------- files


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    one = _read(_write(tmp_path / "one.h5", events=80, workers=1))
    two = _read(_write(tmp_path / "two.h5", events=80, workers=2))  # 3 chunks over 2 processes
    assert one.keys() == two.keys()
    for key in one:
        assert one[key].tobytes() == two[key].tobytes(), key
    other = _read(_write(tmp_path / "other.h5", events=80, seed=8))
    assert other["train/images"].tobytes() != one["train/images"].tobytes()


def test_event_i_of_a_file_is_lartpc_event_seed_i(tmp_path):
    data = _read(_write(tmp_path / "d.h5", events=40))
    # train holds events 0..27, val 28..31, test 32..39
    for split, first, i in (("train", 0, 5), ("val", 28, 30), ("test", 32, 39)):
        ev = synth.lartpc_event([7, i], size=128, crop=64)
        np.testing.assert_array_equal(data[f"{split}/images"][i - first], ev.image)
        np.testing.assert_array_equal(data[f"{split}/segmentation"][i - first], ev.segmentation)
        np.testing.assert_array_equal(data[f"{split}/particles"][i - first], ev.counts())


def test_split_sizes_layout_and_attributes(tmp_path):
    seen = []
    path = _write(tmp_path / "d.h5", events=37, val_fraction=0.1, test_fraction=0.2, progress=seen.append)
    assert sum(seen) == 37
    with h5py.File(path, "r") as f:
        sizes = {s: len(f[s]["images"]) for s in ("train", "val", "test")}
        assert sizes == {"train": 26, "val": 4, "test": 7}
        for s, n in sizes.items():
            images, seg = f[s]["images"][:], f[s]["segmentation"][:]
            assert images.shape == (n, 64, 64) and images.dtype == np.float32
            assert seg.shape == images.shape and seg.dtype == np.uint8 and seg.max() <= 4
            assert np.array_equal(images, np.rint(images))  # ADC counts
            assert ((seg > 0) <= (images > 0)).all()  # labels only where there is charge
            assert f[s]["particles"].shape == (n, 7) and f[s]["vertex"].shape == (n, 2)
            assert f[s]["particles"].attrs["columns"] == ",".join(synth.COLUMNS)
        attrs = attrs_of(f)
    assert attrs["value_range"] == [0.0, synth.SATURATION]
    assert images.max() <= synth.SATURATION
    assert attrs["size"] == 128 and attrs["crop"] == 64 and attrs["seed"] == 7 and attrs["pitch_cm"] == 0.3
    assert attrs["segmentation_classes"] == ["background", "track", "shower", "michel", "delta"]
    assert attrs["particle_columns"] == list(synth.COLUMNS)


def test_crop_is_a_window_of_the_full_event_around_its_charge():
    for i in range(5):
        full = synth.lartpc_event([3, i], size=256)
        cut = synth.lartpc_event([3, i], size=256, crop=64)
        r, c = cut.origin
        np.testing.assert_array_equal(cut.image, full.image[r : r + 64, c : c + 64])
        np.testing.assert_array_equal(cut.segmentation, full.segmentation[r : r + 64, c : c + 64])
        assert cut.image.sum() > 0
    # a compact event (one 100 MeV proton: 8 cm, 25 pixels) lies wholly inside its crop
    for i in range(3):
        full = synth.lartpc_event([4, i], size=256, rain=0, primaries=[("proton", 100.0)])
        cut = synth.lartpc_event([4, i], size=256, rain=0, primaries=[("proton", 100.0)], crop=64)
        assert cut.image.sum() >= 0.99 * full.image.sum()


def test_plane_angle_changes_the_view():
    a = synth.lartpc_event([1, 2], plane_angle=0.0)
    b = synth.lartpc_event([1, 2], plane_angle=60.0)
    c = synth.lartpc_event([1, 2], plane_angle=90.0)
    assert not np.array_equal(a.image, b.image) and c.image.sum() > 0


# --------------------------------------------------------------------------- physics


def _profile(ev, particle, bins=10):
    """Charge per unit length along a straight-ish track, from its start to its end."""
    s, e = np.array(particle.start), np.array(particle.end)
    length = np.linalg.norm(e - s)
    r, c = np.nonzero(ev.image)
    t = (np.stack([r + 0.5, c + 0.5], 1) - s) @ ((e - s) / length) / length
    h, _ = np.histogram(t, bins=bins, range=(0, 1), weights=ev.image[r, c])
    return h / h.mean()


def test_stopping_proton_has_a_bragg_peak():
    for i in range(3):
        ev = synth.lartpc_event([11, i], rain=0, primaries=[("proton", 200.0, IN_PLANE)], noise=False)
        proton = ev.particles[0]
        assert proton.kind == "proton" and proton.stopped
        assert 20 / 0.3 < np.linalg.norm(np.subtract(proton.end, proton.start)) < 26 / 0.3  # ~24 cm range
        q = _profile(ev, proton)
        assert q[-1] > 2.0 * q[:5].mean()  # the last tenth: well above the start
        assert q[-1] > q[-2] > q[-4] > q[:3].mean()  # and rising towards the end


def test_minimum_ionising_track_gives_about_2_MeV_per_cm():
    ev = synth.lartpc_event([12, 0], rain=0, primaries=[("muon", 2000.0, (0.0, 0.0, 1.0))], noise=False)
    # a horizontal muon along the columns: the charge per column is dE/dx x pitch x gain
    per_column = ev.image.sum(axis=0)
    middle = per_column[64:192]
    mev_per_cm = np.median(middle) / synth.ADC_PER_MEV / 0.3
    assert 1.8 < mev_per_cm < 2.6


def test_range_energy_power_law():
    assert particles.csda_range(100.0, particles.MP) == pytest.approx(7.4, rel=0.1)  # PSTAR-like
    assert particles.csda_range(200.0, particles.MP) == pytest.approx(24.5, rel=0.1)
    assert particles.csda_range(1000.0, particles.MMU) == pytest.approx(450, rel=0.1)  # 4.3 m
    t = np.linspace(1, 800, 50)
    back = particles.kinetic_energy([particles.csda_range(x, particles.MPI) for x in t], particles.MPI)
    np.testing.assert_allclose(back, t, rtol=1e-9)


def test_shower_lights_more_pixels_and_branches_than_a_track_of_the_same_energy():
    from scipy import ndimage

    def stats(kind, energy):
        pixels, branches, pieces = [], [], []
        for i in range(6):
            ev = synth.lartpc_event([13, i], rain=0, primaries=[(kind, energy)], noise=False)
            pixels.append((ev.image > 0).sum())
            branches.append(sum(p.branches for p in ev.particles))
            pieces.append(ndimage.label(ev.image > 0, structure=np.ones((3, 3)))[1])
        return np.mean(pixels), np.mean(branches), np.mean(pieces)

    shower, proton, muon = stats("electron", 200.0), stats("proton", 200.0), stats("muon", 200.0)
    # pixels: a 200 MeV proton stops in 25 cm; a 200 MeV muon (80 cm of minimum-ionising track)
    # lights about as many pixels as the shower, since both deposit the energy along ~90 cm in all
    assert shower[0] > 1.5 * proton[0], (shower, proton)
    for track in (proton, muon):
        assert shower[1] > 3 * track[1], (shower, track)  # branches: electron tracks followed
        assert shower[2] > 5 * track[2], (shower, track)  # separate pieces in the image


def test_photons_convert_after_a_gap():
    gaps = []
    for i in range(40):
        ev = synth.lartpc_event([14, i], size=512, rain=0, primaries=[("photon", 300.0)], noise=False)
        r, c = np.nonzero(ev.image)
        if len(r):
            gaps.append(np.hypot(r - ev.vertex[0], c - ev.vertex[1]).min() * 0.3)
    # exponential, mean 18 cm in 3D (less in projection): no charge at the vertex, several cm away
    assert np.median(gaps) > 4 and np.mean(gaps) < 25


def test_stopping_muons_get_a_michel_electron_labelled_3():
    for i in range(6):
        ev = synth.lartpc_event([15, i], rain=0, primaries=[("muon", 120.0)])  # ~50 cm: stops inside
        muon = ev.particles[0]
        assert muon.stopped
        michels = [p for p in ev.particles if p.kind == "michel"]
        assert len(michels) == 1 and michels[0].parent == 0
        rows, cols = np.nonzero(ev.segmentation == synth.CLASSES.index("michel"))
        assert len(rows) >= 3
        # the Michel starts where the muon stops (the muon's Bragg peak outshines its first pixels)
        assert np.hypot(rows - muon.end[0], cols - muon.end[1]).min() < 6
    leaving = synth.lartpc_event([15, 0], rain=0, primaries=[("muon", 3000.0)])
    assert not leaving.particles[0].stopped
    assert not any(p.kind == "michel" for p in leaving.particles)


def test_occupancy_like_real_events_at_256():
    occ = np.array([(synth.lartpc_event([0, i], size=256).image > 0).mean() for i in range(500)])
    inside = (occ >= 0.0005) & (occ <= 0.03)
    # real files: 0.01-0.1% for single protons, 0.3-1% for single electrons; neutrino events more
    assert inside.mean() >= 0.95, np.percentile(occ, [1, 5, 50, 95, 99])
    assert 0.003 < occ.mean() < 0.02
    assert (occ > 0).all()


def test_pixel_values_in_the_ballpark_of_real_files(shared_data):
    import uproot

    def real(name):
        tree = uproot.open(shared_data / "larcv" / f"{name}.root")["image2d_data_tree"]
        imgs = tree["image2d_data_branch/_image_v/_image_v._img"].array(library="np")
        return [np.asarray(v[2]) for v in imgs]

    rng = np.random.default_rng(0)
    for name, energies in (("electron", (250, 400, 550, 790)), ("proton", (60, 120, 180, 260))):
        kind = name
        syn = [synth.lartpc_event(rng, rain=0, primaries=[(kind, float(e))]).image for e in energies]
        r_sum = np.median([x.sum() for x in real(name)])
        s_sum = np.median([x.sum() for x in syn])
        r_max = np.median([x.max() for x in real(name)])
        s_max = np.median([x.max() for x in syn])
        assert r_sum / 3 < s_sum < r_sum * 3, (name, r_sum, s_sum)
        assert r_max / 4 < s_max < r_max * 4, (name, r_max, s_max)


# --------------------------------------------------------------------------- bad input and CLI


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(events=0), "events"),
        (dict(size=10), "size"),
        (dict(crop=300), "crop"),
        (dict(workers=0), "workers"),
        (dict(seed=-1), "seed"),
        (dict(val_fraction=1.5), "val fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "below 1"),
        (dict(events=2, val_fraction=0.4, test_fraction=0.4), "none to train"),
        (dict(rain=-1.0), "rain"),
        (dict(plane_angle=float("nan")), "plane angle"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_file(tmp_path, kw, message):
    path = tmp_path / "d.h5"
    with pytest.raises(PgenError, match=message) as e:
        _write(path, **kw)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_primaries_are_refused():
    with pytest.raises(PgenError, match="unknown particle kind"):
        synth.lartpc_event(0, primaries=[("kaon", 100.0)])
    with pytest.raises(PgenError, match="positive"):
        synth.lartpc_event(0, primaries=[("muon", -5.0)])


def test_cli_synth_writes_a_dataset(tmp_path):
    out = tmp_path / "s.h5"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--events", "20", "--size", "64", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "train       16 x 64x64 float32" in result.output
    with h5py.File(out, "r") as f:
        assert f.attrs["generator"] == "pgen.data.synth" and len(f["val/images"]) == 2


@pytest.mark.parametrize("args", [["--size", "100"], ["--events", "0"], ["--val-fraction", "1.5"]])
def test_cli_synth_bad_input(tmp_path, args):
    out = tmp_path / "s.h5"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
