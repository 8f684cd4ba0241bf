"""A tiny CIFAR-10 folder in the real on-disk format, for tests (no download)."""

import pickle

import numpy as np

from sam_lab.data import CIFAR_DIR


def write_cifar_fixture(root, n_per_batch=20, seed=0):
    """python pickles of {b'data': uint8 (N, 3072), b'labels': [...]}, as the real archive."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root
