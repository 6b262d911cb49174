"""Evaluation figures (seaborn on matplotlib's Agg backend), each written as a PNG file.

- `loss_curves`: a run's metric histories (training losses per step, validation per epoch);
- `distances`: nearest-neighbour Hamming distances, generated-to-train against test-to-train
  (memorisation) and within-set (diversity);
- `statistics`: each image statistic's distribution, data against samples;
- `nearest_pairs`: generated images beside their nearest training images;
- `comparison`: the ``eval.*`` metrics of several runs (``pgen compare``).

Plain functions of arrays and dicts: no MLflow, no files other than the one each writes.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

LABELS = {
    "occupancy": "occupancy (lit fraction)",
    "charge": "charge of lit pixels",
    "pixel_value": "lit pixel value",
    "clusters": "clusters per image",
    "length": "largest cluster length (px)",
    "width": "largest cluster width (px)",
    "dark": "dark (near-empty) image",
}
LOG_X = {"charge", "pixel_value"}
REFERENCE = {"eval.copy_rate": 0.01, "eval.diversity_ratio": 1.0, "eval.memorisation_ratio": 1.0}  # held-out data's values  # heavy-tailed: shown on a log axis


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _save(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    from pgen.display import atomic_png

    try:
        with atomic_png(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


SAMPLE_KEYS = ("val.dark_fraction", "val.occupancy_samples", "val.occupancy_data")
NOT_LOSSES = ("beta", "per_s", "time", "lr", "elbo", "intensity", "occupancy", "dark", "mean_image", "sample_distance")


def loss_curves(histories: Mapping[str, Sequence[tuple[int, float]]], path, *, title: str = "") -> None:
    """Training losses by step, validation losses by epoch and the samples' dark fraction and occupancy
    by epoch, one panel each; ``histories``: metric key -> [(step, value)]."""
    plt, sns = _plt()

    def losses(prefix):
        return sorted(k for k in histories if k.startswith(prefix) and not any(w in k[len(prefix):] for w in NOT_LOSSES))

    panels = [("training losses", "step", losses("train.")), ("validation losses", "epoch", losses("val.")),
              ("samples during training", "epoch", [k for k in SAMPLE_KEYS if k in histories])]
    panels = [p for p in panels if p[2]]
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no metric history", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, xlabel, keys) in zip(axes[0], panels):
        for key in keys:
            pts = sorted(histories[key])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, lw=1.2, marker="o" if len(pts) < 40 else None, ms=3)
        ax.set_xlabel(xlabel)
        ax.set_title(name)
        finite = [v for k in keys for _, v in histories[key] if np.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 50:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def distances(gen_train, test_train, gen_gen, test_test, path, *, copy_threshold: float | None = None, title: str = "") -> None:
    """Histograms of nearest-neighbour Hamming distances: memorisation (left) and diversity (right)."""
    plt, sns = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, pairs, name in (
        (axes[0], (("generated → train", gen_train), ("test → train", test_train)), "nearest training image"),
        (axes[1], (("generated → generated", gen_gen), ("test → test", test_test)), "nearest image in the same set"),
    ):
        values = np.concatenate([np.asarray(v, float) for _, v in pairs])
        bins = np.histogram_bin_edges(values, bins=min(60, max(10, int(np.sqrt(len(values))))))
        for (label, v), color in zip(pairs, ("C3", "C0")):
            sns.histplot(np.asarray(v, float), bins=bins, stat="density", element="step", fill=True, alpha=0.35,
                         color=color, label=f"{label} (median {np.median(v):.0f})", ax=ax)
        ax.set_xlabel(f"Hamming distance to the {name} (pixels)")
        ax.legend(fontsize=8)
    if copy_threshold is not None:
        axes[0].axvline(copy_threshold, color="k", ls="--", lw=1)
        axes[0].text(copy_threshold, axes[0].get_ylim()[1] * 0.95, " copy threshold", fontsize=7, va="top")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def statistics(data: Mapping[str, np.ndarray], samples: Mapping[str, np.ndarray], comparison: Mapping[str, Mapping[str, float]],
               path, *, title: str = "") -> None:
    """A panel per statistic: its distribution in the test data against the samples, with the normalised W1."""
    plt, sns = _plt()
    names = [k for k in LABELS if k in data and k in samples]
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.1 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        d, s = np.asarray(data[name], float), np.asarray(samples[name], float)
        w = comparison.get(name, {}).get("w1_norm", float("nan"))
        if name == "dark":
            bars = ax.bar(["data", "samples"], [d.mean() if d.size else 0, s.mean() if s.size else 0], color=["C0", "C3"])
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
            ax.set_ylim(0, max(0.05, 1.25 * max(b.get_height() for b in bars)))
            ax.set_ylabel("fraction of images")
        else:
            log = name in LOG_X
            both = np.concatenate([d, s])
            both = both[both > 0] if log else both
            if both.size:
                lo, hi = (both.min(), both.max())
                integer = name in ("clusters", "length", "width") and hi - lo < 60
                if integer:
                    bins = np.arange(lo - 0.5, hi + 1.5)
                elif log:
                    bins = np.geomspace(max(lo, 1e-9), max(hi, lo * 1.01 + 1e-9), 50)
                else:
                    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
                for v, label, color in ((d, "data (test)", "C0"), (s, "samples", "C3")):
                    v = v[v > 0] if log else v
                    if v.size:
                        sns.histplot(v, bins=bins, stat="density", element="step", fill=True, alpha=0.35, color=color,
                                     label=label, ax=ax)
                if log:
                    ax.set_xscale("log")
            ax.legend(fontsize=7)
        ax.set_title(f"{LABELS[name]}\nW1/spread {w:.3g}", fontsize=9)
        ax.set_xlabel("")
    for ax in axes.ravel()[len(names):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def nearest_pairs(samples: np.ndarray, nearest: np.ndarray, dist: Sequence[int], path, *, vmax: float | None = None) -> None:
    """Rows of generated images (top) over their nearest training images (below), distance in each title."""
    plt, _ = _plt()
    from matplotlib.colors import LogNorm

    samples = samples.reshape(len(samples), *samples.shape[-2:])
    nearest = nearest.reshape(len(nearest), *nearest.shape[-2:])
    n = len(samples)
    cols = min(8, n)
    rows = -(-n // cols)
    vmax = vmax or float(max(np.max(samples), np.max(nearest), 1e-6))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.6 * cols, 3.4 * rows), squeeze=False)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        for ax, img in ((axes[2 * r, c], samples), (axes[2 * r + 1, c], nearest)):
            ax.set_axis_off()
            if i < n:
                ax.imshow(np.clip(img[i], vmax * 1e-3, vmax), cmap="inferno", norm=LogNorm(vmax * 1e-3, vmax), interpolation="nearest")
        if i < n:
            axes[2 * r, c].set_title(f"d={int(dist[i])}", fontsize=8)
    fig.suptitle("generated (upper row) and its nearest training image (lower row)", fontsize=9)
    _save(fig, path)


def comparison(rows: Sequence[Mapping[str, object]], metrics: Sequence[str], path) -> None:
    """One bar panel per metric, runs in rank order; ``rows``: dicts with ``label`` and the metrics."""
    plt, sns = _plt()
    metrics = [m for m in metrics if any(isinstance(r.get(m), (int, float)) and np.isfinite(r.get(m)) for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)), 0.45 * len(rows) + 1.6), squeeze=False)
    labels = [str(r["label"]) for r in rows]
    for ax, m in zip(axes[0], metrics):
        vals = [float(r.get(m, np.nan)) if r.get(m) is not None else np.nan for r in rows]
        sns.barplot(x=vals, y=labels, ax=ax, color="C0", orient="h")
        ax.set_title(m, fontsize=9)
        ax.set_ylabel("")
        if m in REFERENCE:  # what held-out data itself scores
            ax.axvline(REFERENCE[m], color="k", ls="--", lw=1)
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.tight_layout()
    _save(fig, path)
