"""Parameter accounting for GSCLIP.

Definition (the paper's "fraction of all CLIP parameters"): total = every parameter of the
GSCLIP model = the whole OpenCLIP base (RGB image tower incl. its patch embedding, text
tower, logit scale) + the new GS modules; trainable = parameters with requires_grad;
trainable_fraction = trainable / total.  ``trainable_fraction_of_base`` (trainable / base
only) is reported too, for comparison with papers that count against the base alone.
"""
from __future__ import annotations

__all__ = ["parameter_report", "PARTS"]

# (part, name prefixes), first match wins; order is the table's order
PARTS = (
    ("gs.stem", ("visual.stem.",)),
    ("gs.resampler", ("visual.resampler.",)),
    ("gs.cls_pos", ("visual.class_embedding", "visual.positional_embedding")),
    ("gs.head", ("visual.ln_post.", "visual.proj")),
    ("vision.blocks (shared)", ("base.visual.ln_pre.", "base.visual.transformer.")),
    ("rgb.embed", ("base.visual.conv1.", "base.visual.class_embedding", "base.visual.positional_embedding")),
    ("rgb.head", ("base.visual.ln_post.", "base.visual.proj")),
    ("text", ("base.transformer.", "base.token_embedding.", "base.positional_embedding",
              "base.ln_final.", "base.text_projection", "base.text.")),
    ("logit", ("base.logit_scale", "base.logit_bias")),
)


def parameter_report(model) -> dict:
    """{total, trainable, trainable_fraction, trainable_fraction_of_base, base_total, gs_total,
    parts: {part: {params, trainable}}} for a GSCLIP (meta-device models work too)."""
    parts = {name: {"params": 0, "trainable": 0} for name, _ in PARTS}
    total = trainable = base_total = 0
    for n, p in model.named_parameters():
        k = p.numel()
        part = next((name for name, pre in PARTS if n.startswith(pre)), "other")
        d = parts.setdefault(part, {"params": 0, "trainable": 0})
        d["params"] += k
        total += k
        if n.startswith("base."):
            base_total += k
        if p.requires_grad:
            d["trainable"] += k
            trainable += k
    return {
        "total": total,
        "trainable": trainable,
        "trainable_fraction": trainable / total if total else 0.0,
        "trainable_fraction_of_base": trainable / base_total if base_total else 0.0,
        "base_total": base_total,
        "gs_total": total - base_total,
        "parts": parts,
        "definition": "trainable / total, total = OpenCLIP base (both towers, logit scale) + GS modules",
    }
