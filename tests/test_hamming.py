"""pgen.evaluate.hamming against a brute-force reference: every engine, chunking, ties, self-exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sparse_images
from pgen.evaluate import hamming


def brute(queries: np.ndarray, refs: np.ndarray, exclude_self: bool = False):
    """Reference: XOR-sum of unpacked bool images; argmin takes the lowest index among ties."""
    q = queries.reshape(len(queries), -1).astype(bool)
    r = refs.reshape(len(refs), -1).astype(bool)
    d = (q[:, None, :] ^ r[None, :, :]).sum(axis=2)
    if exclude_self:
        np.fill_diagonal(d, np.iinfo(np.int64).max)
    i = d.argmin(axis=1)
    return d[np.arange(len(q)), i], i


def check(queries: np.ndarray, refs: np.ndarray, *, exclude_self=False, **kwargs):
    want_d, want_i = brute(queries, refs, exclude_self)
    got_d, got_i = hamming.nearest(hamming.pack(queries, 0), hamming.pack(refs, 0), exclude_self=exclude_self, **kwargs)
    assert got_d.dtype == np.int64 and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_d, want_d)
    np.testing.assert_array_equal(got_i, want_i)
    return got_d, got_i


# the matrix-product engines run both ways on the CPU: numpy unpack / argmax, and the torch-only GPU code
ENGINE_MODES = [("int8", True), ("int8", False), ("float32", True), ("float32", False), ("popcount", True)]
IDS = ["int8", "int8-gpu-code", "float32", "float32-gpu-code", "popcount"]



@pytest.fixture(params=ENGINE_MODES, ids=IDS)
def engine(request, monkeypatch):
    name, numpy_on_cpu = request.param
    monkeypatch.setattr(hamming, "NUMPY_ON_CPU", numpy_on_cpu)
    return name


# --------------------------------------------------------------------------- pack


def test_pack_layout_threshold_and_padding():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    packed = hamming.pack(images, 127)
    assert packed.dtype == np.uint64 and packed.shape == (5, 13)  # 784 bits -> 13 words, 48 zero bits
    bits = np.unpackbits(packed.view(np.uint8), axis=1, bitorder="little")
    np.testing.assert_array_equal(bits[:, :784], (images > 127).reshape(5, -1))
    assert not bits[:, 784:].any()
    assert hamming.pack(np.full((1, 2, 2), 127, np.uint8), 127).sum() == 0  # strictly greater
    np.testing.assert_array_equal(hamming.popcount(packed), (images > 127).reshape(5, -1).sum(1))


def test_pack_dtypes_channels_and_torch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3, 5, 6)).astype(np.float32)
    want = hamming.pack(x, 0.25)
    assert want.shape == (7, 2)  # 90 bits
    np.testing.assert_array_equal(hamming.pack(torch.from_numpy(x), 0.25), want)
    np.testing.assert_array_equal(hamming.pack(x.astype(np.float64), 0.25), want)
    np.testing.assert_array_equal(hamming.pack(x, 0.25, batch_bytes=100), want)  # several batches
    np.testing.assert_array_equal(hamming.pack(x > 0.25, 0), want)
    assert hamming.pack(np.zeros((0, 4, 4)), 0).shape == (0, 1)
    with pytest.raises(ValueError, match="images must be"):
        hamming.pack(np.zeros(5), 0)


# --------------------------------------------------------------------------- nearest


@pytest.mark.parametrize("shape,density", [((28, 28), 0.3), ((64, 64), 0.04), ((2, 5, 7), 0.5)])
def test_random_images_match_brute_force(engine, shape, density):
    rng = np.random.default_rng(2)
    queries = rng.random((41, *shape)) < density
    refs = rng.random((67, *shape)) < density
    refs[50] = refs[7]  # a duplicate reference: the lower index must win
    queries[3] = refs[50]  # a query identical to references 7 and 50
    d, i = check(queries, refs, engine=engine)
    assert d[3] == 0 and i[3] == 7
    check(queries, refs, engine=engine, chunk=(9, 13))  # block sizes that do not divide N
    check(queries, refs, engine=engine, chunk=(1, 30))
    check(queries, refs, engine=engine, chunk=(41, 1))


def test_sparse_lines_and_chunk_boundaries(engine):
    train = sparse_images(150, 32, seed=4) > 0
    gen = sparse_images(37, 32, seed=5) > 0
    gen[:5] = train[[0, 33, 64, 99, 149]]  # copies, across block boundaries
    for chunk in (None, (10, 7), (37, 64), (5, 149)):
        d, i = check(gen, train, engine=engine, chunk=chunk)
        np.testing.assert_array_equal(d[:5], 0)
        np.testing.assert_array_equal(i[:5], [0, 33, 64, 99, 149])


def test_ties_lowest_index_wins_across_blocks(engine):
    refs = np.zeros((40, 8, 8), bool)
    for j in (5, 17, 18, 31, 39):  # all at distance 3 from an empty query, different pixels
        refs[j].flat[[j % 64, (j + 20) % 64, (j + 40) % 64]] = True
    refs[[0, 1, 2, 3, 4]] = True  # far: 64 bits on
    refs[6:17] = refs[0]
    refs[19:31] = refs[0]
    refs[32:39] = refs[0]
    queries = np.zeros((3, 8, 8), bool)
    queries[1].flat[17] = True  # distance 2 to refs 17 (one shared pixel) ... and 4 to the others
    for chunk in (None, 1, 3, (2, 6), (3, 16), (1, 17)):
        d, i = check(queries, refs, engine=engine, chunk=chunk)
        assert (d[0], i[0]) == (3, 5)
        assert (d[1], i[1]) == (2, 17)


def test_exclude_self(engine):
    rng = np.random.default_rng(6)
    images = rng.random((53, 28, 28)) < 0.2
    images[40] = images[11]  # exact duplicates: each other's nearest at distance 0
    images[12] = images[11]
    for chunk in (None, (7, 5), (53, 10), (10, 53)):
        d, i = check(images, images, exclude_self=True, engine=engine, chunk=chunk)
        assert (d[11], i[11]) == (0, 12) and (d[12], i[12]) == (0, 11) and (d[40], i[40]) == (0, 11)
        assert (i != np.arange(53)).all()
    packed = hamming.pack(images, 0)
    d, i = hamming.nearest(packed, packed, engine=engine)
    np.testing.assert_array_equal(d, 0)  # without exclusion every image finds itself
    assert (i[[11, 12, 40]] == 11).all()


@pytest.mark.parametrize("engine", ("int8", "float32"))
def test_gpu_code_equals_numpy_code_on_cpu(engine, monkeypatch):
    rng = np.random.default_rng(7)
    q = hamming.pack(rng.random((70, 28, 28)) < 0.15, 0)
    r = hamming.pack(rng.random((90, 28, 28)) < 0.15, 0)
    want = hamming.nearest(q, r, engine="popcount")
    results = []
    for numpy_on_cpu in (True, False):
        monkeypatch.setattr(hamming, "NUMPY_ON_CPU", numpy_on_cpu)
        results.append(hamming.nearest(q, r, engine=engine, device=torch.device("cpu"), chunk=(33, 40)))
        results.append(hamming.nearest(r, r, engine=engine, device="cpu", exclude_self=True, chunk=(33, 40)))
    for got in results[::2]:
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(results[1], results[3])


def test_engine_for():
    assert hamming.engine_for("cpu") in ("int8", "float32")
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # torch._int_mm would be a slow plain loop
    try:
        assert hamming.engine_for("cpu") == "float32"
    finally:
        torch.backends.mkldnn.enabled = enabled
    assert torch.backends.mkldnn.enabled == enabled


def test_auto_engine_empty_images_and_progress():
    rng = np.random.default_rng(8)
    images = rng.random((30, 10, 10)) < 0.1
    images[:4] = False  # empty images: distance to each other 0
    done = []
    d, i = check(images, images, exclude_self=True, progress=done.append, chunk=(8, 8))
    assert sum(done) == 30 and len(done) == 4
    assert (d[:4] == 0).all() and list(i[:4]) == [1, 0, 0, 0]
    empty = np.zeros((5, 10, 10), bool)
    check(empty, images)  # no active byte column at all
    d, i = hamming.nearest(hamming.pack(empty[:0], 0), hamming.pack(images, 0))
    assert d.shape == i.shape == (0,)


def test_large_images_and_memory_budget():
    """512 x 512 images (a few; the bits, not the counts, are large) through small blocks; the plan for
    10,000 x 75,000 such images keeps the working buffers within the budget."""
    rng = np.random.default_rng(9)
    queries = rng.random((6, 512, 512)) < 0.01
    refs = rng.random((9, 512, 512)) < 0.01
    refs[4] = queries[2]
    d, i = check(queries, refs, memory=1 << 22)
    assert (d[2], i[2]) == (0, 4)
    k = 512 * 512 + 4096 + 64
    for memory in (1 << 28, 1 << 30, 4 << 30):
        cq, cr = hamming._plan(10_000, 75_000, k, 1, memory)
        assert cq * k + 2 * cr * k + 8 * cq * cr <= memory
        assert cq >= 32 and cr >= 8


def test_bad_input():
    a = hamming.pack(np.ones((3, 8, 8)), 0)
    b = hamming.pack(np.ones((3, 9, 9)), 0)
    with pytest.raises(ValueError, match="bits per image"):
        hamming.nearest(a, b)
    with pytest.raises(ValueError, match="exclude_self"):
        hamming.nearest(a, a[:2], exclude_self=True)
    with pytest.raises(ValueError, match="engine"):
        hamming.nearest(a, a, engine="faiss")
    with pytest.raises(ValueError, match="no reference"):
        hamming.nearest(a, a[:0])
    with pytest.raises(ValueError, match="unsigned"):
        hamming.nearest(np.ones((3, 2), np.float32), a)


# --------------------------------------------------------------------------- copy rate


def test_copy_rate_flags_a_memorising_generator():
    train = sparse_images(600, 48, seed=10) > 0  # one line segment each: no two alike
    held_out = sparse_images(1000, 48, seed=11) > 0
    packed_train = hamming.pack(train, 0)
    test_to_train, _ = hamming.nearest(hamming.pack(held_out[:500], 0), packed_train)
    copies = train[np.random.default_rng(12).permutation(600)[:300]]
    copied, _ = hamming.nearest(hamming.pack(copies, 0), packed_train)
    fresh, _ = hamming.nearest(hamming.pack(held_out[500:], 0), packed_train)
    rate, threshold = hamming.copy_rate(copied, test_to_train)
    assert threshold > 0 and rate == 1.0
    rate, _ = hamming.copy_rate(fresh, test_to_train, percentile=1.0)
    assert rate <= 0.04
    assert hamming.copy_rate(test_to_train, test_to_train, 50).rate == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValueError):
        hamming.copy_rate([], test_to_train)


def test_copy_rate_on_mnist(shared_data):
    """Real digits: training images replayed verbatim score ~1, held-out digits ~0.01."""
    from pgen.data import mnist

    files = mnist.find_files(shared_data / "mnist")
    train = mnist.read_idx(files["train-images-idx3-ubyte"])[:6000]
    test = mnist.read_idx(files["t10k-images-idx3-ubyte"])[:2000]
    packed_train = hamming.pack(train, 127)
    test_to_train, _ = hamming.nearest(hamming.pack(test[:1000], 127), packed_train)
    copies, _ = hamming.nearest(hamming.pack(train[::12], 127), packed_train)
    fresh, _ = hamming.nearest(hamming.pack(test[1000:], 127), packed_train)
    assert hamming.copy_rate(copies, test_to_train).rate == 1.0
    assert hamming.copy_rate(fresh, test_to_train).rate <= 0.03
