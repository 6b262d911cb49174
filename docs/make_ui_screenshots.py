"""Screenshots of the real MLflow UI (headless Chromium) over a store of pgen runs, for the README.

    python docs/make_ui_screenshots.py --store sqlite:///mlflow.db --artifacts mlruns \
        --experiment tune-lartpc64 --compare-best 5 --out docs/ui_tune_compare.png
    python docs/make_ui_screenshots.py ... --experiment lartpc64 --out docs/ui_lartpc64_runs.png
    python docs/make_ui_screenshots.py ... --run RUN_ID --artifact samples.png --out docs/ui_eval_samples.png

Uses tests/mlflow_ui.py (the browser test's helpers): `mlflow ui` on 127.0.0.1 with job
execution off, Debian's chromium and chromedriver through Selenium.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--experiment")
    parser.add_argument("--compare-best", type=int, default=0, help="compare the N training runs with the lowest val.loss")
    parser.add_argument("--run")
    parser.add_argument("--artifact")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import mlflow

    import mlflow_ui as ui

    reason = ui.available()
    if reason:
        sys.exit(reason)
    client = mlflow.MlflowClient(tracking_uri=args.store)
    with ui.mlflow_ui(args.store, args.artifacts) as base, ui.chromium() as browser:
        if args.run:
            run = client.get_run(args.run)
            url = ui.run_url(base, run.info.experiment_id, args.run) + (f"/artifacts/{args.artifact}" if args.artifact else "")
            ui.show(browser, url, [run.info.run_name], screenshot=args.out)
        else:
            exp = client.get_experiment_by_name(args.experiment)
            if args.compare_best:
                runs = client.search_runs([exp.experiment_id], "tags.`pgen.kind` = 'train' and metrics.`val.loss` > 0",
                                          order_by=["metrics.`val.loss` ASC"], max_results=args.compare_best)
                ids = [r.info.run_id for r in runs]
                ui.show(browser, ui.compare_url(base, exp.experiment_id, ids), [runs[0].info.run_name, "val.loss"],
                        screenshot=args.out)
            else:
                ui.show(browser, ui.experiment_url(base, exp.experiment_id), [args.experiment], screenshot=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
