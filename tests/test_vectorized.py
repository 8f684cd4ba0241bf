"""Packed (vmapped) training agrees with K separate `classify` runs."""

import math

import pytest
import torch
from torch import nn

from sam_lab import models
from sam_lab.config import ConfigError
from sam_lab.optim import SAM
from sam_lab.train import classify
from sam_lab.vectorized import Packed, classify_packed, packed_perturbation

BASE = dict(dataset="digits", model="mlp", width=32, epochs=3, eval_every=2, n_train=300,
            label_noise=0.2, batch_size=50, lr=0.05, threads=1)


def _drain(trial):
    rows = []
    try:
        while True:
            rows.append(next(trial))
    except StopIteration as stop:
        return rows, stop.value


def _assert_rows_close(packed_rows, alone_rows, n_train):
    assert [r.keys() for r in packed_rows] == [r.keys() for r in alone_rows]
    for got, want in zip(packed_rows, alone_rows):
        assert (got["step"], got["epoch"]) == (want["step"], want["epoch"])
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-6)
        for key in ("train_loss", "test_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (key, got, want)
        for key in ("train_acc", "test_acc"):  # a near-tie may flip one prediction
            assert abs(got[key] - want[key]) <= 1.01 / n_train, (key, got, want)


@pytest.mark.parametrize("extra,variants", [
    (dict(momentum=0.9), [dict(seed=0), dict(seed=1), dict(seed=2)]),
    (dict(grad_clip=0.3), [dict(seed=0, rho=0.05), dict(seed=1, rho=0.2), dict(seed=1, rho=0.0)]),
    (dict(optimizer="adam", lr=3e-3, schedule="cosine", sam_p=3.0, adaptive=True),
     [dict(seed=3, rho=0.1), dict(seed=4, rho=0.5)]),
    (dict(adaptive=True, asam_eta=0.05), [dict(seed=0, rho=0.3), dict(seed=1, rho=0.5)]),
    (dict(sam_m=15, grokfast="ema"), [dict(seed=0, rho=0.05), dict(seed=1, rho=0.0)]),
    (dict(grokfast="ma", grokfast_window=3), [dict(seed=0), dict(seed=1)]),
])
def test_each_packed_model_matches_its_separate_run(extra, variants):
    configs = [{**BASE, **extra, **v} for v in variants]
    rows, summaries = _drain(classify_packed(configs))
    assert [k for k, _ in rows] == [k for _ in range(3) for k in range(len(configs))]
    for k, cfg in enumerate(configs):
        alone, alone_summary = _drain(classify(cfg))
        assert [r["epoch"] for r in alone] == [0, 2, 3]
        _assert_rows_close([r for j, r in rows if j == k], alone, BASE["n_train"])
        assert summaries[k]["n_params"] == alone_summary["n_params"]
        assert summaries[k]["pack_size"] == len(configs)
    # the models really differ (init, data, noise, rho), so the agreement above is per model
    finals = [r["train_loss"] for k, r in rows[-len(configs):]]
    assert len(set(finals)) == len(configs)


def test_sharpness_is_measured_on_each_models_own_weights():
    configs = [{**BASE, "epochs": 1, "measure_sharpness": True, "seed": seed, "rho": rho}
               for seed, rho in ((0, 0.05), (1, 0.0))]
    _, summaries = _drain(classify_packed(configs))
    _, alone = _drain(classify(configs[1]))
    for key in ("lambda_max", "hessian_trace", "eps_sharpness"):
        assert summaries[1][key] == pytest.approx(alone[key], rel=1e-4)
    assert summaries[0]["lambda_max"] != pytest.approx(alone["lambda_max"], rel=1e-3)


def test_bf16_autocast_agrees_to_bf16_precision():
    configs = [{**BASE, "amp": "bf16", "seed": seed, "rho": rho} for seed, rho in ((0, 0.05), (1, 0))]
    rows, _ = _drain(classify_packed(configs))
    fp32_rows, _ = _drain(classify_packed([{**c, "amp": "off"} for c in configs]))
    assert [r["train_loss"] for _, r in rows] != [r["train_loss"] for _, r in fp32_rows]
    for k, cfg in enumerate(configs):
        for got, want in zip([r for j, r in rows if j == k], classify(cfg)):
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=2e-3)
            assert got["test_loss"] == pytest.approx(want["test_loss"], rel=2e-3)


def _stacked_grads(k_models, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = ((7, 5), (5,), (3, 4, 2))
    params = [nn.Parameter(torch.randn(k_models, *s, generator=g)) for s in shapes]
    for param in params:
        param.grad = torch.randn(param.shape, generator=g) * 10 ** torch.randn(())
        param.grad[1] = 0  # model 1: a zero gradient gives eps = 0
    params[0].grad[2].view(-1)[0] = math.inf  # model 2: a non-finite one too
    return params


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
def test_per_model_eps_is_sams_eps_for_each_model(p, adaptive):
    params = _stacked_grads(3, seed=int(p * 10) if math.isfinite(p) else 99)
    rho = torch.tensor([0.05, 0.3, 0.7])
    eps = packed_perturbation(params, rho, p, adaptive)
    for k in range(3):
        alone = [nn.Parameter(param.detach()[k].clone()) for param in params]
        for a, param in zip(alone, params):
            a.grad = param.grad[k].clone()
        opt = SAM(alone, torch.optim.SGD, rho=rho[k].item(), p=p, adaptive=adaptive, lr=0.1)
        for (_, want), got in zip(opt.perturbation(), eps):
            torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-7)
    assert all(e[1].abs().sum() == 0 and e[2].abs().sum() == 0 for e in eps)
    assert all(torch.isfinite(e).all() for e in eps)


def test_packed_asam_scales_the_same_named_tensors_as_sam():
    mods = [nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)) for _ in range(2)]
    packed = Packed(mods)
    g = torch.Generator().manual_seed(0)
    for param in packed.params:
        param.grad = torch.randn(param.shape, generator=g)
    rho = torch.tensor([0.2, 0.4])
    eps = packed_perturbation(packed.params, rho, 2.0, True, 0.05, packed.names)
    for k in range(len(mods)):
        named = [(n, nn.Parameter(p.detach()[k].clone())) for n, p in zip(packed.names,
                                                                           packed.params)]
        for (_, a), p in zip(named, packed.params):
            a.grad = p.grad[k].clone()
        opt = SAM(named, torch.optim.SGD, rho=rho[k].item(), adaptive=True, eta=0.05, lr=0.1)
        for (_, want), got in zip(opt.perturbation(), eps):
            torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-7)


def test_a_diverging_model_fails_alone():
    configs = [{**BASE, "epochs": 2, "eval_every": 1, "rho": rho} for rho in (0.05, 1e30)]
    rows, summaries = _drain(classify_packed(configs))
    with pytest.raises(FloatingPointError, match="train loss"):
        list(classify(configs[1]))
    assert [k for k, _ in rows] == [0, 1, 0, 0]  # model 1 stops where its own run raises
    assert isinstance(summaries[1], FloatingPointError)
    _assert_rows_close([r for k, r in rows if k == 0], list(classify(configs[0])), BASE["n_train"])


@pytest.mark.parametrize("variants,key", [
    ([dict(width=32), dict(width=64)], "width"),
    ([dict(lr=0.1), dict(lr=0.2)], "lr"),
    ([dict(model="cnn5"), dict(model="cnn5", seed=1)], "model"),
])
def test_unpackable_configs_name_the_key(variants, key):
    with pytest.raises(ConfigError) as err:
        next(classify_packed([{**BASE, **v} for v in variants]))
    assert err.value.key == key


def test_mlp_forward_matches_vmap():
    # the hand-written batched MLP (baddbmm, feature-major) against vmap over the same stack
    mods = [models.build("mlp", (1, 40), 10, 24, depth=3) for _ in range(3)]
    fast, slow = Packed(mods), Packed(mods)
    slow._plan = None  # vmap over functional_call
    assert fast._plan is not None
    x = torch.randn(3, 50, 1, 40)
    y = torch.randint(0, 10, (3, 50))
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-5, atol=1e-6)
    fast.losses(x, y).sum().backward()
    slow.losses(x, y).sum().backward()
    for a, b in zip(fast.params, slow.params):
        assert a.grad.is_contiguous()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_other_models_run_under_vmap():
    mods = [nn.Sequential(nn.Flatten(), nn.Linear(40, 8), nn.Tanh(), nn.Linear(8, 10))
            for _ in range(2)]
    packed = Packed(mods)
    assert packed._plan is None
    x = torch.randn(2, 5, 1, 40)
    for k, m in enumerate(mods):
        torch.testing.assert_close(packed(x)[k], m(x[k]))
