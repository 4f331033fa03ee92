"""Zero-shot evaluation of RGB and GS models through clip_benchmark (classification, retrieval),
per-dataset JSON results and comparison tables. See docs/training.md."""
from .datasets import SplatBatches, SplatCache, SplatSettings
from .models import EvalError, EvalModel, load_eval_model
from .run import evaluate_all, evaluate_one
from .suites import DATACOMP38, SUITES, suite_datasets

__all__ = ["EvalError", "EvalModel", "load_eval_model", "evaluate_all", "evaluate_one", "SplatSettings",
           "SplatCache", "SplatBatches", "DATACOMP38", "SUITES", "suite_datasets"]
