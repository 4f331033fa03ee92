"""`gsv train`: stage 1 (distill the GS encoder onto the frozen RGB teacher), stage 2 (CLIP loss
against captions) or `--stage rgb` (a plain CLIP trained from scratch; with any of --lock-text-steps,
--hard-negatives, --mirror-pairs, --word-loss, --word-boost the demo's teacher recipe,
apps/demo/teacher.py).

Multi-GPU / multi-node: `torchrun --nproc_per_node 8 -m gaussianvision.apps.cli.main train ...`.
"""
from __future__ import annotations

import math
import os
import sys

from gaussianvision.apps.cli.command import CliError, check_device, emit, key_value, parser, run, whole


def build_parser():
    p = parser("train", "Train the GS encoder: --stage 1 (align to the RGB teacher), 2 (CLIP loss), "
                        "or rgb (plain CLIP from scratch).", epilog=_RECIPE_HELP)
    p.add_argument("--stage", required=True, choices=["1", "2", "rgb"])
    p.add_argument("--data", required=True, action="append",
                   help="tar shards: folder, brace pattern (a-{000..009}.tar), glob; repeatable. Stages 1/2: "
                        "splat shards from `gsv convert` (stage 1 needs the source images kept in them); "
                        "rgb: image-text shards (img2dataset layout)")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, log.jsonl, exports)")
    from gaussianvision.models.config import list_configs
    p.add_argument("--model-config", default=None,
                   help=f"GS config: {', '.join(list_configs())} (default gs-196) or a JSON path")
    p.add_argument("--base", default=None, help="OpenCLIP architecture (default: the config's; rgb: gsv-tiny)")
    p.add_argument("--pretrained", default=None, help="OpenCLIP pretrained tag or local checkpoint file of the base")
    p.add_argument("--init-from", default=None, help="stage 2: the stage-1 output folder or checkpoint directory")
    p.add_argument("--unfreeze", action="append", default=[],
                   help="stage 2: also train parameters with this name prefix (e.g. base.ln_final); repeatable")
    p.add_argument("--lock-text-steps", type=int, default=0,
                   help="stage rgb: hold the text tower at its initialization for the first N steps "
                        "(see docs/training.md; the demo's teacher uses it)")
    p.add_argument("--hard-negatives", action="store_true",
                   help="stage rgb: also contrast each image with its false caption KEY.neg.txt (NegCLIP; "
                        "the synthetic world writes one per sample; see docs/training.md)")
    p.add_argument("--mirror-pairs", type=float, default=0.0, metavar="FRACTION",
                   help="stage rgb: give this fraction of each batch to mirror twins (samples whose caption "
                        "states a direction, with the image flipped and left/right or above/below swapped; "
                        "see docs/training.md)")
    p.add_argument("--cache-teacher", action="store_true",
                   help="stage 1: compute each sample's teacher embedding once and keep it in memory "
                        "(by key; for data sets whose embeddings fit in memory)")
    p.add_argument("--word-loss", type=float, default=0.0, metavar="W",
                   help="stage rgb: add W x a caption-word loss (a head on the image embedding predicts the "
                        "caption's words, IDF-weighted; not exported; see docs/training.md)")
    p.add_argument("--word-boost", action="append", default=[], metavar="WORD=F",
                   help="stage rgb with --word-loss: weigh WORD F times (repeatable; the demo boosts "
                        "left, right, above, below x4)")
    p.add_argument("--hflip", type=float, default=0.0, metavar="P",
                   help="stage 1: mirror each sample left-right with probability P in each step, image and "
                        "splats together (the target is the teacher's embedding of the mirrored image)")
    p.add_argument("--distill", default="cosine", choices=["cosine", "mse"], help="stage-1 loss")
    p.add_argument("--token-weight", type=float, default=0.0, help="stage 1: weight of the token-level loss")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from the data, see below)")
    g.add_argument("--epochs", type=float, default=None,
                   help="passes over the data (counted once at start; default: from the data, see below)")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: rgb 128, 1: 64, 2: 128)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: from the data size, see below)")
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: --warmup-fraction of the run)")
    p.add_argument("--warmup-fraction", type=float, default=None,
                   help="linear warmup as a fraction of the run's steps (default 0.05; --warmup N wins)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-batches per step")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 disables")
    p.add_argument("--precision", default="amp", choices=["amp", "fp32"], help="amp: mixed precision on CUDA "
                   "(bf16 where supported, else fp16 with loss scaling); CPU always runs fp32")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--seed", type=whole(0, 2 ** 63 - 1), default=0)
    p.add_argument("--in-memory", action="store_true",
                   help="decode all samples into memory: exact epochs and a global order shared by all ranks "
                        "(small data: tests, the demo)")
    p.add_argument("--shuffle-buffer", type=int, default=None,
                   help=f"samples mixed across shards as they stream (default {SHUFFLE_BUFFER}; --in-memory "
                        "shuffles the whole data each epoch instead)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this many steps in this run")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep", type=int, default=2,
                   help="checkpoints kept (0: all); only steps older than the one just saved are removed")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write OUT/tensorboard/ (needs the tensorboard package: pip install tensorboard)")
    p.add_argument("--no-progress", action="store_true")
    return p


_RECIPE_HELP = """\
Defaults that scale with the data (train/recipe.py, docs/training.md): a
setting not given comes from the stage's recipe and the samples N in --data.
  stage batch  length                          lr: N <= 6,250 .. >= 100k
  rgb   128    40,960 samples, 1-100 epochs    2e-3 .. 5e-4
  1      64    153,600 samples, 2-100 epochs    2e-3 .. 5e-4
  2     128    2 epochs                        1e-4 .. 5e-4
  warmup: 5% of the steps (--warmup-fraction, or --warmup N steps)
Small data (a few thousand pairs, CPU):
  gsv train --stage rgb --data world/train --out runs/teacher
  gsv train --stage 1 --data splats/ --base gsv-tiny --model-config gs-tiny
    --pretrained runs/teacher/open_clip_model.safetensors --cache-teacher
    --out runs/s1
  gsv train --stage 2 --data splats/ --init-from runs/s1 --out runs/s2
DataComp small (12.8M pairs, 8 GPUs; the defaults give 2 epochs at 5e-4):
  torchrun --nproc_per_node 8 -m gaussianvision.apps.cli.main train
    --stage 1 --data 'splats/{000000..001287}.tar' --base ViT-B-16
    --pretrained openai --model-config gs-196 --batch-size 256 --out runs/s1
  torchrun ... train --stage 2 --data 'splats/{000000..001287}.tar'
    --init-from runs/s1 --batch-size 512 --out runs/s2
"""


SHUFFLE_BUFFER = 1000  # --shuffle-buffer's default
# option: (smallest allowed value, whether the smallest is allowed); NaN and infinities never are
_LIMITS = {"steps": (1, True), "epochs": (0, False), "batch_size": (1, True), "lr": (0, False),
           "min_lr": (0, True), "warmup": (0, True), "warmup_fraction": (0, True), "weight_decay": (0, True), "accum": (1, True),
           "grad_clip": (0, True), "keep": (0, True), "log_every": (1, True), "save_every": (0, True),
           "stop_after": (1, True), "shuffle_buffer": (1, True), "token_weight": (0, True),
           "lock_text_steps": (0, True), "word_loss": (0, True), "hflip": (0, True), "mirror_pairs": (0, True)}
# option: (largest allowed value, whether the largest is allowed), for those bounded above
_TOPS = {"hflip": (1, True), "mirror_pairs": (1, True),
         "warmup_fraction": (1, False)}  # a warmup of the whole run never decays (review: 1 was a traceback)


def _check_options(args) -> None:
    """CliError naming the first numeric option out of range, or an unusable --device."""
    for name, (low, closed) in _LIMITS.items():
        v = getattr(args, name)
        if v is None:
            continue
        top, top_closed = _TOPS.get(name, (math.inf, True))
        ok = math.isfinite(v) and (v >= low if closed else v > low) and (v <= top if top_closed else v < top)
        if not ok:
            rng = f">= {low}" if closed else f"> {low}"
            rng += "" if name not in _TOPS else f" and <= {top}" if top_closed else f" and < {top}"
            raise CliError(f"--{name.replace('_', '-')} {v}: must be a number {rng}")
    if args.lr is not None and args.min_lr > args.lr:  # before any model or data (the recipe's lr: in _schedule)
        _min_lr_above(args, from_recipe=False)
    check_device(args.device)
    if args.tensorboard:  # before any work (regression, new-user trial: a traceback after the model was built)
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise CliError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    if not str(args.out).strip():  # regression: --out "" wrote the run into the current folder
        raise CliError("--out: give the run's folder (empty)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CliError(f"--out {args.out}: is a file, not a folder (the run writes checkpoints/ and log.jsonl into it)")
    if args.in_memory and args.shuffle_buffer is not None:  # regression (new-user trial): ignored without a word
        raise CliError("--shuffle-buffer goes with streamed data; --in-memory shuffles the whole data each epoch")
    args.shuffle_buffer = SHUFFLE_BUFFER if args.shuffle_buffer is None else args.shuffle_buffer
    folders = [d for d in map(str, args.data) if os.path.isdir(d)]
    same = next((d for d in folders if os.path.realpath(d) == os.path.realpath(args.out)), None)
    if same is not None:  # regression (new-user trial): the run's checkpoints went in among its shards
        raise CliError(f"--out {args.out}: is the --data folder {same}; give the run a folder of its own")


def _run(args) -> int:
    from gaussianvision.train.checkpoint import CheckpointError
    from gaussianvision.train.batches import DataError, build_source, data_identity
    from gaussianvision.train.distributed import cleanup, init_distributed
    from gaussianvision.train.loop import TrainConfig, TrainingDiverged, train
    _check_options(args)
    from gaussianvision.train.recipe import recipe_for
    recipe = recipe_for(args.stage)
    if args.batch_size is None:
        args.batch_size = recipe.batch_size
    if args.stage != "2" and (args.init_from or args.unfreeze):
        raise CliError("--init-from and --unfreeze apply to --stage 2")
    try:
        info = init_distributed(args.device)
    except ValueError as e:  # torchrun's variables, checked (train/distributed._launch_env)
        raise CliError(str(e)) from None
    done = False
    try:
        need = {"1": ("splats", "image"), "2": ("splats", "text"), "rgb": ("image", "text")}[args.stage]
        if args.hard_negatives:
            need += ("negative",)
        try:
            stage = _build_stage(args, info)
        except (ValueError, CheckpointError) as e:
            raise CliError(str(e)) from None
        image_size = None
        if "image" in need:
            visual = getattr(stage.model, "base", stage.model).visual
            image_size = int(visual.image_size[0]) if args.stage == "rgb" else None
        try:
            source = build_source(args.data, need, args.batch_size, seed=args.seed, rank=info.rank,
                                  world_size=info.world_size, image_size=image_size, buffer=args.shuffle_buffer)
        except (DataError, ValueError) as e:
            raise CliError(str(e)) from None
        source_urls = list(source.shards)
        if args.in_memory:
            from gaussianvision.train.batches import build_memory_source
            try:
                samples = [x for u in source.shards for x in source.read_shard(u)]
                source = build_memory_source(samples, args.batch_size, seed=args.seed, rank=info.rank,
                                             world_size=info.world_size, left_out=source.left_out())
            except (DataError, ValueError) as e:
                raise CliError(f"--data: {e}") from None
        _check_captions(args, source, need, info)
        steps, chosen = _schedule(args, source, info)
        cfg = TrainConfig(out=args.out, steps=steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                          warmup=args.warmup, weight_decay=args.weight_decay, accum=args.accum,
                          grad_clip=args.grad_clip or None, precision=args.precision, seed=args.seed,
                          log_every=args.log_every, save_every=args.save_every, keep=args.keep, resume=args.resume,
                          stop_after=args.stop_after, tensorboard=args.tensorboard,
                          progress=not args.no_progress and not args.json,
                          extra={"data": args.data, "stage": args.stage,
                                 "data_identity": data_identity(source_urls, args.in_memory, args.shuffle_buffer)})
        try:
            summary = train(stage, source, cfg, info)
        except TrainingDiverged as e:
            if info.is_main:  # it trained, then diverged: random weights may be why
                _say_random_weights(args, stage.model)
            raise CliError(str(e)) from None
        except (CheckpointError, DataError) as e:
            raise CliError(str(e)) from None
        if info.is_main:
            _say_random_weights(args, stage.model)  # after the run: a refused one stays one line
            summary = {"stage": args.stage, "out": args.out, "world_size": info.world_size, **summary,
                       "settings": chosen}
            losses = summary.pop("losses")
            summary["first_loss"] = losses[0] if losses else None
            human = (f"trained {summary['steps']}/{summary['total_steps']} steps, loss {summary['first_loss']} -> "
                     f"{summary['final_loss']}; checkpoint {summary['checkpoint']}" + _skipped_note(summary))
            if summary["first_loss"] is None:  # a resumed run that had finished (regression: "loss None -> None")
                human = (f"nothing to train: {args.out} had done its {summary['total_steps']} steps; "
                         f"checkpoint {summary['checkpoint']}")
            emit(summary, args.json, human=human)
        done = True
        return 0
    finally:
        if done and info.enabled:
            _end_worker(info)
        cleanup(info)


def _schedule(args, source, info) -> tuple[int, dict]:
    """Fill --epochs, --lr and --warmup from the stage's recipe where not given (sets them on args)
    -> (optimizer steps, {setting: value, "from_recipe": [names]}). The data size N is counted only
    when a default needs it."""
    import math
    from gaussianvision.train import recipe as rc
    defaults = []
    n = None
    if (args.steps is None and args.epochs is None) or args.lr is None:
        n = _count(source)
    data = _data_text(args)
    if n == 0:
        raise CliError(f"--data {data}: no usable samples (the shards are empty or unreadable)")
    if n is not None and n < args.batch_size * info.world_size:  # regression: the loop's traceback later
        raise CliError(f"--data {data}: {n} samples (counted, not yet read), fewer than one global batch of "
                       f"{args.batch_size * info.world_size} (--batch-size {args.batch_size} x {info.world_size} "
                       f"process{'es' if info.world_size > 1 else ''}); give --batch-size {max(1, n // info.world_size)} "
                       "or less, or more data")
    if args.steps is None and args.epochs is None:
        args.epochs = rc.epochs_for(args.stage, n)
        defaults.append("epochs")
    if args.lr is None:
        args.lr = rc.lr_for(args.stage, n)
        defaults.append("lr")
    steps = args.steps
    if steps is None:
        if hasattr(source, "dataset"):  # in memory: exact epochs of len(source) global batches
            steps = max(1, math.ceil(args.epochs * len(source) / args.accum))
        else:
            n = _count(source) if n is None else n
            steps = max(1, math.ceil(args.epochs * n / (args.batch_size * info.world_size * args.accum)))
    fraction = None
    if args.warmup is None:
        fraction = rc.recipe_for(args.stage).warmup_fraction if args.warmup_fraction is None else args.warmup_fraction
        args.warmup = rc.warmup_steps(steps, fraction)
        if args.warmup_fraction is None:  # a given --warmup-fraction is the user's, not the recipe's (review finding)
            defaults.append("warmup")
    if n is None and hasattr(source, "dataset"):  # in memory: the samples are known without counting
        n = len(source.dataset)
    chosen = {"samples": n, "steps": steps, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "warmup": args.warmup, "from_recipe": defaults}
    if args.min_lr > args.lr:
        _min_lr_above(args, from_recipe="lr" in defaults)
    if info.is_main and args.warmup >= steps:
        print(f"gsv train: note: a warmup of {args.warmup} steps >= this run's {steps}: the learning rate rises through "
              f"the whole run (to --lr {args.lr:g} at most at its last step) and never decays", file=sys.stderr)
    if info.is_main and args.lock_text_steps and args.lock_text_steps >= steps:
        print(f"gsv train: note: --lock-text-steps {args.lock_text_steps} >= this run's {steps} steps: the text "
              f"tower stays as initialized for the whole run", file=sys.stderr)
    if info.is_main and defaults and not args.json:
        # each setting the recipe chose, by name and value; then the run's (regression, new-user trial: "warmup from
        # the stage-1 recipe: 6 steps, batch 64, lr 0.002, warmup 0" read as if all of them came from the recipe)
        said = {"epochs": lambda: f"epochs {args.epochs:g}", "lr": lambda: f"lr {args.lr:.3g}",
                "warmup": lambda: f"warmup {args.warmup} ({100 * fraction:g}% of {steps} steps)"}
        print(f"gsv train: from the stage-{args.stage} recipe: {', '.join(said[d]() for d in defaults)}; the run: {steps} "
              f"steps{'' if n is None else f' over {n} samples'}, batch {args.batch_size}, lr {args.lr:.3g}, "
              f"warmup {args.warmup}")
    return steps, chosen


def _check_captions(args, source, need, info) -> None:
    """A stage that learns from captions, on data whose first samples have none: refused where none has one, noted
    where over a tenth lack one. Regression (new-user trial): stage 2 and rgb trained on shards converted from
    images without captions, contrasting splats with empty strings, without a word."""
    if "text" not in need:
        return
    from gaussianvision.train.batches import DataError, empty_captions
    try:
        empty, seen = empty_captions(source)
    except (DataError, ValueError):  # the reading's own error comes where the trainer reads
        return
    data = _data_text(args)
    if seen and empty == seen:
        raise CliError(f"--data {data}: none of its first {seen} samples has a caption (a .txt member), and stage "
                       f"{args.stage} learns from captions; convert images with their captions")
    if info.is_main and seen and empty * 10 > seen:
        print(f"gsv train: note: {empty} of the first {seen} samples of --data {data} have no caption (trained on "
              "as empty text)", file=sys.stderr)


def _data_text(args) -> str:
    """--data as given, for a message (several given: joined by spaces, not shown as a Python list)."""
    return " ".join(map(str, args.data)) if isinstance(args.data, (list, tuple)) else args.data


def _min_lr_above(args, from_recipe: bool) -> None:
    """Regression (new-user trial): a --min-lr above the peak rate made the schedule rise to it, without a word."""
    whose = " (the recipe's)" if from_recipe else ""
    raise CliError(f"--min-lr {args.min_lr:g}: above the peak rate --lr {args.lr:g}{whose}; the schedule decays "
                   "from --lr to --min-lr")


def _count(source) -> int:
    """Samples in the data: the in-memory source's rows or the shards' samples."""
    if hasattr(source, "dataset"):
        return len(source.dataset)
    from gaussianvision.train.batches import DataError, count_samples
    try:
        return count_samples(source.shards, source.read_shard.need)
    except DataError as e:  # regression: a lacking member was found only after "fewer than one batch"
        raise CliError(f"--data: {e}") from None


def _end_worker(info) -> None:
    """A torchrun worker that finished its run: the ranks meet, then the process ends at once.
    Tearing gloo down (destroy_process_group, then the interpreter's exit) aborted a rank now and
    then ("terminate called without an active exception": a peer closed its sockets while this
    rank's gloo threads were still being destroyed), turning a finished run into a failure; after
    the barrier nothing is left to send, and os._exit runs no C++ destructor."""
    import os
    import sys
    from gaussianvision.train.distributed import barrier
    barrier(info)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run("train", _run, args)


def _word_boost(items: list[str]) -> dict[str, float]:
    """["left=4", ...] -> {"left": 4.0}; CliError naming the bad item."""
    out = {}
    for item in items:
        word, value = key_value(item, "--word-boost", "WORD=FACTOR", "left=4")
        try:
            out[word] = float(value)
        except ValueError:
            raise CliError(f"--word-boost {item!r}: FACTOR must be a number, e.g. left=4") from None
    return out


def _skipped_note(summary: dict) -> str:
    n, d = summary.get("skipped_samples", 0), summary.get("damaged_shards", 0)
    named = f" (named in {summary['skipped_file']})" if summary.get("skipped_file") else ""
    return f"; skipped {n} bad sample(s), {d} damaged shard(s) read up to the damage{named}" if n or d else ""


def _say_random_weights(args, model) -> None:
    """Notes on stderr, once the run has trained, where a GS stage trained against random weights, which
    nothing else would say: stage 1 without --pretrained (regression: said nowhere); stage 2 whose frozen base
    has none (no --pretrained, and none from --init-from's run; new-user trial: exit 0 without a word) or
    without --init-from (its GS tower starts untrained)."""
    if args.stage == "1" and not args.pretrained:
        print("gsv train: note: no --pretrained: the stage-1 teacher (the frozen base) has random weights, so the "
              "GS tower learns to imitate noise; give the base's weights (a tag or a local file)", file=sys.stderr)
    if args.stage == "2" and not getattr(model, "pretrained", None):
        print("gsv train: note: the frozen base (image tower's ViT and text tower) has random weights: no --pretrained"
              + (", and the --init-from run had none" if args.init_from else "") + "; give the base's weights "
              "(a tag or a local file)", file=sys.stderr)
    if args.stage == "2" and not args.init_from:
        print("gsv train: note: no --init-from: the GS tower (stem, resampler) starts untrained; stage 2 usually "
              "goes on from stage 1's output folder", file=sys.stderr)


def _build_stage(args, info):
    """The library's stage object of --stage, or the demo's TeacherStage (apps.demo.teacher) for
    stage rgb when any teacher flag is given (given to stage 1 or 2, they are refused there)."""
    options = dict(base=args.base, pretrained=args.pretrained, model_config=args.model_config,
                   init_from=args.init_from, unfreeze=args.unfreeze, distill=args.distill,
                   token_weight=args.token_weight, info=info, seed=args.seed, cache_teacher=args.cache_teacher,
                   hflip=args.hflip)
    teacher = dict(lock_text_steps=args.lock_text_steps, hard_negatives=args.hard_negatives,
                   mirror_pairs=args.mirror_pairs, word_loss=args.word_loss, word_boost=_word_boost(args.word_boost))
    from gaussianvision.apps.demo import teacher as demo_teacher
    if demo_teacher.uses_teacher(**teacher):
        return demo_teacher.build_stage(args.stage, **teacher, **options)
    from gaussianvision.train.build import build_stage
    return build_stage(args.stage, **options)
