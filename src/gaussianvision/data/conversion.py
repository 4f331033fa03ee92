"""Convert image(-text) datasets to splat shards: resumable, atomic, parallel, rank-splittable.

    summary = convert_dataset("in/{00000..00009}.tar", "out/", ConvertConfig(n_gaussians=400,
                              fit_options={"iters": 500, "init": "grid"}, workers=2))

Output directory:
    NNNNNN.tar              webdataset shard: per sample key.gsv (splat bytes), key.txt (caption),
                            key.json ({key, source, original_size [w, h], psnr, ssim, n_gaussians,
                            iterations, caption_missing, stopped when the fit ended early, meta}),
                            and key.<ext> (the source image bytes) with keep_image; original_size
                            is the image as shown (EXIF orientation applied)
    NNNNNN.stats.json       per-shard counts (inputs = converted + failed), quality, sizes, timing
    NNNNNN.failures.jsonl   per-shard failures: {key, source, stage, reason}
    failures.jsonl          all failures, shard after shard (rebuilt at the end of each run)
    summary.json            totals over the finished shards and whether every shard is done
    config.json             the settings that determine the output; a rerun must match them

Output shard k is made from input unit k alone (see sources.plan_units), images are fitted in
batches formed inside the shard in input order, and the tar is written under a temporary name
and renamed only when complete; its stats file is written last and marks it finished. So a
rerun after a kill at any moment skips finished shards and redoes the others, giving exactly
the samples of an uninterrupted run. Rank r of world w converts the units with k % w == r
(torchrun's RANK / WORLD_SIZE; one process per GPU with device="cuda" uses LOCAL_RANK).
"""
from __future__ import annotations

import errno
import os
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from gaussianvision.data.images import IMAGE_EXTS, ImageLoadError, load_image
from gaussianvision.data.shards import ShardWriter
from gaussianvision.data import conversion_output as output
from gaussianvision.data.conversion_output import shard_name, summarize  # noqa: F401 (public here too)
from gaussianvision.data.conversion_workers import WorkerStartError, start_workers, stop_workers
from gaussianvision.data.conversion_config import (ConvertConfig, ConvertError, check_apart, check_config, check_settings,
                                                   resolve_rank)
from gaussianvision.data.inputs import RawSample, Unit, iter_unit, local_size, plan_units
from gaussianvision.fit import Encoding, FitConfig, FitItem, FitStream

__all__ = ["ConvertConfig", "ConvertError", "convert_dataset", "summarize", "shard_name", "resolve_rank"]

# ------------------------------------------------------------------------- fitting
def _stream(cfg: "ConvertConfig", fit_options: dict | None = None) -> FitStream:
    """The fit of a conversion: fit_images' options, on cfg.device, encoded as the shards store it."""
    options = cfg.fit_options if fit_options is None else fit_options
    return FitStream(cfg.n_gaussians, FitConfig.from_options({"device": cfg.device, **options}), batch_size=cfg.batch_size,
                     encoding=Encoding(layout=cfg.layout, dtype=cfg.dtype, zstd=cfg.zstd,
                                       progressive=cfg.progressive, order=cfg.progressive_order))


# ------------------------------------------------------------------------- one shard
class _Shard:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.name = output.shard_name(unit.index)
        self.inputs = 0
        self.entries: dict[int, tuple] = {}  # position -> ("ok", raw, gsv, metrics) | ("fail", dict)
        self.waiting: dict[int, RawSample] = {}
        self.shard_errors: list[str] = []
        self.t0 = time.perf_counter()
        self.identity = output.tar_identity(unit)  # before the tar is read (review: a tar still being copied)

    def fail(self, pos: int, raw: RawSample, stage: str, reason: str) -> None:
        self.entries[pos] = ("fail", {"key": raw.key, "source": raw.source, "stage": stage, "reason": reason})


def _source_label(unit: Unit) -> str:
    return unit.paths[0] if unit.kind == "tar" else f"{unit.root} [{unit.first_key}:{unit.first_key + len(unit.paths)}]"


class _Converter:
    def __init__(self, out: Path, cfg: ConvertConfig):
        self.out, self.cfg = out, cfg
        self.writing = ""  # the file being written (for the message of a write error)
        self.unopened: list[str] = []  # input tars that could not be opened: left unfinished, a rerun retries them
        self.claims: dict[int, tuple[Unit, int]] = {}  # index -> (unit, claim) of the shards converted now
        self.busy: list[str] = []  # shards another process was converting: left to it
        self.finished_elsewhere = 0  # shards another process finished after this one listed them

    def samples(self, pending: list[Unit]):
        """Work in order: ((shard, positions), uint8 images [B, 3, S, S]) per batch of a shard, then
        ((shard, None), None) at its end."""
        cfg = self.cfg
        for unit in pending:
            if unit.kind == "tar" and not self._opens(unit.paths[0]):
                continue
            if not self._claim(unit):
                continue
            sh = _Shard(unit)
            pos_batch, img_batch = [], []
            for pos, raw in enumerate(iter_unit(unit)):
                if raw.whole_shard:
                    sh.shard_errors.append(raw.error)
                    continue
                sh.inputs += 1
                if raw.error:
                    sh.fail(pos, raw, "read", raw.error)
                    continue
                if raw.caption is None and cfg.require_caption:
                    # regression (new-user trial): a caption file not read (a folder, a link loop) lost its reason
                    why = raw.caption_note or "no .txt, or nothing but white space in it"
                    sh.fail(pos, raw, "caption", f"missing caption ({why})")
                    continue
                try:
                    img = load_image(raw.image, size=cfg.size, name=raw.source, max_pixels=cfg.max_pixels,
                                     min_side=cfg.min_side)
                    raw.meta = dict(raw.meta or {}, __original_size__=list(_original_size(raw.image)))
                except ImageLoadError as e:
                    sh.fail(pos, raw, "decode", str(e))
                    continue
                if not cfg.keep_image:
                    raw.image = None
                sh.waiting[pos] = raw
                pos_batch.append(pos)
                img_batch.append((img * 255.0).round_().to(torch.uint8).numpy())
                if len(pos_batch) == cfg.batch_size:
                    yield (sh, pos_batch), np.stack(img_batch)
                    pos_batch, img_batch = [], []
            if pos_batch:
                yield (sh, pos_batch), np.stack(img_batch)
            yield (sh, None), None

    def _opens(self, path: str) -> bool:
        """Whether an input tar can be opened; if not (permissions, a file system that is away) it is
        noted and its shard left unfinished, so that a rerun tries it again (regression: it was written
        as a finished shard of 0 samples and never retried)."""
        try:
            open(path, "rb").close()
            return True
        except OSError as e:
            self.unopened.append(f"{path}: cannot open ({e.strerror or e})")
            return False

    def _claim(self, unit: Unit) -> bool:
        """Whether this process converts `unit` now: it holds the shard's claim and the shard is not
        finished. Claimed, the shard's temporary files are leftovers of a killed run: removed."""
        fd = output.claim(self.out, unit)
        if fd is None:
            self.busy.append(f"{output.shard_name(unit.index)}.tar")
            return False
        state = output.shard_state(self.out, unit)
        if state == "repaired":  # only the claim's holder unfinishes it (review finding)
            try:
                (self.out / f"{output.shard_name(unit.index)}.stats.json").unlink(missing_ok=True)
            except OSError as e:
                output.release(self.out, unit, fd)
                raise ConvertError(f"{self.out}: cannot write the output ({e.strerror or e})") from None
        elif state == "done":
            output.release(self.out, unit, fd)
            self.finished_elsewhere += 1
            return False
        self.claims[unit.index] = (unit, fd)
        for stale in self.out.glob(f".{output.shard_name(unit.index)}.*.tmp*"):
            stale.unlink(missing_ok=True)
        return True

    def release(self, unit: Unit) -> None:
        held = self.claims.pop(unit.index, None)
        if held is not None:
            output.release(self.out, *held)

    def release_all(self) -> None:
        """Let go of the claims left (shards unfinished after an error or Ctrl-C)."""
        for unit, fd in self.claims.values():
            output.release(self.out, unit, fd)
        self.claims.clear()

    def collect(self, sh: _Shard, positions, items: list[FitItem]) -> None:
        for pos, it in zip(positions, items):
            raw = sh.waiting.pop(pos)
            if not it.ok:
                sh.fail(pos, raw, "fit", it.error)
            else:
                sh.entries[pos] = ("ok", raw, it.data, dict(it.metrics, seconds=it.seconds))

    def finish(self, sh: _Shard) -> dict:
        """Write the shard's tar, failures and stats (last: it marks the shard finished)."""
        out = self.out
        self.writing = f"{sh.name}.tar"
        done = self._write_tar(sh)
        failures = [e[1] for _, e in sorted(sh.entries.items()) if e[0] == "fail"]
        self.writing = f"{sh.name}.failures.jsonl"
        output.write_durable(out / self.writing, b"".join(output.json_line(f) for f in failures))
        by_stage: dict[str, int] = {}
        for f in failures:
            by_stage[f["stage"]] = by_stage.get(f["stage"], 0) + 1

        def mean(k):
            return float(np.mean([d[k] for d in done])) if done else None
        stats = {
            "shard": f"{sh.name}.tar", "unit": sh.unit.index, "source": _source_label(sh.unit),
            "inputs": sh.inputs, "converted": len(done), "failed": len(failures),
            "failed_by_stage": by_stage, "missing_captions": sum(d["caption_missing"] for d in done),
            "repaired_captions": sum("caption_note" in d and not d["caption_missing"] for d in done),
            "shard_errors": sh.shard_errors, "psnr_mean": mean("psnr"), "ssim_mean": mean("ssim"),
            "n_gaussians_mean": mean("n_gaussians"), "gsv_bytes_mean": mean("gsv_bytes"),
            "tar_bytes": (out / f"{sh.name}.tar").stat().st_size,
            "fit_seconds": sum(d["seconds"] for d in done), "wall_seconds": time.perf_counter() - sh.t0,
            "keys": [d["key"] for d in done], "inputs_digest": output.unit_digest(sh.unit),
        }
        if sh.shard_errors:  # a damaged tar: a rerun converts the shard again once the tar has changed
            stats["input_identity"] = sh.identity
        assert stats["inputs"] == stats["converted"] + stats["failed"], stats
        self.writing = f"{sh.name}.stats.json"
        output.write_durable(out / self.writing, output.json_line(stats))
        self.writing = ""
        return stats

    def _write_tar(self, sh: _Shard) -> list[dict]:
        """The converted samples into NNNNNN.tar, in input order; per sample its info (+ seconds,
        gsv_bytes) for the stats."""
        done = []
        with ShardWriter(self.out / f"{sh.name}.tar") as w:
            for _, e in sorted(sh.entries.items()):
                if e[0] == "fail":
                    continue
                _, raw, data, m = e
                meta = dict(raw.meta or {})
                orig = meta.pop("__original_size__", None)
                info = {"key": raw.key, "source": raw.source, "original_size": orig,
                        "psnr": round(float(m["psnr"]), 4), "ssim": round(float(m["ssim"]), 5),
                        "n_gaussians": int(m["n_gaussians"]), "iterations": m.get("iterations"),
                        "caption_missing": raw.caption is None}
                if raw.caption_note:  # repaired (not UTF-8, NULs; counted), or a caption file not read (missing)
                    info["caption_note"] = raw.caption_note
                others = [e for e in raw.extras if e in IMAGE_EXTS]
                if others:  # regression (new-user trial): a sample's second image (e.png beside e.jpg) went unsaid
                    info["other_images"] = others  # not converted: the first of IMAGE_EXTS was
                if m.get("stopped"):  # why the fit ended early: target | plateau | budget
                    info["stopped"] = m["stopped"]
                if meta:
                    info["meta"] = meta
                fields = {"gsv": data, "txt": (raw.caption or "").encode("utf-8"), "json": output.json_line(info)}
                if self.cfg.keep_image and raw.image is not None:
                    fields[raw.image_ext] = raw.image
                w.write(raw.key, fields)
                done.append(dict(info, seconds=float(m.get("seconds", 0.0)), gsv_bytes=len(data)))
        return done


def _original_size(data: bytes) -> tuple[int, int]:
    import io

    from gaussianvision.data.images import open_image
    with open_image(io.BytesIO(data)) as im:  # the project's formats only (no PostScript: Ghostscript)
        w, h = im.size
        try:
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientation: stored on its side
        except Exception:  # a broken EXIF block: load_image ignores it too
            turned = False
        return (h, w) if turned else (w, h)


def _probe_fit(cfg: ConvertConfig) -> None:
    """Fit one blank image for one iteration with the run's options, device and encoding: what
    the fitter refuses (an unknown init, a value of the wrong type) fails here, once, instead of
    failing every sample of the run."""
    opts = dict(cfg.fit_options, iters=1, finetune_iters=min(1, cfg.fit_options.get("finetune_iters", 0)))
    blank = np.full((1, 3, cfg.size, cfg.size), 128, np.uint8)
    err = _stream(cfg, opts).fit_batch([0], blank)[0].error
    if err is not None:
        raise ConvertError(f"fit options {cfg.fit_options} (size {cfg.size}, {cfg.n_gaussians} Gaussians, "
                           f"device {cfg.device}): {err}")


def convert_dataset(src, out: str | os.PathLike, cfg: ConvertConfig) -> dict:
    """Convert this rank's pending shards of `src` into `out`; returns the summary dict
    (with this run's "run" counts: shards converted now and skipped as already finished)."""
    check_settings(cfg)
    skipped: list[Path] = []
    units = plan_units(src, cfg.shard_size, skipped)
    _probe_fit(cfg)  # every option checked before anything is written
    out = Path(out)
    check_apart(units, out)
    if os.path.lexists(out) and not out.is_dir():  # regression (new-user trial): "cannot write the output (File exists)"
        raise ConvertError(f"{out}: is not a folder (the output is a folder of shards; give a new or existing folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_config(out, cfg.fingerprint(src))
    except OSError as e:
        raise ConvertError(f"{out}: cannot write the output ({e.strerror or e})") from None
    changed = output.changed_shard(out, units)
    if changed:  # regression: added files were never converted (and keys shifted) yet the run said "reconciled"
        raise ConvertError(f"{src} changed since {out} was started: shard {changed}; a rerun resumes only the "
                           f"same input: restore it, or convert into a new --output")
    mine = [u for u in units if u.index % cfg.world_size == cfg.rank]
    # finished from a damaged tar that has changed since: converted again (its stats go once it is claimed)
    pending = [u for u in mine if output.shard_state(out, u) != "done"]
    for u in set(mine) - set(pending):  # finished: a lock file left by a kill after the finish goes
        output.clear_lock(out, u)

    conv = _Converter(out, cfg)
    bar = _Progress(cfg, pending)
    pool = None
    done_shards: list[dict] = []
    finished = False
    try:
        if cfg.workers > 0:  # in the try: a Ctrl-C while they start closes the bar (review finding)
            try:
                pool = start_workers(cfg.workers)
            except WorkerStartError as e:
                raise ConvertError(f"cannot start {cfg.workers} fitting processes (--workers): {e}") from None
        _pipeline(conv, pending, pool, max(2, 2 * cfg.workers), bar, done_shards)
        conv.writing = "the summary (failures.jsonl, summary.json)"
        summary = summarize(out, units)
        finished = True
    except BrokenProcessPool:  # a fitting process killed (the OOM killer, kill -9): a traceback before
        raise ConvertError(f"{out}: a fitting process (--workers) died: killed, or out of memory (try fewer "
                           f"--workers or a smaller --batch-size); {_kept(done_shards)}; rerun to resume") from None
    except OSError as e:  # the output's disk is full, read-only, gone: finished shards stay
        raise ConvertError(_write_error(out, e, conv.writing, done_shards)) from None
    finally:
        try:
            if pool is not None:  # interrupted or failed: the workers' batches in flight are not waited for
                stop_workers(pool, wait_for_them=finished)
        finally:  # a second Ctrl-C during that wait still lets the claims go (review finding)
            conv.release_all()
            bar.close()
    summary["run"] = {"rank": cfg.rank, "world_size": cfg.world_size, "shards_converted": len(done_shards),
                      "shards_skipped": len(mine) - len(pending) + conv.finished_elsewhere,
                      "shards_busy": conv.busy, "shards_of_this_rank": len(mine), "unopened": conv.unopened,
                      "skipped_entries": [str(q) for q in skipped]}  # named like images, not files: not samples
    return summary


def _kept(done_shards: list[dict]) -> str:
    done = [st["shard"] for st in done_shards]
    return f"kept the {len(done)} shard{'s' if len(done) != 1 else ''} finished in this run" + \
        (f" ({', '.join(done)})" if done else "")


def _write_error(out: Path, e: OSError, writing: str, done_shards: list[dict]) -> str:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)  # review (new-user trial): "free space" whatever the error
    return (f"{out}: {e.strerror or e} while writing {writing or 'the output'}; {_kept(done_shards)}; "
            f"{'free space' if full else 'mend that'} and rerun to resume")


def _pipeline(conv: _Converter, pending: list[Unit], pool, max_inflight: int, bar, done_shards: list) -> None:
    """Fit the batches of `pending` in order (the library's FitStream, in `pool` or here) and write
    each shard when its batches are back; finished shards' stats go to `done_shards`."""
    work = _stream(conv.cfg).map_batches(conv.samples(pending), pool, max_inflight)
    for (sh, positions), items in work:
        if positions is not None:
            conv.collect(sh, positions, items)
            bar.batch(len(positions))
        else:
            done_shards.append(conv.finish(sh))
            conv.release(sh.unit)
            bar.shard(done_shards)


class _Progress:
    """The progress bar (nothing without cfg.progress); with tar inputs, the total is estimated
    from the shards done so far: their inputs per byte of source tar times the bytes of all (per shard
    where a size is unknown: a remote tar). Regression (new-user trial): 24 + 8 inputs in two tars showed
    16/48 (the mean per shard times the shards)."""

    def __init__(self, cfg: ConvertConfig, pending: list[Unit]):
        self.known = sum(len(u.paths) for u in pending if u.kind == "files")
        self.tar_sizes = {u.index: local_size(u.paths[0]) for u in pending if u.kind == "tar"}
        self.n_pending, self.bar = len(pending), None
        if cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=self.known or None, unit="img", desc=f"convert rank {cfg.rank}/{cfg.world_size}",
                            dynamic_ncols=True)

    def batch(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def shard(self, done: list[dict]) -> None:
        if self.bar is None:
            return
        st = done[-1]
        self.bar.update(st["failed"] - st["failed_by_stage"].get("fit", 0))  # fit failures were counted
        if self.tar_sizes:
            self.bar.total = self.known + self._tar_inputs(done)
        self.bar.set_postfix(shards=f"{len(done)}/{self.n_pending}", failed=sum(s["failed"] for s in done))
        self.bar.refresh()

    def _tar_inputs(self, done: list[dict]) -> int:
        """The inputs of every pending tar: those of the tars done, and the rest foreseen by their bytes."""
        tars = [s for s in done if s["unit"] in self.tar_sizes]
        if not tars:
            return 0
        sizes, seen = self.tar_sizes, {s["unit"] for s in tars}
        counted = sum(s["inputs"] for s in tars)
        sized = [s for s in tars if sizes[s["unit"]]]  # a remote or empty tar has no bytes to scale by
        per_byte = sum(s["inputs"] for s in sized) / sum(sizes[s["unit"]] for s in sized) if sized else None
        per_tar = counted / len(tars)
        rest = [u for u in sizes if u not in seen]
        def foreseen(size):
            if size == 0:  # an empty file holds nothing
                return 0
            if size is None or per_byte is None:  # a size unknown (remote), or no rate yet: as the tars so far
                return per_tar
            return per_byte * size
        return counted + round(sum(foreseen(sizes[u]) for u in rest))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

