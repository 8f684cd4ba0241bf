import copy

import pandas as pd
import pytest
import torch
from torch import nn

from analysis import connect as analysis_connect
from sam_lab import curves, landscape
from sam_lab.config import ConfigError, parse
from sam_lab.train import evaluate, setup
from sam_lab.trials import connect

# lr 0.05 for endpoints and curve: both converge within a few seconds on digits.
MLP = dict(dataset="digits", model="mlp", width=64, epochs=20, lr=0.05, curve_lr=0.05,
           curve_epochs=40, threads=1)
BN_CNN = dict(dataset="digits", model="cnn5", width=4, epochs=5, lr=0.05, curve_lr=0.05,
              curve_epochs=5, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")


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
    rows, s = _run(dict(MLP, curve="bezier", plane_points=3, landscape_points=3))
    paths = ["plane"] * 9 + ["landscape"] * 9 + ["linear"] * 61 + ["curve"] * 61
    assert [r["path"] for r in rows] == paths
    assert [r["step"] for r in rows] == list(range(len(paths)))
    assert rows[13]["u"] == rows[13]["v"] == 0 and rows[13]["test_err"] == s["test_err_a"]
    line, curve = rows[18:79], rows[79:]
    assert line[0]["t"] == 0.0 and line[-1]["t"] == 1.0
    assert line[0]["test_err"] == curve[0]["test_err"] == pytest.approx(s["test_err_a"])
    # B sits at (|B - A|, 0) on the plane; the landscape's centre is A
    assert (line[-1]["u"], line[-1]["v"]) == pytest.approx((s["length_linear"], 0), abs=1e-4)
    assert s["barrier_loss_linear"] > 0.1  # the straight line does cross a ridge
    assert s["barrier_loss_linear"] >= 5 * s["barrier_loss_curve"]
    assert s["max_err_curve"] <= max(s["test_err_a"], s["test_err_b"]) + 0.02
    assert s["length_curve"] > s["length_linear"]
    # a trained curve's objective is near its endpoints' loss, far below the line's ridge
    assert s["curve_train_loss"] < s["barrier_loss_linear"] / 3


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
    stale = err(curve.at(0.0))  # BN statistics left over from the template, not recomputed
    fresh = err(curve.at(0.0, bn_data=data.x_train))
    a_fresh = copy.deepcopy(a)
    curves.recompute_bn(a_fresh, data.x_train)
    assert abs(stale - err_a) > 0.1
    assert fresh == err(a_fresh)  # same weights, same statistics: identical
    assert abs(fresh - err_a) <= 0.02  # and within noise of A's own running statistics


def test_bn_recompute_weights_each_batch_by_its_size():
    """Garipov et al.'s update_bn: with 1,000 + 300 examples the mean is x's mean, the variance
    the size-weighted mean of the batches' (equal weights put the 300 on a par with the 1,000)."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000, 3), 2 + 3 * torch.randn(300, 3)])
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(bn).eval()
    curves.recompute_bn(model, x, batch_size=1000)
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    var = (1000 * x[:1000].var(0) + 300 * x[1000:].var(0)) / 1300
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and not model.training  # put back as found


def test_endpoint_b_has_its_own_seed_stream():
    """B of seed s used to be A of seed s + 1: the same network in two "independent" pairs."""
    seeds_b = [connect.endpoint_b_seed(s) for s in range(100)]
    assert len(set(seeds_b)) == 100 and min(seeds_b) >= 2**32
    tiny = dict(dataset="digits", model="mlp", width=8, epochs=1, curve_epochs=1, points=3,
                threads=1)
    first, second = _run(dict(tiny, seed=0))[1], _run(dict(tiny, seed=1))[1]
    assert first["train_loss_b"] != second["train_loss_a"]
    explicit = _run(dict(tiny, seed=0, seed_b=connect.endpoint_b_seed(0)))[1]
    assert explicit | {"train_s": 0} == first | {"train_s": 0}


def test_curve_lr_defaults_to_the_endpoints_lr_and_the_curve_loss_is_reported():
    tiny = dict(dataset="digits", model="mlp", width=16, epochs=2, curve_epochs=2, points=3,
                lr=0.05, threads=1)
    default = _run(tiny)[1]
    assert _run(dict(tiny, curve_lr=0.05))[1] | {"train_s": 0} == default | {"train_s": 0}
    slow = _run(dict(tiny, curve_lr=0.001))[1]
    assert 0 < default["curve_train_loss"] < slow["curve_train_loss"]


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


def test_filter_normalized_direction_matches_filter_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.Conv1d(5, 4, 3),
                          nn.Linear(40, 3))  # 4-, 3- and 2-D weights; never run
    d = landscape.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    i = 0
    for p in model.parameters():
        part = d[i:i + p.numel()].view_as(p)
        i += p.numel()
        if p.ndim <= 1:
            assert not part.any()  # biases and BN affine stay put
        else:
            flat = lambda a: a.detach().flatten(1)  # noqa: E731  (one row per filter)
            assert torch.allclose(flat(part).norm(dim=1), flat(p).norm(dim=1), rtol=1e-5)


def test_bezier_curve_lies_in_the_plane_of_its_control_points():
    torch.manual_seed(0)
    w0, w1 = torch.randn(10), torch.randn(10)
    curve = curves.Curve(nn.Linear(3, 2, bias=False).requires_grad_(False), w0[:6], w1[:6])
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends))
    e1, e2 = landscape.plane_basis(w0[:6], w1[:6], curve.bends[0].detach())
    assert float(e1 @ e2) == pytest.approx(0, abs=1e-6)
    assert landscape.plane_coordinates(w1[:6], w0[:6], e1, e2)[1] == pytest.approx(0, abs=1e-6)
    point = curve.point(0.3).detach()
    u, v = landscape.plane_coordinates(point, w0[:6], e1, e2)
    assert torch.allclose(w0[:6] + u * e1 + v * e2, point, atol=1e-5)

    net = copy.deepcopy(curve.model)
    metric = lambda m: float(m.weight.abs().sum())  # noqa: E731
    rows = list(landscape.grid(net, w0[:6], e1, e2, [0.0, u], [0.0, v], metric))
    assert [(r[0], r[1]) for r in rows] == [(0.0, 0.0), (u, 0.0), (0.0, v), (u, v)]
    assert rows[0][2] == pytest.approx(float(w0[:6].abs().sum()))
    assert rows[3][2] == pytest.approx(float(point.abs().sum()), rel=1e-5)


def test_figures_from_a_tiny_sweep(tmp_path):
    """Pinned frames (trials.parquet / curves rows) from 2 tiny trials -> every connect figure."""
    tiny = dict(MLP, width=8, epochs=2, curve_epochs=1, points=5, plane_points=3,
                landscape_points=3)
    trials, curve_rows = [], []
    for i, rho in enumerate((0.0, 0.05)):
        rows, summary = _run(dict(tiny, rho=rho))
        trials.append(dict(trial_id=f"t{i}", seed=0, curve="bezier", width=8, rho=rho, **summary))
        curve_rows += [dict(trial_id=f"t{i}", **r) for r in rows]
    spec = dict(name="tiny", experiment="connect", grid=dict(width=[8], rho=[0.0, 0.05]))
    paths = analysis_connect.make_figures(pd.DataFrame(trials), pd.DataFrame(curve_rows), spec,
                                          tmp_path)
    names = {p.name for p in paths}
    assert names == {"connect_paths_train_loss.png", "connect_paths_test_err.png",
                     "connect_barriers.png", "connect_plane.png", "connect_landscape.png",
                     "connect_landscape_1d.png"}
    assert all(p.stat().st_size > 0 and p.with_suffix(".svg").exists() for p in paths)
