"""Models, losses, pixel scaling, config and the pure train steps (no MLflow here)."""

from __future__ import annotations

import builtins
import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from pgen import config, steps
from pgen.errors import PgenError
from pgen.models import dcgan, gan, vae

REPO = Path(__file__).resolve().parents[1]



def make_cfg(family: str, shape=(1, 16, 16), **over) -> config.Config:
    values = {"train.batch_size": 16, "model.base_channels": 8, **over}
    cfg = config.build(family, {}, values)
    facts = config.DataFacts(file="x.h5", shape=shape, value_range=(0.0, 255.0), splits=("train", "val"), n_train=96,
                             train_bytes=96 * math.prod(shape) * 4, threshold=5.0)
    return config.complete(cfg, facts)


def raw_for(cfg: config.Config, n: int = 16, seed: int = 0) -> torch.Tensor:
    """Sparse stored values: integers in [0, 255], ~10% of pixels non-zero."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *cfg.shape, generator=g) * 255 * (torch.rand(n, *cfg.shape, generator=g) < 0.1)).round()


def batch_for(cfg: config.Config, n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, *cfg.shape, generator=g) * 255 * (torch.rand(n, *cfg.shape, generator=g) < 0.1)
    return config.to_model(raw, cfg.data)


def validate(fam: steps.Family, state: steps.State, data: torch.Tensor, rng: torch.Generator, batch: int = 16) -> dict[str, float]:
    """The loop's validation pass over ``data`` (model range) in batches of ``batch``."""
    from pgen import loop, train

    return loop.evaluate(fam, state, train.MemoryBatches(data, batch, seed=None, drop_last=False), rng)


def snapshot(state: steps.State) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": p.detach().clone() for k, net in state.nets.items() for n, p in net.state_dict().items()}


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("size", [16, 28, 64])
def test_every_model_maps_latents_to_images_of_the_data_size(size):
    shape = (1, size, size)
    z = torch.randn(3, 10)
    g, d = gan.build(10, shape, n_layers=2, width=32)
    assert g(z).shape == (3, *shape) and d(g(z)).shape == (3,)
    g, d = dcgan.build(10, shape, base_channels=4)
    assert g(z).shape == (3, *shape) and d(g(z)).shape == (3,)
    assert g(z).min() >= -1 and g(z).max() <= 1
    for arch in ("mlp", "conv"):
        m = vae.build(arch, shape, 10, hidden=(32,), base_channels=4)
        logits, mu, logvar = m(torch.rand(3, *shape), torch.Generator().manual_seed(0))
        assert logits.shape == (3, *shape) and mu.shape == logvar.shape == (3, 10)


def test_sizes_the_architectures_cannot_take_are_refused():
    with pytest.raises(PgenError, match="up to 512"):
        dcgan.build(10, (1, 1024, 1024))
    with pytest.raises(PgenError, match="up to 512"):
        vae.build("conv", (1, 600, 600), 10)
    with pytest.raises(PgenError, match="dcgan"):
        gan.build(10, (1, 512, 512))


def test_gan_weights_start_at_n_0_002():
    g, _ = gan.build(100, (1, 28, 28))
    gan.init_weights(g, torch.Generator().manual_seed(0))
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001


def test_gan_losses_at_an_undecided_discriminator():
    zero = torch.zeros(8)
    assert gan.d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert gan.g_loss(zero).item() == pytest.approx(math.log(2))
    assert gan.g_loss(torch.full((8,), 10.0)).item() < 1e-3  # non-saturating: small when D is fooled


def test_vae_loss_terms():
    x = torch.zeros(2, 1, 4, 4)
    x[:, 0, 0, 0] = 1.0
    logits = torch.zeros(2, 1, 4, 4)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    terms = vae.vae_loss(logits, x, mu, logvar, 1.0)
    assert terms.recon.item() == pytest.approx(16 * math.log(2), rel=1e-6)  # BCE at p=0.5, summed over 16 pixels
    assert terms.kl.item() == pytest.approx(0.0, abs=1e-7)
    mu = torch.ones(2, 3)
    terms = vae.vae_loss(logits, x, mu, logvar, 0.5)
    assert terms.kl.item() == pytest.approx(1.5)  # 0.5 * sum(mu^2)
    assert terms.loss.item() == pytest.approx(terms.recon.item() + 0.75, rel=1e-6)
    weighted = vae.vae_loss(logits, x, mu, logvar, 0.0, nonzero_weight=5.0)
    assert weighted.loss.item() == pytest.approx((15 + 5) * math.log(2), rel=1e-6)
    assert weighted.recon.item() == pytest.approx(terms.recon.item())  # reported unweighted
    gauss = vae.vae_loss(torch.full((2, 1, 4, 4), -20.0), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3), logvar, 1.0,
                         recon="gaussian", sigma=0.1)
    assert gauss.recon.item() == pytest.approx(16 * math.log(0.1 * math.sqrt(2 * math.pi)), rel=1e-4)


# --------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("scale", ["linear", "log"])
@pytest.mark.parametrize("pixel_range", ["unit", "symmetric"])
def test_pixel_scaling_round_trips(scale, pixel_range):
    data = config.DataConfig(scale=scale, value_min=0.0, value_max=5000.0, pixel_range=pixel_range)
    raw = torch.tensor([0.0, 0.5, 50.0, 300.0, 4999.0, 5000.0])
    y = config.to_model(raw, data)
    lo, hi = (-1, 1) if pixel_range == "symmetric" else (0, 1)
    assert y.min() >= lo and y.max() <= hi and y[0] == lo and y[-1] == pytest.approx(hi)
    assert torch.allclose(config.from_model(y, data), raw, rtol=1e-4, atol=1e-3)
    assert config.from_model(torch.tensor([hi + 5.0]), data).item() == pytest.approx(5000.0, rel=1e-5)  # clipped


def test_log_scale_spreads_typical_charge():
    data = config.DataConfig(scale="log", value_min=0.0, value_max=5000.0, pixel_range="unit")
    assert 0.45 < config.to_model(torch.tensor(50.0), data).item() < 0.7  # not squashed next to zero as linear would


# --------------------------------------------------------------------------- config


def test_flags_override_the_toml_file_and_defaults_follow_the_family(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('[data]\npath = "mnist"\n[model]\nfamily = "vae"\narch = "conv"\nlatent_dim = 8\n[train]\nepochs = 3\n')
    cfg = config.build("vae", config.read_toml(f), {"train.epochs": 5, "model.hidden": "64,32"})
    assert (cfg.data.path, cfg.model.arch, cfg.model.latent_dim, cfg.train.epochs) == ("mnist", "conv", 8, 5)
    assert cfg.model.hidden == (64, 32) and cfg.train.lr == 1e-3 and cfg.train.beta1 == 0.9
    g = config.build("gan")
    assert (g.model.latent_dim, g.train.lr_g, g.train.beta1) == (100, 2e-4, 0.5)
    with pytest.raises(PgenError, match="for model 'vae'"):
        config.build("gan", config.read_toml(f))


@pytest.mark.parametrize(
    "family, over, match",
    [
        ("vae", {"model.latent_dim": 0}, "latent-dim"),
        ("vae", {"train.lr": 0.0}, "--lr must be > 0"),
        ("gan", {"train.lr_d": -1.0}, "--lr-d"),
        ("vae", {"model.arch": "transformer"}, "unknown --arch"),
        ("vae", {"model.nonsense": 1}, "unknown setting 'model.nonsense'"),
        ("vae", {"train.epochs": "many"}, "not a valid int"),
        ("wgan", {}, "unknown model 'wgan'"),
    ],
)
def test_bad_settings_are_one_clear_error(family, over, match):
    with pytest.raises(PgenError, match=match):
        config.build(family, {}, over)


def test_config_round_trips_through_toml_and_flat_params():
    cfg = make_cfg("vae", **{"model.hidden": "64,32", "model.kl_warmup": 1.5})
    again = config.build("vae", config.parse_toml(config.to_toml(cfg)))
    assert again == cfg
    flat = config.flatten(cfg)
    assert flat["model.hidden"] == "64,32" and flat["data.scale"] == "linear" and flat["data.pixel_range"] == "unit"
    assert all(k.split(".")[0] in ("data", "model", "train") for k in flat)


def test_complete_picks_log_scale_for_adc_data_and_test_split_without_val():
    cfg = config.build("dcgan")
    facts = config.DataFacts(file="a.h5", shape=(1, 64, 64), value_range=(0.0, 4000.0), splits=("train", "test"), n_train=1000,
                             train_bytes=1)
    done = config.complete(cfg, facts)
    assert (done.data.scale, done.data.val_split, done.data.pixel_range, done.data.in_memory) == ("log", "test", "symmetric", "yes")
    with pytest.raises(PgenError, match="no split 'val'"):
        config.complete(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_split="val")), facts)


def test_experiment_files_are_valid():
    files = sorted((REPO / "experiments").glob("*.toml"))
    names = {f.stem for f in files}
    assert {"mnist_gan", "mnist_vae", "lartpc64_gan", "lartpc64_dcgan", "lartpc64_vae"} <= names
    for f in files:
        values = config.read_toml(f)
        config.build(values["model.family"], values, source=str(f))


# --------------------------------------------------------------------------- pure steps


FAMILY_CASES = [
    ("gan", {"model.n_layers": 2, "model.hidden_width": 64, "model.d_dropout": 0.3, "model.label_smoothing": 0.1}),
    ("dcgan", {"model.r1_gamma": 1.0}),
    ("vae", {"model.hidden": "64"}),
    ("vae", {"model.arch": "conv", "model.nonzero_weight": 3.0, "model.kl_warmup": 1.0}),
]


@pytest.mark.parametrize("family, over", FAMILY_CASES)
def test_step_is_a_pure_function_of_state_batch_and_generator(family, over, monkeypatch):
    import mlflow

    cfg = make_cfg(family, **over)
    state = steps.init(cfg, 6, "cpu", torch.Generator().manual_seed(0))
    fam = steps.FAMILIES[family]
    batch = batch_for(cfg)
    twin = copy.deepcopy(state)

    def forbidden(*a, **k):
        raise AssertionError("a step touched MLflow or a file")

    for name in ("log_metric", "log_metrics", "log_param", "log_params", "set_tag", "log_artifact", "start_run", "log_image"):
        monkeypatch.setattr(mlflow, name, forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    s1, m1 = fam.step(state, batch, torch.Generator().manual_seed(7))
    s2, m2 = fam.step(twin, batch.clone(), torch.Generator().manual_seed(7))
    monkeypatch.undo()
    assert s1.step == s2.step == 1 and s1 is not state  # a new state value, step counted
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
    a, b = snapshot(s1), snapshot(s2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    s3, m3 = fam.step(copy.deepcopy(twin), batch, torch.Generator().manual_seed(8))  # other noise, other result
    assert any(not torch.equal(m2[k], m3[k]) for k in m2 if k != "beta")


class Fixed(torch.nn.Module):
    """A "generator" that returns the given images (in the model's range) whatever the noise."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images = images
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[: len(z)]


def test_the_gans_validation_loss_is_evaluates_summary_score(monkeypatch):
    from pgen.evaluate import stats

    cfg = make_cfg("gan", **{"model.n_layers": 1, "model.hidden_width": 8})
    assert cfg.data.threshold == 5.0  # the dataset's, filled in by `complete`
    state = steps.init(cfg, 4, "cpu", torch.Generator().manual_seed(0))
    data, held_out = raw_for(cfg, 64, seed=1), raw_for(cfg, 64, seed=2)
    collapsed = data[:1].expand(64, -1, -1, -1)  # one event, 64 times

    def score(samples: torch.Tensor) -> dict[str, float]:
        fixed = dataclasses.replace(state, nets={**state.nets, "g": Fixed(config.to_model(samples, cfg.data))})
        return validate(steps.GAN, fixed, config.to_model(data, cfg.data), torch.Generator(), batch=64)

    same, other, mode = score(data), score(held_out), score(collapsed)
    assert same["score"] == same["collapse"] == same["loss"] == 0.0 and same["diversity_ratio"] == 1.0
    expected = stats.summary_score(stats.compare(stats.image_statistics(data.numpy(), 5.0),
                                                 stats.image_statistics(held_out.numpy(), 5.0)))
    assert other["score"] == pytest.approx(expected, rel=1e-6)  # the stored values, recovered from the model's range
    assert other["loss"] == other["score"] + other["collapse"] and other["collapse"] < 0.1  # fresh data is as varied
    assert mode["diversity_ratio"] == 0.0 and mode["loss"] == mode["score"] + 1.0  # one event repeated: full collapse
    assert mode["score"] > 3 * other["score"]
    assert set(same) == set(steps.VAL_METRICS["gan"])  # the objectives `pgen tune --objective` offers
    monkeypatch.setattr(steps, "SCORE_IMAGES", 32)  # the statistics of the first SCORE_IMAGES validation images only
    first = stats.summary_score(stats.compare(stats.image_statistics(data[:32].numpy(), 5.0),
                                              stats.image_statistics(held_out[:32].numpy(), 5.0)))
    assert score(held_out)["score"] == pytest.approx(first, rel=1e-6) and first != pytest.approx(expected, rel=1e-3)
    with pytest.raises(PgenError, match="outside the data's range"):
        make_cfg("gan", **{"data.threshold": 300.0})


@pytest.mark.parametrize("family, over", FAMILY_CASES)
def test_losses_fall_on_a_small_dataset(family, over):
    torch.manual_seed(0)
    cfg = make_cfg(family, **{**over, "train.lr_g": 1e-3, "train.lr_d": 1e-3} if family != "vae" else {**over, "train.lr": 3e-3})
    data = batch_for(cfg, n=64, seed=1)
    state = steps.init(cfg, 4, "cpu", torch.Generator().manual_seed(0))
    fam = steps.FAMILIES[family]
    rng = torch.Generator().manual_seed(1)
    eval_rng = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    before = validate(fam, state, data, eval_rng())
    history = []
    for i in range(60):
        state, m = fam.step(state, data[(i % 4) * 16 : (i % 4 + 1) * 16], rng)
        history.append(m)
    after = validate(fam, state, data, eval_rng())
    assert set(after) == set(steps.VAL_METRICS[family])  # the objectives `pgen tune --objective` offers
    if family == "vae":
        assert after["nelbo"] < 0.8 * before["nelbo"]
        assert history[-1]["loss"] < history[0]["loss"]
    else:  # D learns to tell real from fake; the samples' statistics move towards the data's
        assert min(float(m["loss_d"]) for m in history[-10:]) < float(history[0]["loss_d"])
        assert after["sample_distance"] < before["sample_distance"]


def test_kl_warmup_raises_beta_linearly():
    cfg = make_cfg("vae", **{"model.kl_warmup": 2.0, "model.beta": 0.5, "model.hidden": "16"})
    state = steps.init(cfg, 2, "cpu", torch.Generator().manual_seed(0))
    betas = []
    for _ in range(6):
        state, m = steps.vae_step(state, batch_for(cfg), torch.Generator().manual_seed(0))
        betas.append(float(m["beta"]))
    assert betas == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])


def test_init_depends_only_on_the_generator():
    cfg = make_cfg("dcgan")
    a = snapshot(steps.init(cfg, 1, "cpu", torch.Generator().manual_seed(3)))
    torch.manual_seed(123)  # the global RNG plays no part
    b = snapshot(steps.init(cfg, 1, "cpu", torch.Generator().manual_seed(3)))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gan_samples_use_batch_statistics_and_leave_the_state_alone():
    cfg = make_cfg("dcgan")
    state = steps.init(cfg, 1, "cpu", torch.Generator().manual_seed(0))
    state, _ = steps.gan_step(state, batch_for(cfg), torch.Generator().manual_seed(1))
    before = snapshot(state)
    a = steps.gan_sample(state, 8, torch.Generator().manual_seed(2))
    sums = steps.gan_evaluate_batch(state, batch_for(cfg), torch.Generator().manual_seed(2))
    after = snapshot(state)
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics and counters untouched
    assert all(net.training for net in state.nets.values())
    assert torch.equal(a, steps.gan_sample(state, 8, torch.Generator().manual_seed(2)))
    assert float(sums["n"]) == 16
