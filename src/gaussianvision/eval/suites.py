"""Evaluation suites: the 38 datasets of the DataComp benchmark (the paper's zero-shot suite).

Names are clip_benchmark names as DataComp uses them, read through clip_benchmark's `wds/` loader
from DataComp's webdataset copies on the Hugging Face hub (`djghosh/wds_<name>_test`). The main
metric and kind follow DataComp's tasklist.yml. WinoGAViL, the WILDS and the fairness sets have
extra metrics in DataComp's own evaluator; here they get clip_benchmark's classification metrics
(WinoGAViL, an association game, is listed but not run).
"""
from __future__ import annotations

__all__ = ["DATACOMP38", "SUITES", "HF_WDS_ROOT", "suite_datasets", "suite_root", "UNSUPPORTED"]

HF_WDS_ROOT = "https://huggingface.co/datasets/djghosh/wds_{dataset_cleaned}_test/tree/main"

# name -> (display name, task kind, main metric)
DATACOMP38: dict[str, tuple[str, str, str]] = {
    "vtab/caltech101": ("Caltech-101", "classification", "mean_per_class_recall"),
    "cifar10": ("CIFAR-10", "classification", "acc1"),
    "vtab/cifar100": ("CIFAR-100", "classification", "acc1"),
    "vtab/clevr_count_all": ("CLEVR Counts", "classification", "acc1"),
    "vtab/clevr_closest_object_distance": ("CLEVR Distance", "classification", "acc1"),
    "country211": ("Country211", "classification", "acc1"),
    "vtab/dtd": ("Describable Textures", "classification", "acc1"),
    "vtab/eurosat": ("EuroSAT", "classification", "acc1"),
    "fgvc_aircraft": ("FGVC Aircraft", "classification", "mean_per_class_recall"),
    "food101": ("Food-101", "classification", "acc1"),
    "gtsrb": ("GTSRB", "classification", "acc1"),
    "imagenet1k": ("ImageNet 1k", "classification", "acc1"),
    "imagenet_sketch": ("ImageNet Sketch", "classification", "acc1"),
    "imagenetv2": ("ImageNet v2", "classification", "acc1"),
    "imagenet-a": ("ImageNet-A", "classification", "acc1"),
    "imagenet-o": ("ImageNet-O", "classification", "acc1"),
    "imagenet-r": ("ImageNet-R", "classification", "acc1"),
    "vtab/kitti_closest_vehicle_distance": ("KITTI Vehicle Distance", "classification", "acc1"),
    "mnist": ("MNIST", "classification", "acc1"),
    "objectnet": ("ObjectNet", "classification", "acc1"),
    "vtab/flowers": ("Oxford Flowers-102", "classification", "mean_per_class_recall"),
    "vtab/pets": ("Oxford-IIIT Pet", "classification", "mean_per_class_recall"),
    "voc2007": ("Pascal VOC 2007", "classification", "acc1"),
    "vtab/pcam": ("PatchCamelyon", "classification", "acc1"),
    "renderedsst2": ("Rendered SST2", "classification", "acc1"),
    "vtab/resisc45": ("RESISC45", "classification", "acc1"),
    "cars": ("Stanford Cars", "classification", "acc1"),
    "stl10": ("STL-10", "classification", "acc1"),
    "sun397": ("SUN397", "classification", "acc1"),
    "vtab/svhn": ("SVHN", "classification", "acc1"),
    "retrieval/flickr30k": ("Flickr", "retrieval", "mean_recall@1"),
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": ("MSCOCO", "retrieval", "mean_recall@1"),
    "misc/winogavil": ("WinoGAViL", "association", "jaccard_score_10-12"),
    "wilds/iwildcam": ("iWildCam", "classification", "acc1"),
    "wilds/camelyon17": ("Camelyon17", "classification", "acc1"),
    "wilds/fmow": ("FMoW", "classification", "acc1"),
    "fairness/dollar_street": ("Dollar Street", "classification", "acc5"),
    "fairness/geode": ("GeoDE", "classification", "acc1"),
}
assert len(DATACOMP38) == 38

UNSUPPORTED = {"wds/misc/winogavil": "WinoGAViL needs DataComp's association-game evaluator"}

SUITES = {"datacomp38": [f"wds/{name}" for name in DATACOMP38]}


def suite_datasets(name: str) -> list[str]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
    return list(SUITES[name])


def suite_root(dataset: str) -> str:
    """DataComp's hub location of a suite dataset (`wds/vtab/dtd` -> .../wds_vtab-dtd_test/tree/main)."""
    short = dataset[4:] if dataset.startswith("wds/") else dataset
    return HF_WDS_ROOT.format(dataset_cleaned=short.replace("/", "-"))


def main_metric(dataset: str) -> str | None:
    short = dataset[4:] if dataset.startswith("wds/") else dataset
    return DATACOMP38.get(short, (None, None, None))[2]
