"""Datasets, loaded once as tensors on the trial's device.

    d = load("digits", n_train=400, label_noise=0.1, seed=0)
    d.x_train.shape, d.y_train.shape, d.n_classes

- mnist1d: built offline by `mnist1d.data.make_dataset` (never its downloading `get_dataset`);
  `data_seed` is its generator seed (42 is the published dataset): 4000 train, 1000 test.
- digits: sklearn's 8x8 digits (shipped with scikit-learn): a fixed stratified split of
  1300 train / 497 test, drawn with `data_seed`.
- gaussian: x ~ N(0, I_dim), labels from a random linear teacher (argmax over 10 classes).
- cifar10: the python-pickle layout (`cifar-10-batches-py/`) under `data_dir`, downloaded with an
  MD5 check only when `download=True`.

Then, the same for all: `n_train` takes a seeded, stratified subset of the training pool;
`label_noise` replaces that fraction of training labels by a different random class (seeded);
inputs are standardised with training statistics (per channel for images and sequences, per
feature for flat vectors). The test set never depends on the trial seed.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TRAIN_POOL = {"mnist1d": 4000, "digits": 1300, "gaussian": 1_000_000, "cifar10": 50_000}
TEST_POOL = {"mnist1d": 1000, "digits": 497, "gaussian": 2000, "cifar10": 10_000}
SHAPES = {"mnist1d": (1, 40), "digits": (1, 8, 8), "cifar10": (3, 32, 32)}  # gaussian: (dim,)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_DIR = "cifar-10-batches-py"


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


@functools.lru_cache(maxsize=4)  # ~2 s to build; reused by trials sharing a worker process
def _mnist1d(data_seed):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = data_seed
    d = make_dataset(args)
    as_seq = lambda x: np.asarray(x, np.float32)[:, None, :]  # noqa: E731  (N, 1, 40)
    return as_seq(d["x"]), np.asarray(d["y"]), as_seq(d["x_test"]), np.asarray(d["y_test"]), 10


def _digits(data_seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_POOL["digits"], stratify=y, random_state=data_seed)
    return x_tr, y_tr, x_te, y_te, 10


def _gaussian(data_seed, n_train, dim, n_classes=10):
    rng = np.random.default_rng(data_seed)
    teacher = rng.standard_normal((dim, n_classes)).astype(np.float32)
    x_te = rng.standard_normal((TEST_POOL["gaussian"], dim)).astype(np.float32)
    x_tr = rng.standard_normal((n_train, dim)).astype(np.float32)
    return x_tr, (x_tr @ teacher).argmax(1), x_te, (x_te @ teacher).argmax(1), n_classes


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what numpy arrays need, nothing executable."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path):
    with open(path, "rb") as f:
        d = _ArrayUnpickler(f, encoding="bytes").load()
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255
    return x, np.asarray(d[b"labels"], np.int64)


def download_cifar10(data_dir):
    """Fetch and unpack CIFAR-10 into data_dir, checking the archive's MD5."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / "cifar-10-python.tar.gz"
    if not archive.exists():
        tmp = archive.with_suffix(".part")
        urllib.request.urlretrieve(CIFAR_URL, tmp)
        tmp.rename(archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if md5 != CIFAR_MD5:
        raise OSError(f"{archive}: MD5 {md5} != {CIFAR_MD5}; delete it and download again")
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir, filter="data")


def _cifar10(data_dir, download):
    root = Path(data_dir) / CIFAR_DIR
    if not root.is_dir():
        if not download:
            raise FileNotFoundError(f"{root} not found; set download: true or fix data_dir")
        download_cifar10(data_dir)
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = _read_cifar_batch(root / "test_batch")
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return x_tr, y_tr, x_te, y_te, 10


def _stratified_subset(y, n, seed):
    """Indices of a seeded subset of size n with class proportions kept."""
    if n <= 0 or n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(idx)


def add_label_noise(y, fraction, n_classes, seed):
    """Replace `fraction` of the labels by a different class, uniformly at random."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    flip = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    y[flip] = (y[flip] + rng.integers(1, n_classes, size=len(flip))) % n_classes
    return y


def _standardise(x_tr, x_te):
    axes = (0,) if x_tr.ndim == 2 else (0, *range(2, x_tr.ndim))
    mean = x_tr.mean(axis=axes, keepdims=True)
    std = x_tr.std(axis=axes, keepdims=True) + 1e-6
    return (x_tr - mean) / std, (x_te - mean) / std


def load(dataset, n_train=0, n_test=0, label_noise=0.0, seed=0, data_seed=42, data_dir="data",
         download=False, dim=20, device="cpu") -> Data:
    if dataset == "mnist1d":
        raw = _mnist1d(data_seed)
    elif dataset == "digits":
        raw = _digits(data_seed)
    elif dataset == "gaussian":
        raw = _gaussian(data_seed, n_train or 1000, dim)
    elif dataset == "cifar10":
        raw = _cifar10(data_dir, download)
    else:
        raise KeyError(f"unknown dataset {dataset!r}; allowed: {', '.join(TRAIN_POOL)}")
    x_tr, y_tr, x_te, y_te, n_classes = raw
    keep = _stratified_subset(y_tr, n_train, seed)
    x_tr, y_tr = x_tr[keep], np.asarray(y_tr)[keep]
    test_keep = _stratified_subset(y_te, n_test, data_seed)  # same test set for every seed
    x_te, y_te = x_te[test_keep], np.asarray(y_te)[test_keep]
    if label_noise > 0:
        y_tr = add_label_noise(y_tr, label_noise, n_classes, seed)
    x_tr, x_te = _standardise(x_tr, x_te)
    as_x = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)  # noqa: E731
    as_y = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)  # noqa: E731
    return Data(as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), n_classes)
