"""`gsv eval zeroshot`: zero-shot classification / retrieval of RGB and GS models side by side,
through clip_benchmark (its templates, class names and metrics)."""
from __future__ import annotations

import sys

from gaussianvision.apps.cli.command import (CliError, add_speed_options, check_device, check_distinct, check_not_a_file,
                                              emit, fail, fit_option, fit_option_message, parser, run)

EXAMPLE = "gsv eval zeroshot --model rgb:ViT-B-16:openai --model gs:runs/stage2 --dataset cifar10 --out out/eval"


def build_parser():
    p = parser("eval zeroshot", "Zero-shot classification (acc1, acc5, mean per-class recall) and retrieval "
                                "(recall@1/5/10) of RGB and GS models, through clip_benchmark.",
               epilog=f"example:\n  {EXAMPLE}")
    p.add_argument("--model", action="append", required=True,
                   help="rgb:ARCH[:PRETRAINED] (OpenCLIP architecture + tag or local checkpoint file) or "
                        "gs:DIR[@PRETRAINED] (a `gsv train` output folder / checkpoint directory, or "
                        "gsclip.safetensors); repeatable")
    p.add_argument("--dataset", action="append", default=[],
                   help="clip_benchmark dataset name (cifar10, imagenet1k, flickr30k, ...) or wds/NAME; repeatable")
    p.add_argument("--suite", choices=["datacomp38"], help="add the paper's 38 DataComp datasets")
    p.add_argument("--dataset-root", default=None,
                   help="dataset folder or URL; {dataset} and {dataset_cleaned} are filled in "
                        "(default: data/eval/{dataset_cleaned}; suite datasets: DataComp's hub copies)")
    p.add_argument("--out", default="out/eval", help="folder for the per-dataset JSON files and results.md/.csv")
    p.add_argument("--batch-size", type=int, default=64, help="images per evaluation batch")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_splat_options(p)
    return p


def add_device_option(p) -> None:
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")


def pick_device(args) -> str:
    """--device (checked: one line for tpu, cuda:9 or cuda without a GPU), or cuda when available."""
    import torch
    check_device(args.device)  # regression: --device tpu was a traceback from torch
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def add_splat_options(p) -> None:
    """--device, and how a GS model's images become splats (also gsv probe's): --n-gaussians,
    --fit-*, --splat-cache."""
    add_device_option(p)
    g = p.add_argument_group("splats for GS models (images are fitted on the fly, cached by content)")
    g.add_argument("--n-gaussians", "--gaussians", dest="n_gaussians", type=int, default=400,
                   help="Gaussians per image (--gaussians, as gsv fit / convert / send spell it, also works)")
    add_speed_options(g, prefix="fit-")
    g.add_argument("--fit-iters", type=int, default=None, help="fitting iterations per image (default 500, or the preset's)")
    from gaussianvision.fit import INITIALIZERS
    g.add_argument("--fit-init", default="content", choices=sorted(INITIALIZERS),
                   help="initialization of the fit")
    g.add_argument("--fit-size", type=int, default=None, help="fitting resolution (default, or 0: the model's input size)")
    g.add_argument("--fit-batch", type=int, default=32, help="images fitted together")
    g.add_argument("--fit-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other fit_images option (a JSON value, comma-separated numbers or a word), "
                        "repeatable; use the conversion's options")
    g.add_argument("--splat-cache", default=None,
                   help="cache folder of fitted splats (default OUT/splat_cache); a pre-filled one is a converted copy")


def splat_settings(args):
    """The SplatSettings of add_splat_options' arguments (CliError on a bad --fit-option)."""
    from gaussianvision.eval import SplatSettings
    try:
        return SplatSettings(args.n_gaussians, args.fit_iters, args.fit_init, args.fit_size or None,  # 0: the model's
                             args.fit_batch, _fit_options(args))
    except ValueError as e:
        own = next((f for name, f in _SETTING_FLAGS.items() if str(e).startswith(name + " ")), None)
        if own:  # regression: these were tracebacks from the first fit
            raise CliError(f"{own}: {str(e).split(' ', 1)[1]}") from None
        flags = {k: f"--fit-{k.replace('_', '-')}" for k in _SPEED if getattr(args, f"fit_{k}") is not None}
        raise CliError(fit_option_message(str(e), flags)) from None


_SPEED = ("preset", "budget_ms", "target_psnr")  # add_speed_options' flags, as --fit-...
_SETTING_FLAGS = {"n_gaussians": "--n-gaussians", "iters": "--fit-iters", "size": "--fit-size", "fit_batch": "--fit-batch"}


def _fit_options(args) -> dict:
    """--fit-option KEY=VALUE, with --fit-preset, --fit-budget-ms and --fit-target-psnr (only when given: the cache
    keys of runs without them stay as they were)."""
    options = dict(fit_option(t) for t in args.fit_option)
    own = next((k for k in ("iters", "init") if k in options), None)
    if own:  # one way to set each: its flag
        raise CliError(f"--fit-option {own}=...: give it as --fit-{own}")
    for key, value in ((k, getattr(args, f"fit_{k}")) for k in _SPEED):
        if value is not None:
            if key in options:
                raise CliError(f"--fit-option {key}=...: use --fit-{key.replace('_', '-')}")
            options[key] = value
    return options


def unreadable_note(rec: dict) -> str:
    """One line on the samples a result left out because they could not be read."""
    from gaussianvision.eval.report import left_out
    u = rec["unreadable"]
    return (f"{rec['dataset']} ({rec['label']}): unreadable, left out: {left_out(u)}; the metrics are over "
            f"the {u['read']} samples read; first: {u['first'][0]} (up to {len(u['first'])} named in {rec.get('file')})")


def _run(args) -> int:
    from gaussianvision.eval import EvalError, evaluate_all, load_eval_model, suite_datasets
    datasets = list(args.dataset)
    if args.suite:
        datasets += suite_datasets(args.suite)
    datasets = list(dict.fromkeys(datasets))
    if not datasets:
        raise CliError("give --dataset NAME (repeatable) or --suite datacomp38")
    from gaussianvision.eval.run import check_root
    try:
        check_root(datasets, args.dataset_root)  # before any model loads
    except EvalError as e:
        raise CliError(str(e)) from None
    device = pick_device(args)
    settings = splat_settings(args)
    check_distinct(args.model, "--model")
    check_not_a_file(args.out)
    try:
        models = [load_eval_model(spec, device) for spec in args.model]
    except EvalError as e:
        raise CliError(str(e)) from None
    try:
        res = evaluate_all(models, datasets, args.out, root=args.dataset_root, batch_size=args.batch_size,
                           device=device, splats=settings, cache_dir=args.splat_cache, num_workers=args.num_workers,
                           progress=not (args.json or args.no_progress))
    except EvalError as e:
        raise CliError(str(e)) from None
    summary = {"out": args.out, "models": [m.label for m in models], "datasets": datasets,
               "results": [{k: r.get(k) for k in ("dataset", "label", "task", "metrics", "file", "error", "unreadable")}
                           for r in res["records"]],
               "table": {"header": res["header"], "rows": res["rows"]},
               "markdown": res["markdown"], "csv": res["csv"], "errors": res["errors"]}
    failed = bool(res["records"]) and all(r.get("error") for r in res["records"])
    where = (f"no result: every evaluation failed (their records in {args.out}; the reasons follow)" if failed
             else f"results in {args.out} (results.md, results.csv)")  # regression: announced beside only failures
    emit(summary, args.json, human=(f"{where}" if failed else res["text"] + f"\n{where}"))
    for r in res["records"]:
        if r.get("unreadable"):
            print(f"gsv eval: note: {unreadable_note(r)}", file=sys.stderr)
    if res["errors"]:
        for e in res["errors"]:
            print(f"gsv eval: {e}", file=sys.stderr)
        return 2
    return 0


HELP = f"""usage: gsv eval EVALUATION [options]   (gsv eval zeroshot --help for all options)

Evaluate RGB and GS models side by side; one JSON file per dataset and model, and a comparison
table (results.md, results.csv) with the GS / RGB ratio.

evaluations:
  zeroshot  zero-shot classification (acc1, acc5, mean per-class recall) and retrieval
            (recall@1/5/10) through clip_benchmark: its datasets, templates and metrics

--model (repeatable), one of:
  rgb:ARCH[:PRETRAINED]   an OpenCLIP model reading pixels; ARCH an OpenCLIP architecture
                          (ViT-B-16, gsv-tiny, ...), PRETRAINED a tag (openai, laion2b_s34b_b88k:
                          needs the network or the Hugging Face cache) or a local checkpoint file;
                          omitted: random weights
  gs:DIR[@PRETRAINED]     a GS model reading splats fitted to the images: a `gsv train` output
                          folder or checkpoint folder (DIR), or a gsclip.safetensors file;
                          @PRETRAINED replaces the base weights recorded in it

example:
  {EXAMPLE}
"""


def main(argv=None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] != "zeroshot":
        return fail("gsv eval", f"unknown evaluation {argv[0]!r} (available: zeroshot)", argv)
    args = build_parser().parse_args(argv[1:])
    return run("eval", _run, args)
