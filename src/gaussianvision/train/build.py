"""Build a training stage (its model and loss: stages.py) from plain settings (used by `gsv train`)."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, load_trainable
from .stages import RGBClipStage, Stage1, Stage2, freeze_for_stage

__all__ = ["build_stage", "check_stage", "rgb_model", "STAGES", "GS_EXPORT"]

STAGES = ("1", "2", "rgb")
GS_EXPORT = "gsclip.safetensors"


class _GSExport:
    """At the end of a GS stage, also write models' trainable checkpoint (create_gsclip_from_weights). A resumed GS
    stage must have the run's model: its config, the run it started from and what it unfroze (regression (new-user
    trial): another --model-config or no --init-from failed on a tensor's shape)."""

    def resume_keys(self) -> dict:
        return {**super().resume_keys(), "model_config": None, "init_from": None, "unfreeze": []}

    def export(self, out_dir):
        from gaussianvision.models import save_weights
        model = self.model
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        model.lock_frozen()  # the model's default trainable set, and what --unfreeze trained beside it
        default = {n for n, p in model.named_parameters() if p.requires_grad}
        save_weights(model, Path(out_dir) / GS_EXPORT, metadata={"stage": self.stage},
                     unfrozen=sorted((trained - default) | getattr(model, "kept_base", set())))


class GSStage1(_GSExport, Stage1):
    pass


class GSStage2(_GSExport, Stage2):
    pass


def build_stage(stage: str, base: str | None = None, pretrained: str | None = None, model_config=None,
                init_from: str | None = None, unfreeze=(), distill: str = "cosine", token_weight: float = 0.0,
                info=None, seed: int = 0, cache_teacher: bool = False, hflip: float = 0.0, rgb_stage=RGBClipStage):
    """-> the stage object of `stage` (model on info.device): "rgb" a plain CLIP (rgb_stage(model,
    tokenizer, info, meta=...): RGBClipStage or an application's subclass, e.g. apps.demo.teacher's),
    "1" / "2" the GS stages. Seeds torch before building so every rank starts identical."""
    stage = check_stage(stage, cache_teacher, hflip, distill, token_weight)
    torch.manual_seed(seed)
    if stage == "rgb":
        model, tokenizer, meta = rgb_model(base, pretrained, unfreeze, info)
        return rgb_stage(model, tokenizer, info, meta=meta)
    return _gs_stage(stage, base, pretrained, model_config, init_from, unfreeze, distill, token_weight, info,
                     cache_teacher=cache_teacher, hflip=hflip)


def check_stage(stage, cache_teacher: bool = False, hflip: float = 0.0, distill: str = "cosine",
                token_weight: float = 0.0) -> str:
    """The stage as a string; ValueError for an unknown one or a stage-1 option given to another (regression,
    new-user trial: --distill mse and --token-weight 1 were ignored by stage 2 without a word)."""
    stage = str(stage)
    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if cache_teacher and stage != "1":
        raise ValueError("--cache-teacher applies to --stage 1")
    if hflip and stage != "1":
        raise ValueError("--hflip applies to --stage 1 (stage rgb mirrors with --mirror-pairs)")
    if distill != "cosine" and stage != "1":
        raise ValueError(f"--distill {distill} applies to --stage 1 (the distillation loss)")
    if token_weight and stage != "1":
        raise ValueError("--token-weight applies to --stage 1 (the token-level distillation loss)")
    return stage


def rgb_model(base: str | None, pretrained: str | None, unfreeze=(), info=None):
    """Stage rgb's open_clip model (every parameter trains, on info.device) -> (model, tokenizer,
    meta for describe()). The caller seeds torch first. The model comes from models.create_base
    (its architecture and pretrained checks, its offline hub check)."""
    import open_clip
    from gaussianvision.models.gsclip import create_base
    if unfreeze:
        raise ValueError("--unfreeze applies to stage 2 (everything trains in stage rgb)")
    base = base or "gsv-tiny"
    model = create_base(base, pretrained or None, device=getattr(info, "device", torch.device("cpu")))
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, open_clip.get_tokenizer(base), {"base": base, "pretrained": pretrained}


def _gs_stage(stage, base, pretrained, model_config, init_from, unfreeze, distill, token_weight, info, **stage1):
    """Stage 1 or 2: the GS model (from --init-from's checkpoint when given), frozen for the stage."""
    from gaussianvision.models import create_gsclip
    from gaussianvision.models.weights import resolve_base
    init_state = init_weights = None
    given = {"model-config": model_config, "base": base}  # options that may differ from the --init-from run's
    if init_from:
        init_state, init_weights, _ = load_checkpoint(init_from)
        t = init_state.get("task", {})  # the stage's describe(), saved under "task"
        if t.get("stage") not in ("1", "2"):
            raise CheckpointError(f"--init-from {init_from}: not a GS training checkpoint (stage {t.get('stage')!r})")
        model_config = model_config or t.get("model_config")
        base = base or t.get("base")
        pretrained = pretrained if pretrained is not None else resolve_base(t.get("pretrained"), t.get("pretrained_rel"),
                                                                           init_state["path"])
    model = create_gsclip(base, pretrained, model_config or "gs-196")
    if init_weights is not None:
        # stage-1 weights: the GS tower (names match); anything else the checkpoint holds must fit too
        try:
            loaded = load_trainable(model, init_weights, strict=True)
        except CheckpointError as e:
            raise _unfitting(init_from, e, given, t) from None
        # base parameters the earlier run trained (its --unfreeze): stored with this run too, trained or not
        # (review finding: frozen here, they were left out of this run's checkpoints and gsclip.safetensors)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        model.kept_base |= {n for n in loaded if n.startswith("base.") and n in frozen}
    model.to(getattr(info, "device", torch.device("cpu")))
    model.train()
    freeze_for_stage(model, stage, list(unfreeze or ()))
    meta = {"base": model.base_name, "pretrained": model.pretrained, "model_config": model.gs_config,
            "init_from": str(init_from) if init_from else None, "unfreeze": list(unfreeze or ()),
            "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}
    if stage == "1":
        _check_token_counts(model, token_weight)
        return GSStage1(model, distill, token_weight, info, meta={**meta, "distill": distill, "token_weight": token_weight},
                        **stage1)
    return GSStage2(model, model.tokenizer(), info, meta=meta)


def _unfitting(init_from, e: Exception, given: dict, task: dict) -> Exception:
    """--init-from's weights do not fit the model: name the options given that differ from the run's own
    (regression, new-user trial: only the tensor shapes were named), or the error as it came where none do."""
    run_config = task.get("model_config")
    run = {"model-config": run_config.get("name") if isinstance(run_config, dict) else run_config,
           "base": task.get("base")}
    differ = [f"--{k} {v}" for k, v in given.items() if v and run[k] is not None and str(v) != str(run[k])]
    if not differ:
        return e
    used = " on ".join(f"{what} {run[k]}" for k, what in (("model-config", "model config"), ("base", "base"))
                       if run[k] is not None)
    return CheckpointError(f"--init-from {init_from}: its weights do not fit the model {' '.join(differ)} asks for "
                           f"({e}); that run used {used}: leave the option out to go on with the run's model")


def _check_token_counts(model, token_weight: float) -> None:
    """Token distillation compares the GS tower's output tokens one to one with the teacher's patches: a
    ValueError up front when their counts differ (regression: the first step failed with a traceback)."""
    if not token_weight:
        return
    q = model.visual.num_latents
    gh, gw = model.base.visual.grid_size
    if q != gh * gw:
        name = model.gs_config.get("name", "?") if isinstance(model.gs_config, dict) else model.gs_config
        raise ValueError(f"--token-weight {token_weight:g}: the model config {name!r} gives {q} output tokens, "
                         f"the base {model.base_name}'s teacher {gh}x{gw}={gh * gw} patches; token distillation needs "
                         f"them equal (a config with num_latents {gh * gw}), or use --token-weight 0")
