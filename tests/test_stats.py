"""Image statistics on hand-made images whose answers are known, against a per-image reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from pgen.evaluate.stats import STATISTICS, compare, image_statistics, summary_score

SQRT2 = math.sqrt(2.0)


def stats_of(image, threshold=0.0, **kw):
    """Statistics of one ``[H, W]`` image, as Python floats (``pixel_value`` as an array)."""
    s = image_statistics(np.asarray(image)[None], threshold, **kw)
    return {k: (v if k == "pixel_value" else float(v[0])) for k, v in s.items()}


def reference(images, threshold, dark_pixels=2):
    """The slow definition: one image at a time, scipy labels and numpy eigh per largest cluster."""
    out = {k: [] for k in STATISTICS if k != "pixel_value"}
    values = []
    for im in images:
        mask = im > threshold
        lab, k = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        out["occupancy"].append(mask.mean())
        out["charge"].append(float(im[mask].astype(np.float64).sum()))
        out["clusters"].append(k)
        out["dark"].append(float(mask.sum() < dark_pixels))
        values.extend(im[mask].astype(np.float64))
        if k == 0:
            out["length"].append(0.0)
            out["width"].append(0.0)
            continue
        sizes = np.bincount(lab.ravel())[1:]
        best = int(np.argmax(sizes)) + 1  # first maximum: the lowest label
        rr, cc = np.nonzero(lab == best)
        coords = np.stack([rr, cc]).astype(np.float64)
        _, vecs = np.linalg.eigh(np.cov(coords, bias=True).reshape(2, 2))
        proj = coords.T @ vecs
        out["length"].append(np.ptp(proj[:, 1]) + 1)
        out["width"].append(np.ptp(proj[:, 0]) + 1)
    out["pixel_value"] = values
    return {k: np.asarray(out[k], dtype=np.float64) for k in STATISTICS}


def random_images(n=50, h=24, w=20, seed=0):
    """Sparse images of varying density and values, a few hand-placed shapes among them."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.0, 0.3, size=(n, 1, 1))
    values = rng.integers(1, 4096, size=(n, h, w)).astype(np.float32)
    images = np.where(rng.random((n, h, w)) < density, values, 0.0).astype(np.float32)
    images[0] = 0
    images[1] = 0
    images[1, np.arange(12), np.arange(12)] = 50.0  # a rotated line: length sqrt(2) * 11 + 1, width 1
    images[2] = 0
    images[2, np.arange(8), 19 - np.arange(8)] = 7.0  # the other diagonal, touching the right border
    images[3] = 0
    images[3, 5, 7] = 3.0  # a single pixel
    return images


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-9, err_msg=k)


# --------------------------------------------------------------------------- known shapes


def test_horizontal_line():
    im = np.zeros((16, 16), np.float32)
    im[5, 3:13] = np.arange(1, 11)
    s = stats_of(im)
    assert s["length"] == pytest.approx(10.0) and s["width"] == pytest.approx(1.0)
    assert s["clusters"] == 1 and s["dark"] == 0
    assert s["occupancy"] == pytest.approx(10 / 256)
    assert s["charge"] == pytest.approx(55.0)
    np.testing.assert_array_equal(s["pixel_value"], np.arange(1, 11))


@pytest.mark.parametrize("rows, cols", [(slice(4, 7), slice(2, 12)), (slice(2, 12), slice(4, 7))])
def test_rectangle_10_by_3(rows, cols):
    im = np.zeros((16, 16))
    im[rows, cols] = 2.0
    s = stats_of(im)
    assert s["length"] == pytest.approx(10.0) and s["width"] == pytest.approx(3.0)
    assert s["clusters"] == 1 and s["charge"] == pytest.approx(60.0)


def test_two_blobs_largest_chosen():
    im = np.zeros((20, 20))
    im[1:3, 1:3] = 1.0  # 2 x 2, first in raster order
    im[10:13, 5:9] = 1.0  # 3 x 4, the largest
    s = stats_of(im)
    assert s["clusters"] == 2
    assert s["length"] == pytest.approx(4.0) and s["width"] == pytest.approx(3.0)


def test_tie_goes_to_first_cluster_in_raster_order():
    line, square = np.zeros((20, 20)), np.zeros((20, 20))
    line[2, 1:5] = 1.0  # 4 pixels: length 4, width 1
    line[10:12, 10:12] = 1.0  # 4 pixels: length 2, width 2
    square[2:4, 1:3] = 1.0
    square[10, 10:14] = 1.0
    a, b = stats_of(line), stats_of(square)
    assert (a["length"], a["width"]) == pytest.approx((4.0, 1.0))
    assert (b["length"], b["width"]) == pytest.approx((2.0, 2.0))


def test_diagonal_pixels_are_one_cluster():
    im = np.zeros((8, 8))
    im[[0, 1, 2], [0, 1, 2]] = 1.0
    assert ndimage.label(im > 0)[1] == 3  # separate as 4-neighbours
    s = stats_of(im)
    assert s["clusters"] == 1
    assert s["length"] == pytest.approx(2 * SQRT2 + 1) and s["width"] == pytest.approx(1.0)


def test_value_at_threshold_is_not_lit():
    im = np.zeros((6, 6), np.uint16)
    im[1, 1] = 10  # exactly the threshold: dark
    im[4, 4] = 11
    im[4, 5] = 12
    s = stats_of(im, threshold=10)
    assert s["clusters"] == 1 and s["occupancy"] == pytest.approx(2 / 36)
    assert s["charge"] == pytest.approx(23.0)
    np.testing.assert_array_equal(s["pixel_value"], [11.0, 12.0])


def test_empty_image():
    s = stats_of(np.zeros((10, 12)))
    assert (s["clusters"], s["length"], s["width"], s["dark"]) == (0, 0, 0, 1)
    assert s["occupancy"] == 0 and s["charge"] == 0 and s["pixel_value"].size == 0


def test_single_pixel():
    im = np.zeros((10, 10))
    im[4, 6] = 9.0
    s = stats_of(im, dark_pixels=2)
    assert (s["clusters"], s["length"], s["width"], s["dark"]) == (1, 1, 1, 1)
    assert stats_of(im, dark_pixels=1)["dark"] == 0


def test_clusters_touching_the_border_and_no_wrap_around():
    im = np.zeros((8, 10))
    im[7, :] = 1.0  # the whole bottom row: length 10
    im[2, 9] = 1.0  # right border ...
    im[3, 0] = 1.0  # ... and the left border of the next row: flat neighbours, not image neighbours
    im[0, 0] = 1.0  # a corner
    s = stats_of(im)
    assert s["clusters"] == 4
    assert s["length"] == pytest.approx(10.0) and s["width"] == pytest.approx(1.0)


def test_clusters_do_not_merge_across_images():
    images = np.zeros((3, 6, 6))
    images[0, 5, 2:4] = 1.0  # last row of image 0 ...
    images[1, 0, 2:4] = 1.0  # ... first row of image 1, same columns
    images[1, 5, 5] = 1.0  # last pixel of image 1 ...
    images[2, 0, 0] = 1.0  # ... first pixel of image 2
    s = image_statistics(images, 0.0)
    np.testing.assert_array_equal(s["clusters"], [1, 2, 1])
    np.testing.assert_allclose(s["length"], [2, 2, 1])
    np.testing.assert_allclose(s["width"], [1, 1, 1])
    np.testing.assert_array_equal(s["dark"], [0, 0, 1])


def test_input_shapes():
    images = random_images(n=6)
    assert_same(image_statistics(images[:, None], 0.0), image_statistics(images, 0.0))
    with pytest.raises(ValueError):
        image_statistics(np.zeros((2, 2, 4, 4)), 0.0)
    with pytest.raises(ValueError):
        image_statistics(np.zeros((4, 4)), 0.0)
    empty = image_statistics(np.zeros((0, 4, 4)), 0.0)
    assert all(v.size == 0 and v.dtype == np.float64 for v in empty.values())


# --------------------------------------------------------------------------- against the reference


def test_agrees_with_per_image_reference():
    images = random_images()
    s = image_statistics(images, 0.0)
    assert list(s) == list(STATISTICS)
    assert all(v.dtype == np.float64 for v in s.values())
    assert_same(s, reference(images, 0.0))
    assert s["length"][1] == pytest.approx(SQRT2 * 11 + 1) and s["width"][1] == pytest.approx(1.0)
    assert s["length"][2] == pytest.approx(SQRT2 * 7 + 1)
    assert s["clusters"][0] == 0 and s["dark"][3] == 1
    assert s["clusters"].max() > 5  # the random images do have many clusters


def test_agrees_with_reference_at_a_threshold_and_int_dtype():
    images = (random_images(n=20, seed=3) // 2).astype(np.uint16)
    assert_same(image_statistics(images, 1000, dark_pixels=5), reference(images, 1000, dark_pixels=5))


def test_chunking_does_not_change_anything():
    images = random_images(seed=1)
    whole = image_statistics(images, 0.0, chunk=1000)
    assert_same(image_statistics(images, 0.0, chunk=1), whole)
    assert_same(image_statistics(images, 0.0, chunk=7), whole)


def test_pixel_values_evenly_subsampled():
    images = random_images(seed=2)
    full = image_statistics(images, 0.0)["pixel_value"]
    total, m = len(full), 100
    assert total > m
    for chunk in (1, 13, 1000):
        cut = image_statistics(images, 0.0, max_pixels=m, chunk=chunk)["pixel_value"]
        np.testing.assert_array_equal(cut, full[np.arange(m) * total // m])
    assert image_statistics(images, 0.0, max_pixels=0)["pixel_value"].size == 0


# --------------------------------------------------------------------------- compare


def fake_stats(rng, n=400, **override):
    s = {
        "occupancy": rng.uniform(0.02, 0.1, n),
        "charge": rng.gamma(2.0, 1000.0, n),
        "pixel_value": rng.gamma(2.0, 100.0, 5 * n),
        "clusters": rng.integers(0, 6, n).astype(float),
        "length": rng.uniform(1, 60, n),
        "width": rng.uniform(1, 8, n),
        "dark": (rng.random(n) < 0.1).astype(float),
    }
    s.update(override)
    return s


def test_identical_inputs_score_zero():
    data = fake_stats(np.random.default_rng(0))
    c = compare(data, {k: v.copy() for k, v in data.items()})
    assert list(c) == list(STATISTICS)
    assert all(v["w1"] == 0 and v["w1_norm"] == 0 for v in c.values())
    assert summary_score(c) == 0.0


def test_known_occupancy_shift():
    data = fake_stats(np.random.default_rng(1))
    samples = dict(data, occupancy=data["occupancy"] + 0.05)
    c = compare(data, samples)["occupancy"]
    assert c["w1"] == pytest.approx(0.05)
    assert c["spread"] == pytest.approx(np.std(data["occupancy"]))
    assert c["w1_norm"] == pytest.approx(0.05 / np.std(data["occupancy"]))
    assert c["mean_samples"] - c["mean_data"] == pytest.approx(0.05)


def test_dark_fraction_difference():
    data = fake_stats(np.random.default_rng(2), dark=np.r_[np.ones(10), np.zeros(90)])
    samples = dict(data, dark=np.r_[np.ones(40), np.zeros(60)])
    c = compare(data, samples)
    assert c["dark"]["spread"] == 1.0
    assert c["dark"]["w1"] == pytest.approx(0.3) and c["dark"]["w1_norm"] == pytest.approx(0.3)
    assert summary_score(c) == pytest.approx(0.3 / len(STATISTICS))


def test_constant_data_uses_spread_one():
    data = fake_stats(np.random.default_rng(3), occupancy=np.full(400, 0.5))
    c = compare(data, dict(data, occupancy=np.full(400, 0.7)))["occupancy"]
    assert c["spread"] == 1.0 and c["w1_norm"] == pytest.approx(0.2)


def test_empty_arrays_stay_finite():
    data = fake_stats(np.random.default_rng(4))
    c = compare(data, dict(data, pixel_value=np.zeros(0)))["pixel_value"]
    assert c["w1"] == pytest.approx(np.mean(np.abs(data["pixel_value"])))
    assert math.isnan(c["mean_samples"])
    both = compare(dict(data, pixel_value=np.zeros(0)), dict(data, pixel_value=np.zeros(0)))
    assert both["pixel_value"]["w1"] == 0 and both["pixel_value"]["w1_norm"] == 0
    assert math.isfinite(summary_score(both))


def test_compare_end_to_end_and_missing_keys():
    data, samples = image_statistics(random_images(seed=5), 0.0), image_statistics(random_images(seed=6) * 2, 0.0)
    c = compare(data, samples)
    assert c["charge"]["w1_norm"] > 0.1 and c["pixel_value"]["mean_samples"] > c["pixel_value"]["mean_data"]
    assert summary_score(c) == pytest.approx(np.mean([v["w1_norm"] for v in c.values()]))
    with pytest.raises(ValueError, match="dark"):
        compare({k: v for k, v in data.items() if k != "dark"}, samples)
