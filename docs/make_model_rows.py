"""One figure of test events above samples of several runs, a row each (the README's model comparison).

    python docs/make_model_rows.py docs/lartpc64_models.png RUN_ID [RUN_ID ...] [--n 10] [--checkpoint last]

Runs are read from the MLflow store MLFLOW_TRACKING_URI (or MLflow's default) points to; the
first row holds held-out test events of the first run's dataset. Every tile shares one colour
scale (`pgen.display.event_grid`). Prints which row is which.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checkpoint", default="last")
    args = parser.parse_args()

    from pgen import sample
    from pgen.data import store
    from pgen.display import event_grid, save_png

    rows, names = [], []
    for ref in args.runs:
        gen = sample.generator(ref, "cpu", args.checkpoint)
        if not rows:
            test = store.read_split(gen.config.data.file, "test", n=args.n)["images"]
            rows.append(np.asarray(test, np.float32))
            names.append("test data")
        images = next(sample.samples(gen, 64, seed=args.seed, batch_size=64))[: args.n]
        rows.append(images.reshape(len(images), *images.shape[-2:]))
        names.append(gen.model)
    save_png(event_grid(np.concatenate(rows), ncols=args.n, tile=64), args.out)
    print(f"wrote {args.out}: rows " + ", ".join(names))


if __name__ == "__main__":
    main()
