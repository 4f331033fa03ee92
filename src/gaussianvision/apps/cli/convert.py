"""gsv convert --input SRC --output DIR --gaussians N: image(-text) data -> splat shards.

SRC: a folder of images (captions from sidecar .txt), or webdataset tar shards (img2dataset
layout; a folder of .tar, brace patterns like 'shard-{000000..000009}.tar', or globs).
Resumable: rerun the same command after an interruption. Several machines / GPUs: run under
torchrun (RANK and WORLD_SIZE pick the shards; --device cuda uses LOCAL_RANK).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from gaussianvision.data.images import skipped_note
from gaussianvision.data.conversion import ConvertConfig, ConvertError, convert_dataset, resolve_rank
from gaussianvision.data.conversion_config import stored_settings
from gaussianvision.data.inputs import SourceError
from gaussianvision.fit.config import FitConfig
from gaussianvision.fit.stream import Encoding, default_batch_size
from gaussianvision.apps.cli.command import (CliError, add_progressive_options, add_speed_options, check_encoding,
                                             check_gaussians, check_progressive_order, emit, fit_option, flag_message,
                                             parser, path_arg, path_text, run)


_FIT_FLAGS = ("preset", "budget_ms", "iters", "init", "prune_lambda", "prune_tau", "target_psnr", "relocate_every")


def _parser():
    p = parser("convert", __doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, type=path_text,
                   help="image file or folder, tar shard(s), brace pattern or glob")
    p.add_argument("--output", required=True, type=path_arg)
    p.add_argument("--gaussians", "-n", type=int, required=True, help="Gaussians per image (N)")
    add_speed_options(p)
    p.add_argument("--iters", type=int, default=None, help="fitting iterations (default 500, or the preset's)")
    from gaussianvision.fit import INITIALIZERS
    p.add_argument("--init", default=None,
                   help=f"initializer: {', '.join(sorted(INITIALIZERS))} (default content, or the preset's)")
    p.add_argument("--prune-lambda", type=float, default=None, help="luminance L1 penalty (pruning)")
    p.add_argument("--prune-tau", type=float, default=None, help="pruning threshold")
    p.add_argument("--relocate-every", type=int, default=None,
                   help="every K iterations move the least important Gaussians to where the error is")
    p.add_argument("--fit-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other fit_images option (a JSON value, comma-separated numbers or a word), repeatable")
    p.add_argument("--size", type=int, default=224, help="side in pixels of the square centre crop the images are resized to "
                   "(default 224; unlike gsv fit, no 0: a dataset's samples are one size)")
    p.add_argument("--layout", choices=("interleaved", "quantized"), default="interleaved")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--zstd", action="store_true", help="zstd-compress quantized payloads")
    add_progressive_options(p, "Gaussians of each image")
    p.add_argument("--workers", type=int, default=0, help="fitting processes (0: in this process)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per output shard (folder input)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images fitted together (default 16; with --device cuda 512 at 224 px, fewer for larger sizes)")
    p.add_argument("--keep-image", action="store_true", help="store the source image bytes in the shards")
    p.add_argument("--require-caption", action="store_true", help="count samples without a caption as failed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--rank", type=int, default=None, help="default: $RANK or 0")
    p.add_argument("--world-size", type=int, default=None, help="default: $WORLD_SIZE or 1")
    p.add_argument("--no-progress", action="store_true")
    return p


def _config(a) -> ConvertConfig:
    """The settings of the command line (fit flags, then --fit-option KEY=VALUE over them)."""
    check_gaussians(a.gaussians, a.size)
    check_progressive_order(a)
    flags = {k: getattr(a, k) for k in _FIT_FLAGS if getattr(a, k) is not None}
    fit = dict(flags)
    for key, value in (fit_option(t) for t in a.fit_option):  # among themselves, the last one wins
        if key in flags and flags[key] != value:  # regression: preset=best silently replaced --preset fast
            raise CliError(f"--fit-option {key}={value!r}: also given as --{key.replace('_', '-')} "
                           f"{flags[key]!r}; give it once")
        fit[key] = value
    names = {k: "--" + k.replace("_", "-") for k in flags}
    try:  # checked here too so that the message names the flag that set a bad value
        config = FitConfig.from_options(fit)
    except ValueError as e:
        raise CliError(flag_message(str(e), names)) from None
    check_encoding(Encoding(progressive=a.progressive, order=a.progressive_order), config, names)
    rank, world, device = resolve_rank(a.rank, a.world_size, a.device)
    return ConvertConfig(
        n_gaussians=a.gaussians, size=a.size, fit_options=fit, layout=a.layout, dtype=a.dtype,
        zstd=a.zstd, progressive=a.progressive, progressive_order=a.progressive_order,
        batch_size=_batch_size(a, device),
        shard_size=a.shard_size,
        keep_image=a.keep_image, require_caption=a.require_caption, workers=a.workers, rank=rank, world_size=world,
        device=device, progress=not a.no_progress and not a.json)


def _batch_size(a, device: str) -> int:
    """--batch-size; else the batch the output folder was started with (a resumed run keeps it, whatever
    the device now), else default_batch_size (16 on a CPU, more on a GPU)."""
    if a.batch_size is not None:
        return a.batch_size
    stored = (stored_settings(a.output) or {}).get("batch_size")
    return stored if isinstance(stored, int) and stored >= 1 else default_batch_size(device, a.size)


def _report(s: dict, output: Path) -> str:
    """The human summary of a run."""
    r = s["run"]
    busy = r["shards_busy"]
    human = (f"rank {r['rank']}/{r['world_size']}: converted {r['shards_converted']} shards, skipped "
             f"{r['shards_skipped']} finished"
             + (f", left {len(busy)} to another process converting them now ({', '.join(busy[:3])}"
                f"{', ...' if len(busy) > 3 else ''})" if busy else "") + "\n"
             f"inputs {s['inputs']} = converted {s['converted']} + failed {s['failed']}"
             f" ({'reconciled' if s['reconciled'] else 'NOT reconciled'}); "
             f"shards {s['shards_done']}/{s['shards_total']}"
             f"{'' if s['complete'] else ' (incomplete: other ranks or a rerun will finish it)'}\n"
             f"failures: {output / 'failures.jsonl'}; summary: {output / 'summary.json'}")
    if s["failed_by_stage"]:
        human += f"\nfailed by stage: {_by_stage(s)}"
    if s["missing_captions"] or s.get("repaired_captions"):
        repaired = s.get("repaired_captions", 0)  # the note is about the repaired ones only (trial: it read as if
        human += (f"\ncaptions: {s['missing_captions']} missing or empty, {repaired} repaired"  # missing were malformed)
                  + (" (not UTF-8, or NUL characters: caption_note in the sample's .json)" if repaired else ""))
    if s["shard_errors"]:
        human += f"\nshard problems: {len(s['shard_errors'])} (first: {s['shard_errors'][0]})"
    if s.get("damaged_stats"):
        human += (f"\ndamaged stats files: {len(s['damaged_stats'])} (first: {s['damaged_stats'][0]}); their shards "
                  f"count as unfinished: a rerun of their rank converts them again")
    if s["duplicate_keys"]:
        human += (f"\nduplicate keys across shards: {s['duplicate_keys']} ({'; '.join(s['duplicates'][:3])}"
                  f"{'; ...' if s['duplicate_keys'] > 3 else ''})")
    return human


def _by_stage(s: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s["failed_by_stage"].items()))


def _go(a) -> int:
    try:
        s = convert_dataset(a.input, a.output, _config(a))
    except (ConvertError, SourceError) as e:
        raise CliError(str(e)) from None
    error = _failure(s, a)
    if error:  # regression (new-user trial): --json's output had no "error" where the run converted nothing
        s["error"] = error
    emit(s, a.json, _report(s, a.output))
    if (note := skipped_note(s["run"].get("skipped_entries", []), "an input")):
        print(f"gsv convert: {note}", file=sys.stderr)
    if error:
        print(f"gsv convert: {error}", file=sys.stderr)
        return 1
    if s["run"]["shards_busy"] and not s["inputs"] and not s["shard_errors"]:  # nothing finished yet: nothing to judge
        return 0
    return 0 if s["reconciled"] else 1


def _failure(s: dict, a) -> str | None:
    """Why the run did not do its job (exit code 1), None where it did."""
    if s["run"]["unopened"]:  # left unfinished: a rerun retries them
        return (f"could not open {len(s['run']['unopened'])} input shard(s) (first: {s['run']['unopened'][0]}); "
                f"their output shards are left unfinished: rerun once they can be read")
    if s["run"]["shards_busy"] and not s["inputs"] and not s["shard_errors"]:
        return None
    if s["inputs"] and not s["converted"]:  # every sample failed
        # regression (new-user trial): the line gave no reason (one bad image: 'all 1 failed (decode 1)')
        return (f"no sample converted: all {s['failed']} failed ({_by_stage(s)}{_first_failure(a.output)}); see "
                f"{a.output / 'failures.jsonl'}")
    if s["shard_errors"] and not s["converted"]:  # no sample read at all: every shard unreadable
        return (f"no sample converted: {len(s['shard_errors'])} shard(s) unreadable (first: "
                f"{s['shard_errors'][0]}); see {a.output / 'summary.json'}")
    if not s["converted"]:  # e.g. empty shards: nothing to convert is not a conversion
        return f"no sample converted: the input holds no samples ({a.input})"
    return None


def _first_failure(output: Path) -> str:
    """'; first: SOURCE: REASON' from the run's failures.jsonl, '' where it cannot be read."""
    try:
        with open(output / "failures.jsonl", encoding="utf-8", errors="replace") as f:
            first = json.loads(f.readline())
        source, reason = str(first["source"]), str(first["reason"])
        return f"; first: {reason if source in reason else f'{source}: {reason}'}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def main(argv=None) -> int:
    return run("convert", _go, _parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
