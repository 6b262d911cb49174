"""Training throughput of pgen (with MLflow logging) against a plain hand-written PyTorch loop.

Same model, data, batch size and epochs; both in this process, alternated (plain, pgen, plain,
pgen, ...) so a busy machine slows both alike; the best of the repeats counts. pgen logs to a
temporary sqlite MLflow store (created here, deleted after).

Figures:
- training images/s: images through the optimizer / time in the training steps of the epochs
  (pgen: its own `perf.train_time_s` per epoch, which includes fetching batches, accumulating
  metrics and the synchronised loss logging every `--log-every` steps; plain: the same span);
- end to end: the whole call, pgen's validation pass, sample grids, checkpoints, MLflow
  run bookkeeping and model logging included (the plain loop does none of these).

    python benchmarks/train_overhead.py                       # MNIST (PGEN_MNIST_DIR) MLP VAE, 3 epochs
    python benchmarks/train_overhead.py --model gan --epochs 2
    python benchmarks/train_overhead.py --data path/to/file.h5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def plain_loop(family: str, images, shape, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    """The reference: a hand-written loop, no logging, no validation. Returns (images/s, seconds)."""
    import torch
    import torch.nn.functional as F

    from pgen.models import gan, vae

    torch.manual_seed(seed)
    n = len(images)
    steps_per_epoch = n // batch_size
    if family == "vae":
        model = vae.MlpVAE(shape, 20, (400,))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        g, d = gan.build(100, shape)
        opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n)
        for i in range(steps_per_epoch):
            x = images[order[i * batch_size : (i + 1) * batch_size]]
            if family == "vae":
                mu, logvar = model.encode(x)
                z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
                logits = model.decode(z)
                recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
                loss = (recon + kl) / len(x)
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                fake = g(torch.randn(len(x), 100))
                opt_d.zero_grad()
                real_logits, fake_logits = d(x), d(fake.detach())
                loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
                    F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
                loss_d.backward()
                opt_d.step()
                opt_g.zero_grad()
                out = d(fake)
                loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
                loss_g.backward()
                opt_g.step()
    seconds = time.perf_counter() - start
    return epochs * steps_per_epoch * batch_size / seconds, seconds


def pgen_run(family: str, data: str, epochs: int, batch_size: int, seed: int, log_every: int) -> tuple[float, float]:
    """pgen's training with full MLflow logging to a temporary store. Returns (training images/s, end-to-end seconds)."""
    import mlflow

    from pgen import train

    folder = Path(tempfile.mkdtemp(prefix="pgen-bench-"))
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    try:
        os.chdir(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        mlflow.MlflowClient().search_experiments()  # create the schema outside the timed span
        over = {"data.path": data, "train.epochs": epochs, "train.batch_size": batch_size, "train.seed": seed,
                "train.log_every": log_every, "train.device": "cpu"}
        if family == "vae":
            over.update({"model.arch": "mlp", "model.hidden": "400", "model.latent_dim": 20, "train.lr": 1e-3})
        else:  # the plain loop has no R1 penalty: the same work on both sides
            over.update({"model.r1_gamma": 0.0, "model.latent_dim": 100})
        start = time.perf_counter()
        result = train.run(family, overrides=over, progress=False)
        seconds = time.perf_counter() - start
        history = mlflow.MlflowClient().get_metric_history(result.run_id, "perf.train_time_s")
        n_train = len(train.make_batches(result.config, "train", __import__("torch").device("cpu"), train=True)) * batch_size
        return epochs * n_train / sum(m.value for m in history), seconds
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
        mlflow.set_tracking_uri(old_uri)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", help="pgen dataset file or built-in name [mnist]")
    parser.add_argument("--model", choices=("vae", "gan"), default="vae")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from pgen import config
    from pgen.data import builtin
    from pgen.data.dataset import ImageDataset
    from pgen.train import data_facts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    path = builtin.resolve(args.data)
    facts = data_facts(path)
    cfg = config.complete(config.build(args.model, {}, {"data.path": str(path), "train.batch_size": args.batch_size}), facts)
    ds = ImageDataset(path, "train", in_memory=True)
    images = config.to_model(ds.read(range(len(ds)))[0], cfg.data).contiguous()
    print(f"data {path} ({len(images)} train images {tuple(images.shape[1:])}), model {args.model}, "
          f"batch {args.batch_size}, {args.epochs} epochs, {torch.get_num_threads()} threads, torch {torch.__version__}")

    plain, ours = [], []
    for r in range(args.repeats):
        plain.append(plain_loop(args.model, images, facts.shape, args.epochs, args.batch_size, args.seed))
        print(f"  repeat {r + 1}: plain {plain[-1][0]:8.0f} img/s ({plain[-1][1]:.1f} s)", flush=True)
        ours.append(pgen_run(args.model, str(path), args.epochs, args.batch_size, args.seed, args.log_every))
        print(f"  repeat {r + 1}: pgen  {ours[-1][0]:8.0f} img/s (end to end {ours[-1][1]:.1f} s)", flush=True)
    best_plain = max(plain)
    best_ours = max(ours, key=lambda t: t[0])
    print(f"plain PyTorch loop : {best_plain[0]:8.0f} training images/s   ({best_plain[1]:.1f} s for {args.epochs} epochs)")
    print(f"pgen + MLflow      : {best_ours[0]:8.0f} training images/s   ({best_ours[1]:.1f} s end to end, validation, "
          "checkpoints, sample grids and model logging included)")
    print(f"ratio pgen / plain : {best_ours[0] / best_plain[0]:.3f} (goal >= 0.97)")
    end_to_end = args.epochs * (len(images) // args.batch_size) * args.batch_size / best_ours[1]
    print(f"end-to-end pgen    : {end_to_end:8.0f} images/s = {end_to_end / best_plain[0]:.3f} of plain")


if __name__ == "__main__":
    sys.exit(main())
