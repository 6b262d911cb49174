"""``pgen compare``: the ``eval.*`` metrics of several evaluated runs side by side, ranked by the summary score.

A reference is a training run (its latest evaluation counts), an evaluate run, or a whole
experiment ``EXPERIMENT:*`` (the latest evaluation of every run evaluated in it). Runs rank by
``eval.score`` (the mean normalised Wasserstein distance of the image statistics; lower is
better); the table also shows memorisation and diversity, and the Frechet distance on labelled data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pgen import tracking
from pgen.errors import PgenError

COLUMNS = (  # (metric, header, format)
    ("eval.score", "score", "{:.3f}"),
    ("eval.copy_rate", "copy", "{:.3f}"),
    ("eval.memorisation_ratio", "nn/train", "{:.2f}"),
    ("eval.diversity_ratio", "diversity", "{:.2f}"),
    ("eval.dark_fraction", "dark", "{:.3f}"),
    ("eval.w1_norm.occupancy", "W1 occ", "{:.3f}"),
    ("eval.w1_norm.charge", "W1 charge", "{:.3f}"),
    ("eval.w1_norm.length", "W1 length", "{:.3f}"),
    ("eval.fid", "FID", "{:.2f}"),
)
FIGURE = ("eval.score", "eval.copy_rate", "eval.diversity_ratio", "eval.dark_fraction", "eval.fid")


@dataclass
class Row:
    source_run: str
    eval_run: str
    name: str
    model: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.model})"


def rows(refs: list[str]) -> list[Row]:
    """The evaluations the references name, ranked by ``eval.score`` (runs with none last)."""
    if not refs:
        raise PgenError("give at least one run: RUN_ID, EXPERIMENT:latest, EXPERIMENT:best or EXPERIMENT:*")
    found: dict[str, Row] = {}
    for ref in refs:
        for run in _evaluations(ref):
            row = _row(run)
            found.setdefault(row.source_run, row)
    ranked = sorted(found.values(), key=lambda r: (not math.isfinite(r.metrics.get("eval.score", math.nan)),
                                                   r.metrics.get("eval.score", math.inf)))
    return ranked


def _evaluations(ref: str) -> list:
    c = tracking.client()
    if ref.endswith(":*"):
        name = ref[:-2]
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise PgenError(f"'{ref}': no experiment named '{name}'")
        runs = c.search_runs([exp.experiment_id], "tags.`pgen.kind` = 'evaluate' and attributes.status = 'FINISHED'",
                             order_by=["attributes.start_time DESC"], max_results=5000)
        if not runs:
            raise PgenError(f"'{ref}': experiment '{name}' has no finished evaluate runs; run `pgen evaluate` first")
        return runs
    if ":" not in ref:
        try:
            run = c.get_run(ref)
        except Exception:  # noqa: BLE001 - MlflowException for an unknown id
            raise PgenError(f"run reference '{ref}': no such run") from None
        if run.data.tags.get("pgen.kind") == "evaluate":
            return [run]
    source = tracking.resolve_run(ref)
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, f"tags.`pgen.kind` = 'evaluate' and tags.`pgen.source_run` = '{source.info.run_id}' "
                               "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise PgenError(f"run {source.info.run_id} ({source.info.run_name}) has no finished evaluation; "
                        f"run `pgen evaluate {source.info.run_id}` first")
    return runs[:1]


def _row(run) -> Row:
    source = run.data.tags.get("pgen.source_run", "")
    name = run.info.run_name or run.info.run_id[:8]
    try:
        source_run = tracking.client().get_run(source)
        name = source_run.info.run_name or name
    except Exception:  # noqa: BLE001 - the source run was deleted: keep the evaluation's own name
        pass
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("eval.")}
    return Row(source, run.info.run_id, name, run.data.tags.get("pgen.model", "?"), metrics)


def table(ranked: list[Row]) -> str:
    """A plain-text table, one line per run in rank order."""
    cols = [c for c in COLUMNS if any(c[0] in r.metrics for r in ranked)]
    header = ["#", "run", "model", *[h for _, h, _ in cols], "evaluate run"]
    lines = [header]
    for i, r in enumerate(ranked, 1):
        cells = [str(i), r.name, r.model]
        for key, _, fmt in cols:
            v = r.metrics.get(key)
            cells.append("-" if v is None else fmt.format(v))
        cells.append(r.eval_run[:12])
        lines.append(cells)
    widths = [max(len(line[j]) for line in lines) for j in range(len(header))]
    out = ["  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def figure(ranked: list[Row], path) -> None:
    from pgen.evaluate import plots

    plots.comparison([{"label": r.label, **r.metrics} for r in ranked], FIGURE, path)
