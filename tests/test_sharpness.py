import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.func import functional_call, hessian

from sam_lab import sharpness
from sam_lab.train import classify

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_tiny_mlp():
    """A 51-parameter tanh MLP trained near a minimum on a fixed random batch."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def _full_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(w):
        parts = torch.split(w, [math.prod(s) for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return hessian(loss)(flat)


def test_power_iteration_and_hutchinson_match_full_hessian():
    model, x, y = _trained_tiny_mlp()
    eig = torch.linalg.eigvalsh(_full_hessian(model, x, y).double())
    by_magnitude = eig[eig.abs().argsort(descending=True)]
    assert by_magnitude[0] == eig[-1] > 0  # near a minimum the dominant eigenvalue is lambda_max

    top = sharpness.lambda_max(model, F.cross_entropy, x, y, iters=100, tol=1e-6)
    assert top == pytest.approx(float(eig[-1]), rel=0.01)
    top3 = sharpness.top_eigenvalues(model, F.cross_entropy, x, y, k=3, iters=100, tol=1e-6)
    assert top3 == pytest.approx(by_magnitude[:3].tolist(), rel=0.01)

    trace = sharpness.hessian_trace(model, F.cross_entropy, x, y, probes=1000)
    assert trace == pytest.approx(float(eig.sum()), rel=0.05)


def _quadratic_problem():
    """L(w) = mean((x.w - y)^2) on nn.Linear(2, 1): convex, so the ball's max is on its boundary."""
    torch.manual_seed(1)
    x = torch.randn(32, 2) * torch.tensor([3.0, 0.5])
    y = x @ torch.tensor([1.0, -2.0]) + 0.1 * torch.randn(32)
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.8, -1.5]]))
    loss_fn = lambda out, t: F.mse_loss(out.squeeze(1), t)  # noqa: E731
    return model, x, y, loss_fn


def _brute_force_sharpness(model, x, y, loss_fn, rho, p, adaptive):
    """Max over 20k points of the ball's boundary ||u||_p = rho, eps = T_w * u, T_w = |w| + 0.01."""
    w = model.weight.detach().clone()
    angle = torch.linspace(0, 2 * math.pi, 20_001)
    u = torch.stack([angle.cos(), angle.sin()], 1)
    u = rho * u / torch.linalg.vector_norm(u, ord=p, dim=1, keepdim=True)
    eps = u * (w.abs() + 0.01) if adaptive else u
    losses = ((x @ (w + eps).T - y[:, None]) ** 2).mean(0)
    with torch.no_grad():
        return float(losses.max() - loss_fn(model(x), y))


@pytest.mark.parametrize("p, adaptive", [(2, False), (math.inf, False), (1, False), (2, True)])
def test_eps_sharpness_finds_the_max_over_the_ball(p, adaptive):
    model, x, y, loss_fn = _quadratic_problem()
    rho = 0.3
    exact = _brute_force_sharpness(model, x, y, loss_fn, rho, p, adaptive)
    got = sharpness.eps_sharpness(model, loss_fn, x, y, rho, p=p, steps=10, adaptive=adaptive)
    one_step = sharpness.eps_sharpness(model, loss_fn, x, y, rho, p=p, steps=1, adaptive=adaptive)
    assert got == pytest.approx(exact, rel=0.01)
    assert 0 < one_step <= got


def test_first_order_sharpness_is_rho_times_dual_norm_of_gradient():
    model, x, y, loss_fn = _quadratic_problem()
    loss_fn(model(x), y).backward()
    g = model.weight.grad.flatten().clone()
    model.zero_grad()
    for p, q in [(2, 2), (math.inf, 1), (1, math.inf)]:
        got = sharpness.first_order_sharpness(model, loss_fn, x, y, rho=0.1, p=p)
        assert got == pytest.approx(0.1 * float(torch.linalg.vector_norm(g, ord=q)), rel=1e-5)


def test_measure_leaves_model_grads_modes_and_rng_as_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    for _ in range(3):  # move the BN buffers away from their initial values
        model(x)
    F.cross_entropy(model(x), y).backward()  # some leftover .grad the caller may rely on
    model[3].eval()  # a mixed train/eval state must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()

    m = sharpness.measure(model, F.cross_entropy, x, y, rho=0.05, iters=20, probes=10, steps=3)

    assert set(m) == {"lambda_max", "hessian_trace", "eps_sharpness"}
    assert all(math.isfinite(v) for v in m.values()) and m["eps_sharpness"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    again = sharpness.measure(model, F.cross_entropy, x, y, rho=0.05, iters=20, probes=10, steps=3)
    assert again == m  # deterministic given the seed


def test_hessian_products_work_through_attention():
    """sdpa's fused CPU kernel has no double backward; measuring must not crash on a
    transformer (it did, after a grokking trial's whole training)."""
    from sam_lab.algorithmic import Transformer

    torch.manual_seed(0)
    model = Transformer(7, depth=1, d_model=8, heads=2)
    x, y = torch.randint(0, 7, (20, 2)), torch.randint(0, 7, (20,))
    m = sharpness.measure(model, F.cross_entropy, x, y, iters=5, probes=2, steps=1)
    assert all(math.isfinite(v) for v in m.values())
    name = "unembed.weight"
    index = [n for n, _ in model.named_parameters()].index(name)
    v = torch.randn(7, 8)
    with sharpness.measuring(model):  # and the product is the Hessian's
        params = dict(model.named_parameters())
        h = hessian(lambda w: F.cross_entropy(functional_call(model, {**params, name: w}, (x,)),
                                              y))(params[name].detach())
        hvp = sharpness._HVP(model, F.cross_entropy, x, y)
        probe = [v if i == index else torch.zeros_like(q) for i, q in enumerate(hvp.params)]
        got = hvp(probe)[index]
    torch.testing.assert_close(got, (h.reshape(56, 56) @ v.flatten()).view_as(v),
                               rtol=1e-4, atol=1e-5)


def test_asam_measure_reports_both_balls():
    model, x, y = _trained_tiny_mlp()
    m = sharpness.measure(model, F.cross_entropy, x, y, rho=0.05, adaptive=True, eta=0.01,
                          iters=5, probes=2, steps=2)
    plain = sharpness.eps_sharpness(model, F.cross_entropy, x, y, 0.05, steps=2)
    asam = sharpness.eps_sharpness(model, F.cross_entropy, x, y, 0.05, steps=2, adaptive=True,
                                   eta=0.01)
    assert m["eps_sharpness"] == plain and m["eps_sharpness_adaptive"] == asam != plain


@pytest.mark.slow
def test_sam_ends_flatter_than_sgd_at_every_width():
    """sweeps/sam_sharpness.yaml on a reduced grid (widths 32 and 128, seed 0): ~1 min."""
    with open(SWEEPS / "sam_sharpness.yaml") as f:
        base = yaml.safe_load(f)["base"]
    for width in (32, 128):
        ends = {}
        for rho in (0.0, 0.05):
            run = classify(dict(base, width=width, rho=rho, eval_every=base["epochs"]))
            try:
                while True:
                    last = next(run)
            except StopIteration as stop:
                ends[rho] = {**last, **stop.value}
        sgd, sam = ends[0.0], ends[0.05]
        assert sgd["train_loss"] < 0.02 and sam["train_loss"] < 0.02  # both at a minimum
        assert sam["lambda_max"] < 0.85 * sgd["lambda_max"], (width, sam, sgd)
        assert sam["test_acc"] >= sgd["test_acc"] - 0.01
