"""Models, datasets and the classification trial."""

import pickle
import time

import pytest
import torch
from cifar_format import write_cifar_fixture

from sam_lab import data, models
from sam_lab.config import ConfigError, parse
from sam_lab.train import ClassifyConfig, classify

TINY = dict(dataset="digits", model="mlp", width=32, epochs=2, lr=0.05, threads=1)


def test_model_sizes_and_shapes():
    m = models.build("mlp", (1, 40), 10, width=8, depth=2)
    assert models.count_params(m) == (40 * 8 + 8) + (8 * 8 + 8) + (8 * 10 + 10)
    for shape in [(1, 40), (1, 8, 8), (3, 32, 32)]:
        out = models.build("cnn5", shape, 10, width=4)(torch.randn(5, *shape))
        assert out.shape == (5, 10)
    # k = 64 is He et al.'s pre-activation ResNet18 with its final BN-ReLU: 11,172,170
    # parameters on CIFAR-10 (the popular variant that drops the final BN has 1,024 fewer)
    assert models.count_params(models.build("resnet18k", (3, 32, 32), 10, width=64)) == 11_172_170
    assert models.build("resnet18k", (3, 32, 32), 10, width=2)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_subset_is_stratified_and_noise_flips_the_stated_fraction():
    clean = data.load("digits", n_train=500, seed=3)
    counts = torch.bincount(clean.y_train)
    assert counts.sum() == 500 and counts.max() - counts.min() <= 3
    noisy = data.load("digits", n_train=500, label_noise=0.2, seed=3)
    flipped = (noisy.y_train != clean.y_train).sum().item()
    assert flipped == 100  # every chosen label moves to a *different* class
    assert torch.equal(noisy.x_test, clean.x_test)
    other_seed = data.load("digits", n_train=500, label_noise=0.2, seed=4)
    # the same test points for every seed (standardised with each subset's own statistics)
    assert torch.equal(other_seed.y_test, clean.y_test)
    assert torch.allclose(other_seed.x_test, clean.x_test, atol=0.05)
    assert not torch.equal(other_seed.x_train, clean.x_train)
    # standardised with training statistics
    assert abs(clean.x_train.mean().item()) < 1e-4 and abs(clean.x_train.std().item() - 1) < 1e-2


def test_mnist1d_is_built_offline_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # get_dataset would drop a pickle into the cwd
    d = data.load("mnist1d", n_train=1000)
    assert d.x_train.shape == (1000, 1, 40) and d.x_test.shape == (1000, 1, 40)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_loads_from_a_data_dir_in_the_real_format(tmp_path):
    write_cifar_fixture(tmp_path)
    d = data.load("cifar10", data_dir=str(tmp_path))
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    rows = list(classify(dict(dataset="cifar10", data_dir=str(tmp_path), model="resnet18k",
                              width=2, epochs=1, batch_size=50, threads=1)))
    assert rows[-1]["step"] == 2 and 0 <= rows[-1]["test_acc"] <= 1


def test_cifar10_refuses_pickles_that_are_not_arrays(tmp_path):
    write_cifar_fixture(tmp_path)
    with open(tmp_path / data.CIFAR_DIR / "test_batch", "wb") as f:
        pickle.dump({b"data": time.sleep, b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize("bad,key", [
    (dict(colour="red"), "colour"),
    (dict(rho=-0.1), "rho"),
    (dict(width=0), "width"),
    (dict(label_noise=1.5), "label_noise"),
    (dict(sam_p=0.5), "sam_p"),
    (dict(epochs="ten"), "epochs"),
    (dict(adaptive="yes"), "adaptive"),
    (dict(dataset="imagenet"), "dataset"),
    (dict(model="vit"), "model"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(n_train=99999), "n_train"),
    (dict(dataset="gaussian", model="cnn5"), "model"),
    (dict(lr=float("inf")), "lr"),  # non-finite floats only where a field allows them
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(epochs=1e9), "epochs"),
    (dict(sam_m=-1), "sam_m"),
    (dict(grokfast="fast"), "grokfast"),
    (dict(dataset="cifar10", data_dir="/nonexistent/cifar"), "data_dir"),
])
def test_bad_configs_name_the_key_before_any_work(bad, key):
    with pytest.raises(ConfigError) as err:
        next(classify({**TINY, **bad}))
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}:")


def test_yaml_style_numbers_are_coerced():
    cfg = parse(ClassifyConfig, dict(lr="1e-3", epochs=1e2, sam_p=float("inf")))
    assert cfg.lr == 1e-3 and cfg.epochs == 100 and isinstance(cfg.epochs, int)


def test_m_sharpness_gives_each_chunk_its_own_eps():
    """sam_m_gradient against the definition: per chunk c of m examples, eps_c = rho g_c / |g_c|
    and the gradient at w + eps_c on c; .grad is their average weighted by chunk size."""
    from torch import nn

    from sam_lab.optim import SAM
    from sam_lab.train import sam_m_gradient

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(7, 3), torch.randint(0, 2, (7,))
    loss_fn = torch.nn.functional.cross_entropy
    w = [p.detach().clone() for p in model.parameters()]
    expected = [torch.zeros_like(p) for p in w]
    for start in range(0, 7, 3):  # chunks of 3, 3 and 1
        xc, yc = x[start:start + 3], y[start:start + 3]
        g = torch.autograd.grad(loss_fn(model(xc), yc), list(model.parameters()))
        norm = torch.sqrt(sum(t.square().sum() for t in g))
        moved = nn.Linear(3, 2)
        with torch.no_grad():
            for q, w0, gi in zip(moved.parameters(), w, g):
                q.copy_(w0 + 0.1 * gi / norm)
        g_eps = torch.autograd.grad(loss_fn(moved(xc), yc), list(moved.parameters()))
        for e, gi in zip(expected, g_eps):
            e += gi * len(yc) / 7
    opt = SAM(model.named_parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    loss = sam_m_gradient(model, opt, x, y, 3, loss_fn=loss_fn)
    for p, e, w0 in zip(model.parameters(), expected, w):
        torch.testing.assert_close(p.grad, e)
        assert torch.equal(p.detach(), w0)  # weights restored
    assert loss.item() == pytest.approx(loss_fn(model(x), y).item(), rel=1e-5)


def test_m_sharpness_in_the_loop():
    sam = {**TINY, "rho": 0.05, "batch_size": 50}
    plain = list(classify(sam))
    assert list(classify({**sam, "sam_m": 50})) == plain  # m >= the batch: SAM itself
    assert list(classify({**sam, "sam_m": 10}))[-1] != plain[-1]


def test_grokfast_in_the_classify_loop():
    plain = list(classify(TINY))
    assert list(classify({**TINY, "grokfast": "ema", "grokfast_lamb": 0.0})) == plain
    assert list(classify({**TINY, "grokfast": "ema"}))[-1] != plain[-1]


def test_same_config_and_seed_give_identical_metrics():
    cfg = {**TINY, "rho": 0.05, "label_noise": 0.1}
    assert list(classify(cfg)) == list(classify(cfg))
    assert list(classify(cfg)) != list(classify({**cfg, "seed": 1}))


def test_divergence_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match="train loss"):
        list(classify({**TINY, "lr": 1e6, "momentum": 0.0}))


@pytest.mark.parametrize("extra", [dict(), dict(rho=0.05), dict(rho=0.5, adaptive=True)])
def test_digits_mlp_reaches_95_percent_within_30_seconds(extra):
    start = time.process_time()
    rows = list(classify(dict(dataset="digits", model="mlp", width=128, epochs=15, lr=0.05,
                              batch_size=64, eval_every=5, threads=1, **extra)))
    assert time.process_time() - start < 30
    assert rows[-1]["test_acc"] >= 0.95, rows[-1]
    assert [r["epoch"] for r in rows] == [0, 5, 10, 15]


def test_schedules_and_sam_with_bn_cnn_train():
    rows = list(classify(dict(dataset="mnist1d", model="cnn5", width=8, epochs=2, n_train=500,
                              rho=0.05, schedule="cosine", grad_clip=1.0, threads=1)))
    assert rows[-1]["lr"] < 1e-6  # cosine reaches zero at the last step
    assert rows[-1]["train_acc"] > rows[0]["train_acc"]
