"""Training defaults that scale with the data: what `gsv train` uses for every setting not given.

A stage's length is a number of samples to see, turned into epochs of the data at hand and
bounded (`epochs_for`); its learning rate moves between a small-data and a large-data value with
the square root of the data size (`lr_for`); warmup is a fraction of the run's steps
(`warmup_steps`). The two ends are the settings known to work: the demo's, tuned on a few
thousand 64 px samples with the tiny towers, and the paper-scale recipe of docs/training.md
(DataComp small, 12.8M pairs, ViT-B-16: stage 1 two epochs at 5e-4, stage 2 two epochs at 5e-4).

    stage  batch  samples to see  epochs (min, max)  lr small data -> large data    warmup
    rgb      128          40,960  (1, 100)           2e-3 -> 5e-4 (ref. 100k)        5%
    1         64         153,600  (2, 100)           2e-3 -> 5e-4 (ref. 100k)        5%
    2        128               0  (2, 2)             1e-4 -> 5e-4 (ref. 100k)        5%

Stage 1 matches the frozen RGB tower's embedding, so more passes over small data only bring
the student closer to what the teacher says of those images; it gets the longest run (on the
demo's world with one teacher, GS/RGB at 10x: 0.915 after 76,800 samples, 0.966 after 153,600;
benchmarks/results/worlds_defaults.md). Stage 2
is contrastive against captions with the text tower frozen: on a few thousand captions a few
hundred steps at a large rate pull the tower away from the teacher's embedding it was distilled
to (the issue-21 run: 4 epochs at 5e-4 on 2,400 pairs), so its rate falls with the data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Recipe", "RECIPES", "recipe_for", "epochs_for", "lr_for", "warmup_steps", "REFERENCE_SAMPLES"]

REFERENCE_SAMPLES = 100_000  # at and above this many samples the large-data rate applies


@dataclass(frozen=True)
class Recipe:
    batch_size: int
    samples: int            # samples to see in the run (epochs = samples / data size, bounded)
    min_epochs: float
    max_epochs: float
    lr_small: float         # the rate on small data (<= REFERENCE_SAMPLES / scale^2 samples)
    lr_large: float         # the rate at and above REFERENCE_SAMPLES
    warmup_fraction: float = 0.05

    def describe(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


RECIPES = {
    "rgb": Recipe(batch_size=128, samples=40_960, min_epochs=1, max_epochs=100, lr_small=2e-3, lr_large=5e-4),
    "1": Recipe(batch_size=64, samples=153_600, min_epochs=2, max_epochs=100, lr_small=2e-3, lr_large=5e-4),
    "2": Recipe(batch_size=128, samples=0, min_epochs=2, max_epochs=2, lr_small=1e-4, lr_large=5e-4),
}


def recipe_for(stage: str) -> Recipe:
    if str(stage) not in RECIPES:
        raise ValueError(f"no training recipe for stage {stage!r}; known: {', '.join(RECIPES)}")
    return RECIPES[str(stage)]


def epochs_for(stage: str, n_samples: int) -> float:
    """Passes over n_samples: the recipe's samples to see / n_samples, within its bounds."""
    if n_samples < 1:
        raise ValueError(f"the data holds no sample (n_samples={n_samples})")
    r = recipe_for(stage)
    return min(r.max_epochs, max(r.min_epochs, r.samples / n_samples))


def lr_for(stage: str, n_samples: int) -> float:
    """The recipe's rate for n_samples: lr_large at REFERENCE_SAMPLES and above; below, it moves
    toward lr_small as sqrt(n_samples / REFERENCE_SAMPLES) (geometrically in that square root),
    reaching lr_small at 1/16 of the reference (6,250 samples) and staying there below."""
    if n_samples < 1:
        raise ValueError(f"the data holds no sample (n_samples={n_samples})")
    r = recipe_for(stage)
    # t = 0 at the reference, 1 at reference / 16 (sqrt ratio 1/4) and below
    t = min(1.0, max(0.0, -math.log(math.sqrt(n_samples / REFERENCE_SAMPLES)) / math.log(4.0)))
    return r.lr_large * (r.lr_small / r.lr_large) ** t


def warmup_steps(total_steps: int, fraction: float) -> int:
    """Linear warmup steps for a run of total_steps: round(fraction x total), 0 for fraction 0."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"warmup fraction must be in [0, 1), got {fraction}")
    return int(round(fraction * total_steps))
