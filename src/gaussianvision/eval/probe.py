"""Where does a tower lose an attribute? Linear probes on its intermediate features.

For each labelled dataset (one attribute: a zero-shot classification task folder or a
clip_benchmark dataset) and each model, features are taken at several layers of the image tower
with forward hooks while ``encode_image`` runs, on the same images in the same order:

  GS tower (GSCLIP):  stem       stem tokens, mean over the valid Gaussians (padding masked out)
                      resampler  resampler latents, mean over the latents
                      pooled     the tower's output pooled as it pools (CLS or mean), before the projection
                      embedding  encode_image's output
  RGB tower (OpenCLIP ViT): patches (patch embeddings, mean over patches), pooled, embedding

and a linear probe (linear_probe.probe) is trained on one stratified split and scored on the
other. A layer whose module is missing (another model type, renamed attributes) is skipped with
its reason; the others still run. The table: probe_table.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .datasets import SplatCache, SplatSettings, build_dataset, build_loader, dataset_task, transform_for
from .linear_probe import probe, stratified_split
from .models import EvalError, EvalModel, distinct_labels

__all__ = ["Layer", "LAYERS", "Features", "layer_features", "extract_features", "run_probe", "task_folders"]


@dataclass(frozen=True)
class Layer:
    name: str
    module: str | None  # submodule of the model whose output is taken; None: encode_image's output
    reduce: str  # how its output becomes one vector per image (see _reduce)
    what: str


LAYERS: dict[str, tuple[Layer, ...]] = {
    "gs": (Layer("stem", "visual.stem", "masked_mean", "stem tokens, mean over the valid Gaussians"),
           Layer("resampler", "visual.resampler", "token_mean", "resampler latents, mean over the latents"),
           Layer("pooled", "visual.ln_post", "pooled", "tower output pooled (CLS or mean), before the projection"),
           Layer("embedding", None, "none", "the image embedding (encode_image)")),
    "rgb": (Layer("patches", "visual.conv1", "spatial_mean", "patch embeddings, mean over the patches"),
            Layer("pooled", "visual.ln_post", "pooled", "tower output pooled (CLS or mean), before the projection"),
            Layer("embedding", None, "none", "the image embedding (encode_image)")),
}


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _reduce(how: str, owner, args, output) -> torch.Tensor:
    """A hooked module's output -> [B, D]."""
    x = _first(output)
    if how == "masked_mean":  # the stem returns (tokens [B, N, D], mask [B, N]); else the input's mask
        mask = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else args[0].mask()
        m = mask.to(x.dtype)[..., None]
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "token_mean":
        if x.dim() != 3:
            raise ValueError(f"expected tokens [B, T, D], got {list(x.shape)}")
        return x.mean(1)
    if how == "spatial_mean":
        return x.flatten(2).mean(2) if x.dim() == 4 else x.mean(1)
    if how == "pooled" and x.dim() == 3:  # ln_post before pooling: pool as the tower does
        pool = getattr(owner, "pool_type", "tok")
        if pool not in ("tok", "avg"):
            raise ValueError(f"pool type {pool!r} is not supported")
        return x[:, 0] if pool == "tok" else x[:, 1:].mean(1)
    return x


class _Hooks:
    """Forward hooks that keep one [B, D] tensor per layer of the last forward pass."""

    def __init__(self, model: torch.nn.Module, layers: tuple[Layer, ...]):
        self.out: dict[str, torch.Tensor] = {}
        self.skipped: dict[str, str] = {}
        self.handles = []
        for layer in layers:
            if layer.module is None:
                continue
            try:
                module = model.get_submodule(layer.module)
            except AttributeError:
                self.skipped[layer.name] = f"{type(model).__name__} has no module {layer.module}"
                continue
            owner = model.get_submodule(layer.module.rpartition(".")[0])
            self.handles.append(module.register_forward_hook(partial(self._keep, layer, owner)))

    def _keep(self, layer, owner, module, args, output):
        if layer.name in self.skipped:
            return
        try:
            self.out[layer.name] = _reduce(layer.reduce, owner, args, output).detach().float().cpu()
        except Exception as e:  # an output of an unexpected form: skip the layer, not the run
            self.skipped[layer.name] = f"{layer.module} gave an output this probe cannot read ({e})"

    def remove(self):
        for h in self.handles:
            h.remove()


@dataclass
class Features:
    labels: torch.Tensor  # [n] long
    layers: dict[str, torch.Tensor]  # name -> [n, D], in LAYERS order
    classes: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    psnr: float | None = None  # GS: mean PSNR of the splats read
    unreadable: list[str] = field(default_factory=list)  # samples met and left out (with --max-images, up to a batch past the last used)


def _limited(loader, max_images: int | None):
    seen = 0
    for images, target in loader:
        if max_images is not None and seen + len(target) > max_images:
            images, target = images[:max_images - seen], target[:max_images - seen]
        if len(target):
            yield images, target
        seen += len(target)
        if max_images is not None and seen >= max_images:
            return


def _bar(loader, desc: str, total: int | None, progress: bool):
    from tqdm import tqdm
    return tqdm(loader, desc=desc, unit="batch", total=total, disable=not progress, leave=False)


def layer_features(model: torch.nn.Module, kind: str, inputs) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One batch through model.encode_image with LAYERS[kind] hooked -> ({layer: [B, D] float32 on
    the CPU}, {skipped layer: why})."""
    layers = LAYERS[kind]
    hooks = _Hooks(model, layers)
    try:
        with torch.no_grad():
            emb = model.encode_image(inputs).detach().float().cpu()
    finally:
        hooks.remove()
    out = {}
    for layer in layers:
        if layer.module is None:
            out[layer.name] = emb
        elif layer.name in hooks.out and layer.name not in hooks.skipped:
            out[layer.name] = hooks.out[layer.name]
        elif layer.name not in hooks.skipped:
            hooks.skipped[layer.name] = f"{layer.module} did not run in encode_image"
    return out, hooks.skipped


def extract_features(em: EvalModel, dataset: str, root: str, batch_size: int = 64, device: str = "cpu",
                     splats: SplatSettings | None = None, cache_dir: str | None = None,
                     max_images: int | None = None, progress: bool = False) -> Features:
    """Every layer of LAYERS[em.kind] (and the labels) for the first max_images images of a
    classification dataset; GS models read splats fitted (and cached) as `gsv eval` fits them."""
    task = dataset_task(dataset, root)
    if task != "zeroshot_classification":
        raise EvalError(f"{dataset}: a {task.split('_')[-1]} dataset has no class labels to probe")
    splats = splats or SplatSettings()
    transform = transform_for(em, splats)
    ds = build_dataset(dataset, root, transform, task)
    loader = build_loader(dataset, ds, batch_size, transform=transform, root=root)
    cache = None
    if em.kind == "gs":
        s = SplatSettings(**{**splats.__dict__, "size": splats.size or em.image_size})
        cache = SplatCache(cache_dir, s, progress=False, device=device)
    parts: dict[str, list] = {}
    skipped: dict[str, str] = {}
    labels = []
    total = math.ceil(max_images / batch_size) if max_images else None
    for images, target in _bar(_limited(loader, max_images), f"probe {em.label} {dataset}", total, progress):
        x = cache(images) if cache is not None else images
        feats, why = layer_features(em.model, em.kind, x.to(device))
        skipped.update(why)
        for name, f in feats.items():
            parts.setdefault(name, []).append(f)
        labels.append(torch.as_tensor(target))
    if not labels:
        raise EvalError(f"{dataset}: no images in {root}")
    y = torch.cat(labels).long()
    if y.dim() != 1:
        raise EvalError(f"{dataset}: multi-label targets {list(y.shape)} are not supported (one class per image)")
    order = [layer.name for layer in LAYERS[em.kind]]
    feats = {n: torch.cat(parts[n]) for n in order if n in parts and n not in skipped}
    return Features(y, feats, list(getattr(ds, "classes", None) or []), skipped,
                    cache.psnr_mean if cache is not None else None, [str(u) for u in loader.skipped])


def task_folders(root: str | Path) -> dict[str, str]:
    """The zero-shot task folders under root (wds layout: classnames.txt, test/nshards.txt) ->
    {"wds/NAME": folder}; root may itself be one task."""
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"--tasks {root}: not a folder")

    def is_task(d: Path) -> bool:
        return (d / "classnames.txt").is_file() and (d / "test" / "nshards.txt").is_file()

    found = [root] if is_task(root) else sorted(d for d in root.iterdir() if d.is_dir() and is_task(d))
    if not found:
        raise EvalError(f"--tasks {root}: no task folders (classnames.txt and test/nshards.txt) in it")
    return {f"wds/{d.name}": str(d) for d in found}


def _check(dataset: str, root: str) -> None:
    """Fail before any heavy work when a dataset cannot be read or has no labels."""
    task = dataset_task(dataset, root)
    if task != "zeroshot_classification":
        raise EvalError(f"{dataset}: a {task.split('_')[-1]} dataset has no class labels to probe")
    build_dataset(dataset, root, None, task)


def probe_dataset(models: list[EvalModel], dataset: str, root: str, test_fraction: float = 0.5, seed: int = 0,
                  l2: float | None = None, **extract) -> dict:
    """Every model's layers on one dataset -> a table row (see run_probe)."""
    feats = {em.label: extract_features(em, dataset, root, **extract) for em in models}
    first = feats[models[0].label]
    for label, f in feats.items():
        if not torch.equal(f.labels, first.labels):
            raise EvalError(f"{dataset}: {label} read other labels than {models[0].label} (dataset order changed?)")
    y = first.labels
    n_classes = max(len(first.classes), int(y.max()) + 1)
    split = stratified_split(y, test_fraction, seed)
    layers, skipped = {}, []
    for em in models:
        f = feats[em.label]
        skipped += [f"{em.label} {n}: {why}" for n, why in f.skipped.items()]
        for name, x in f.layers.items():
            layers[f"{em.label} {name}"] = probe(x, y, split, n_classes, l2=l2, seed=seed)
    chance = next(iter(layers.values()))["chance"] if layers else None
    return {"attribute": dataset[4:] if dataset.startswith("wds/") else dataset, "dataset": dataset,
            "classes": n_classes, "n_images": int(len(y)), "n_train": int(len(split.train)),
            "n_test": int(len(split.test)), "chance": chance, "layers": layers, "skipped": skipped,
            "unreadable": first.unreadable,  # the same samples for every model (the labels matched)
            "psnr": {label: f.psnr for label, f in feats.items() if f.psnr is not None}}


def run_probe(models: list[EvalModel], datasets: dict[str, str], test_fraction: float = 0.5, seed: int = 0,
              l2: float | None = None, batch_size: int = 64, device: str = "cpu",
              splats: SplatSettings | None = None, cache_dir: str | None = None, max_images: int | None = None,
              progress: bool = False) -> dict:
    """datasets: {name: root}. -> {"columns": ["LABEL LAYER", ...], "rows": [one per dataset],
    "layers": {kind: [[name, what], ...]}, "settings": {...}}; every row's "layers" maps a column
    to linear_probe.probe's result."""
    if not models:
        raise EvalError("give at least one model")
    distinct_labels(models)
    for dataset, root in datasets.items():
        _check(dataset, root)
    rows = [probe_dataset(models, d, r, test_fraction, seed, l2, batch_size=batch_size, device=device,
                          splats=splats, cache_dir=cache_dir, max_images=max_images, progress=progress)
            for d, r in datasets.items()]
    columns = [f"{em.label} {layer.name}" for em in models for layer in LAYERS[em.kind]
               if any(f"{em.label} {layer.name}" in row["layers"] for row in rows)]
    return {"columns": columns, "rows": rows, "models": {m.label: m.kind for m in models},
            "layers": {k: [[layer.name, layer.what] for layer in v] for k, v in LAYERS.items()},
            "settings": {"test_fraction": test_fraction, "seed": seed, "l2": "cross-validated" if l2 is None else l2,
                         "max_images": max_images,
                         "splats": None if splats is None else {k: v for k, v in splats.__dict__.items()
                                                                if k != "fit_batch"}}}
