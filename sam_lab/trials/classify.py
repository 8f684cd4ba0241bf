"""Classification (double descent in width, data size and epochs; SAM vs SGD).

Seeds and rho values of one grid point can train packed, K models at once under vmap
(`sam_lab.vectorized`); a spec asks for it with `pack: seeds` or `pack: [seed, rho]`.
"""

from sam_lab.config import parse
from sam_lab.train import ClassifyConfig as Config
from sam_lab.train import classify as run
from sam_lab.train import extendable, gpu_memory, sharpness_of
from sam_lab.vectorized import PACKABLE_KEYS
from sam_lab.vectorized import check_packable as _check_parsed
from sam_lab.vectorized import classify_packed as run_packed


def check_packable(configs: list[dict]):
    """Raise ConfigError if these configs cannot share a pack (checked before any work)."""
    _check_parsed([parse(Config, c) for c in configs])


DURATION_KEY = "epochs"  # a longer run of a finished trial goes on from its final state

__all__ = ["Config", "run", "extendable", "DURATION_KEY", "run_packed", "check_packable",
           "PACKABLE_KEYS", "gpu_memory", "sharpness_of", "METRICS"]


# The columns a refined sweep (`refine.metric`) may split on: the final row's metrics, and with
# measure_sharpness the sharpness measures.
METRICS = {"train_loss": "numeric", "train_acc": "numeric", "test_loss": "numeric",
           "test_acc": "numeric", "lambda_max": "numeric", "hessian_trace": "numeric",
           "eps_sharpness": "numeric"}
