"""Import real detector images into a pgen dataset: LArCV ROOT, larcv3 HDF5, PNG folders, .npy / .npz.

:func:`scan` opens and counts every input (format from its first bytes, or forced; with ``skip_bad``
unreadable files are skipped); :func:`write` then decodes work units of a few images (in worker
processes with ``workers > 1``, taken in input order), preprocesses each projection (threshold,
crops around the charge, scaling, drop rules), assigns whole events to train / val / test and
appends as it goes: memory holds a few units whatever the input size. Preprocessing is pure and
reusable (:func:`crop_around_charge`, :func:`cluster_crops`, :func:`prepare`). Settings and counts
become ``import_*`` root attributes; each split gets ``event`` (source event, in input order) and
``plane`` datasets beside ``images``.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pgen.data import larcv
from pgen.data.crop import cluster_crops, crop_around_charge
from pgen.data.store import StoreWriter
from pgen.errors import PgenError

FORMATS = ("larcv-root", "larcv3", "png", "npy")
SCALES = ("keep", "clip", "minmax")
SPLIT_NAMES = ("train", "val", "test")
SUFFIXES = {".root", ".h5", ".hdf5", ".png", ".npy", ".npz"}
UNIT_PIXELS = 4_000_000  # raw pixels decoded per work unit (16 MB of float32)
FLUSH_BYTES = 4 << 20  # images buffered per split before an append


@dataclass(frozen=True)
class Settings:
    format: str | None = None  # None: detect from content
    producer: str | None = None
    plane: int | None = None  # None: every plane as its own image
    threshold: float | None = None
    crop: int | None = None
    min_occupancy: float | None = None  # None: 0.01 with --crop, 0 without
    max_crops: int = 1
    scale: str = "keep"
    clip_max: float | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    skip_bad: bool = False

    @property
    def occupancy(self) -> float:
        return self.min_occupancy if self.min_occupancy is not None else (0.01 if self.crop else 0.0)


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    table: str  # ROOT tree, larcv3 group or .npz member; "" otherwise
    n_events: int
    pixels_per_event: int
    planes: int
    uint8: bool


@dataclass
class Plan:
    sources: list[Source]
    skipped: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        return sum(s.n_events for s in self.sources)


# --------------------------------------------------------------------------- scanning


def detect_format(path: str | os.PathLike) -> str:
    """``larcv-root``, ``larcv3``, ``png`` or ``npy`` from a file's first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise PgenError(f"{path}: cannot be read: {e.strerror or e}") from None
    for magic, fmt in ((b"root", "larcv-root"), (b"\x89HDF", "larcv3"), (b"\x89PNG", "png"), (b"\x93NUMPY", "npy"), (b"PK\x03\x04", "npy")):
        if head.startswith(magic):
            return fmt
    what = "an empty file" if not head else f"unrecognised content (starts {head!r})"
    raise PgenError(f"{path}: {what}; expected LArCV ROOT, larcv3 HDF5, PNG, .npy or .npz (force one with --format)")


def expand(paths: list[str | os.PathLike], warn: Callable[[str], None]) -> list[Path]:
    """Files as given, and the files of given folders (known suffixes, sorted by name)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            known = [q for q in inside if q.suffix.lower() in SUFFIXES]
            if len(known) < len(inside):
                warn(f"{p}: ignored {len(inside) - len(known)} files without a .root/.h5/.png/.npy/.npz suffix")
            if not known:
                raise PgenError(f"{p}: folder has no .root, .h5, .png, .npy or .npz files")
            files += known
        elif p.is_file():
            files.append(p)
        else:
            raise PgenError(f"{p}: no such file or folder")
    return files


def scan(paths: list[str | os.PathLike], settings: Settings, *, warn: Callable[[str], None] = lambda m: None) -> Plan:
    """Open, check and count every input; with ``skip_bad`` (and several inputs) skip unreadable ones."""
    files = expand(paths, warn)
    plan = Plan([])
    for f in files:
        try:
            fmt = settings.format or detect_format(f)
            source = _scan_one(f, fmt, settings.producer)
        except PgenError as e:
            if not (settings.skip_bad and len(files) > 1):
                raise
            warn(f"skipping {e}")
            plan.skipped.append(str(e))
            continue
        if settings.plane is not None and source.n_events and settings.plane >= source.planes:
            raise PgenError(f"{f}: --plane {settings.plane} does not exist; its events have {source.planes} plane(s), 0..{source.planes - 1}")
        if source.n_events == 0:
            warn(f"{f}: no events; nothing to import from it")
        plan.sources.append(source)
    if plan.n_events == 0:
        skipped = f" ({len(plan.skipped)} unreadable files skipped)" if plan.skipped else ""
        raise PgenError(f"no events to import in {len(files)} input file(s){skipped}")
    return plan


def _scan_one(f: Path, fmt: str, producer: str | None) -> Source:
    if fmt == "larcv-root":
        t = larcv.root_scan(f, producer)
        return Source(str(f), fmt, t.name, t.n_events, t.pixels_per_event, t.planes, False)
    if fmt == "larcv3":
        t = larcv.larcv3_scan(f, producer)
        return Source(str(f), fmt, t.name, t.n_events, t.pixels_per_event, t.planes, False)
    if fmt == "png":
        mode, (w, h) = _png_header(f)
        return Source(str(f), fmt, "", 1, w * h, 1, mode == "L")
    if fmt == "npy":
        member, shape, dtype, _ = _npy_header(f)
        planes = shape[1] if len(shape) == 4 else 1
        n = 1 if len(shape) == 2 else shape[0]
        return Source(str(f), fmt, member, n, int(np.prod(shape[-2:])) * planes, planes, dtype == np.uint8)
    raise PgenError(f"{f}: unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- PNG and NPY readers


def _png_header(f: Path) -> tuple[str, tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(f) as im:
            mode, size = im.mode, im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types on damaged files
        raise PgenError(f"{f}: not a readable PNG (truncated or corrupt?): {larcv._short(e)}") from None
    if mode not in ("L", "I;16", "I;16B", "I", "F"):
        raise PgenError(f"{f}: a {mode} PNG; pgen imports grayscale PNGs (8- or 16-bit), convert it first")
    return mode, size


def _png_image(f: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(f) as im:
            return np.asarray(im, dtype=np.float32)
    except Exception as e:  # noqa: BLE001
        raise PgenError(f"{f}: not a readable PNG (truncated or corrupt?): {larcv._short(e)}") from None


@contextmanager
def _npy_open(f, member: str):
    if not member:
        with open(f, "rb") as fh:
            yield fh
    else:
        with zipfile.ZipFile(f) as z, z.open(member) as fh:
            yield fh


def _npy_header(f) -> tuple[str, tuple[int, ...], np.dtype, int]:
    """(.npz member or "", shape, dtype, data offset) of a .npy or .npz (array ``images`` or its only one)."""
    try:
        member = ""
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as z:
                names = [n for n in z.namelist() if n.endswith(".npy")]
            member = "images.npy" if "images.npy" in names else (names[0] if len(names) == 1 else "")
            if not member:
                raise PgenError(f"{f}: .npz with arrays {', '.join(n[:-4] for n in names) or 'none'}; name the image array 'images'")
        with _npy_open(f, member) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except PgenError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PgenError(f"{f}: not a readable .npy/.npz file (truncated or corrupt?): {larcv._short(e)}") from None
    if len(shape) not in (2, 3, 4) or dtype.kind not in "biuf" or fortran:
        order = "Fortran-ordered " if fortran else ""
        raise PgenError(f"{f}: {order}array of shape {shape} and dtype {dtype}; expected C-ordered numbers [N, H, W], [N, planes, H, W] or [H, W]")
    return member, shape, dtype, offset


def _npy_events(f: str, start: int, stop: int) -> Iterator[list[np.ndarray]]:
    """Rows ``[start, stop)`` read one at a time (streamed, also from a compressed .npz)."""
    member, shape, dtype, offset = _npy_header(f)
    row_shape = shape if len(shape) == 2 else shape[1:]
    row_bytes = int(np.prod(row_shape)) * dtype.itemsize
    try:
        with _npy_open(f, member) as fh:
            fh.seek(offset + start * row_bytes)
            for _ in range(start, stop):
                buf = fh.read(row_bytes)
                if len(buf) != row_bytes:
                    raise ValueError("array data ends early")
                row = np.frombuffer(buf, dtype=dtype).reshape(row_shape).astype(np.float32)
                yield list(row) if row.ndim == 3 else [row]
    except Exception as e:  # noqa: BLE001
        raise PgenError(f"{f}: cannot read array rows {start}-{stop - 1} (truncated or corrupt?): {larcv._short(e)}") from None


def read_events(source: Source, start: int, stop: int) -> Iterator[list[np.ndarray]]:
    """Events ``[start, stop)`` of one source, each a list of 2-D float32 arrays (one per plane)."""
    if source.format == "larcv-root":
        return larcv.root_events(source.path, source.table, start, stop)
    if source.format == "larcv3":
        return larcv.larcv3_events(source.path, source.table, start, stop)
    if source.format == "png":
        return iter([[_png_image(source.path)]])
    return _npy_events(source.path, start, stop)


# --------------------------------------------------------------------------- preprocessing (pure)


def prepare(image: np.ndarray, s: Settings, uint8: bool, where: str) -> tuple[list[np.ndarray], Counter]:
    """One projection -> the images to store (threshold, crops, scale, rules) and what was dropped."""
    counts: Counter = Counter()
    x = np.array(image, dtype=np.float32)
    if s.threshold is not None:
        x[x < s.threshold] = 0
    if s.crop:
        if s.crop > min(x.shape):
            raise PgenError(f"{where} is {x.shape[0]}x{x.shape[1]}, smaller than --crop {s.crop}")
        if not (x > 0).any():
            counts["dropped_empty"] += 1
            return [], counts
        if s.max_crops == 1:
            windows = [crop_around_charge(x, s.crop)]
        else:
            windows, counts["dropped_overlap"] = cluster_crops(x, s.crop, s.max_crops)
    else:
        windows = [(x, (0, 0))]
    kept = []
    for w, _ in windows:
        y = scale(w, s, uint8)
        if not (y > 0).any():
            counts["dropped_empty"] += 1
        elif np.count_nonzero(y) < s.occupancy * y.size:
            counts["dropped_occupancy"] += 1
        else:
            kept.append(y)
    return kept, counts


def scale(x: np.ndarray, s: Settings, uint8: bool) -> np.ndarray:
    """keep: values unchanged (uint8 sources stay uint8); clip: [0, clip_max] -> 0..255;
    minmax: [0, image max] -> 0..255 per image (loses the energy scale)."""
    if s.scale == "keep":
        return x.astype(np.uint8) if uint8 else x
    top = s.clip_max if s.scale == "clip" else float(x.max())
    if not top or top <= 0:
        return np.zeros(x.shape, np.uint8)
    return np.floor(np.clip(x, 0, top) * (255.0 / top) + 0.5).astype(np.uint8)


def assign_splits(n: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split of each event (0 train, 1 val, 2 test): a seeded permutation, counts rounded half up, train kept non-empty."""
    n_val, n_test = int(n * val_fraction + 0.5), int(n * test_fraction + 0.5)
    while n_val + n_test >= n and n_val + n_test > 0:
        if n_val:
            n_val -= 1
        else:
            n_test -= 1
    split = np.zeros(n, dtype=np.uint8)
    perm = np.random.default_rng(seed).permutation(n)
    split[perm[:n_test]] = 2
    split[perm[n_test : n_test + n_val]] = 1
    return split


# --------------------------------------------------------------------------- decoding and writing


@dataclass(frozen=True)
class Unit:
    """Events ``[start, stop)`` of one source; ``first_event`` is the global index of ``start``."""

    source: Source
    start: int
    stop: int
    first_event: int


@dataclass
class UnitResult:
    events: list[list[tuple[int, np.ndarray]]]  # per event read: the (plane, image) pairs kept
    counts: Counter
    error: str | None = None  # with skip_bad: why the unit's remaining events were not read


def decode(unit: Unit, s: Settings, uint8: bool) -> UnitResult:
    """Read and preprocess one unit (runs in a worker process with ``workers > 1``)."""
    res = UnitResult([], Counter())
    events = read_events(unit.source, unit.start, unit.stop)
    for e in range(unit.start, unit.stop):
        try:
            planes = next(events)
        except StopIteration:
            break
        except PgenError as err:
            if not s.skip_bad:
                raise
            res.error = str(err)
            break
        if s.plane is not None and s.plane >= len(planes):
            raise PgenError(f"{unit.source.path}: event {e} has {len(planes)} plane(s); --plane {s.plane} does not exist")
        kept: list[tuple[int, np.ndarray]] = []
        for p, image in ([(s.plane, planes[s.plane])] if s.plane is not None else enumerate(planes)):
            res.counts["images_read"] += 1
            images, counts = prepare(image, s, uint8, f"{unit.source.path}: event {e} plane {p}")
            res.counts.update(counts)
            kept += [(p, y) for y in images]
        res.events.append(kept)
        res.counts["events_read"] += 1
    return res


def units(plan: Plan) -> list[Unit]:
    """Work units of at most ~UNIT_PIXELS raw pixels (at least one event), in input order."""
    out, g = [], 0
    for src in plan.sources:
        step = int(np.clip(UNIT_PIXELS // max(src.pixels_per_event, 1), 1, 1024))
        out += [Unit(src, a, min(a + step, src.n_events), g + a) for a in range(0, src.n_events, step)]
        g += src.n_events
    return out


def _run(work: list[Unit], s: Settings, uint8: bool, workers: int) -> Iterator[tuple[Unit, UnitResult]]:
    """Decoded units in input order; with ``workers > 1`` at most ``2 * workers`` in flight."""
    if workers <= 1 or len(work) <= 1:
        for u in work:
            yield u, decode(u, s, uint8)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver: workers never inherit the open output file's HDF5 state
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    todo = iter(work)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending = deque((u, pool.submit(decode, u, s, uint8)) for _, u in zip(range(2 * workers), todo))
        try:
            while pending:
                u, fut = pending.popleft()
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise PgenError(f"{u.source.path}: a decoding worker died (out of memory?); retry with fewer --workers") from None
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(decode, nxt, s, uint8)))
                yield u, res
        finally:
            for _, fut in pending:
                fut.cancel()


class _Sink:
    """Buffers images per split and appends them, with ``event`` and ``plane`` beside ``images``."""

    def __init__(self, writer: StoreWriter, dtype):
        self.w, self.dtype = writer, np.dtype(dtype)
        self.shape: tuple[int, ...] | None = None
        self.first_where = ""
        self.buffers: dict[str, list] = {}
        self.written = 0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, split: str, image: np.ndarray, event: int, plane: int, where: str) -> None:
        if self.shape is None:
            self.shape, self.first_where = image.shape, where
        elif image.shape != self.shape:
            raise PgenError(
                f"{where} is {'x'.join(map(str, image.shape))} but {self.first_where} is {'x'.join(map(str, self.shape))}; "
                "images of mixed sizes: import one plane with --plane or cut same-size windows with --crop N"
            )
        buf = self.buffers.setdefault(split, [])
        buf.append((image, event, plane))
        if len(buf) * image.nbytes >= FLUSH_BYTES:
            self.flush(split)

    def flush(self, split: str) -> None:
        buf = self.buffers.get(split)
        if not buf:
            return
        images = np.stack([b[0] for b in buf])
        self.lo, self.hi = min(self.lo, float(images.min())), max(self.hi, float(images.max()))
        g = self.group(split)
        for name, values in (("event", [b[1] for b in buf]), ("plane", [b[2] for b in buf])):
            g.group[name].resize(g.n + len(buf), axis=0)
            g.group[name][g.n :] = values
        g.append(images)
        self.written += len(buf)
        buf.clear()

    def group(self, split: str):
        if split not in self.w.splits:
            g = self.w.split(split, self.shape, self.dtype)
            g.group.create_dataset("event", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
            g.group.create_dataset("plane", shape=(0,), maxshape=(None,), dtype=np.int16, chunks=(4096,))
        return self.w.splits[split]


def write(
    plan: Plan,
    out: str | os.PathLike,
    s: Settings,
    *,
    workers: int = 1,
    progress: Callable[[int], None] = lambda n: None,
    warn: Callable[[str], None] = lambda m: None,
) -> dict[str, int]:
    """Decode, preprocess, split by event and write ``out`` atomically; returns the counts."""
    out = Path(out)
    if any(Path(src.path).resolve() == out.resolve() for src in plan.sources):
        raise PgenError(f"{out}: is also an input; write the dataset to another file")
    uint8 = s.scale != "keep" or all(src.uint8 for src in plan.sources)
    split_of = assign_splits(plan.n_events, s.val_fraction, s.test_fraction, s.seed)
    counts = Counter(files_read=len(plan.sources), files_skipped=len(plan.skipped))
    with StoreWriter(out, source=_source_text(plan), value_range=(0, 0), **_settings_attrs(plan, s)) as w:
        sink = _Sink(w, np.uint8 if uint8 else np.float32)
        for u, res in _run(units(plan), s, uint8, workers):
            counts.update(res.counts)
            if res.error:
                lost = u.stop - u.start - len(res.events)
                counts["events_skipped"] += lost
                warn(f"skipping {lost} unreadable events: {res.error}")
            for k, kept in enumerate(res.events):
                for p, y in kept:
                    sink.add(SPLIT_NAMES[split_of[u.first_event + k]], y, u.first_event + k, p, f"{u.source.path}: event {u.start + k} plane {p}")
            progress(u.stop - u.start)
        for split in list(sink.buffers):
            sink.flush(split)
        counts["images_written"] = sink.written
        if not sink.written:
            raise PgenError(_empty_message(counts, s))
        for split, fraction in zip(SPLIT_NAMES, (1, s.val_fraction, s.test_fraction)):
            if fraction > 0:
                sink.group(split)  # present even when no event landed there
        w.file.attrs["value_range"] = np.array((0, 255) if uint8 else (min(0.0, sink.lo), sink.hi), dtype=np.float64)
        for key in ("files_read", "files_skipped", "events_read", "events_skipped", "images_read", "images_written",
                    "dropped_empty", "dropped_occupancy", "dropped_overlap"):
            w.file.attrs[f"import_{key}"] = int(counts[key])
    return {k: int(v) for k, v in counts.items()}


def _empty_message(counts: Counter, s: Settings) -> str:
    rules = [
        f"{counts['dropped_empty']} with no charge" + (f" above --threshold {s.threshold:g}" if s.threshold is not None else ""),
        f"{counts['dropped_occupancy']} below --min-occupancy {s.occupancy:g}",
        f"{counts['dropped_overlap']} overlapping crops",
    ]
    dropped = ", ".join(r for r in rules if not r.startswith("0 ")) or "none"
    return (
        f"no images left after filtering: read {counts['events_read']} events, {counts['images_read']} images; "
        f"dropped {dropped}; lower --threshold / --min-occupancy or change --crop"
    )


def _source_text(plan: Plan) -> str:
    names = [Path(src.path).name for src in plan.sources]
    fmt = ",".join(sorted({src.format for src in plan.sources}))
    return f"{fmt}: {names[0]}" + (f" + {len(names) - 1} more" if len(names) > 1 else "")


def _settings_attrs(plan: Plan, s: Settings) -> dict:
    settings = asdict(s)
    settings.update(
        format=",".join(sorted({src.format for src in plan.sources})),
        producer=",".join(sorted({src.table for src in plan.sources if src.format.startswith("larcv")})) or None,
        min_occupancy=s.occupancy,
        max_crops_per_image=settings.pop("max_crops"),
    )
    attrs = {f"import_{k}": ("none" if v is None else v) for k, v in settings.items()}
    files = [src.path for src in plan.sources]
    too_long = len(files) > 200  # HDF5 attributes stay small: summarise long lists
    attrs["import_files"] = f"{len(files)} files: {files[0]} ... {files[-1]}" if too_long else files
    return attrs
