"""Synthetic LArTPC events: neutrino-like interactions seen by one wire plane, as a pgen dataset.

An event is a vertex with 1-6 prongs (numu CC: a muon; nue CC: an electron; NC: none; plus
protons, charged pions and neutral pions decaying to photon pairs; 100 MeV or more in all) and
a Poisson number (mean ``rain``) of uncorrelated "rain" particles anywhere in the image, as in
PILArNet's MPV/MPR events. Particles are transported in 3D (``pgen.data.particles``: tracks
with Bragg peaks, multiple scattering, delta rays and Michel electrons; branching
electromagnetic showers) and read out by one wire plane (``pgen.data.detector``: wire coordinate at ``plane_angle`` degrees
from vertical against drift time, 3 mm pixels like MicroBooNE's wire pitch and ticks, so a
256 x 256 image spans 77 cm; diffusion blur, electronics noise, a threshold and 12-bit ADC
quantisation: images hold integers in ``[0, 4095]``). The vertex is placed so that the event's
charge centre falls near the middle of the image, the vertex itself at least size/8 from the
edges. The beam axis is drawn per event (isotropic), so images do not all point one way.

File layout (besides the standard pgen layout, see ``pgen.data.store``)::

    /                        attrs: value_range=(0, 4095), generator="pgen.data.synth", size, crop
                             (0: none), seed, plane_angle, rain, pitch_cm, adc_per_mev, noise_adc,
                             threshold_adc, diffusion_px, segmentation_classes, particle_columns
    /<split>/images          [N, H, W] float32, integer-valued ADC counts
    /<split>/segmentation    [N, H, W] uint8: 0 background, 1 track, 2 shower, 3 Michel, 4 delta ray
    /<split>/particles       [N, 7] uint8: per event, how many muon, pion, proton, electron,
                             photon, michel, delta particles it holds (vertex and rain together;
                             counted over the whole event, also outside a crop); attr ``columns``
    /<split>/vertex          [N, 2] float32: the interaction vertex (row, col) in the stored image
                             (outside [0, H) x [0, W) when a crop cut it off)

Event ``i`` of a file (train first, then val, then test) is drawn from
``np.random.default_rng([seed, i])`` alone, so files are byte-identical whatever ``workers`` is.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pgen.data import particles as P
from pgen.data.crop import crop_around_charge
from pgen.data.detector import ADC_PER_MEV, DIFFUSION, NOISE, PITCH, SATURATION, THRESHOLD, respond
from pgen.errors import PgenError

CLASSES = ("background", "track", "shower", "michel", "delta")
COLUMNS = ("muon", "pion", "proton", "electron", "photon", "michel", "delta")
KINDS = ("muon", "pion", "proton", "electron", "photon")
ENERGY = {"muon": (40.0, 1000.0), "pion": (30.0, 500.0), "proton": (25.0, 300.0),
          "electron": (30.0, 600.0), "photon": (20.0, 300.0), "pi0": (10.0, 400.0)}  # log-uniform, MeV
TRIGGER_MEV = 100.0  # least kinetic energy of a neutrino interaction, MeV
CHUNK = 32  # events per worker task (fewer for big images: about 4M pixels per task at most)


@dataclass
class Particle:
    """One particle of an event. ``start`` / ``end`` are (row, col) in the event's image (floats)."""

    kind: str
    energy: float  # kinetic, MeV
    start: tuple[float, float]
    end: tuple[float, float]
    parent: int = -1  # index in the event's particle list, or -1 for a primary
    rain: bool = False
    stopped: bool = False  # a track that ranged out inside the world
    branches: int = 1  # electron tracks the particle's cascade followed (showers: many)


@dataclass
class Event:
    image: np.ndarray  # [H, W] float32, integer ADC counts
    segmentation: np.ndarray  # [H, W] uint8, CLASSES
    particles: list[Particle]
    vertex: tuple[float, float]  # (row, col) in image
    origin: tuple[int, int]  # (row, col) of the image's corner in the uncropped size x size plane

    def counts(self) -> np.ndarray:
        """Particles per kind, in COLUMNS order."""
        c = np.zeros(len(COLUMNS), dtype=np.int64)
        for p in self.particles:
            c[COLUMNS.index(p.kind)] += 1
        return c


# --------------------------------------------------------------------------- one event


def lartpc_event(
    rng: np.random.Generator | int | Sequence[int],
    *,
    size: int = 256,
    plane_angle: float = 0.0,
    rain: float = 0.5,
    crop: int | None = None,
    primaries: Sequence[tuple] | None = None,
    noise: bool = True,
) -> Event:
    """One synthetic event on a ``size`` x ``size`` wire plane (cut to ``crop`` x ``crop`` if given).

    ``rng`` is a generator or a seed (``[seed, index]`` as ``generate`` uses). ``primaries``
    replaces the random interaction by given particles at the vertex, each
    ``(kind, kinetic_MeV)`` or ``(kind, kinetic_MeV, direction_xyz)`` with kind in muon, pion,
    proton, electron, photon, pi0 (x is drift, y up, z the beam; at ``plane_angle`` 0 the image
    shows x down the rows and z along the columns). ``noise=False`` leaves out electronics noise.
    """
    _check_event_args(size, crop, plane_angle, rain)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    a = math.radians(plane_angle)
    e_u = np.array([0.0, -math.sin(a), math.cos(a)])  # wire coordinate axis
    e_w = np.array([0.0, math.cos(a), math.sin(a)])  # along the wires
    half = size * PITCH / 2
    world = size * PITCH * 1.45  # nothing farther than this from the vertex can reach the image
    if primaries is None:
        primaries = _interaction(rng)
    dep = P.Deposits()
    records: list[dict] = []
    _simulate(rng, dep, records, [(np.zeros(3), *_prong(p)) for p in primaries], np.zeros(3), world, rain=False)
    # place the image: the charge centre near the middle, the vertex well inside
    p0, p1, energy, _ = dep.arrays()
    mid = 0.5 * (p0 + p1)
    w = energy + 1e-12
    centre = np.array([np.average(mid[:, 0], weights=w), np.average(mid @ e_u, weights=w)]) / PITCH if len(w) else np.zeros(2)
    target = size / 2 + rng.uniform(-size / 8, size / 8, 2)
    shift = np.clip(target - centre, size / 8, size - size / 8)  # = vertex (row, col)
    t_off, u_off = -shift * PITCH
    # rain: uncorrelated particles anywhere in the volume the image sees
    n_rain = rng.poisson(rain) if rain > 0 else 0
    if n_rain:
        middle = np.array([t_off + half, 0.0, 0.0]) + (u_off + half) * e_u
        rain_list = []
        for _ in range(n_rain):
            at = middle + rng.uniform(-half, half) * np.array([1.0, 0, 0]) + rng.uniform(-half, half) * e_u \
                + rng.uniform(-half, half) * e_w
            kind = str(rng.choice(["muon", "proton", "electron", "photon", "pion"], p=[0.35, 0.25, 0.1, 0.2, 0.1]))
            rain_list.append((at, kind, _log_uniform(rng, *ENERGY[kind]) * (0.5 if kind in ("electron", "photon") else 1),
                              P.isotropic(rng)))
        _simulate(rng, dep, records, rain_list, middle, world * 0.75, rain=True)
    image, seg = respond(rng, dep.arrays(), size, t_off, u_off, e_u, noise)
    origin = (0, 0)
    if crop is not None and crop < size:
        origin = crop_around_charge(image, crop, refine=3)[1]
        image = np.ascontiguousarray(image[origin[0] : origin[0] + crop, origin[1] : origin[1] + crop])
        seg = np.ascontiguousarray(seg[origin[0] : origin[0] + crop, origin[1] : origin[1] + crop])

    def px(x):
        x = np.asarray(x, float)
        return (float((x[0] - t_off) / PITCH - origin[0]), float((x @ e_u - u_off) / PITCH - origin[1]))

    parts = [Particle(r["kind"], float(r["energy"]), px(r["start"]), px(r["end"]), r["parent"], r["rain"],
                      r["stopped"], int(r["branches"])) for r in records]
    return Event(image, seg, parts, (float(shift[0] - origin[0]), float(shift[1] - origin[1])), origin)


def _interaction(rng) -> list[tuple]:
    """A neutrino-like final state: (kind, kinetic MeV) or ("pi0", kinetic MeV), 1-6 prongs, with
    at least TRIGGER_MEV of kinetic energy in all (lighter interactions are drawn again, as a
    detector trigger would miss them)."""
    while True:
        channel = rng.choice(3, p=[0.5, 0.15, 0.35])  # numu CC, nue CC, NC
        out: list[tuple] = [[("muon",)], [("electron",)], []][channel]
        out += [("proton",)] * rng.poisson(1.2) + [("pion",)] * rng.poisson(0.4)
        out += [("pi0",)] * rng.poisson(0.25 if channel < 2 else 0.5)
        prongs, kept = 0, []
        for p in out:  # a pi0 is two prongs (photons)
            k = 2 if p[0] == "pi0" else 1
            if prongs + k <= 6:
                kept.append((p[0], _log_uniform(rng, *ENERGY[p[0]])))
                prongs += k
        if sum(e for _, e in kept) >= TRIGGER_MEV:
            return kept


def _prong(p: tuple) -> tuple:
    """``(kind, kinetic[, direction])`` -> (kind, kinetic, direction or None for a random one)."""
    kind, energy = str(p[0]), p[1]
    if kind not in (*KINDS, "pi0"):
        raise PgenError(f"unknown particle kind {kind!r}: use one of {', '.join(KINDS)}, pi0")
    if not (isinstance(energy, (int, float, np.number)) and math.isfinite(energy) and energy > 0):
        raise PgenError(f"kinetic energy of a {kind} must be a positive number of MeV, got {energy!r}")
    if len(p) < 3 or p[2] is None:
        return kind, float(energy), None
    d = np.asarray(p[2], float)
    if d.shape != (3,) or not np.isfinite(d).all() or not np.linalg.norm(d) > 0:
        raise PgenError(f"direction of a {kind} must be a non-zero 3-vector (x drift, y up, z beam), got {p[2]!r}")
    return kind, float(energy), d / np.linalg.norm(d)


def _simulate(rng, dep, records, items, centre, world, *, rain: bool) -> None:
    """Transport ``items`` = [(position, kind, kinetic, direction or None)]; append to ``records``."""
    beam = P.isotropic(rng)
    electrons, photons = [], []
    first = len(records)
    for at, kind, energy, direction in items:
        if direction is None:
            spread = 0.35 if kind in ("muon", "electron") else 0.9
            theta = np.arccos(np.clip(1 - rng.exponential(spread), -1, 1))
            direction = P.turn(beam[None], theta, rng.uniform(0, 2 * np.pi))[0]
        if kind in P.MASS:
            root = len(records)
            res = P.track(rng, dep, at, direction, energy, P.MASS[kind], world)
            records.append(dict(kind=kind, energy=energy, start=at, end=res.end, parent=-1, rain=rain,
                                stopped=res.stopped, branches=1))
            for pos, d, t in res.deltas:
                records.append(dict(kind="delta", energy=t, start=pos, end=pos, parent=root, rain=rain,
                                    stopped=True, branches=1))
                electrons.append((pos, d, t, P.DELTA, len(records) - 1))
            decays = kind == "muon" or (kind == "pion" and rng.random() < 0.5)  # pi+ -> mu+ -> e+
            if res.stopped and decays:
                t = P.michel_energy(rng)
                records.append(dict(kind="michel", energy=t, start=res.end, end=res.end, parent=root, rain=rain,
                                    stopped=True, branches=1))
                electrons.append((res.end, P.isotropic(rng), t, P.MICHEL, len(records) - 1))
        elif kind == "pi0":
            for e, d in P.pi0_photons(rng, energy, direction):
                records.append(dict(kind="photon", energy=e, start=at, end=at, parent=-1, rain=rain, stopped=True,
                                    branches=0))
                photons.append((at, d, e, P.SHOWER, len(records) - 1))
        elif kind in ("electron", "photon"):
            records.append(dict(kind=kind, energy=energy, start=at, end=at, parent=-1, rain=rain, stopped=True,
                                branches=0))
            (electrons if kind == "electron" else photons).append((at, direction, energy, P.SHOWER, len(records) - 1))
    if electrons or photons:
        branches = P.cascade(rng, dep, P.Bunch.of(electrons), P.Bunch.of(photons), centre, world, len(records))
        for i in range(first, len(records)):
            if records[i]["kind"] in ("electron", "photon", "michel", "delta"):
                records[i]["branches"] = int(branches[i])
                records[i]["end"] = records[i]["start"]


def _log_uniform(rng, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _check_event_args(size, crop, plane_angle, rain) -> None:
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 4096:
        raise PgenError(f"image size must be an integer from 16 to 4096 pixels, got {size!r}")
    if crop is not None and (not isinstance(crop, (int, np.integer)) or not 1 <= crop <= size):
        raise PgenError(f"crop must be an integer from 1 to the image size ({size}), got {crop!r}")
    if not (isinstance(plane_angle, (int, float)) and math.isfinite(plane_angle)):
        raise PgenError(f"plane angle must be a finite number of degrees, got {plane_angle!r}")
    if not (isinstance(rain, (int, float)) and math.isfinite(rain) and 0 <= rain <= 100):
        raise PgenError(f"rain (mean rain particles per event) must be between 0 and 100, got {rain!r}")


# --------------------------------------------------------------------------- a dataset


def generate(
    path: str | os.PathLike,
    *,
    events: int,
    size: int,
    crop: int | None,
    seed: int,
    workers: int,
    val_fraction: float,
    test_fraction: float,
    plane_angle: float = 0.0,
    rain: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``events`` synthetic events to a pgen dataset at ``path`` (atomically); returns the path.

    Splits: val and test get ``round(events * fraction)`` events each, train the rest, in that
    order of event index. Work runs in ``workers`` processes, up to ``CHUNK`` events per task, written
    in index order as they finish (bounded memory); ``progress(n)`` is called after each chunk.
    """
    from pgen.data.store import StoreWriter

    _check_generate_args(events, seed, workers, val_fraction, test_fraction, path)
    _check_event_args(size, crop, plane_angle, rain)
    n_val = int(math.floor(events * val_fraction + 0.5))
    n_test = int(math.floor(events * test_fraction + 0.5))
    n_train = events - n_val - n_test
    if n_train < 1:
        raise PgenError(f"{events} events leave none to train on with val {val_fraction} and test {test_fraction}; "
                        "make more events or smaller fractions")
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, events)}
    side = crop or size
    params = dict(seed=int(seed), size=int(size), crop=None if crop is None or crop == size else int(crop),
                  plane_angle=float(plane_angle), rain=float(rain))
    attrs = dict(
        generator="pgen.data.synth", events=int(events), size=int(size), crop=int(crop or 0), seed=int(seed),
        plane_angle=float(plane_angle), rain=float(rain), pitch_cm=PITCH, adc_per_mev=ADC_PER_MEV,
        noise_adc=NOISE, threshold_adc=THRESHOLD, saturation_adc=SATURATION, diffusion_px=list(DIFFUSION),
        segmentation_classes=list(CLASSES), particle_columns=list(COLUMNS),
    )
    step = max(1, min(CHUNK, (1 << 22) // (size * size)))
    chunks = [(a, min(a + step, events)) for a in range(0, events, step)]
    with StoreWriter(path, source="synthetic", value_range=(0.0, SATURATION), **attrs) as w:
        writers = {}
        for name, (a, b) in bounds.items():
            writers[name] = w.split(name, (side, side), np.float32, segmentation=True)
            g = w.file[name]
            g.create_dataset("particles", shape=(b - a, len(COLUMNS)), dtype=np.uint8)
            g["particles"].attrs["columns"] = ",".join(COLUMNS)
            g.create_dataset("vertex", shape=(b - a, 2), dtype=np.float32)
            g["vertex"].attrs["columns"] = "row,col"
        for (lo, hi), (images, segs, counts, vertices) in _run_chunks(chunks, params, workers):
            for name, (a, b) in bounds.items():
                s, e = max(lo, a), min(hi, b)
                if s < e:
                    writers[name].append(images[s - lo : e - lo], segmentation=segs[s - lo : e - lo])
                    w.file[name]["particles"][s - a : e - a] = counts[s - lo : e - lo]
                    w.file[name]["vertex"][s - a : e - a] = vertices[s - lo : e - lo]
            if progress is not None:
                progress(hi - lo)
    return Path(path)


def make_chunk(lo: int, hi: int, *, seed: int, size: int, crop: int | None, plane_angle: float, rain: float):
    """Events ``lo..hi-1``: (images, segmentation, particle counts, vertices) as arrays."""
    side = crop or size
    images = np.zeros((hi - lo, side, side), dtype=np.float32)
    segs = np.zeros((hi - lo, side, side), dtype=np.uint8)
    counts = np.zeros((hi - lo, len(COLUMNS)), dtype=np.uint8)
    vertices = np.zeros((hi - lo, 2), dtype=np.float32)
    for j, i in enumerate(range(lo, hi)):
        ev = lartpc_event([seed, i], size=size, plane_angle=plane_angle, rain=rain, crop=crop)
        images[j], segs[j] = ev.image, ev.segmentation
        counts[j] = np.minimum(ev.counts(), 255)
        vertices[j] = ev.vertex
    return images, segs, counts, vertices


def _chunk_task(bounds: tuple[int, int], params: dict):
    return make_chunk(*bounds, **params)


def _run_chunks(chunks, params: dict, workers: int):
    """Yield ``(chunk, result)`` in chunk order; at most 2 x workers chunks in flight."""
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield c, _chunk_task(c, params)
        return
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ex = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=multiprocessing.get_context(method))
    ok = False
    try:
        todo = iter(chunks)
        pending = [(c, ex.submit(_chunk_task, c, params)) for c in itertools.islice(todo, 2 * workers)]
        while pending:
            c, future = pending.pop(0)
            result = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(_chunk_task, nxt, params)))
            yield c, result
        ok = True
    finally:
        ex.shutdown(wait=ok, cancel_futures=not ok)


def _check_generate_args(events, seed, workers, val_fraction, test_fraction, path) -> None:
    if not isinstance(events, (int, np.integer)) or events < 1:
        raise PgenError(f"events must be a whole number of at least 1, got {events!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PgenError(f"seed must be a whole number >= 0, got {seed!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise PgenError(f"workers must be a whole number of at least 1, got {workers!r}")
    for name, v in (("val fraction", val_fraction), ("test fraction", test_fraction)):
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise PgenError(f"{name} must be in [0, 1), got {v!r}")
    if val_fraction + test_fraction >= 1:
        raise PgenError(f"val + test fractions must be below 1 (no events left to train on), got {val_fraction + test_fraction}")
    if Path(path).is_dir():
        raise PgenError(f"{path}: is a folder; give a file name for the dataset, e.g. {Path(path) / 'synth.h5'}")
