"""SAM: the closed-form perturbation, exact restore, and the known user pains."""

import copy
import math

import pytest
import torch
from torch import nn

from sam_lab.optim import SAM, bn_update_once


def _params_with_grads(seed, shapes=((7, 5), (5,), (3, 4, 2))):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = nn.Parameter(torch.randn(s, generator=g))
        p.grad = torch.randn(s, generator=g)
        params.append(p)
    return params


def _flat(tensors):
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _dual(p):
    return 1.0 if math.isinf(p) else (math.inf if p == 1 else p / (p - 1))


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eps_on_sphere_and_holder_equality(p, seed):
    params = _params_with_grads(seed)
    # two groups: the norm must still be global
    opt = SAM([{"params": params[:1]}, {"params": params[1:]}], torch.optim.SGD, rho=0.3, p=p,
              lr=0.1)
    eps = _flat([e for _, e in opt.perturbation()])
    g = _flat([q.grad for q in params])
    rho = 0.3
    assert torch.linalg.vector_norm(eps, ord=p).item() == pytest.approx(rho, rel=1e-5)
    q = _dual(p)
    assert (eps @ g).item() == pytest.approx(rho * torch.linalg.vector_norm(g, ord=q).item(),
                                             rel=1e-5)


def test_p1_puts_all_of_rho_on_the_largest_gradient():
    params = _params_with_grads(3)
    opt = SAM(params, torch.optim.SGD, rho=0.5, p=1, lr=0.1)
    eps = _flat([e for _, e in opt.perturbation()])
    g = _flat([q.grad for q in params])
    k = g.abs().argmax()
    assert eps[k].item() == pytest.approx(0.5 * g[k].sign().item())
    assert torch.count_nonzero(eps).item() == 1


def test_zero_gradient_gives_zero_eps_not_nan():
    params = _params_with_grads(0)
    for q in params:
        q.grad.zero_()
    for p in (1.0, 2.0, math.inf):
        opt = SAM(params, torch.optim.SGD, rho=0.1, p=p, lr=0.1)
        for _, e in opt.perturbation():
            assert torch.equal(e, torch.zeros_like(e))


def test_adaptive_without_names_scales_kernels_not_vectors():
    params = _params_with_grads(4)
    opt = SAM(params, torch.optim.SGD, rho=0.2, p=2, adaptive=True, eta=0.01, lr=0.1)
    pert = dict((id(q), e) for q, e in opt.perturbation())
    # In ASAM coordinates, T_w^-1 eps lies on the rho-sphere (T_w = |w| + eta for ndim >= 2).
    scaled = [pert[id(q)] / (q.detach().abs() + 0.01 if q.ndim >= 2 else 1) for q in params]
    assert torch.linalg.vector_norm(_flat(scaled)).item() == pytest.approx(0.2, rel=1e-5)


def test_asam_is_kwons_operator_on_named_weights():
    """Kwon et al.'s code: T_w = |w| + eta on every parameter named weight (LayerNorm's gain
    and the embedding too), 1 on biases; eps = rho T_w^2 g / ||T_w g||. A zero weight moves."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 3), nn.LayerNorm(3))
    with torch.no_grad():
        model[1].weight[0, 0] = 0.0
    model(torch.tensor([1, 2, 3])).square().sum().backward()
    rho, eta = 0.5, 0.01
    opt = SAM(model.named_parameters(), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    got = {id(q): e for q, e in opt.perturbation()}
    named = list(model.named_parameters())
    scale = {n: (q.detach().abs() + eta if n.endswith("weight") else torch.ones_like(q))
             for n, q in named}
    norm = torch.linalg.vector_norm(_flat([scale[n] * q.grad for n, q in named]))
    for n, q in named:
        expected = rho * scale[n] ** 2 * q.grad / norm
        torch.testing.assert_close(got[id(q)], expected.float(), rtol=1e-5, atol=1e-8)
    assert got[id(model[1].weight)][0, 0] != 0  # T_w = |w| alone would pin a zero weight
    assert {n for n, _ in named if n.endswith("weight")} == {"0.weight", "1.weight", "2.weight"}


@pytest.mark.parametrize("bad", [math.inf, math.nan])
@pytest.mark.parametrize("p", [2.0, 3.0])
def test_non_finite_gradient_leaves_the_weights_finite(bad, p):
    """The docstring's promise, eps = 0, on the fused p = 2 path too (0 x inf was nan there)."""
    params = _params_with_grads(6)
    params[0].grad[0, 0] = bad
    before = [q.detach().clone() for q in params]
    opt = SAM(params, torch.optim.SGD, rho=0.1, p=p, lr=0.1)
    opt.first_step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_restore_is_bit_exact():
    params = _params_with_grads(5)
    before = [q.detach().clone() for q in params]
    opt = SAM(params, torch.optim.SGD, rho=0.7, lr=0.0)
    opt.first_step()
    assert not all(torch.equal(a, b) for a, b in zip(before, params))
    opt.restore()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_per_group_rho_scales_each_groups_share_of_the_global_direction(p):
    params = _params_with_grads(6)
    opt = SAM([{"params": params[:1], "rho": 0.1}, {"params": params[1:]}], torch.optim.SGD,
              rho=0.4, p=p, lr=0.1)
    got = [e for _, e in opt.perturbation()]
    unit = [e for _, e in SAM(params, torch.optim.SGD, rho=1.0, p=p, lr=0.1).perturbation()]
    for e, u, rho in zip(got, unit, (0.1, 0.4, 0.4)):
        torch.testing.assert_close(e, rho * u)
    before = [q.detach().clone() for q in params]
    opt.first_step()  # the fused multiply-add applies the same eps
    for q, b, e in zip(params, before, got):
        torch.testing.assert_close(q.detach(), b + e)


def test_restore_stays_bit_exact_with_the_reused_buffer():
    params = _params_with_grads(7)
    opt = SAM(params, torch.optim.SGD, rho=0.7, lr=0.1, momentum=0.9)
    for step in range(4):
        if step == 2:
            params[1].grad = None  # a parameter without a gradient is neither moved nor saved
        before = [q.detach().clone() for q in params]
        opt.first_step(zero_grad=True)
        assert all(q.grad is None for q in params)
        assert step != 2 or torch.equal(params[1], before[1])
        opt.restore()
        assert all(torch.equal(a, b) for a, b in zip(before, params))
        for q in params:
            q.grad = torch.randn_like(q)
        opt.base_optimizer.step()  # new weights, so a stale buffer would show


def test_bn_update_once_restores_the_flag_on_error():
    net = _net(4)
    with pytest.raises(RuntimeError), bn_update_once(net):
        assert not net[1].track_running_stats
        raise RuntimeError
    assert net[1].track_running_stats


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def _batches(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
                                     (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3))])
def test_rho_zero_is_the_base_optimizer_bit_for_bit(base, kw):
    a, b = _net(0), _net(0)
    opt_a = base(a.parameters(), **kw)
    opt_b = SAM(b.parameters(), base, rho=0.0, **kw)
    loss_fn = nn.functional.cross_entropy
    for x, y in _batches():
        opt_a.zero_grad()
        loss_fn(a(x), y).backward()
        opt_a.step()

        def closure(x=x, y=y):
            opt_b.zero_grad()
            loss = loss_fn(b(x), y)
            loss.backward()
            return loss
        opt_b.step(closure)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_applied_gradient_is_taken_at_w_plus_eps_on_a_quadratic():
    torch.manual_seed(0)
    a = torch.randn(5, 5, dtype=torch.float64)
    h = a @ a.T + torch.eye(5, dtype=torch.float64)
    w = nn.Parameter(torch.randn(5, dtype=torch.float64))
    w0 = w.detach().clone()
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=1.0)
    loss = lambda: 0.5 * w @ h @ w  # noqa: E731
    loss().backward()
    g = h @ w0
    eps = 0.1 * g / g.norm()
    opt.first_step(zero_grad=True)
    assert torch.allclose(w.detach(), w0 + eps)
    loss().backward()
    opt.second_step()
    # SGD with lr 1: w1 = w0 - H (w0 + eps)
    assert torch.allclose(w.detach(), w0 - h @ (w0 + eps), atol=1e-12)


def test_bn_running_stats_count_one_forward_per_sam_step():
    sam_net, clean_net = _net(1), _net(1)
    x, y = _batches(1)[0]
    opt = SAM(sam_net.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    nn.functional.cross_entropy(sam_net(x), y).backward()
    opt.first_step(zero_grad=True)
    with bn_update_once(sam_net):
        assert sam_net[1].training  # not switched to eval mode
        nn.functional.cross_entropy(sam_net(x), y).backward()
    opt.second_step(zero_grad=True)
    clean_net(x)
    bn_sam, bn_clean = sam_net[1], clean_net[1]
    assert torch.equal(bn_sam.running_mean, bn_clean.running_mean)
    assert torch.equal(bn_sam.running_var, bn_clean.running_var)
    assert bn_sam.num_batches_tracked.item() == bn_clean.num_batches_tracked.item() == 1


def _sam_train(net, opt, batches):
    for x, y in batches:
        nn.functional.cross_entropy(net(x), y).backward()
        opt.first_step(zero_grad=True)
        with bn_update_once(net):
            nn.functional.cross_entropy(net(x), y).backward()
        opt.second_step(zero_grad=True)


def test_state_dict_round_trip_resumes_identically():
    batches = _batches(10)
    net = _net(2)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    _sam_train(net, opt, batches[:5])
    saved_model, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["base"]["state"], "momentum buffers must be in the state_dict"
    _sam_train(net, opt, batches[5:])

    net2 = _net(99)
    net2.load_state_dict(saved_model)
    opt2 = SAM(net2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    _sam_train(net2, opt2, batches[5:])
    for p1, p2 in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p1, p2)


def test_lr_scheduler_on_the_sam_object_drives_the_base_optimizer():
    net = _net(3)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _sam_train(net, opt, _batches(1))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def _sharp_dip_on_a_wide_bowl(w):
    # a wide quadratic basin centred at +2 (curvature 0.1) and a narrow dip at -1 (width 0.1,
    # curvature ~100) that is a local minimum
    return 0.05 * (w - 2) ** 2 - torch.exp(-((w + 1) ** 2) / (2 * 0.1**2))


def _descend(w, opt, steps=2000):
    for _ in range(steps):
        opt.step(lambda: (opt.zero_grad(), _sharp_dip_on_a_wide_bowl(w).sum().backward(), 0)[-1])
    return w.detach().clone()


def _curvature(w):
    return torch.func.grad(torch.func.grad(lambda v: _sharp_dip_on_a_wide_bowl(v)))(w[0]).item()


def test_sam_leaves_the_sharp_basin_sgd_stays():
    start = torch.tensor([-0.8])
    w_sgd = nn.Parameter(start.clone())
    end_sgd = _descend(w_sgd, torch.optim.SGD([w_sgd], lr=0.01))  # lr * sharp curvature = 1
    w_sam = nn.Parameter(start.clone())
    end_sam = _descend(w_sam, SAM([w_sam], torch.optim.SGD, rho=0.5, lr=0.01))
    assert abs(end_sgd.item() + 1) < 0.05 and _curvature(end_sgd) > 50
    # First-order SAM in 1-D stalls where its ascent point sits at the dip's centre (w* + rho),
    # on the wide bowl's slope: flat there, and plain descent from it reaches the wide basin.
    assert _curvature(end_sam) < 1
    w = nn.Parameter(end_sam)
    assert abs(_descend(w, torch.optim.SGD([w], lr=0.5)).item() - 2) < 0.05


def test_bad_arguments():
    w = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="rho"):
        SAM(w, torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="p must"):
        SAM(w, torch.optim.SGD, p=0.5, lr=0.1)
