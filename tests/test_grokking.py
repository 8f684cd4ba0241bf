"""Grokking: data, config errors, reproducibility, the figures, and (slow) real grokking."""

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analysis import grokking as grok_figures
from sam_lab.algorithmic import OPERATIONS, EmbedMLP, Transformer, make_pairs, split
from sam_lab.config import ConfigError
from sam_lab.trials import grokking

ROOT = Path(__file__).resolve().parents[1]
SAM_LAB = str(Path(sys.executable).parent / "sam-lab")
TINY = dict(modulus=11, train_fraction=0.5, width=16, embed_dim=8, steps=30, eval_points=10)


def run_all(config):
    """All rows and the returned per-trial scalars."""
    trial, rows = grokking.run(config), []
    try:
        while True:
            rows.append(next(trial))
    except StopIteration as stop:
        return rows, stop.value


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_every_pair_once_with_labels_in_range(op):
    p = 13
    pairs, labels = make_pairs(op, p)
    tokens = 120 if op.startswith("s5:") else p
    n = p * (p - 1) if op == "x/y" else tokens * tokens
    assert pairs.shape == (n, 2) and labels.shape == (n,)
    assert len({tuple(ab) for ab in pairs.tolist()}) == n
    assert labels.min() >= 0 and labels.max() < tokens


PERMS = list(itertools.permutations(range(5)))


def _compose(x, y):  # (x*y)(i) = x(y(i))
    return tuple(x[y[i]] for i in range(5))


def _inverse(x):
    return tuple(sorted(range(5), key=lambda i: x[i]))


DIRECT = {  # Power et al.'s tasks, written out on Python ints and tuples
    "x+y": lambda a, b, p: (a + b) % p,
    "x-y": lambda a, b, p: (a - b) % p,
    "x*y": lambda a, b, p: (a * b) % p,
    "x/y": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a),
    "x^2+y^2": lambda a, b, p: (a * a + b * b) % p,
    "x^2+xy+y^2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "x^2+xy+y^2+x": lambda a, b, p: (a * a + a * b + b * b + a) % p,
    "x^3+xy": lambda a, b, p: (a**3 + a * b) % p,
    "x^3+xy^2+y": lambda a, b, p: (a**3 + a * b * b + b) % p,
    "x//y_or_x-y": lambda a, b, p: (a // b) % p if b % 2 == 1 else (a - b) % p,
    "s5:x*y": lambda a, b, p: PERMS.index(_compose(PERMS[a], PERMS[b])),
    "s5:x*y*x^-1": lambda a, b, p: PERMS.index(
        _compose(_compose(PERMS[a], PERMS[b]), _inverse(PERMS[a]))),
    "s5:x*y*x": lambda a, b, p: PERMS.index(_compose(_compose(PERMS[a], PERMS[b]), PERMS[a])),
}


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_every_task_matches_a_direct_python_computation(op):
    assert set(DIRECT) == set(OPERATIONS)
    p = 23
    pairs, labels = make_pairs(op, p)
    expected = [DIRECT[op](a, b, p) for a, b in pairs.tolist()]
    assert labels.tolist() == expected
    if op.startswith("s5:"):
        assert sorted(PERMS) == PERMS and len(set(labels.tolist())) > 1


def test_labels_obey_the_operation():
    p = 97
    pairs, labels = make_pairs("x/y", p)
    a, b = pairs.unbind(1)
    assert torch.equal((b * labels) % p, a)
    pairs, labels = make_pairs("x-y", p)
    a, b = pairs.unbind(1)
    assert torch.equal((labels + b) % p, a)
    pairs, labels = make_pairs("x^3+xy^2+y", p)
    expected = [(a**3 + a * b * b + b) % p for a, b in pairs.tolist()]
    assert labels.tolist() == expected


def test_split_is_seeded_disjoint_and_sized():
    train, test = split(9409, 0.4, seed=3)
    assert len(train) == round(0.4 * 9409) and len(train) + len(test) == 9409
    assert len(set(train.tolist()) | set(test.tolist())) == 9409
    assert torch.equal(split(9409, 0.4, seed=3)[0], train)
    assert not torch.equal(split(9409, 0.4, seed=4)[0], train)


@pytest.mark.parametrize("bad, key, words", [
    (dict(operation="x**y"), "operation", "x/y"),  # the message lists what is allowed
    (dict(operation="x/y", modulus=96), "modulus", "prime"),
    (dict(train_fraction=0.0), "train_fraction", "> 0"),
    (dict(train_fraction=1.0), "train_fraction", "< 1"),
    (dict(model="transformer", d_model=30, heads=4), "heads", "divide"),
    (dict(lr=float("inf")), "lr", "finite"),
    (dict(steps=1e9), "steps", "<="),
    (dict(beta2=1.0), "beta2", "< 1"),
    (dict(grokfast="sma"), "grokfast", "ema"),
])
def test_bad_config_fails_before_any_work(bad, key, words):
    with pytest.raises(ConfigError) as err:
        next(grokking.run({**TINY, **bad}))
    assert err.value.key == key and words in str(err.value)


def test_non_prime_modulus_is_fine_without_division():
    rows, _ = run_all({**TINY, "operation": "x*y", "modulus": 12, "steps": 2})
    assert rows[-1]["step"] == 2


def test_eval_schedule_is_log_spaced_and_ends_at_the_last_step():
    steps = grokking.eval_steps(100_000, 200)
    assert steps[0] == 1 and steps[-1] == 100_000 and steps == sorted(set(steps))
    assert 100 <= len(steps) <= 200
    assert np.diff(np.log(steps[-50:])).max() < 0.1  # evenly spaced in log step at the end


@pytest.mark.parametrize("extra", [
    dict(),
    dict(batch_size=20, rho=0.05),  # minibatches and SAM
    dict(model="transformer", d_model=16, heads=2, depth=1, layer_norm=False, steps=5),
])
def test_same_seed_same_metrics(extra):
    first, summary = run_all({**TINY, **extra})
    again, _ = run_all({**TINY, **extra})
    assert first == again
    assert set(first[-1]) == {"step", "epoch", "lr", "train_loss", "train_acc", "test_loss",
                              "test_acc", "weight_norm"}
    assert first[-1]["step"] == summary["steps_run"] and summary["early_stopped"] is False
    other, _ = run_all({**TINY, **extra, "seed": 1})
    assert other != first


def test_warmup_ramps_lr():
    rows, _ = run_all({**TINY, "warmup_steps": 10, "lr": 1e-2, "steps": 20, "eval_points": 20})
    lr = {r["step"]: r["lr"] for r in rows}
    assert lr[1] == pytest.approx(1e-3) and lr[5] == pytest.approx(5e-3) and lr[20] == 1e-2


def test_transformer_last_block_shortcut_matches_the_full_causal_pass():
    model = Transformer(11, depth=2, d_model=16, heads=4)
    pairs, _ = make_pairs("x+y", 11)
    x = model.embed(torch.cat([pairs, torch.full_like(pairs[:, :1], 11)], 1)) + model.pos
    for block in model.blocks:
        x = block(x)
    logits = model(pairs)
    assert logits.shape == (121, 11)
    assert torch.allclose(logits, model.unembed(x[:, -1]), atol=1e-5)


def test_folded_mlp_trains_exactly_like_the_plain_one():
    """The first Linear folded into the embedding lookup: same state_dict, same outputs, and after
    AdamW steps (weight decay 1, as in the trial) the same gradients and parameters."""
    pairs, labels = make_pairs("x+y", 23)
    trained = {}
    for forward in ("forward", "reference_forward"):
        torch.manual_seed(0)
        model = EmbedMLP(23, width=32, depth=2, embed_dim=8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=1.0)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(getattr(model, forward)(pairs[:300]), labels[:300]).backward()
            opt.step()
        trained[forward] = model
    folded, plain = trained["forward"], trained["reference_forward"]
    assert list(folded.state_dict()) == list(plain.state_dict())
    for (name, a), b in zip(folded.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert torch.allclose(folded(pairs), plain.reference_forward(pairs), atol=1e-5)
    assert torch.allclose(plain(pairs), plain.reference_forward(pairs), atol=1e-5)


def test_non_finite_loss_raises():
    with pytest.raises(FloatingPointError, match="init_scale"):
        run_all({**TINY, "init_scale": 1e30})


@pytest.mark.parametrize("args, expected", [
    ((None, None), "confusion"), ((100, None), "memorization"),
    ((100, 1099), "comprehension"), ((100, 1100), "grokking"),
    ((100, 1099, 500), "grokking"), ((100, 1100, 2000), "comprehension"),
])
def test_phase(args, expected):
    assert grokking.phase(*args) == expected


def test_delay_cut_and_ratio_are_reported(monkeypatch):
    config = {**TINY, "threshold": 0.1, "lr": 1e-2, "steps": 200, "eval_points": 30}
    _, summary = run_all(config)  # both reach 10% accuracy (test by chance, at step 1)
    assert summary["step_train_99"] and summary["step_test_99"]
    assert summary["grok_ratio"] == summary["step_test_99"] / summary["step_train_99"]
    cuts = []
    monkeypatch.setattr(grokking, "phase", lambda *args: cuts.append(args) or "x")
    run_all({**config, "grok_delay_steps": 7})
    assert cuts == [(summary["step_train_99"], summary["step_test_99"], 7)]


def test_betas_reach_adamw():
    rows, _ = run_all(TINY)
    assert run_all({**TINY, "beta1": 0.9, "beta2": 0.98})[0] == rows
    assert run_all({**TINY, "beta2": 0.999})[0][-1] != rows[-1]
    assert run_all({**TINY, "beta1": 0.5})[0][-1] != rows[-1]


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_grokfast_filters_the_applied_gradient(rho):
    plain, _ = run_all({**TINY, "rho": rho})
    # lamb 0 adds nothing: bit for bit the run without a filter
    assert run_all({**TINY, "rho": rho, "grokfast": "ema", "grokfast_lamb": 0.0})[0] == plain
    assert run_all({**TINY, "rho": rho, "grokfast": "ema"})[0][-1] != plain[-1]
    assert run_all({**TINY, "rho": rho, "grokfast": "ma", "grokfast_window": 5})[0][-1] != plain[-1]


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_grad_filter_is_lee_et_als(kind):
    """The reference's gradfilter_ema / gradfilter_ma (with warmup), written out per step."""
    from sam_lab.grokfast import GradFilter

    param = torch.nn.Parameter(torch.zeros(3))
    grads = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(7)]
    filt = GradFilter([param], kind, alpha=0.9, lamb=2.0, window=3)
    ema = None
    for i, g in enumerate(grads):
        param.grad = g.clone()
        filt()
        if kind == "ema":
            ema = g if ema is None else 0.9 * ema + 0.1 * g
            expected = g + 2.0 * ema
        else:
            expected = g + 2.0 * torch.stack(grads[i - 2:i + 1]).mean(0) if i >= 2 else g
        torch.testing.assert_close(param.grad, expected)


def test_transformer_trial_measures_sharpness_after_training():
    _, summary = run_all({**TINY, "model": "transformer", "d_model": 16, "heads": 2, "depth": 1,
                          "steps": 3, "measure_sharpness": True})
    assert np.isfinite([summary["lambda_max"], summary["hessian_trace"],
                        summary["eps_sharpness"]]).all()


def test_s5_task_trains_on_120_tokens():
    rows, _ = run_all({**TINY, "operation": "s5:x*y", "steps": 2, "modulus": 2})
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["train_loss"])


def synthetic_sweep(tmp_path):
    """A fraction x weight-decay sweep with 3 seeds: one cell never generalizes, one is split,
    and one trial failed."""
    fractions, decays, seeds = [0.3, 0.5], [0.1, 1.0], [0, 1, 2]
    trials, curves = [], []
    for i, (f, wd, s) in enumerate(itertools.product(fractions, decays, seeds)):
        step_test = {(0.3, 0.1): None, (0.3, 1.0): 8000 if s else None}.get((f, wd), 2000 + 100 * s)
        step_train = 200
        trials.append(dict(trial_id=f"t{i}", sweep="s", experiment="grokking", status="ok",
                           error=None, seed=s, train_fraction=f, weight_decay=wd, steps=10000,
                           threshold=0.99,
                           step_train_99=step_train, step_test_99=step_test,
                           phase=grokking.phase(step_train, step_test)))
        for step in grokking.eval_steps(10000, 30):
            curves.append(dict(trial_id=f"t{i}", step=step, train_acc=float(step >= step_train),
                               test_acc=float(step >= (step_test or 1e9)), weight_norm=50.0))
    trials.append({**trials[0], "trial_id": "bad", "status": "failed", "error": "boom"})
    spec = dict(name="s", experiment="grokking", grid=dict(train_fraction=fractions,
                                                           weight_decay=decays), seeds=seeds)
    return pd.DataFrame(trials), pd.DataFrame(curves), spec


def test_cell_summary_marks_never_by_majority(tmp_path):
    trials, _, _ = synthetic_sweep(tmp_path)
    summary = grok_figures._summarise(trials, ["train_fraction", "weight_decay"])
    cell = summary.set_index(["train_fraction", "weight_decay"])
    assert cell.loc[(0.3, 0.1), "failed"] == 1 and cell.loc[(0.3, 0.1), "n"] == 3
    assert np.isinf(cell.loc[(0.3, 0.1), "median_steps"]) and cell.loc[(0.3, 0.1), "phase"] == \
        "memorization"
    assert cell.loc[(0.3, 1.0), "median_steps"] == 8000 and cell.loc[(0.3, 1.0), "generalized"] == 2
    assert cell.loc[(0.5, 1.0), "median_steps"] == 2100 and cell.loc[(0.5, 1.0), "phase"] == \
        "grokking"


def test_figures_follow_the_grid(tmp_path):
    trials, curves, spec = synthetic_sweep(tmp_path)
    paths = grok_figures.make_figures(trials, curves, spec, tmp_path)
    names = {p.name for p in paths}
    assert names == {"grok_curves.png", "grok_weight_norm.png", "grok_seed_spread.png",
                     "grok_steps_train_fraction_weight_decay.png",
                     "grok_phase_train_fraction_weight_decay.png"}
    assert all(p.stat().st_size > 1000 and p.with_suffix(".svg").exists() for p in paths)

    # A third grid key splits the heatmaps; a one-key grid has no heatmap at all. (No curves and
    # one seed here, so only the heatmaps are drawn: figures cost seconds each.)
    one_seed = trials[trials.seed == 0]
    no_curves = curves.iloc[:0]
    three = one_seed.assign(operation="x/y")
    spec3 = {**spec, "grid": {**spec["grid"], "operation": ["x/y"]}}
    names = {p.name for p in grok_figures.make_figures(three, no_curves, spec3, tmp_path / "3")}
    assert names == {"grok_steps_train_fraction_weight_decay_operation=xdivy.png",
                     "grok_phase_train_fraction_weight_decay_operation=xdivy.png"}
    one = {**spec, "grid": {"train_fraction": [0.3, 0.5]}}
    assert grok_figures.make_figures(one_seed, no_curves, one, tmp_path / "1") == []


# The reduced 4x4 variant of sweeps/grokking/fraction_wd.yaml (its description has the measured
# outcome and runtime): p = 59, one seed, 3,000 steps at most.
FRACTION_WD_4X4 = ["modulus=59", "width=128", "lr=2e-3", "steps=3000", "early_stop=200",
                   "train_fraction=[0.3,0.4,0.6,0.8]", "weight_decay=[0.1,0.3,1,3]"]


@pytest.mark.slow
def test_fraction_wd_grid_has_a_monotone_boundary(tmp_path):
    """Through `sam-lab sweep` and `sam-lab plot`: more data and more weight decay generalize
    sooner, so the cells that reach 99% test accuracy form an up-set of the grid."""
    sweep = [SAM_LAB, "sweep", str(ROOT / "sweeps/grokking/fraction_wd.yaml"),
             "--results", str(tmp_path)]
    for value in FRACTION_WD_4X4:
        sweep += ["--set", value]
    subprocess.run(sweep, check=True, cwd=tmp_path, timeout=900)
    subprocess.run([SAM_LAB, "plot", "grok-fraction-wd"], check=True, cwd=tmp_path, timeout=300)
    trials = pd.read_parquet(tmp_path / "grok-fraction-wd" / "trials.parquet")
    assert len(trials) == 16 and (trials.status == "ok").all(), trials[["trial_id", "error"]]

    cells = {(r.train_fraction, r.weight_decay): r.step_test_99 for r in trials.itertuples()}
    done = {cell for cell, step in cells.items() if pd.notna(step)}
    table = trials.pivot(index="weight_decay", columns="train_fraction", values="step_test_99")
    assert done and len(done) < len(cells), table
    for f, w in done:
        assert all((f2, w2) in done for f2, w2 in cells if f2 >= f and w2 >= w), table

    # Its (60% data, wd 1) cell is the reduced setup of the CI: memorised first, then grokked.
    cell = trials.set_index(["train_fraction", "weight_decay"]).loc[(0.6, 1.0)]
    assert cell.phase == "grokking" and cell.grok_delay >= 1000 and cell.early_stopped
    curve = pd.read_parquet(tmp_path / "grok-fraction-wd" / "curves" / f"{cell.trial_id}.parquet")
    assert curve.set_index("step").test_acc[cell.step_train_99] < 0.5  # not merely slow to fit
    assert cell.test_acc >= 0.99 and cell.steps_run >= cell.step_test_99 + 200

    figures = {p.name for p in (tmp_path / "grok-fraction-wd" / "figures").glob("*.png")}
    assert {"grok_steps_train_fraction_weight_decay.png",
            "grok_phase_train_fraction_weight_decay.png"} <= figures
