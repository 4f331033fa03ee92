"""Evaluation datasets through clip_benchmark, and the splat side: images fitted on the fly
with a disk cache keyed by image content, so a GS model reads batches of Splats.

Dataset names are clip_benchmark's (`cifar10`, `imagenet1k`, `flickr30k`, ...) or its local /
remote webdataset layout `wds/NAME` with --dataset-root pointing at the folder that holds
classnames.txt, zeroshot_classification_templates.txt (or dataset_type.txt = retrieval) and
test/nshards.txt + test/0.tar ... (`{dataset}` and `{dataset_cleaned}` in the root are filled in,
as clip_benchmark does).
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import write_atomic
from gaussianvision.fit.presets import spelled_out
from .models import EvalError, EvalModel

__all__ = ["SplatSettings", "SplatCache", "SplatBatches", "ReadGuard", "dataset_task", "build_dataset", "build_loader",
           "resolve_root"]


@dataclass
class SplatSettings:
    """How a GS model's input is made from a dataset image (the conversion's settings)."""
    n_gaussians: int = 400
    iters: int | None = None  # None: a preset's own iterations (fit_options["preset"]), else 500
    init: str = "content"
    size: int | None = None  # None: the model's input size
    fit_batch: int = 32
    fit_options: dict = field(default_factory=dict)  # any other fit_images option (e.g. relocate_every)

    def __post_init__(self):
        from gaussianvision.fit import FitConfig
        from gaussianvision.fit.presets import preset_options
        self._check()
        FitConfig.from_options(self.fit_options, exclude=("iters", "init"))
        if self.iters is None:  # resolved here, so keys hold the number (and keys made before stay valid)
            preset = self.fit_options.get("preset")
            self.iters = preset_options(preset).get("iters", 500) if preset else 500

    def _check(self) -> None:
        """One ValueError starting with the setting's name (callers name their flag by it); regression:
        n_gaussians=0, iters=-3, size=3 or fit_batch=0 failed deep in the first fit with a traceback."""
        from gaussianvision.data.images import MAX_SIZE
        from gaussianvision.fit.config import too_many_gaussians
        from gaussianvision.fit.metrics import SSIM_WINDOW

        def whole(v) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)
        if not whole(self.n_gaussians) or self.n_gaussians < 1:
            raise ValueError(f"n_gaussians must be a whole number >= 1, got {self.n_gaussians!r}")
        if self.iters is not None and (not whole(self.iters) or self.iters < 0):
            raise ValueError(f"iters must be a whole number >= 0, got {self.iters!r}")
        if self.size is not None and (not whole(self.size) or not SSIM_WINDOW <= self.size <= MAX_SIZE):
            raise ValueError(f"size must be from {SSIM_WINDOW} (the SSIM window each fit reports with) to "
                             f"{MAX_SIZE} pixels a side, got {self.size!r}")
        if self.size is not None and (reason := too_many_gaussians(self.n_gaussians, self.size, self.size,
                                                                  f"n_gaussians {self.n_gaussians}")):
            raise ValueError(reason)  # regression: a traceback from the fit
        if not whole(self.fit_batch) or self.fit_batch < 1:
            raise ValueError(f"fit_batch must be a whole number >= 1, got {self.fit_batch!r}")
        if not isinstance(self.fit_options, dict):
            raise ValueError(f"fit_options must be a dict of fit_images options, got {type(self.fit_options).__name__}")

    def key(self) -> str:
        d = asdict(self)
        d.pop("fit_batch")
        if not d["fit_options"]:
            d.pop("fit_options")  # keys (and caches) made before the field existed stay valid
        else:
            d["fit_options"] = spelled_out(d["fit_options"])  # a preset's settings: its splats change with them
        return json.dumps(d, sort_keys=True)


class SplatCache:
    """Fit images to splats, caching the encoded splats on disk by a hash of (pixels, settings).

    Every result goes through the byte format (float16), cached or fresh, so a run gives the same
    numbers whether the cache was warm or cold. The cache folder is also the "converted copy":
    pre-filled folders are read without fitting anything.
    """

    def __init__(self, root: str | os.PathLike | None, settings: SplatSettings, progress: bool = False,
                 device: str | torch.device = "cpu"):
        self.root = Path(root) if root else None
        self.device = torch.device(device)  # where fitting runs (the GPU when evaluating on one)
        self.settings = settings
        self.progress = progress
        self.hits = self.fits = 0
        self.psnr_sum, self.psnr_count = 0.0, 0  # of every returned splat set against its image

    @property
    def psnr_mean(self) -> float | None:
        """Mean PSNR (dB) of the splats handed out so far, rendered at the images' size."""
        return self.psnr_sum / self.psnr_count if self.psnr_count else None

    def _path(self, h: str) -> Path | None:
        return None if self.root is None else self.root / h[:2] / f"{h}.gsv"

    def _hash(self, img_u8: torch.Tensor) -> str:
        m = hashlib.sha256(self.settings.key().encode())
        m.update(str(tuple(img_u8.shape)).encode())
        m.update(img_u8.contiguous().numpy().tobytes())
        return m.hexdigest()

    def __call__(self, images: torch.Tensor):
        """[B, 3, S, S] in [0, 1] -> Splats (padded, with counts)."""
        from gaussianvision.splats import Splats, decode
        u8 = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        hashes = [self._hash(u8[b]) for b in range(u8.shape[0])]
        out: list = [None] * len(hashes)
        todo: dict[str, list[int]] = {}  # hash -> positions; identical images are fitted once
        for b, h in enumerate(hashes):
            p = self._path(h)
            if h in todo:
                todo[h].append(b)
            elif p is not None and p.is_file():
                out[b] = decode(p.read_bytes(), name=str(p))
                self.hits += 1
            else:
                todo[h] = [b]
        for item in self._fit(u8, todo):
            if not item.ok:  # this (model, dataset) cannot go on without the image's splats; the others can
                e = item.exception  # (review finding: --fit-init learned without its weights ended the whole eval)
                if isinstance(e, EvalError):
                    raise e
                raise EvalError(f"fitting the splats of an image failed ({type(e).__name__}: {e})") from e
            for b in todo[item.key]:
                out[b] = decode(item.data)
            self._store(item.key, item.data)
            self.fits += 1
            self.hits += len(todo[item.key]) - 1
        batch = Splats.stack(out)
        from gaussianvision.fit.metrics import psnr
        from gaussianvision.raster import render
        p = psnr(render(batch.to(self.device)).clamp(0, 1), u8.to(self.device).float() / 255.0)
        self.psnr_sum += float(p.sum())
        self.psnr_count += int(p.numel())
        return batch

    def _fit(self, u8: torch.Tensor, todo: dict[str, list[int]]):
        """The images to fit through the library's FitStream, in chunks of fit_batch (all one
        size), encoded in the cache's format (interleaved float16); FitItems keyed by hash."""
        from gaussianvision.fit import Encoding, FitConfig, FitStream
        s = self.settings
        config = FitConfig.from_options(dict(s.fit_options, iters=s.iters, init=s.init))
        stream = FitStream(s.n_gaussians, config, batch_size=s.fit_batch, encoding=Encoding(), retry=False,
                           progress=self.progress)
        return stream((h, u8[b[0]].to(self.device).float() / 255.0) for h, b in todo.items())

    def _store(self, h: str, data: bytes) -> None:
        p = self._path(h)
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(p, lambda tmp: tmp.write_bytes(data))


class _Classes:
    def __init__(self, dataset):
        self.classes = getattr(dataset, "classes", None)
        self.templates = getattr(dataset, "templates", None)


class SplatBatches:
    """Wrap a loader of (images [B, 3, S, S] in [0, 1], target) into one of (Splats, target), the
    shape clip_benchmark's evaluate() consumes (it only calls .to(device) and len())."""

    def __init__(self, loader, cache: SplatCache, classes_from=None):
        self.loader, self.cache = loader, cache
        self.dataset = _Classes(classes_from if classes_from is not None else loader.dataset)

    def __iter__(self):
        for images, target in self.loader:
            yield self.cache(images), target

    def __len__(self):
        return len(self.loader)


def resolve_root(root: str, dataset: str) -> str:
    short = dataset[4:] if dataset.startswith("wds/") else dataset
    return root.format(dataset=short, dataset_cleaned=short.replace("/", "-"))


def _is_remote(root: str) -> bool:
    return "://" in root


def wds_kind(dataset: str, root: str) -> str:
    """A wds dataset's dataset_type.txt (classification, retrieval, multilabel; classification without one, as
    clip_benchmark reads it); a remote one's is guessed from its name."""
    if not _is_remote(root):
        t = Path(root) / "dataset_type.txt"
        return t.read_text().strip().lower() if t.is_file() else "classification"
    return "retrieval" if "retrieval" in dataset else "classification"


def dataset_task(dataset: str, root: str) -> str:
    """zeroshot_classification or zeroshot_retrieval (clip_benchmark's task names)."""
    if dataset.startswith("wds/"):
        return "zeroshot_retrieval" if wds_kind(dataset, root) == "retrieval" else "zeroshot_classification"
    from clip_benchmark.datasets.builder import get_dataset_default_task
    return get_dataset_default_task(dataset)


def _pixel_transform(size: int, mean=None, std=None):
    """OpenCLIP's preprocessing (short side to `size`, bicubic; centre crop; [0, 1]; the model's normalization),
    the image first made RGB as every project input is (data.images.to_rgb: EXIF orientation, 16-bit and float
    by their range, transparency on white) and its long side bounded (bounded_aspect). Regressions (new-user
    trial): PIL's convert("RGB") after the crop turned a 16-bit PNG near white, ignored EXIF and made
    transparency black, so the GS side fitted other pixels than `gsv convert` would; a thin strip was resized
    to gigabytes; an image under MIN_SIDE pixels a side, which `gsv fit` and `convert` refuse, was evaluated
    (now an unreadable sample, on both sides)."""
    from torchvision import transforms as T
    from gaussianvision.data.images import at_least_min_side, bounded_aspect, to_rgb
    steps = [T.Lambda(to_rgb), T.Lambda(at_least_min_side), T.Lambda(bounded_aspect),
             T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
             T.CenterCrop(size), T.ToTensor()]
    if mean is not None:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def transform_for(em: EvalModel, splats: SplatSettings | None = None):
    """RGB: the model's pixel preprocessing; GS: [0, 1] pixels at the fitting size."""
    if em.kind == "rgb":
        return _pixel_transform(em.image_size, em.mean, em.std)
    size = (splats.size if splats and splats.size else None) or em.image_size
    return _pixel_transform(size)


def _build(dataset: str, root: str, transform, task: str, split: str):
    from clip_benchmark.datasets.builder import build_dataset as cb_build
    if dataset.startswith("wds/") and not _is_remote(root):
        need = Path(root) / split / "nshards.txt"
        if not need.is_file():
            raise EvalError(f"{dataset}: {need} not found (a wds dataset folder holds {split}/nshards.txt, "
                            f"{split}/0.tar ..., classnames.txt, zeroshot_classification_templates.txt)")
    import warnings
    created = [] if _is_remote(root) else _missing_folders(Path(root))
    try:
        with warnings.catch_warnings():  # clip_benchmark builds its wds pipeline without shardshuffle
            warnings.filterwarnings("ignore", message=r".*shardshuffle")
            ds = cb_build(dataset_name=dataset, root=root, transform=transform, split=split, download=True,
                          task=task)
    except BaseException:
        _remove_empty(created)  # a failed download leaves no empty data/eval/NAME/ behind
        raise
    return ds


def _missing_folders(path: Path) -> list[Path]:
    """path and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty; stop at the first that is not."""
    for f in folders:
        try:
            f.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (something was written) or not ours to remove
            return


def build_dataset(dataset: str, root: str, transform, task: str, split: str = "test"):
    """clip_benchmark's dataset, with offline / missing-data failures turned into EvalError."""
    try:
        return _build(dataset, root, transform, task, split)
    except EvalError:
        raise
    except (AssertionError, ValueError) as e:
        raise EvalError(f"{dataset}: clip_benchmark cannot build it: {e}") from None
    except Exception as e:  # downloads fail with many exception types (URLError, HTTPError, OSError, ...)
        raise EvalError(f"{dataset}: cannot get the data into {root} ({type(e).__name__}: {str(e)[:200]}); "
                        "without network access, give a local copy with --dataset-root "
                        "(e.g. the wds/ layout)") from None


def _shard_urls(ds) -> list[str]:
    """The shards clip_benchmark's webdataset `ds` reads (its first stage lists them)."""
    for stage in getattr(ds, "pipeline", []):
        if getattr(stage, "urls", None) is not None:
            return list(stage.urls)
    raise EvalError("cannot find the shards of this webdataset (a webdataset release without SimpleShardList.urls?)")


def build_loader(dataset_name: str, ds, batch_size: int, num_workers: int = 0, transform=None, root: str | None = None):
    """The dataset's batches past any unreadable sample or shard (ReadGuard records them). A wds dataset is read
    by our own pipeline over clip_benchmark's shards (its own stops at the first corrupt image), with the
    `transform` given to build_dataset and the label of its kind at `root` (wds_kind); clip_benchmark's
    other datasets have each sample's read error caught (its iterable ones, vtab/ and tfds/, stop at one)."""
    from clip_benchmark.datasets.builder import get_dataset_collate_fn
    from .unreadable import SkipUnreadable, Skipping, wds_batches
    collate = Skipping(get_dataset_collate_fn(dataset_name))
    if dataset_name.startswith("wds/"):
        if transform is None or root is None:  # review: a caller without them got lists of PIL images
            raise ValueError("build_loader: a wds dataset needs the transform given to build_dataset and its root")
        classes = getattr(ds, "classes", None)
        pipe = wds_batches(_shard_urls(ds), transform, batch_size, kind=wds_kind(dataset_name, root),
                           n_classes=len(classes) if classes else None)
        loader = torch.utils.data.DataLoader(pipe, batch_size=None, shuffle=False, num_workers=num_workers)
    elif isinstance(ds, torch.utils.data.IterableDataset):  # no ds[i] to catch each sample's error in
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    else:
        loader = torch.utils.data.DataLoader(SkipUnreadable(ds), batch_size=batch_size, shuffle=False,
                                             num_workers=num_workers, collate_fn=collate)
    return ReadGuard(loader, dataset_name, ds)


class ReadGuard:
    """The batches of an evaluation loader whose items are (batch or None, [Unreadable, ...]) (unreadable.py):
    the unreadable samples are recorded in .skipped (where and why) and the batches go on, so one corrupt
    image does not end a 50,000-image evaluation (regression: it ended the dataset, the rule being that
    batch jobs record the bad sample and go on); the result names them (evaluate_one). A dataset with no
    readable sample, or a read error outside any sample, ends with one EvalError naming the dataset and the
    file (regression: a traceback from webdataset or tarfile); other errors (the model's) pass unchanged."""

    def __init__(self, loader, dataset_name: str, dataset=None):
        self.loader, self.name = loader, dataset_name
        self.dataset = dataset if dataset is not None else loader.dataset
        self.skipped: list = []
        self.read = 0  # samples read (in batches handed out)

    def __len__(self):
        return len(self.loader)

    def counts(self) -> dict:
        """What was left out: {"count": records, "shards": those of whole shards or their rest} (report.left_out)."""
        return {"count": len(self.skipped), "shards": sum(u.shard for u in self.skipped)}

    def __iter__(self):
        from .unreadable import is_read_error, read_error
        self.skipped, self.read = [], 0
        it = iter(self.loader)
        while True:
            try:
                batch, bad = next(it)
            except StopIteration:
                break
            except Exception as e:
                if not is_read_error(e):
                    raise
                raise EvalError(f"{self.name}: cannot read its data ({read_error(e)}); "
                                f"replace or remove the bad file or sample") from None
            self.skipped += bad
            if batch is not None:
                self.read += len(batch[0])
                yield batch
        if self.skipped and not self.read:
            from .report import left_out
            raise EvalError(f"{self.name}: no readable sample: unreadable {left_out(self.counts())} "
                            f"(first: {self.skipped[0]}); replace or remove the bad files or samples")
        if not self.read:  # review: an empty shard ended in torch.cat's "expected a non-empty list"
            raise EvalError(f"{self.name}: no samples in its data")
