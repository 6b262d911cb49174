"""Draw samples of a trained run's generator (its MLflow pyfunc model) as an event-display grid PNG.

    python docs/make_training_samples.py RUN_REF docs/mnist_vae_samples.png [--n 64] [--seed 0]

RUN_REF is a run id, EXPERIMENT:latest or EXPERIMENT:best, in the MLflow store that
MLFLOW_TRACKING_URI (or MLflow's default) points to. The images are in the dataset's stored
units (the pixel scaling undone), drawn with `pgen.display.event_grid`.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import mlflow

    from pgen import tracking
    from pgen.display import event_grid, save_png

    run = tracking.resolve_run(args.run)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/generator")
    images = model.predict(np.array([[args.n]]), params={"seed": args.seed})
    save_png(event_grid(images, ncols=int(np.ceil(np.sqrt(args.n)))), args.out)
    print(f"wrote {args.out}: {args.n} samples of run {run.info.run_id} ({run.data.tags.get('pgen.model')} on "
          f"{run.data.tags.get('pgen.dataset')}, val.loss {run.data.metrics.get('val.loss')})")


if __name__ == "__main__":
    main()
