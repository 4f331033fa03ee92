"""Models to evaluate, named on the command line:

  rgb:BASE[:PRETRAINED]   an OpenCLIP model (PRETRAINED: an OpenCLIP tag or a local checkpoint file;
                          omitted = random weights), reading pixels
  gs:PATH[@PRETRAINED]    a GS model: a `gsv train` output folder or checkpoint directory, or a
                          trainable checkpoint file (gsclip.safetensors); @PRETRAINED overrides the
                          base weights recorded in it. It reads splats fitted to the dataset's images.

`EvalModel` bundles what the evaluation needs: the model (open_clip contract: encode_image,
encode_text), its tokenizer, how images enter it (pixels with a mean/std, or splats), and names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["EvalModel", "load_eval_model", "EvalError", "distinct_labels"]


class EvalError(ValueError):
    """A model, dataset or option the evaluation cannot use (clear, user-facing)."""


@dataclass
class EvalModel:
    kind: str  # "rgb" (pixels in) or "gs" (splats in)
    model: Any
    tokenizer: Callable
    name: str  # clip_benchmark's "model" field
    pretrained: str  # clip_benchmark's "pretrained" field
    image_size: int = 224
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)
    label: str = ""  # column name in the tables
    info: dict = field(default_factory=dict)
    source: str = ""  # the file or folder the label names by its last part ("" for a tag or random weights)
    variant: str = ""  # what the label adds after the path (a GS model's "@PRETRAINED" override)

    def __post_init__(self):
        if self.kind not in ("rgb", "gs"):
            raise EvalError(f"model kind must be rgb or gs, got {self.kind!r}")
        self.label = self.label or f"{self.kind}:{self.name}:{self.pretrained}"


def _visual_facts(visual) -> tuple[int, tuple, tuple]:
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    return size, tuple(cfg.get("mean", EvalModel.mean)), tuple(cfg.get("std", EvalModel.std))


def load_eval_model(spec: str, device: str | torch.device = "cpu") -> EvalModel:
    kind, _, rest = spec.partition(":")
    if kind not in ("rgb", "gs") or not rest:
        raise EvalError(f"--model {spec!r}: expected rgb:BASE[:PRETRAINED] or gs:PATH[@PRETRAINED]")
    from gaussianvision.models import ConfigError, register_open_clip_configs
    register_open_clip_configs()
    if kind == "rgb":
        base, _, pretrained = rest.partition(":")
        from gaussianvision.models import create_rgb_clip
        try:
            model = create_rgb_clip(base, pretrained or None, device=device)
        except (ConfigError, RuntimeError) as e:
            raise EvalError(f"--model {spec}: {e}") from None
        except Exception as e:  # hub download errors come in many types
            raise EvalError(f"--model {spec}: cannot load the pretrained weights ({type(e).__name__}: {e}); "
                            "offline, give a local checkpoint file as PRETRAINED") from None
        import open_clip
        size, mean, std = _visual_facts(model.visual)
        slug = os.path.basename(pretrained) if pretrained and os.path.isfile(pretrained) else (pretrained or "random")
        return EvalModel("rgb", model.eval(), open_clip.get_tokenizer(base), base, slug, size, mean, std,
                         label=f"rgb:{base}:{slug}", source=pretrained if pretrained and os.path.isfile(pretrained) else "")
    path, _, override = rest.partition("@")
    model, meta = _load_gs(path, override or None, device)
    size, mean, std = _visual_facts(model.base.visual)
    name = f"gs-{model.gs_config.get('name', 'custom')}-{model.base_name}"
    variant = f"@{override}" if override else ""  # one run on two bases: two models (review finding)
    return EvalModel("gs", model.eval(), model.tokenizer(), name, str(path), size, mean, std,
                     label=f"gs:{Path(path).name or path}{variant}", info=meta, source=str(path), variant=variant)


def _weights_of(em: EvalModel) -> tuple:
    """What a model loads: its kind and base, the real path of the file or checkpoint read (a GS model's folder
    resolves to the checkpoint it loads) or else its tag, and its @PRETRAINED override. Regression (new-user
    trial): one model spelled two ways (a run folder and its latest checkpoint, a link to a file) was evaluated
    twice under two labels, side by side in the table as if two models."""
    loaded = em.info.get("checkpoint") or em.source
    return (em.kind, em.name, os.path.realpath(loaded) if loaded else em.pretrained, em.variant)


def _label(em: EvalModel, parts: int) -> str:
    """em's label naming the last `parts` parts of its source's absolute path."""
    tail = "/".join(Path(os.path.abspath(em.source)).parts[-parts:])
    return f"gs:{tail}{em.variant}" if em.kind == "gs" else f"rgb:{em.name}:{tail}"


def distinct_labels(models: list[EvalModel]) -> None:
    """Models whose labels (the tables' columns) coincide are named by more of their paths, the fewest parts
    that tell them apart: runs/a/s2 and runs/b/s2 read gs:a/s2 and gs:b/s2. EvalError where two are the same
    model (one path, or one tag, given twice). Regression (new-user trial): two models with the same folder or
    file name (two runs' gsclip.safetensors) could not be compared: 'two models resolve to the same name'."""
    seen: dict[tuple, EvalModel] = {}
    for em in models:
        first = seen.setdefault(_weights_of(em), em)
        if first is not em:
            both = em.label if first.label == em.label else f"{first.label} and {em.label}"
            raise EvalError(f"{both}: the same model given twice" + ("" if first.label == em.label else
                            f" (both load {first.info.get('checkpoint') or first.source or first.pretrained})"))
    groups: dict[str, list[EvalModel]] = {}
    for em in models:
        groups.setdefault(em.label, []).append(em)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        paths = [os.path.abspath(em.source) + em.variant if em.source else None for em in group]
        if None in paths or len(set(paths)) < len(paths):
            raise EvalError(f"{label}: the same model given twice")
        depth = max(len(Path(os.path.abspath(em.source)).parts) for em in group)
        parts = next((k for k in range(2, depth + 1) if len({_label(em, k) for em in group}) == len(group)), depth)
        for em in group:
            em.label = _label(em, parts)
    if len({em.label for em in models}) < len(models):  # a longer label met another model's: name them whole
        for em in models:
            if em.source:
                em.label = _label(em, len(Path(os.path.abspath(em.source)).parts))
    labels = [em.label for em in models]
    shared = next((label for label in labels if labels.count(label) > 1), None)
    if shared is not None:
        raise EvalError(f"two models share the name {shared}")


def _load_gs(path: str, pretrained: str | None, device):
    from gaussianvision.models import WeightsError, create_gsclip, create_gsclip_from_weights
    from gaussianvision.models import ConfigError
    from gaussianvision.models.weights import resolve_base, weights_file_hint
    from gaussianvision.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, load_trainable
    p = Path(path)
    try:
        if p.is_file():
            model = create_gsclip_from_weights(p, pretrained=pretrained or "stored", device=device)
            return model, {"checkpoint": str(p)}
        if latest_checkpoint(p) is None:
            raise EvalError(f"gs:{path}: neither a checkpoint file nor a `gsv train` output folder"
                            f"{weights_file_hint(p)}")
        state, weights, _ = load_checkpoint(p)
        trained = state.get("task", {})  # the training stage's describe() (state.json names it "task")
        if trained.get("stage") not in ("1", "2"):
            raise EvalError(f"gs:{path}: a stage {trained.get('stage')!r} checkpoint is not a GS model "
                            "(an RGB teacher: gsv eval and gsv probe take it as "
                            "rgb:BASE:PATH/open_clip_model.safetensors)")
        base = resolve_base(trained.get("pretrained"), trained.get("pretrained_rel"), state["path"])
        model = create_gsclip(trained["base"], pretrained or base, trained["model_config"], device=device)
        load_trainable(model, weights, strict=True)
        return model, {"checkpoint": state["path"], "step": state["step"], "stage": trained["stage"]}
    except (WeightsError, CheckpointError, ConfigError) as e:
        raise EvalError(f"gs:{path}: {e}") from None
