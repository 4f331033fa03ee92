"""gsv send IMAGES... --url URL: the edge side. Fits each image here (the library's FitStream,
the `fast` preset unless --preset says otherwise), encodes it (.gsv, --layout), sends the bytes
to a `gsv serve` (/embed, or /classify with --labels / --label-set) and prints per image the
answer and the bytes sent.

Bad inputs (missing, not an image) are reported one line each and skipped; exit code 2 when any
input failed or on a bad option, an unreachable server or a refusal (the server's own message)."""
from __future__ import annotations

import sys
from pathlib import Path

from gaussianvision.apps.cli.command import (CliError, add_progressive_options, add_target_option, check_at_least,
                                             check_device, check_encoding, check_gaussians, check_progressive_order,
                                             emit, fit_option, fit_option_message, parser, path_text, positive, run,
                                             whole)
from gaussianvision.fit.presets import PRESETS
from gaussianvision.fit.metrics import SSIM_WINDOW
from gaussianvision.fit.stream import default_batch_size
from gaussianvision.data.images import IMAGE_EXTS, MAX_SIZE
from gaussianvision.data.shards import show

LAYOUTS = {"float16": ("interleaved", "float16", False), "float32": ("interleaved", "float32", False),
           "quantized": ("quantized", "float16", False), "quantized-zstd": ("quantized", "float16", True)}


def _parser():
    p = parser("send", "Fit images here and send their splats to a `gsv serve` (docs/serve.md).",
               epilog="example: gsv send photos/ --url http://127.0.0.1:8000 --label-set cifar10")
    p.add_argument("inputs", nargs="+", type=path_text, help="image files or folders (searched recursively)")
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="Bearer token (default: GSV_SERVE_TOKEN, else none)")
    p.add_argument("--labels", default=None, help="comma-separated class names: /classify instead of /embed")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="one class name, taken whole (a name with a comma); repeat it; adds to --labels")
    p.add_argument("--label-set", default=None, help="a named label set of the server (cifar10, world/shape, ...)")
    p.add_argument("--top-k", type=whole(1), default=None, help="labels per image (the server's when not given)")
    p.add_argument("--gaussians", "-n", type=int, default=400, help="Gaussians per image")
    p.add_argument("--preset", default="fast", choices=list(PRESETS), help="the fit's speed preset (docs/fitting.md)")
    p.add_argument("--iters", type=int, default=None, help="fit iterations (the preset's unless given)")
    p.add_argument("--budget-ms", type=float, default=None, help="stop each fit after this many wall ms per image")
    add_target_option(p)
    p.add_argument("--size", type=int, default=224, help="side of the square centre crop the images are resized to")
    p.add_argument("--layout", default="float16", choices=list(LAYOUTS), help="the .gsv layout sent")
    add_progressive_options(p, "Gaussians sent")
    p.add_argument("--prefix", type=whole(1), default=None, metavar="K",
                   help="with --progressive: send each image's first K Gaussians only (the coarser image a "
                        "progressive file's prefix is; a file of its own, in --layout)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images fitted together (default 16, fewer above 512 px)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the fit runs")
    p.add_argument("--timeout", type=positive, default=60.0, help="seconds to wait for each answer")
    p.add_argument("--fit-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other fit_images option, repeatable (over the preset's)")
    return p


def _fit_stream(a):
    from gaussianvision.fit import Encoding, FitConfig, FitStream
    if a.size is not None and not SSIM_WINDOW <= a.size <= MAX_SIZE:  # regression: 9000 was a traceback
        raise CliError(f"--size must be from {SSIM_WINDOW} (the SSIM window each fit reports on) to {MAX_SIZE}, "
                       f"got {a.size}")
    if a.batch_size is None:  # 16, fewer above 512 px (as gsv fit on a CPU): a batch stays within memory, and
        a.batch_size = default_batch_size("cpu", a.size)  # answers start coming after 16 fits, also on a GPU
    # each named with its value (regression: one message for four flags)
    check_at_least(("--gaussians", a.gaussians, 1), ("--batch-size", a.batch_size, 1), ("--iters", a.iters, 0))
    check_gaussians(a.gaussians, a.size)
    check_progressive_order(a)
    if a.prefix is not None and not a.progressive:
        raise CliError(f"--prefix {a.prefix}: goes with --progressive (only a progressive file's first Gaussians "
                       "are a coarser image)")
    if a.prefix is not None and a.prefix > a.gaussians:
        raise CliError(f"--prefix {a.prefix}: more than the {a.gaussians} Gaussians fitted (--gaussians)")
    check_device(a.device)
    given = {"iters": a.iters, "budget_ms": a.budget_ms, "target_psnr": a.target_psnr}
    options = {"preset": a.preset, "device": a.device, **{k: v for k, v in given.items() if v is not None},
               **dict(fit_option(t) for t in a.fit_option)}
    try:
        config = FitConfig.from_options(options)
    except ValueError as e:  # named by the flag that set the value (regression: --budget-ms 0 blamed --fit-option)
        flags = {k: f"--{k.replace('_', '-')}" for k in ("preset", *given) if k in options}
        raise CliError(fit_option_message(str(e), flags)) from None
    layout, dtype, zstd = LAYOUTS[a.layout]
    encoding = Encoding(layout, dtype, zstd, a.progressive, a.progressive_order)
    check_encoding(encoding, config, {})  # before any fit or network call
    return FitStream(a.gaussians, config, a.batch_size, encoding=encoding)


def _paths(a) -> list[Path]:
    """The images to send (files as named, folders' images); what a folder holds named like an image but not
    a file is said; CliError when there is none (regression: an empty folder was exit 2 without a word)."""
    from gaussianvision.data.images import empty_note, list_images, skipped_note
    skipped, empty = [], []
    paths = list_images(a.inputs, skipped, empty)
    if (note := skipped_note(skipped)):
        print(f"gsv send: {note}", file=sys.stderr)
    if empty and paths:  # beside other inputs (with none, the error below says it)
        print(f"gsv send: {empty_note(empty)}", file=sys.stderr)
    if not paths:
        raise CliError(f"no images in {', '.join(show(str(x), None) for x in a.inputs)} (looked for "
                       f"{', '.join(IMAGE_EXTS)})")
    return paths


def _images(paths: list[Path], size: int, failures: list[dict]):
    from gaussianvision.data.images import ImageLoadError, load_image
    for path in paths:
        try:
            yield path, load_image(path, size=size)
        except (ImageLoadError, OSError) as e:
            failures.append({"path": str(path), "error": str(e)})
            print(f"gsv send: {e}", file=sys.stderr)


def _sent(item, encoding, prefix: int | None) -> tuple[bytes, int]:
    """What is sent of a fitted image, and its Gaussians: its encoded file, or with --prefix K the file of its
    first K Gaussians in the progressive order (same encoding, still progressive)."""
    if prefix is None:
        return item.data, int(item.splats.max_gaussians)
    return encoding(item.splats, first=prefix), min(prefix, int(item.splats.max_gaussians))


def _human(r: dict) -> str:
    n = f"first {r['gaussians']} of {r['fitted']}" if "fitted" in r else str(r["gaussians"])
    head = f"{r['path']}: {r['bytes']:,} bytes sent ({n} Gaussians; the fit {r['psnr']:.1f} dB)"
    answer = r["answer"]
    if "embeddings" in answer:
        e = answer["embeddings"][0]
        return f"{head} -> embedding [{len(e)}]: " + ", ".join(f"{v:+.4f}" for v in e[:4]) + ", ..."
    best = answer["images"][0]
    return f"{head} -> " + ", ".join(f"{lab} {p:.2f}" for lab, p in zip(best["labels"], best["probs"]))


def _send(a) -> int:
    import os
    from gaussianvision.apps.serve.client import ClientError, check_server, send
    from gaussianvision.apps.serve.settings import TOKEN_ENV
    if (a.labels is not None or a.label) and a.label_set is not None:
        raise CliError("give --labels (or --label) or --label-set, not both")
    labels = [c.strip() for c in a.labels.split(",") if c.strip()] if a.labels is not None else None
    if a.label is not None:
        labels = (labels or []) + [c.strip() for c in a.label if c.strip()]
    if labels is not None and len(set(labels)) < 2:  # regression: found out from the server, after every image
        given = f"--labels {a.labels!r}" if a.labels is not None else f"--label {a.label[0]!r}"  # was fitted
        what = "no class names" if not labels else f"one class name ({labels[0]!r}); /classify needs at least two"
        raise CliError(f"{given}: {what} (give comma-separated names, e.g. cat,dog, or --label NAME twice or more)")
    if a.top_k is not None and labels is None and a.label_set is None:  # regression: ignored, an embedding printed
        raise CliError(f"--top-k {a.top_k}: goes with --labels, --label or --label-set (/classify)")
    token = a.token if a.token is not None else (os.environ.get(TOKEN_ENV) or None)
    stream = _fit_stream(a)
    missing = [p for p in a.inputs if not Path(p).exists()]
    if missing:
        raise CliError(f"{missing[0]}: no such file or folder")
    paths = _paths(a)
    results, failures = [], []
    try:
        check_server(a.url, a.timeout, token)  # the URL and timeout checked first (check_request), the token after
        for item in stream(_images(paths, a.size, failures)):
            if not item.ok:
                failures.append({"path": str(item.key), "error": item.error})
                print(f"gsv send: {item.key}: {item.error}", file=sys.stderr)
                continue
            data, n = _sent(item, stream.encoding, a.prefix)
            answer = send(data, a.url, labels=labels, label_set=a.label_set, top_k=a.top_k,
                          token=token, timeout=a.timeout)
            r = {"path": str(item.key), "bytes": len(data), "gaussians": n, "psnr": float(item.metrics["psnr"]),
                 "answer": answer}
            if a.prefix is not None:
                r["fitted"] = int(item.splats.max_gaussians)
            results.append(r)
            if not a.json:
                print(_human(r))
    except ClientError as e:
        raise CliError(str(e)) from None
    if a.json:
        emit({"url": a.url, "results": results, "failures": failures,
              "bytes_sent": sum(r["bytes"] for r in results)}, True)
    return 2 if failures or not results else 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run("send", _send, args)
