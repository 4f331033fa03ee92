"""`gsv probe`: linear probes per attribute on the layers of GS and RGB image towers, to see where
an attribute (colour, shape, count, ...) is lost. The library side: eval/probe.py."""
from __future__ import annotations

import math

import shlex
import sys

from gaussianvision.apps.cli.command import CliError, check_distinct, check_not_a_file, emit, parser, run, whole
from gaussianvision.apps.cli.eval import add_splat_options, pick_device, splat_settings

EXAMPLE = ("gsv probe --model gs:out/demo/stage2_n76 --model rgb:gsv-tiny:out/demo/teacher/open_clip_model.safetensors "
           "--tasks out/demo/world/tasks --n-gaussians 76 --fit-iters 50 --out out/probe")

DESCRIPTION = """Where is an attribute lost? Linear probes per attribute on the layers of
GS and RGB image towers, on the same images:
  GS models:  stem (masked mean over the Gaussians), resampler (mean of
              the latents), pooled (before the projection), embedding
  RGB models: patches (mean of the patch embeddings), pooled, embedding
Each labelled dataset is one attribute. Its images are split once
(stratified, --seed); every layer's probe (multinomial logistic regression,
standardized features, L2 chosen by cross-validation on the training part)
is trained on one part and scored on the other. Output: attribute x layer
-> held-out accuracy, with chance (OUT/probe.md, OUT/probe.json)."""


def build_parser():
    p = parser("probe", DESCRIPTION, epilog=f"example:\n  {EXAMPLE}")
    p.add_argument("--model", action="append", required=True,
                   help="gs:DIR[@PRETRAINED] (a `gsv train` output folder or gsclip.safetensors) or "
                        "rgb:ARCH[:PRETRAINED], as in gsv eval; repeatable")
    p.add_argument("--tasks", action="append", default=[], metavar="FOLDER",
                   help="a folder of zero-shot task folders (each: classnames.txt, test/*.tar), e.g. "
                        "out/demo/world/tasks, or one task folder; repeatable")
    p.add_argument("--dataset", action="append", default=[],
                   help="a clip_benchmark classification dataset (cifar10, wds/NAME, ...); repeatable")
    p.add_argument("--dataset-root", default=None,
                   help="root of the --dataset ones; {dataset} and {dataset_cleaned} are filled in "
                        "(default: data/eval/{dataset_cleaned})")
    p.add_argument("--out", default="out/probe", help="folder for probe.md, probe.json and the splat cache")
    p.add_argument("--test-fraction", type=float, default=0.5, help="share of each class held out for scoring")
    p.add_argument("--seed", type=whole(0, 2 ** 63 - 1), default=0, help="seed of the train / test split")
    p.add_argument("--l2", type=float, default=None,
                   help="L2 weight of the probe (default: chosen from 1e-4..1 by 3-fold cross-validation on the "
                        "training split)")
    p.add_argument("--max-images", type=int, default=2000, help="images read per dataset (the first ones)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (as gsv eval)")
    add_splat_options(p)
    return p


def _datasets(args) -> dict[str, str]:
    from gaussianvision.eval.probe import task_folders
    from gaussianvision.eval.models import EvalError
    from gaussianvision.eval.run import check_root, default_root
    try:
        check_root(list(dict.fromkeys(args.dataset)), args.dataset_root)
    except EvalError as e:
        raise CliError(str(e)) from None
    found: dict[str, str] = {}
    for folder in args.tasks:
        found.update(task_folders(folder))
    for name in args.dataset:
        found[name] = default_root(name, args.dataset_root)
    if not found:
        raise CliError("give --tasks FOLDER or --dataset NAME (repeatable)")
    return found


def _check_numbers(args) -> None:
    if not 0.0 < args.test_fraction < 1.0:
        raise CliError(f"--test-fraction {args.test_fraction}: must be between 0 and 1")
    for name in ("max_images", "batch_size"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.l2 is not None and not (args.l2 >= 0 and math.isfinite(args.l2)):  # nan / inf: chance everywhere, Infinity in the JSON
        raise CliError(f"--l2 {args.l2}: must be a finite number >= 0")


def _run(args) -> int:
    import os

    from gaussianvision.eval import EvalError, load_eval_model
    from gaussianvision.eval.probe import run_probe
    from gaussianvision.eval.probe_table import write_probe
    _check_numbers(args)
    check_distinct(args.model, "--model")
    check_not_a_file(args.out)
    device = pick_device(args)
    settings = splat_settings(args)
    try:
        datasets = _datasets(args)
        models = [load_eval_model(spec, device) for spec in args.model]
        res = run_probe(models, datasets, args.test_fraction, args.seed, args.l2, args.batch_size, device, settings,
                        args.splat_cache or os.path.join(args.out, "splat_cache"), args.max_images,
                        progress=not (args.json or args.no_progress) and sys.stderr.isatty())
    except EvalError as e:
        raise CliError(str(e)) from None
    command = "gsv probe " + " ".join(shlex.quote(a) for a in args.argv)
    files = write_probe(args.out, res, command)
    summary = {"out": args.out, "columns": res["columns"], "rows": res["rows"], "diagnosis": files["diagnosis"],
               "json_file": files["json"], "markdown": files["markdown"]}
    human = files["table"] + "\n" + "\n".join(files["diagnosis"]) + f"\n\nresults in {args.out} (probe.md, probe.json)"
    emit(summary, args.json, human=human)
    for r in res["rows"]:
        for s in r["skipped"]:
            print(f"gsv probe: {r['attribute']}: skipped {s}", file=sys.stderr)
        if r.get("unreadable"):
            print(f"gsv probe: note: {r['attribute']}: {len(r['unreadable'])} unreadable sample(s) met and left out (probe.json "
                  f"names them); first: {r['unreadable'][0]}", file=sys.stderr)
    if res["rows"] and not any(r["n_train"] and r["n_test"] for r in res["rows"]):  # regression: exit 0
        print("gsv probe: nothing was probed: no attribute has both training and held-out images (give more "
              "images, or more of them with --max-images)", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run("probe", _run, args)
