"""Resuming a run (gsv train --resume): choose the checkpoint, check that the run being resumed had
the same settings, load weights, optimizer, scaler, RNGs and data positions on every rank.

What must match: the TrainConfig settings in RESUME_KEYS, the number of processes, and the stage
settings the stage declares with resume_keys() -> {describe() key: its "not used" value}. Those
declarations are saved in state.json ("resume_keys"; the stage's describe() is saved under "task"),
so a run resumed with a stage that no longer has the setting (e.g. the demo's --word-loss resumed as
a plain stage rgb) is compared against the "not used" value and refused. Checkpoints written before the declarations existed are compared on
the keys the current stage declares and the checkpoint's describe() holds.
"""
from __future__ import annotations

import filecmp
import os
import sys
from pathlib import Path

from .checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_trainable, set_aside_newer, set_rng_state
from .distributed import DistInfo, broadcast_object, gather_object
from .optstate import apply_optimizer_state

__all__ = ["RESUME_KEYS", "restore", "check_resume", "stage_resume_keys"]

# TrainConfig settings a resumed run must share with the original one
RESUME_KEYS = ("steps", "batch_size", "accum", "seed", "lr", "warmup", "min_lr", "weight_decay")
_SCHEDULE = ("steps", "warmup", "lr", "min_lr")


def stage_resume_keys(stage) -> dict:
    """The stage's {describe() key: "not used" value} to compare on resume ({} when it declares none)."""
    return dict(stage.resume_keys()) if hasattr(stage, "resume_keys") else {}


def check_resume(state: dict, config_json: dict, stage, info: DistInfo) -> None:
    """CheckpointError naming the first setting that differs from the run being resumed."""
    old = state.get("train_config", {})
    was, now = state.get("task", {}).get("stage"), (stage.describe() if hasattr(stage, "describe") else {}).get("stage")
    if was is not None and now is not None and was != now:  # said first: every other difference follows from it
        raise CheckpointError(f"--resume: {state['path']} is a checkpoint of stage {was}, this run is stage {now}; "
                              f"start stage {now} in a new --out" + (" (--init-from takes a stage-1 run)" if now == "2" else ""))
    for k in RESUME_KEYS:
        if k in old and old[k] != config_json[k] and not (isinstance(old[k], list) and list(config_json[k]) == old[k]):
            why = "; the learning-rate schedule depends on it" if k in _SCHEDULE else ""
            raise CheckpointError(f"--resume: {k} was {old[k]!r} in {state['path']}, now {config_json[k]!r}{why}")
    _check_data(old.get("extra", {}).get("data_identity"), config_json.get("extra", {}).get("data_identity"), state)
    if state.get("world_size", 1) != info.world_size:
        raise CheckpointError(f"--resume: the run used {state.get('world_size')} process(es), now {info.world_size}; "
                              "the data order depends on it")
    old_desc, now_desc = state.get("task", {}), (stage.describe() if hasattr(stage, "describe") else {})
    recorded = state.get("resume_keys")
    declared = {**(recorded if isinstance(recorded, dict) else {}), **stage_resume_keys(stage)}
    for k, unused in declared.items():
        if recorded is None and (k not in old_desc or k not in now_desc):
            continue  # a checkpoint from before the declarations: compared where both sides say
        was, now = old_desc.get(k, unused), now_desc.get(k, unused)
        if not _COMPARE.get(k, _equal)(was, now, state):
            shown = (_shown(was), _shown(now))
            if shown[0] == shown[1]:  # one config name, other settings inside
                shown = (f"{shown[0]} with other settings", shown[1])
            raise CheckpointError(f"--resume: {k.replace('_', '-')} was {shown[0]} in {state['path']}, "
                                  f"now {shown[1]}; resume with the run's settings")


def _check_data(was: dict | None, now: dict | None, state: dict) -> None:
    """CheckpointError where the run's data (batches.data_identity) differ from this one's: other shards, or held
    in memory where they were streamed (or the reverse), or another shuffle buffer: each is another batch order.
    Regression (new-user trial): a stage-2 run resumed with another --data, or without --in-memory, went on
    without a word."""
    if not (isinstance(was, dict) and isinstance(now, dict)) or was == now:
        return
    where = state["path"]
    if was.get("in_memory") != now.get("in_memory"):
        given = "given" if was.get("in_memory") else "not given"
        raise CheckpointError(f"--resume: --in-memory was {given} in {where}; the batch order depends on it")
    if was.get("shuffle_buffer") != now.get("shuffle_buffer"):
        raise CheckpointError(f"--resume: shuffle-buffer was {was.get('shuffle_buffer')} in {where}, now "
                              f"{now.get('shuffle_buffer')}; the batch order depends on it")
    raise CheckpointError(f"--resume: the --data shards differ from the run's in {where} ({was.get('shards')} shards "
                          f"then, {now.get('shards')} now, or other files: names and sizes are compared); resume "
                          "with the run's --data")


def _equal(was, now, state) -> bool:
    return was == now


def _same_weights(was, now, state) -> bool:
    """Whether `now` names the weights the run was given (`was`): None against any is another model (a random
    base, a random teacher); a file is the same when it is that file or holds the same bytes, found where the run
    recorded it or, moved with the run, beside it (pretrained_rel). Where that cannot be told (a tag against a
    file, a recorded file gone), a warning and the resume goes on (review finding: a moved run, or a tag's run
    resumed offline with the tag's file, was refused with no way through)."""
    if was == now or (was is None) != (now is None):
        return was == now
    from gaussianvision.models.weights import resolve_base
    was = resolve_base(was, state.get("task", {}).get("pretrained_rel"), state["path"])
    if os.path.isfile(was) and os.path.isfile(now):
        return os.path.samefile(was, now) or filecmp.cmp(was, now, shallow=False)
    if not os.path.exists(was) and not os.path.exists(now) and "/" not in was + now and os.sep not in was + now:
        return False  # two tags
    print(f"warning: --resume: cannot tell whether {now!r} holds the run's weights ({was!r}); going on with it",
          file=sys.stderr)
    return True


def _both_or_neither(was, now, state) -> bool:
    """--init-from: given or not as the run was (the model's config and base, compared apart, come from it);
    its path may differ (a moved run: review finding)."""
    return (was is None) == (now is None)


def _same_config(was, now, state) -> bool:
    """Model configs compared complete (defaults filled in), so that a default added later is no difference."""
    if was == now or not (isinstance(was, dict) and isinstance(now, dict)):
        return was == now
    from gaussianvision.models.config import ConfigError, load_config
    try:
        return load_config(was) == load_config(now)
    except ConfigError:
        return False


_COMPARE = {"pretrained": _same_weights, "init_from": _both_or_neither, "model_config": _same_config}


def _shown(value) -> str:
    """A setting in a message: a model config by its name (the whole dict is pages), the rest as repr."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return f"config {value['name']!r}"
    return repr(value)


def restore(out, config_json, stage, info, model, optimizer, scaler) -> tuple[int, int, int]:
    """Resume: rank 0 chooses the checkpoint of `out` (see _choose), every rank loads that exact
    directory into model, optimizer and scaler and sets its RNGs; the ranks agree before going on
    (a failure on any rank is a CheckpointError on all). -> (step, epoch, position) of this rank."""
    found, err = None, None
    if info.is_main:
        try:
            found = _choose(out)
        except CheckpointError as e:
            err = (f"--resume: {e}; nothing was deleted (to start over, move it away or choose "
                   "another --out)")
    path, err = broadcast_object((found[0]["path"] if found else None, err), info)
    if err:
        raise CheckpointError(err)
    err, got = None, None
    try:
        got = _apply(found or load_checkpoint(path, optimizer=True), config_json, stage, info, model, optimizer, scaler)
    except CheckpointError as e:
        err = str(e)
    errors = [(r, e) for r, e in enumerate(gather_object(err, info)) if e]
    if errors:
        r, e = errors[0]
        raise CheckpointError(e if r == info.rank or not info.enabled else f"rank {r}: {e}")
    return got


def _choose(out: Path) -> tuple[dict, dict, dict]:
    """Rank 0: the checkpoint to resume from (the one `latest` names when complete, else the newest
    complete one); the step directories newer than it are renamed step-N.bad so nothing loads them
    later; each unusable one and each one moved aside is named in one warning line."""
    found, bad = find_checkpoint(out, optimizer=True)
    used = found[0]["path"]
    moved = set_aside_newer(used)
    for why in bad:
        print(f"warning: checkpoint unusable: {why}; using {used}", file=sys.stderr)
    if moved:
        print(f"warning: resuming from {used}: the newer step directories are renamed, kept and never loaded: "
              + ", ".join(f"{old} -> {new.name}" for old, new in moved), file=sys.stderr)
    return found


def _apply(found, config_json, stage, info, model, optimizer, scaler) -> tuple[int, int, int]:
    state, weights, opt_state = found
    check_resume(state, config_json, stage, info)
    load_trainable(model, weights)
    apply_optimizer_state(optimizer, opt_state["optimizer"], state["path"])
    try:
        if opt_state.get("scaler"):
            scaler.load_state_dict(opt_state["scaler"])
        positions = state["data_positions"]
        if len(positions) <= info.rank:
            raise CheckpointError(f"--resume: {state['path']} holds no data position for rank {info.rank}")
        rngs = state.get("rng", [])
        if len(rngs) > info.rank:
            set_rng_state(rngs[info.rank])
        epoch, position = positions[info.rank]
        return int(state["step"]), int(epoch), int(position)
    except (ValueError, KeyError, TypeError, IndexError, SyntaxError, RuntimeError) as e:
        raise CheckpointError(f"--resume: {state['path']}: unusable state ({type(e).__name__}: {e})") from None


