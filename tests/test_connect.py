import copy

import pytest
import torch
from torch import nn

from sam_lab import curves
from sam_lab.config import ConfigError, parse
from sam_lab.train import evaluate, setup
from sam_lab.trials import connect

# lr 0.05 for endpoints and curve: both converge within a few seconds on digits.
MLP = dict(dataset="digits", model="mlp", width=64, epochs=20, lr=0.05, curve_lr=0.05,
           curve_epochs=40, threads=1)
BN_CNN = dict(dataset="digits", model="cnn5", width=4, epochs=5, lr=0.05, curve_lr=0.05,
              curve_epochs=5, threads=1)


def _run(config):
    gen = connect.run(config)
    rows = []
    while True:
        try:
            rows.append(next(gen))
        except StopIteration as stop:
            return rows, stop.value


@pytest.mark.parametrize("kind", curves.KINDS)
def test_curves_start_on_the_segment_and_keep_their_endpoints(kind):
    torch.manual_seed(0)
    w0, w1 = torch.randn(7), torch.randn(7)
    curve = curves.Curve(nn.Linear(3, 1), w0[:4], w1[:4], kind=kind, num_bends=4)
    for t in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(curve.point(t), (1 - t) * w0[:4] + t * w1[:4], atol=1e-6)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends))  # as if trained
    assert torch.equal(curve.point(0.0), w0[:4]) and torch.equal(curve.point(1.0), w1[:4])
    if kind == "polychain":  # passes through its bends at t = i / n
        assert torch.allclose(curve.point(1 / 3), curve.bends[0], atol=1e-6)
    c = curves.coefficients(kind, 4, torch.tensor(0.37))
    assert c.sum().item() == pytest.approx(1.0) and (c >= 0).all()


def test_barrier_and_length_weighted_mean():
    assert curves.barrier([1.0, 3.0, 2.0]) == 1.5
    assert curves.barrier([1.0, 0.5, 1.0]) == 0.0  # the max includes the ends: never negative
    # the long segment's value (average 3) dominates the mean: (1*2 + 3*(2+4)/2) / 4
    assert curves.length_weighted_mean([2.0, 2.0, 4.0], [1.0, 3.0]) == pytest.approx(2.75)


def test_bad_config_fails_before_any_work():
    with pytest.raises(ConfigError, match="seed_b"):
        _run(dict(MLP, seed=3, seed_b=3))
    with pytest.raises(ConfigError, match="curve"):
        parse(connect.Config, dict(curve="spline"))
    with pytest.raises(ConfigError, match="endpoint_a"):
        parse(connect.Config, dict(endpoint_a="/nonexistent/a.pt"))


def test_bezier_curve_removes_the_linear_barrier_on_an_mlp():
    rows, s = _run(dict(MLP, curve="bezier"))
    assert [r["path"] for r in rows] == ["linear"] * 61 + ["curve"] * 61
    assert [r["step"] for r in rows] == list(range(122))
    assert rows[0]["t"] == 0.0 and rows[60]["t"] == 1.0
    assert rows[0]["test_err"] == rows[61]["test_err"] == pytest.approx(s["test_err_a"])
    assert s["barrier_loss_linear"] > 0.1  # the straight line does cross a ridge
    assert s["barrier_loss_linear"] >= 5 * s["barrier_loss_curve"]
    assert s["max_err_curve"] <= max(s["test_err_a"], s["test_err_b"]) + 0.02
    assert s["length_curve"] > s["length_linear"]


def test_bn_recompute_makes_the_curve_start_at_endpoint_a():
    cfg = parse(connect.Config, BN_CNN)
    data, a = setup(cfg)
    a = connect._endpoint(cfg, a, data, cfg.seed, None)
    _, b = setup(cfg, seed=1)
    b = connect._endpoint(cfg, b, data, 1, None)
    curve = curves.Curve(copy.deepcopy(a), curves.flatten(a), curves.flatten(b), "bezier", 3)
    connect._train_curve(cfg, curve, data)

    err = lambda net: 1 - evaluate(net, data.x_test, data.y_test)[1]  # noqa: E731
    err_a = err(a)
    stale = err(curve.at(0.0))  # BN statistics shared over all t, as in Garipov et al.'s code
    fresh = err(curve.at(0.0, bn_data=data.x_train))
    a_fresh = copy.deepcopy(a)
    curves.recompute_bn(a_fresh, data.x_train)
    assert abs(stale - err_a) > 0.1
    assert fresh == err(a_fresh)  # same weights, same statistics: identical
    assert abs(fresh - err_a) <= 0.02  # and within noise of A's own running statistics


def test_endpoints_load_from_checkpoints(tmp_path):
    cfg = parse(connect.Config, dict(BN_CNN, epochs=1))
    paths = []
    for seed in (0, 1):
        data, model = setup(cfg, seed=seed)
        model = connect._endpoint(cfg, model, data, seed, None)
        paths.append(tmp_path / f"{seed}.pt")
        torch.save(model.state_dict(), paths[-1])
    expected = evaluate(model, data.x_train, data.y_train)[0]
    config = dict(BN_CNN, endpoint_a=str(paths[0]), endpoint_b=str(paths[1]), curve_epochs=1,
                  points=3)
    rows, s = _run(config)
    assert s["train_loss_b"] == pytest.approx(expected)
    assert len(rows) == 6
    assert _run(config)[1] | {"train_s": 0} == s | {"train_s": 0}  # reproducible
