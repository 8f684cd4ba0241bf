"""Classification (double descent in width, data size and epochs; SAM vs SGD)."""

from sam_lab.train import ClassifyConfig as Config
from sam_lab.train import classify as run

__all__ = ["Config", "run"]
