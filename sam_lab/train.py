"""The classification trial: one loop in which width, data size, rho and duration are config.

    for row in classify({"dataset": "digits", "model": "mlp", "width": 128, "epochs": 20}):
        print(row)            # step, epoch, train_loss, train_acc, test_loss, test_acc, lr

The pieces (`setup`, `make_optimizer`, `train_epoch`, `evaluate`) are public so that other
trials (mode connectivity) train endpoints with exactly this loop.

SAM options: `rho`, `sam_p` (the ball's norm), `adaptive` with `asam_eta` (ASAM, T_w = |w| + eta;
see sam_lab.optim), and `sam_m` (m-sharpness, Foret et al.'s m: each chunk of sam_m examples of a
batch gets its own eps from its own gradient and the gradients at the chunks' w + eps are
averaged; 0 = one eps for the whole batch). `grokfast: ema | ma` filters the applied gradient
(sam_lab.grokfast) before clipping and the base step.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam_lab import data as datasets
from sam_lab import models
from sam_lab import state as training_state
from sam_lab.config import ConfigError, field, parse
from sam_lab.grokfast import KINDS as GROKFAST_KINDS
from sam_lab.grokfast import GradFilter
from sam_lab.optim import SAM, bn_update_once

IMAGE_DATASETS = ("digits", "cifar10")
SEQUENCE_DATASETS = ("mnist1d",)
MAX_EPOCHS = 10**5


def _sam_on(c: dict) -> bool:
    return c["rho"] > 0


@dataclass
class ClassifyConfig:
    # data
    dataset: str = field(default="mnist1d", metadata=dict(choices=tuple(datasets.TRAIN_POOL)))
    n_train: int = field(default=0, metadata=dict(ge=0))  # 0 = the whole training pool
    n_test: int = field(default=0, metadata=dict(ge=0))  # 0 = the whole test set
    label_noise: float = field(default=0.0, metadata=dict(ge=0.0, lt=1.0))
    data_dir: str = "data"
    download: bool = False
    data_seed: int = field(default=42, metadata=dict(ge=0))
    dim: int = field(default=20, metadata=dict(ge=1))  # gaussian only
    # model
    model: str = field(default="mlp", metadata=dict(choices=tuple(models.MODELS)))
    width: int = field(default=64, metadata=dict(ge=1))
    depth: int = field(default=2, metadata=dict(ge=1))  # mlp only
    # optimisation
    optimizer: str = field(default="sgd", metadata=dict(choices=("sgd", "adam", "adamw")))
    lr: float = field(default=0.01, metadata=dict(gt=0.0))
    momentum: float = field(default=0.9, metadata=dict(ge=0.0, lt=1.0))
    weight_decay: float = field(default=0.0, metadata=dict(ge=0.0))
    schedule: str = field(default="constant", metadata=dict(choices=("constant", "cosine", "step")))
    batch_size: int = field(default=100, metadata=dict(ge=0))  # 0 = full batch
    epochs: int = field(default=10, metadata=dict(ge=1, le=MAX_EPOCHS))
    grad_clip: float = field(default=0.0, metadata=dict(ge=0.0))  # 0 = off
    # SAM
    rho: float = field(default=0.0, metadata=dict(ge=0.0))  # 0 = SAM off
    sam_p: float = field(default=2.0, metadata=dict(ge=1.0, allow_inf=True))
    adaptive: bool = False
    asam_eta: float = field(default=0.01, metadata=dict(  # Kwon et al.'s T_w = |w| + eta
        ge=0.0, applies=lambda c: c["adaptive"] and _sam_on(c)))
    sam_m: int = field(default=0, metadata=dict(  # examples per perturbation; 0 = the batch
        ge=0, legacy=0, applies=_sam_on))
    # Grokfast (Lee et al. 2024)
    grokfast: str = field(default="none", metadata=dict(choices=GROKFAST_KINDS, legacy="none"))
    grokfast_alpha: float = field(default=0.98, metadata=dict(
        ge=0.0, lt=1.0, applies=lambda c: c["grokfast"] == "ema"))
    grokfast_lamb: float = field(default=2.0, metadata=dict(
        ge=0.0, applies=lambda c: c["grokfast"] != "none"))
    grokfast_window: int = field(default=100, metadata=dict(
        ge=1, le=10**4, applies=lambda c: c["grokfast"] == "ma"))
    # bookkeeping
    eval_every: int = field(default=1, metadata=dict(ge=1, le=MAX_EPOCHS))  # epochs
    measure_sharpness: bool = False  # lambda_max, hessian_trace, eps_sharpness at the end
    sharpness_rho: float = field(default=0.05, metadata=dict(gt=0.0))  # one ball for every rho
    seed: int = field(default=0, metadata=dict(ge=0))
    device: str = field(default="auto", metadata=dict(choices=("auto", "cpu", "cuda")))
    amp: str = field(default="off", metadata=dict(choices=("off", "bf16")))
    threads: int = field(default=0, metadata=dict(ge=0))  # 0 = torch's default

    def check(self):
        pool = datasets.TRAIN_POOL[self.dataset]
        if self.n_train > pool:
            raise ConfigError("n_train", f"got {self.n_train}; {self.dataset} has {pool}")
        if self.n_test > datasets.TEST_POOL[self.dataset]:
            raise ConfigError("n_test", f"got {self.n_test}; {self.dataset} has "
                                        f"{datasets.TEST_POOL[self.dataset]}")
        if self.model == "resnet18k" and self.dataset not in IMAGE_DATASETS:
            raise ConfigError("model", f"resnet18k needs images ({', '.join(IMAGE_DATASETS)}), "
                                       f"not {self.dataset}")
        if self.model == "cnn5" and self.dataset not in IMAGE_DATASETS + SEQUENCE_DATASETS:
            raise ConfigError("model", f"cnn5 needs images or sequences, not {self.dataset}")
        if self.dataset == "cifar10" and not self.download:
            from pathlib import Path

            root = Path(self.data_dir) / datasets.CIFAR_DIR
            if not root.is_dir():
                raise ConfigError("data_dir", f"{root} not found; point data_dir at the folder "
                                              "holding cifar-10-batches-py, or set download: true")


def resolve_device(name: str) -> torch.device:
    # Checked here, on the worker, not in `check`: a CPU head validates specs for GPU workers.
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but this worker's torch sees no GPU")
    return torch.device(name)


def setup(cfg: ClassifyConfig, seed: int | None = None):
    """Seed, size torch's thread pool, load the data and build the model. Returns (data, model)."""
    seed = cfg.seed if seed is None else seed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = datasets.load(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test,
                         label_noise=cfg.label_noise, seed=seed, data_seed=cfg.data_seed,
                         data_dir=cfg.data_dir, download=cfg.download, dim=cfg.dim, device=device)
    torch.manual_seed(seed)
    model = models.build(cfg.model, data.input_shape, data.n_classes, cfg.width, cfg.depth)
    return data, model.to(device)


def make_optimizer(cfg: ClassifyConfig, params, lr=None, weight_decay=None):
    """The base optimizer, wrapped in SAM when rho > 0. Pass `model.named_parameters()`: ASAM
    picks the tensors it scales by name."""
    lr = cfg.lr if lr is None else lr
    weight_decay = cfg.weight_decay if weight_decay is None else weight_decay
    if cfg.optimizer == "sgd":
        base, kw = torch.optim.SGD, dict(lr=lr, momentum=cfg.momentum, weight_decay=weight_decay)
    elif cfg.optimizer == "adam":
        base, kw = torch.optim.Adam, dict(lr=lr, weight_decay=weight_decay)
    else:
        base, kw = torch.optim.AdamW, dict(lr=lr, weight_decay=weight_decay)
    if cfg.rho > 0:
        return SAM(params, base, rho=cfg.rho, p=cfg.sam_p, adaptive=cfg.adaptive,
                   eta=cfg.asam_eta, **kw)
    return base(params, **kw)


def make_scheduler(cfg: ClassifyConfig, opt, total_steps: int):
    """Per-step LR multiplier, or None for a constant LR. SAM shares param_groups with its base,
    so the scheduler takes the SAM object itself."""
    if cfg.schedule == "cosine":
        factor = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))  # noqa: E731
    elif cfg.schedule == "step":
        factor = lambda s: 0.1 ** ((s >= total_steps // 2) + (s >= 3 * total_steps // 4))  # noqa: E731
    else:
        return None
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return 1 if batch_size == 0 else math.ceil(n / batch_size)


def gradient_filter(cfg: ClassifyConfig, params) -> GradFilter | None:
    """The config's Grokfast filter over these parameters, or None."""
    if cfg.grokfast == "none":
        return None
    return GradFilter(params, cfg.grokfast, cfg.grokfast_alpha, cfg.grokfast_lamb,
                      cfg.grokfast_window)


def sam_m_gradient(model, opt: SAM, xb, yb, m, autocast=nullcontext, loss_fn=F.cross_entropy):
    """m-sharpness: each chunk of m examples gets its own eps from its own gradient; .grad is
    set to the chunks' gradients at their w + eps, averaged with weights by chunk size (so it
    is SAM's gradient when m >= the batch). BatchNorm's running statistics count the first
    chunk's clean pass only, as data-parallel SAM keeps one worker's. Returns the clean loss on
    the batch."""
    params = [p for group in opt.param_groups for p in group["params"]]
    total, loss_total, n = [None] * len(params), 0.0, len(yb)
    for start in range(0, n, m):
        xc, yc = xb[start:start + m], yb[start:start + m]
        weight = len(yc) / n
        with (nullcontext() if start == 0 else bn_update_once(model)), autocast():
            loss = loss_fn(model(xc), yc)
        loss.backward()
        opt.first_step(zero_grad=True)
        with bn_update_once(model), autocast():
            loss_fn(model(xc), yc).backward()
        opt.restore()
        for i, p in enumerate(params):
            if p.grad is not None:
                total[i] = p.grad * weight if total[i] is None else total[i].add_(p.grad,
                                                                                  alpha=weight)
            p.grad = None
        loss_total = loss_total + loss.detach() * weight
    for p, g in zip(params, total):
        p.grad = g
    return loss_total


def train_epoch(model, opt, x, y, batch_size, generator, scheduler=None, grad_clip=0.0,
                amp=False, loss_fn=F.cross_entropy, sam_m=0, grad_filter=None):
    """One pass over (x, y) in seeded random minibatches. Returns the summed loss (a tensor,
    so no host sync per step) and the number of steps taken."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device)
    bs = n if batch_size == 0 else batch_size
    is_sam = isinstance(opt, SAM)
    # autocast only when asked: even a disabled autocast context costs time on tiny steps
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if amp else nullcontext
    total = torch.zeros((), device=x.device)
    steps = 0
    for i in range(0, n, bs):
        idx = order[i:i + bs]
        xb, yb = x[idx], y[idx]
        if is_sam and 0 < sam_m < len(yb):
            loss = sam_m_gradient(model, opt, xb, yb, sam_m, autocast, loss_fn)
        else:
            with autocast():
                loss = loss_fn(model(xb), yb)
            loss.backward()
            if is_sam:
                opt.first_step(zero_grad=True)
                with bn_update_once(model), autocast():
                    loss_fn(model(xb), yb).backward()
        if grad_filter is not None:  # on the gradient the base step applies
            grad_filter()
        if grad_clip > 0:  # on the gradient that is applied: SAM's second pass
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()  # for SAM: restore w, then the base step with the grad at w + eps
        opt.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().float()
        steps += 1
    return total, steps


@torch.no_grad()
def evaluate(model, x, y, batch_size=2048, loss_fn=F.cross_entropy):
    """(mean loss, accuracy) in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        out = model(x[i:i + batch_size]).float()
        loss_sum += loss_fn(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return loss_sum / len(y), correct / len(y)


def metrics(model, data, step, epoch, lr):
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    return dict(step=step, epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                test_loss=test_loss, test_acc=test_acc, lr=lr)


def extendable(config: dict) -> str | None:
    """Why a longer `epochs` cannot go on from this config's final state (None: it can)."""
    if config["schedule"] != "constant":
        return f"schedule {config['schedule']} depends on the total epochs"
    return None


def classify(config: dict, state: dict | None = None, checkpoint=None):
    """Train a classifier; yield metrics at epoch 0 and every `eval_every` epochs (and the last).
    `state` / `checkpoint`: resume from a saved state and hand out the state after every epoch
    (sam_lab.state)."""
    cfg = parse(ClassifyConfig, config)
    start = time.perf_counter()
    data, model = setup(cfg)
    opt = make_optimizer(cfg, model.named_parameters())
    grad_filter = gradient_filter(cfg, model.parameters())
    per_epoch = steps_per_epoch(len(data.y_train), cfg.batch_size)
    scheduler = make_scheduler(cfg, opt, per_epoch * cfg.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = epoch = done = 0
    if state is None:
        yield metrics(model, data, step, 0, opt.param_groups[0]["lr"])
    else:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        training_state.load_filter_state(grad_filter, state["grokfast"])
        training_state.set_rng_state(state["rng"], generator)
        step, done = state["step"], state["epoch"]
        epoch = done

    def get_state() -> dict:
        return {"step": step, "epoch": epoch, "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "grokfast": training_state.filter_state(grad_filter),
                "rng": training_state.rng_state(generator)}

    for epoch in range(done + 1, cfg.epochs + 1):
        loss_sum, steps = train_epoch(model, opt, data.x_train, data.y_train, cfg.batch_size,
                                      generator, scheduler, cfg.grad_clip, cfg.amp == "bf16",
                                      sam_m=cfg.sam_m, grad_filter=grad_filter)
        step += steps
        if not torch.isfinite(loss_sum):  # one host sync per epoch
            raise FloatingPointError(f"train loss is {loss_sum.item()} in epoch {epoch} "
                                     f"(step {step}); lower lr or rho")
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            yield metrics(model, data, step, epoch, opt.param_groups[0]["lr"])
        if checkpoint is not None:  # a safe point: this epoch and its row are done
            checkpoint(get_state)
    if checkpoint is not None:  # the final state, also after a resume that had nothing left
        checkpoint(get_state)
    summary = dict(n_params=models.count_params(model), train_s=time.perf_counter() - start)
    if cfg.measure_sharpness:
        summary.update(measure_sharpness(cfg, model, data))
    return summary


CUDA_CONTEXT = 600 * 2**20  # a process's CUDA context, cuBLAS workspace and allocator slack
EVAL_BATCH = 2048  # `evaluate`'s batch


def gpu_memory(configs: list[dict]) -> int:
    """Bytes of GPU memory one process training these configs (one, or a pack) needs, sized
    from the model on the meta device (no data is loaded, nothing is allocated): per model its
    weights, gradients, optimizer state and SAM's saved copy, its train + test data (they live on
    the device), and the larger of a training batch's activations (kept for backward, x2 with
    their gradients) and an evaluation batch's largest layer; plus one CUDA context. An estimate
    for sizing GPU shares, not a bound."""
    cfg = ClassifyConfig(**configs[0])  # validated by the spec (parse would look for data_dir)
    shape = datasets.SHAPES.get(cfg.dataset, (cfg.dim,))
    n_train = cfg.n_train or datasets.TRAIN_POOL[cfg.dataset]
    n_test = cfg.n_test or datasets.TEST_POOL[cfg.dataset]
    with torch.device("meta"):
        model = models.build(cfg.model, shape, 10, cfg.width, cfg.depth)
        per_sample = []  # each leaf module's output size for one sample
        for module in model.modules():
            if not list(module.children()):
                module.register_forward_hook(lambda m, i, out: per_sample.append(out[0].numel()))
        model(torch.empty(1, *shape))
    states = {"sgd": 1 if cfg.momentum else 0, "adam": 2, "adamw": 2}[cfg.optimizer]
    copies = 2 + states + (cfg.rho > 0)  # weights, grads, optimizer state, SAM's saved weights
    batch = min(cfg.batch_size or n_train, n_train)
    activations = max(2 * batch * sum(per_sample), 2 * min(EVAL_BATCH, n_train) * max(per_sample))
    data = (n_train + n_test) * (math.prod(shape) + 2)  # float32 inputs, int64 labels
    per_model = 4 * (copies * models.count_params(model) + activations + data)
    return CUDA_CONTEXT + len(configs) * per_model


def sharpness_of(config: dict, model_state: dict) -> dict:
    """The sharpness columns of saved weights, measured as a trial with `measure_sharpness`
    measures its final model (the trial's own data, the same subset and ball)."""
    cfg = parse(ClassifyConfig, config)
    data, model = setup(cfg)
    model.load_state_dict(model_state)
    return measure_sharpness(cfg, model, data)


def measure_sharpness(cfg, model, data):
    from sam_lab import sharpness

    n = min(1000, len(data.y_train))  # a fixed subset: the first n training points
    asam = cfg.adaptive and cfg.rho > 0  # an ASAM trial is also measured in its own ball
    return sharpness.measure(model, F.cross_entropy, data.x_train[:n], data.y_train[:n],
                             rho=cfg.sharpness_rho, p=cfg.sam_p, adaptive=asam, eta=cfg.asam_eta)
