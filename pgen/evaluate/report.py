"""``pgen evaluate``: how good a trained run's samples are, recorded as an ``evaluate`` MLflow run.

`evaluate` pulls the run's checkpoint from MLflow and draws samples (or reads a deploy file),
then measures against the run's dataset:

- memorisation: every sample's nearest training image by Hamming distance on binarised images,
  against the same for held-out test images (the baseline to match, not beat), and the copy
  rate (`hamming.copy_rate`);
- diversity: every sample's nearest other sample against test-to-test, on sets of equal size
  (a nearest neighbour is closer in a bigger set, so the sizes must match);
- image statistics (`stats`): 1-D Wasserstein distances, raw and over the data's spread, and
  their mean, the summary score (lower is better);
- on a labelled dataset (MNIST): a Frechet distance on a cached classifier's features and the
  samples' class histogram (`classifier`).

Binarisation threshold, by default the dataset's noise floor: half the zero-suppression
threshold the file records (synthetic ``threshold_adc``, imported ``import_threshold``), so
every charge the detector kept is lit and a generator's faint haze is not; a file that records
none uses 2% of its value range. Everything streams in batches (training images are held only
bit-packed), so memory stays bounded by the packed sets. Metrics are named ``eval.*``; plots,
``report.json`` and the sample grid are artifacts; the source run gets the summary metrics.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pgen import config, tracking
from pgen.data.store import default_threshold
from pgen.errors import PgenError
from pgen.evaluate import hamming, stats

SUMMARY = ("eval.score", "eval.copy_rate", "eval.memorisation_ratio", "eval.diversity_ratio", "eval.dark_fraction", "eval.fid")
KEEP_BYTES = 512 * 1024**2  # samples kept in memory for the nearest-image figure (beyond it, the first ones only)
PAIRS = 8  # generated images shown beside their nearest training image, per row kind
BATCH = 512
PLOTS = ("loss_curves", "nn_distances", "statistics", "nearest_train")


@dataclass
class Evaluation:
    run_id: str  # the evaluate run
    source_run: str
    model: str
    metrics: dict[str, float]
    report: dict
    out: Path | None


def evaluate(ref: str, *, n_samples: int = 5000, data: str | None = None, threshold: float | None = None,
             device: str = "auto", samples_file: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             seed: int = 0, batch_size: int = 256, checkpoint: str = "best", experiment: str | None = None,
             attach_run_id: str | None = None, echo: Callable[[str], None] = print) -> Evaluation:
    import mlflow

    from pgen import sample
    from pgen.data import builtin, store

    if n_samples < 2:
        raise PgenError(f"--n-samples must be at least 2 (diversity needs pairs), got {n_samples}")
    if batch_size < 1:
        raise PgenError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out) if out else None
    if out is not None and out.exists() and not out.is_dir():
        raise PgenError(f"--out {out} is a file; give a folder for the plots and report.json")

    # ---- the source run, its dataset and the samples' origin (all checked before any run opens)
    run = tracking.resolve_run(ref)
    source_id, model = run.info.run_id, run.data.tags.get("pgen.model", "")
    gen = None
    if samples_file is None:
        gen = sample.generator(source_id, device, checkpoint)
        cfg = gen.config
    else:
        from pgen.train import resolve_device

        dev = resolve_device(device)
        cfg = config.from_flat(config.parse_toml(tracking.read_text(source_id, "config.toml"), source=f"run {source_id} config.toml"),
                               source=f"run {source_id} config.toml")
    data_file = builtin.resolve(data, progress=True) if data else Path(cfg.data.file)
    if not data_file.exists():
        raise PgenError(f"run {source_id} was trained on {data_file}, which is not here; give --data FILE")
    with store.open_store(data_file) as f:
        attrs = store.attrs_of(f)
        names = store.split_names(f)
        shape = tuple(f["train"]["images"].shape[1:]) if "train" in names else None
        labelled = "train" in names and "labels" in f["train"]
    if shape is None:
        raise PgenError(f"{data_file}: no 'train' split to measure memorisation against")
    held_out = next((s for s in ("test", "val") if s in names), None)
    if held_out is None:
        raise PgenError(f"{data_file}: no 'test' or 'val' split for the held-out baseline")
    img_shape = tuple(cfg.shape[1:]) if cfg.shape[0] == 1 else tuple(cfg.shape)
    if img_shape != shape:
        raise PgenError(f"run {source_id} makes {'x'.join(map(str, img_shape))} images but {data_file} holds "
                        f"{'x'.join(map(str, shape))}; give the run's own --data")
    lo, hi = (attrs.get("value_range") or [cfg.data.value_min, cfg.data.value_max])[:2]
    if threshold is None:
        threshold, threshold_from = default_threshold(attrs)
    else:
        threshold_from = "--threshold"
        if not lo <= threshold < hi:
            raise PgenError(f"--threshold {threshold:g} is outside the data's range [{lo:g}, {hi:g}): every pixel would be "
                            f"{'lit' if threshold < lo else 'dark'}")
    if samples_file is not None:
        n_samples = _check_samples_file(Path(samples_file), shape, n_samples)

    # ---- the evaluate run
    tags = {"pgen.kind": "evaluate", "pgen.model": model, "pgen.source_run": source_id, "pgen.dataset": data_file.stem}
    if run.info.run_name:
        tags["mlflow.runName"] = f"eval-{run.info.run_name}"
    if attach_run_id is None and experiment is None:
        experiment = tracking.client().get_experiment(run.info.experiment_id).name
    run_id = tracking.start(attach_id=attach_run_id, experiment=None if attach_run_id else experiment, tags=tags)
    with tracking.ending_on_error(plain=(PgenError,)):
        params = {"n_samples": n_samples, "threshold": threshold, "threshold_from": threshold_from, "seed": seed,
                  "data": str(data_file), "held_out": held_out, "device": device, "batch_size": batch_size,
                  "checkpoint": None if samples_file else checkpoint,
                  "samples_file": str(samples_file) if samples_file else None, "source_run": source_id}
        tracking.log_params(run_id, params)
        with tempfile.TemporaryDirectory() as tmp:
            folder = out or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            draws = (sample.samples(gen, n_samples, seed=seed, batch_size=batch_size) if gen is not None
                     else store.iter_images(samples_file, "samples", batch=BATCH))
            result = _measure(draws, n_samples, data_file, held_out, threshold, labelled, gen.device if gen else dev,
                              folder, run, echo)
            result["params"] = params
            result["seconds"] = round(time.perf_counter() - t0, 2)
            metrics = result["metrics"]
            log = tracking.MetricLog(run_id)
            log.add(metrics, 0)
            log.flush()
            (folder / "report.json").write_text(json.dumps(result, indent=2, default=_plain) + "\n")
            mlflow.log_artifact(str(folder / "report.json"))
            for name in PLOTS:  # only pgen's own figures, whatever else --out holds
                mlflow.log_artifact(str(folder / f"{name}.png"), "plots")
        summary = {k: v for k, v in metrics.items() if k in SUMMARY}
        source_log = tracking.MetricLog(source_id)
        source_log.add(summary, 0)
        source_log.flush()
        tracking.client().set_tag(source_id, "pgen.evaluation", run_id)
    tracking.end("FINISHED")
    return Evaluation(run_id, source_id, model, metrics, result, out)


def _check_samples_file(path: Path, shape: tuple[int, ...], n_samples: int) -> int:
    from pgen.data import store

    with store.open_store(path) as f:
        if "samples" not in store.split_names(f):
            raise PgenError(f"{path}: no 'samples' split (write one with `pgen deploy`)")
        got = tuple(f["samples"]["images"].shape)
    if got[1:] != shape:
        raise PgenError(f"{path}: samples are {'x'.join(map(str, got[1:]))} but the run's data is {'x'.join(map(str, shape))}")
    if got[0] < 2:
        raise PgenError(f"{path}: {got[0]} samples; at least 2 are needed")
    return min(n_samples, got[0])


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- the measurements


def _measure(draws: Iterator[np.ndarray], n_samples: int, data_file: Path, held_out: str, threshold: float,
             labelled: bool, device, folder: Path, run, echo) -> dict:
    import mlflow

    from pgen.data import store
    from pgen.display import event_grid
    from pgen.evaluate import plots
    from pgen.progress import progress_bar

    clf = None
    if labelled:
        from pgen.evaluate import classifier

        clf = classifier.classifier_for(data_file, device=device, progress=echo)

    # samples: packed bits, statistics, features; the images themselves only while they fit KEEP_BYTES
    echo(f"drawing {n_samples} samples")
    s_packed, s_stats, s_feat, s_pred, kept = [], [], [], [], []
    kept_bytes, done = 0, 0
    with progress_bar(n_samples, "samples") as advance:
        for images in draws:
            images = np.asarray(images[: n_samples - done], dtype=np.float32)
            images = images.reshape(len(images), *images.shape[-2:]) if images.ndim == 4 and images.shape[1] == 1 else images
            done += len(images)
            s_packed.append(hamming.pack(images, threshold))
            s_stats.append(stats.image_statistics(images, threshold))
            if clf is not None:
                s_feat.append(clf.features(images))
                s_pred.append(clf.labels_of(s_feat[-1]))
            if kept_bytes < KEEP_BYTES:
                kept.append(images)
                kept_bytes += images.nbytes
            advance(len(images))
            if done >= n_samples:
                break
    s_packed = np.concatenate(s_packed)
    samples = np.concatenate(kept)
    s_stats = _merge(s_stats)
    mlflow.log_image(event_grid(samples[:64]), "samples.png")

    echo(f"reading {data_file.name}: train (bit-packed) and {held_out}")
    t_packed = np.concatenate([hamming.pack(x, threshold) for x in store.iter_images(data_file, "train", batch=2048)])
    h_packed, h_stats, h_feat, h_labels = [], [], [], []
    for x in store.iter_images(data_file, held_out, batch=BATCH):
        x = np.asarray(x, dtype=np.float32)
        h_packed.append(hamming.pack(x, threshold))
        h_stats.append(stats.image_statistics(x, threshold))
        if clf is not None:
            h_feat.append(clf.features(x))
    h_packed, h_stats = np.concatenate(h_packed), _merge(h_stats)

    # ---- Hamming: memorisation and diversity
    engine = hamming.engine_for(device)
    m = min(len(s_packed), len(h_packed))
    echo(f"Hamming nearest neighbours ({engine} on {device}): {len(s_packed)} + {len(h_packed)} against {len(t_packed)} "
         f"training images; diversity on {m} + {m}")
    with progress_bar(len(s_packed) + len(h_packed) + 2 * m, "nearest neighbours") as advance:
        d_st, i_st = hamming.nearest(s_packed, t_packed, device=device, progress=advance)
        d_ht, _ = hamming.nearest(h_packed, t_packed, device=device, progress=advance)
        d_ss, _ = hamming.nearest(s_packed[:m], s_packed[:m], exclude_self=True, device=device, progress=advance)
        d_hh, _ = hamming.nearest(h_packed[:m], h_packed[:m], exclude_self=True, device=device, progress=advance)
    copy = hamming.copy_rate(d_st, d_ht)
    # near-empty samples sit close to the sparsest training images whatever the model learnt: the
    # copy rate among lit images (both sides) separates memorising from going dark
    s_lit, h_lit = s_stats["dark"] == 0, h_stats["dark"] == 0
    copy_lit = hamming.copy_rate(d_st[s_lit], d_ht[h_lit]) if s_lit.any() and h_lit.any() else None

    metrics: dict[str, float] = {
        "eval.copy_rate": copy.rate,
        "eval.copy_threshold": copy.threshold,
        "eval.exact_copy_fraction": float(np.mean((d_st == 0) & (hamming.popcount(s_packed) > 0))),
        "eval.nn_gen_train_median": float(np.median(d_st)),
        "eval.nn_test_train_median": float(np.median(d_ht)),
        "eval.nn_gen_gen_median": float(np.median(d_ss)),
        "eval.nn_test_test_median": float(np.median(d_hh)),
        "eval.nn_gen_train_mean": float(np.mean(d_st)),
        "eval.nn_test_train_mean": float(np.mean(d_ht)),
        "eval.memorisation_ratio": hamming.median_ratio(d_st, d_ht),
        "eval.diversity_ratio": hamming.median_ratio(d_ss, d_hh),
    }

    if copy_lit is not None:
        metrics["eval.copy_rate_lit"] = copy_lit.rate

    # ---- image statistics
    comparison = stats.compare(h_stats, s_stats)
    for name, c in comparison.items():
        metrics[f"eval.w1.{name}"] = c["w1"]
        metrics[f"eval.w1_norm.{name}"] = c["w1_norm"]
        metrics[f"eval.mean.{name}"] = c["mean_samples"]
        metrics[f"eval.data_mean.{name}"] = c["mean_data"]
    metrics["eval.score"] = stats.summary_score(comparison)
    metrics["eval.dark_fraction"] = comparison["dark"]["mean_samples"]

    report: dict = {"source_run": run.info.run_id, "model": run.data.tags.get("pgen.model", ""), "data": str(data_file),
                    "held_out": held_out, "threshold": threshold, "n_samples": len(s_packed), "n_train": len(t_packed),
                    "n_held_out": len(h_packed), "engine": engine, "statistics": comparison,
                    "distances": {k: _quantiles(v) for k, v in (("gen_train", d_st), ("test_train", d_ht),
                                                                 ("gen_gen", d_ss), ("test_test", d_hh))}}

    # ---- labelled data: Frechet distance on the classifier's features, class histogram
    if clf is not None:
        from pgen.evaluate import classifier

        h_feat = np.concatenate(h_feat)
        h_labels = store.read_split(data_file, held_out)["labels"]
        s_feat, s_pred = np.concatenate(s_feat), np.concatenate(s_pred)
        train_feat = clf.features(store.read_split(data_file, "train", n=len(h_feat))["images"])
        hist_s = classifier.class_histogram(s_pred, clf.n_classes)
        hist_d = classifier.class_histogram(np.asarray(h_labels, np.int64), clf.n_classes)
        metrics.update({
            "eval.fid": classifier.frechet_distance(s_feat, h_feat),
            "eval.fid_baseline": classifier.frechet_distance(train_feat, h_feat),
            "eval.classes_covered": float(classifier.mode_coverage(hist_s, hist_d)),
            "eval.class_kl": float(np.sum(np.where(hist_s > 0, hist_s * np.log(np.maximum(hist_s, 1e-12) / np.maximum(hist_d, 1e-12)), 0))),
            "eval.classifier_accuracy": clf.test_accuracy,
        })
        report["classes"] = {"samples": hist_s.tolist(), "data": hist_d.tolist()}
    report["metrics"] = metrics

    # ---- plots
    echo(f"plots -> {folder}")
    title = f"{run.data.tags.get('pgen.model', '')} run {run.info.run_name or run.info.run_id[:8]}"
    plots.loss_curves(_histories(run.info.run_id), folder / "loss_curves.png", title=title)
    plots.distances(d_st, d_ht, d_ss, d_hh, folder / "nn_distances.png", copy_threshold=copy.threshold, title=title)
    plots.statistics(h_stats, s_stats, comparison, folder / "statistics.png", title=title)
    k = len(samples)
    closest = [int(i) for i in np.argsort(d_st[:k], kind="stable")[:PAIRS]]
    chosen = closest + [i for i in range(k) if i not in closest][:PAIRS]
    nearest_train = _read_rows(data_file, "train", i_st[chosen])
    plots.nearest_pairs(samples[chosen], nearest_train, d_st[chosen], folder / "nearest_train.png")
    return report


def _quantiles(d: np.ndarray) -> dict:
    q = np.percentile(d, [0, 1, 5, 25, 50, 75, 95, 100])
    return {"n": int(len(d)), "mean": float(np.mean(d)), **{f"p{p}": float(v) for p, v in zip((0, 1, 5, 25, 50, 75, 95, 100), q)}}


def _merge(parts: list[dict]) -> dict[str, np.ndarray]:
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    pv = merged.get("pixel_value")
    if pv is not None and len(pv) > 1_000_000:  # the pooled spectrum, evenly thinned like each part
        merged["pixel_value"] = pv[np.linspace(0, len(pv) - 1, 1_000_000).astype(np.int64)]
    return merged


def _read_rows(path: Path, split: str, rows: np.ndarray) -> np.ndarray:
    """Images at ``rows`` (any order, repeats allowed) of a split."""
    import h5py

    uniq, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    with h5py.File(path, "r") as f:
        got = f[split]["images"][uniq.tolist()]
    return np.asarray(got, np.float32)[inverse]


def _histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The run's metric histories (``train.*`` and ``val.*``), from MLflow."""
    c = tracking.client()
    keys = [k for k in c.get_run(run_id).data.metrics if k.startswith(("train.", "val."))]
    return {k: [(m.step, m.value) for m in c.get_metric_history(run_id, k)] for k in keys}
