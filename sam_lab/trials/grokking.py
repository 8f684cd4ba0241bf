"""Grokking trial: learn `a op b mod p` from some of the pairs; watch when test catches up.

    from sam_lab.trials import grokking
    for row in grokking.run({"train_fraction": 0.4, "steps": 20000}):
        print(row["step"], row["train_acc"], row["test_acc"])

Training is AdamW (betas `beta1`, `beta2`: 0.9, 0.98 as in Power et al.; torch's default beta2
0.999 groks R4 about twice as early) with a linear warmup over `warmup_steps` and a constant lr
after it, full batch (`batch_size: 0`) or shuffled minibatches, and SAM around AdamW when rho > 0
(weight decay stays in AdamW, out of the ascent step). A step is one optimizer update, SAM's two
passes included. `grokfast: ema | ma` filters the gradient before each AdamW step (with SAM,
the gradient at w + eps; see sam_lab.grokfast). `init_scale` multiplies every initial parameter
(Omnigrok's alpha). `seed` fixes the train/test split, the initialisation and the minibatch order.
`operation` is one of Power et al.'s tasks (sam_lab.algorithmic; S5 tasks ignore `modulus`).

Evaluation runs on every pair (no grad) at `eval_points` log-spaced steps, deduplicated to
integers, last step included. A row is step, epoch, lr, train/test loss and accuracy, and
weight_norm (the L2 norm of all parameters). `step_train_99` / `step_test_99` are the first
evaluated steps with train / test accuracy >= `threshold`, so they are late by at most one eval
interval, a fraction steps^(1/eval_points) - 1 of the step (4.7% for 1e4 steps and 200 points).

Phase (after Liu et al. 2022, "Towards understanding grokking", with `threshold` for both
accuracies, 0.99 by default where Liu et al. used 0.9, and a delay cut of `grok_delay_steps`,
1000 by default as theirs):
  comprehension  train and test reach the threshold, test less than grok_delay_steps after train
  grokking       train and test reach it, test at least grok_delay_steps after train
  memorization   train reaches it, test never does
  confusion      train never does
`early_stop: k > 0` stops once test (and train) accuracy has stayed >= threshold for k steps
between evaluations; that affects no per-trial number above, only the run time.
`grok_ratio = step_test_99 / step_train_99` is a scale-free alternative to the absolute cut
(on the log-spaced eval grid an absolute cut flips between neighbouring eval steps).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from sam_lab import state as training_state
from sam_lab.algorithmic import (
    OPERATIONS,
    S5_OPERATIONS,
    EmbedMLP,
    Transformer,
    is_prime,
    make_pairs,
    split,
    vocab_size,
)
from sam_lab.config import ConfigError, field, parse
from sam_lab.grokfast import KINDS as GROKFAST_KINDS
from sam_lab.grokfast import GradFilter
from sam_lab.optim import SAM
from sam_lab.train import resolve_device

MAX_STEPS = 10**7
DURATION_KEY = "steps"  # a longer run of a finished trial goes on from its final state


@dataclasses.dataclass
class Config:
    operation: str = field(default="x+y", metadata=dict(choices=tuple(OPERATIONS)))
    modulus: int = field(default=97, metadata=dict(  # S5 tasks have 120 tokens, no modulus
        ge=2, applies=lambda c: c["operation"] not in S5_OPERATIONS))
    train_fraction: float = field(default=0.4, metadata=dict(gt=0.0, lt=1.0))
    model: str = field(default="mlp", metadata=dict(choices=("mlp", "transformer")))
    width: int = field(default=256, metadata=dict(ge=1))  # mlp hidden width
    depth: int = field(default=2, metadata=dict(ge=1))  # mlp hidden layers / transformer blocks
    embed_dim: int = field(default=32, metadata=dict(ge=1))  # mlp token embedding
    d_model: int = field(default=128, metadata=dict(ge=1))  # transformer; d_mlp = 4 * d_model
    heads: int = field(default=4, metadata=dict(ge=1))
    layer_norm: bool = True  # transformer; False is Nanda et al.'s
    lr: float = field(default=1e-3, metadata=dict(gt=0.0))
    beta1: float = field(default=0.9, metadata=dict(ge=0.0, lt=1.0, legacy=0.9))
    beta2: float = field(default=0.98, metadata=dict(ge=0.0, lt=1.0, legacy=0.98))
    weight_decay: float = field(default=1.0, metadata=dict(ge=0.0))
    warmup_steps: int = field(default=10, metadata=dict(ge=0, le=MAX_STEPS))
    batch_size: int = field(default=0, metadata=dict(ge=0))  # 0 = full batch
    steps: int = field(default=20000, metadata=dict(ge=1, le=MAX_STEPS))
    grokfast: str = field(default="none", metadata=dict(choices=GROKFAST_KINDS, legacy="none"))
    grokfast_alpha: float = field(default=0.98, metadata=dict(
        ge=0.0, lt=1.0, applies=lambda c: c["grokfast"] == "ema"))
    grokfast_lamb: float = field(default=2.0, metadata=dict(
        ge=0.0, applies=lambda c: c["grokfast"] != "none"))
    grokfast_window: int = field(default=100, metadata=dict(
        ge=1, le=10**4, applies=lambda c: c["grokfast"] == "ma"))
    rho: float = field(default=0.0, metadata=dict(ge=0.0))
    sam_p: float = field(default=2.0, metadata=dict(ge=1.0, allow_inf=True))
    init_scale: float = field(default=1.0, metadata=dict(gt=0.0))
    threshold: float = field(default=0.99, metadata=dict(gt=0.0, le=1.0))
    early_stop: int = field(default=0, metadata=dict(ge=0, le=MAX_STEPS))  # 0 = all steps
    eval_points: int = field(default=200, metadata=dict(ge=1, le=10**5))
    grok_delay_steps: int = field(default=1000, metadata=dict(ge=0, le=MAX_STEPS, legacy=1000))
    measure_sharpness: bool = False  # lambda_max, hessian_trace, eps_sharpness at the end
    sharpness_rho: float = field(default=0.05, metadata=dict(gt=0.0))
    seed: int = 0
    threads: int = field(default=1, metadata=dict(ge=1))
    device: str = field(default="cpu", metadata=dict(choices=("auto", "cpu", "cuda")))

    def check(self):
        if self.operation == "x/y" and not is_prime(self.modulus):
            raise ConfigError(
                "modulus",
                "x/y needs a prime modulus, so that every b != 0 has an inverse mod p; "
                f"got {self.modulus}",
            )
        if self.model == "transformer" and self.d_model % self.heads:
            raise ConfigError("heads", f"must divide d_model ({self.d_model}); got {self.heads}")


def eval_steps(steps: int, points: int) -> list[int]:
    """About `points` log-spaced integer steps in [1, steps], always ending at `steps`."""
    grid = np.unique(np.round(np.geomspace(1, steps, points)).astype(int))
    return sorted({*grid.tolist(), steps})


def phase(step_train: int | None, step_test: int | None, delay: int = 1000) -> str:
    if step_train is None:
        return "confusion"
    if step_test is None:
        return "memorization"
    return "grokking" if step_test - step_train >= delay else "comprehension"


def build_model(cfg: Config) -> torch.nn.Module:
    tokens = vocab_size(cfg.operation, cfg.modulus)
    if cfg.model == "mlp":
        model = EmbedMLP(tokens, cfg.width, cfg.depth, cfg.embed_dim)
    else:
        model = Transformer(tokens, cfg.depth, cfg.d_model, cfg.heads, cfg.layer_norm)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(cfg.init_scale)
    return model


@torch.no_grad()
def evaluate(model, pairs, labels, is_train) -> dict:
    """Loss and accuracy on the train and test pairs, from one forward over all of them."""
    logits = model(pairs)
    loss = F.cross_entropy(logits, labels, reduction="none")
    correct = (logits.argmax(1) == labels).float()
    weight_norm = torch.sqrt(sum(p.square().sum() for p in model.parameters()))
    stats = torch.stack([
        loss[is_train].mean(), correct[is_train].mean(),
        loss[~is_train].mean(), correct[~is_train].mean(), weight_norm,
    ]).tolist()  # one host sync per evaluation
    return dict(zip(("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"), stats))


def extendable(config: dict) -> str | None:
    """Why a longer `steps` cannot go on from this config's final state (None: it can). The lr
    is constant after warmup, so the trajectory so far does not depend on `steps`."""
    return None


def run(config: dict, state: dict | None = None, checkpoint=None):
    """Yield a row per evaluation point; see the module docstring. `state` / `checkpoint`:
    resume from a saved state and hand out the state at safe points (sam_lab.state)."""
    cfg = parse(Config, config)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    pairs, labels = make_pairs(cfg.operation, cfg.modulus)
    train_idx, _ = split(len(labels), cfg.train_fraction, cfg.seed)
    is_train = torch.zeros(len(labels), dtype=torch.bool)
    is_train[train_idx] = True
    pairs, labels, is_train = pairs.to(device), labels.to(device), is_train.to(device)
    x_train, y_train = pairs[is_train], labels[is_train]
    n_train = len(y_train)
    batch = min(cfg.batch_size or n_train, n_train)

    model = build_model(cfg).to(device)
    adamw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.rho > 0:
        opt = SAM(model.parameters(), torch.optim.AdamW, rho=cfg.rho, p=cfg.sam_p, **adamw)
    else:
        opt = torch.optim.AdamW(model.parameters(), **adamw)

    gradient_filter = GradFilter(model.parameters(), cfg.grokfast, cfg.grokfast_alpha,
                                 cfg.grokfast_lamb, cfg.grokfast_window)
    batches_per_epoch = n_train // batch  # drop the ragged tail so every step sees `batch` pairs

    def loss_on(xb, yb):
        return F.cross_entropy(model(xb), yb)

    first, order, row = 1, None, None
    step_train = step_test = held_since = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        training_state.load_filter_state(gradient_filter, state["grokfast"])
        training_state.set_rng_state(state["rng"])
        first = state["step"] + 1
        order = None if state["order"] is None else state["order"].to(device)
        step_train, step_test, held_since = state["step_train"], state["step_test"], \
            state["held_since"]
        row = state["last_row"]

    def get_state() -> dict:
        return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "grokfast": training_state.filter_state(gradient_filter),
                "rng": training_state.rng_state(), "order": order, "step_train": step_train,
                "step_test": step_test, "held_since": held_since, "last_row": row}

    evals = iter([s for s in eval_steps(cfg.steps, cfg.eval_points) if s >= first])
    next_eval = next(evals, None)
    step, stop = first - 1, False
    for step in range(first, cfg.steps + 1):
        lr = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in opt.param_groups:
            group["lr"] = lr
        if batch == n_train:
            xb, yb = x_train, y_train
        else:
            k = (step - 1) % batches_per_epoch
            if k == 0:
                order = torch.randperm(n_train, device=device)
            idx = order[k * batch:(k + 1) * batch]
            xb, yb = x_train[idx], y_train[idx]

        opt.zero_grad(set_to_none=True)
        loss_on(xb, yb).backward()
        if cfg.rho > 0:
            opt.first_step(zero_grad=True)
            loss_on(xb, yb).backward()
            gradient_filter()
            opt.second_step()
        else:
            gradient_filter()
            opt.step()

        if step == next_eval:
            next_eval = next(evals, None)
            row = dict(step=step, epoch=step * batch / n_train, lr=lr,
                       **evaluate(model, pairs, labels, is_train))
            if not np.isfinite(row["train_loss"]):
                raise FloatingPointError(
                    f"train loss is {row['train_loss']} at step {step} (lr={cfg.lr}, "
                    f"rho={cfg.rho}, init_scale={cfg.init_scale}); lower lr or init_scale"
                )
            if step_train is None and row["train_acc"] >= cfg.threshold:
                step_train = step
            if step_test is None and row["test_acc"] >= cfg.threshold:
                step_test = step
            yield row

            above = min(row["train_acc"], row["test_acc"]) >= cfg.threshold
            held_since = (held_since or step) if above else None
            stop = bool(cfg.early_stop and above and step - held_since >= cfg.early_stop)
        if checkpoint is not None:  # a safe point: this step and its row are done
            checkpoint(get_state)
        if stop:
            break
    if checkpoint is not None:  # the final state, also after a resume that had nothing left
        checkpoint(get_state)

    summary = {}
    if cfg.measure_sharpness:  # on the training pairs (at most 2000), eval mode
        from sam_lab import sharpness

        summary = sharpness.measure(model, F.cross_entropy, x_train[:2000], y_train[:2000],
                                    rho=cfg.sharpness_rho, p=cfg.sam_p)
    return dict(
        **summary,
        step_train_99=step_train,
        step_test_99=step_test,
        grok_delay=None if step_train is None or step_test is None else step_test - step_train,
        grok_ratio=None if step_train is None or step_test is None else step_test / step_train,
        phase=phase(step_train, step_test, cfg.grok_delay_steps),
        steps_run=row["step"],
        early_stopped=row["step"] < cfg.steps,
        train_acc=row["train_acc"],
        test_acc=row["test_acc"],
    )


def sharpness_of(config: dict, model_state: dict) -> dict:
    """lambda_max, hessian_trace and eps_sharpness of saved weights, measured as a trial with
    `measure_sharpness` measures its final model (same pairs, same ball)."""
    from sam_lab import sharpness

    cfg = parse(Config, config)
    torch.set_num_threads(cfg.threads)
    pairs, labels = make_pairs(cfg.operation, cfg.modulus)
    train_idx, _ = split(len(labels), cfg.train_fraction, cfg.seed)
    is_train = torch.zeros(len(labels), dtype=torch.bool)
    is_train[train_idx] = True
    model = build_model(cfg)
    model.load_state_dict(model_state)
    x_train, y_train = pairs[is_train], labels[is_train]
    return sharpness.measure(model, F.cross_entropy, x_train[:2000], y_train[:2000],
                             rho=cfg.sharpness_rho, p=cfg.sam_p)


# The columns a refined sweep (`refine.metric`) may split on.
METRICS = {"phase": "categorical", "step_train_99": "numeric", "step_test_99": "numeric",
           "grok_delay": "numeric", "grok_ratio": "numeric", "train_acc": "numeric",
           "test_acc": "numeric", "steps_run": "numeric"}
