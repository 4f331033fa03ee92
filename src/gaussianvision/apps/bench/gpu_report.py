"""Markdown of a `gsv bench gpu` result (gpu.json -> gpu.md) and the table it fills in docs/gpu.md.

    md = to_markdown(res)
    fill_docs(Path("docs/gpu.md"), res)    # rewrites the block between the two markers
    res = merge([run1, run2])              # two runs on one lease: the later run's steps replace the earlier's
"""
from __future__ import annotations

from pathlib import Path

from gaussianvision.atomic import write_text_atomic

__all__ = ["to_markdown", "tables", "fill_docs", "merge", "BEGIN", "END"]

BEGIN = "<!-- gpu-check:begin (generated from benchmarks/results/gpu.json by gsv bench gpu --render) -->"
END = "<!-- gpu-check:end -->"


def _f(v, fmt: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _error_row(lead: list, error: str, width: int) -> str:
    """A table row for a failed measurement: its keys, the error, empty cells to `width`."""
    return "| " + " | ".join([*map(str, lead), error] + [""] * (width - len(lead) - 1)) + " |"


def _machine(res: dict) -> str:
    m = res["machine"]
    gpu = (f"{m['gpu']} ({m['gpu_memory_gib']} GiB, compute {m.get('gpu_capability')}), driver {m['driver']}"
           if m.get("gpu") else "no GPU")
    return (f"{gpu}; CUDA {m.get('cuda_runtime')}, torch {m['torch']}, triton {m.get('triton')}, "
            f"python {m['python']}; CPU {m['cpu']} ({m['cores']} cores), load {m.get('loadavg_start')} at start, "
            f"{m.get('loadavg_end')} at end.")


def _status(res: dict) -> list[str]:
    lines = ["| step | status | seconds (limit) |", "|---|---|---|"]
    for name, s in res["steps"].items():
        lines.append(f"| {name} | {s['status']} | {s['seconds']} ({s['limit_s']:.0f}) |")
    return lines


def _parity(step: dict) -> list[str]:
    r = step.get("result")
    if not r:
        return [f"Parity: {step['status']}."]
    line = (f"Parity (`{r['command']}`): {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
            + (f" ({r['skipped_note']})" if r.get("skipped_note") else "") + f", {r['seconds']:.0f} s.")
    return [line] + [f"- failed: {f}" for f in r["failures"]]


def _kernels(step: dict) -> list[str]:
    if not step.get("rows"):
        return [f"Raster kernels: {step['status']}."]
    best = (step.get("best") or {}).get("name")
    lines = ["Raster kernels, forward and backward alone (bench/render's fitted-like splats at px a side, median "
             "of repeats; error: the largest difference from the reference renderer on a small batch, relative to "
             "its largest value; x: the time of the first setting measured at that shape over this one's):", "",
             "| B | N | px | setting | forward ms | backward ms | us per image-iteration | x | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    first: dict = {}
    for r in step["rows"]:
        shape = (r["batch"], r["n"], r.get("size", "-"))
        if "error" in r:
            lines.append(_error_row([*shape, r["setting"]], r["error"], 9))
            continue
        base = first.setdefault(shape, r["forward_backward_ms"])
        chosen = r["setting"] == best and shape == next(iter(first))  # chosen at the first shape
        name = f"**{r['setting']}** (chosen)" if chosen else r["setting"]
        lines.append(f"| {r['batch']} | {r['n']} | {shape[2]} | {name} | {r['forward_ms']:.2f} | {r['backward_ms']:.2f} | "
                     f"{r['us_per_image_iteration']:.2f} | {base / r['forward_backward_ms']:.2f}x | "
                     f"{r['max_rel_error']:.1e}{'' if r['ok'] else ' (wrong: never chosen)'} |")
    if step.get("cut_short"):
        lines.append(f"\nCut short: {step['cut_short']}.")
    if best:
        lines.append(f"\nThe later steps ran with **{best}**.")
    return lines


def _fit(step: dict, res: dict) -> list[str]:
    if not step.get("rows"):
        return [f"Fitting: {step['status']}."]
    c = res["config"]
    lines = [f"Fitting with `fit_images(..., device=\"{c['device']}\")`, {c['size']}x{c['size']}, content init, "
             f"{c['iters']} iterations, the {c['photos']} bundled photos tiled to B (initialization included):", "",
             "| B | N | images/s | iterations run | PSNR (dB) | ms/iteration | peak GiB | raster kernels | GPU busy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in step["rows"]:
        if "error" in r:
            lines.append(_error_row([r["batch"], r["n"]], r["error"], 9))
            continue
        ips = _f(r["images_per_s"])
        if "images_per_s_projected" in r:
            ips = f"{_f(r['images_per_s_projected'])} (projected; {ips} measured)"
        lines.append(f"| {r['batch']} | {r['n']} | {ips} | {r['iters_run']} | {r['mean_psnr']:.2f} | "
                     f"{r['ms_per_iter']:.2f} | {_f(r['peak_gib'], '.2f')} | {_pct(r.get('raster_kernel_share'))} | "
                     f"{_pct(r.get('gpu_busy_share'))} |")
    return lines


def _ttq(step: dict, res: dict) -> list[str]:
    if not step.get("rows"):
        return [f"Time to quality: {step['status']}."]
    lines = [f"Time to quality on the GPU (bench/ttq's methods, {res['config']['iters']} iterations, the bundled "
             "photos tiled to B; time per image = the batch's wall time / B, initialization included; "
             "images/s = 1 / that time):", "",
             "| B | N | method | final PSNR (dB) | images/s at the end | images/s to each target dB |",
             "|---|---|---|---|---|---|"]
    for r in step["rows"]:
        if "error" in r:
            lines.append(_error_row([r["batch"], r["n"]], r["error"], 6))
            continue
        to = ", ".join(f"{k} dB: {_f(v, '.0f', 'not reached')}" for k, v in r["images_per_s"].items())
        lines.append(f"| {r['batch']} | {r['n']} | {r['method']} | {r['final_psnr']:.2f} | "
                     f"{1 / r['seconds_per_image']:.1f} | {to} |")
    return lines


def _baseline(step: dict, res: dict) -> list[str]:
    if not step.get("rows"):
        return [f"LIG-style baseline: {step['status']}."]
    lines = ["LIG-style baseline (random init, one image per launch, the same iterations) against our "
             "fitter at the same B:", "",
             "| N | images timed | baseline images/s | baseline PSNR | ours images/s | ours PSNR | speed-up |",
             "|---|---|---|---|---|---|---|"]
    sp = res.get("summary", {}).get("speedup_vs_lig", {})
    for r in step["rows"]:
        if "error" in r:
            lines.append(_error_row([r["n"]], r["error"], 7))
            continue
        s = sp.get(str(r["n"]), {})
        lines.append(f"| {r['n']} | {r['images_done']} of {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['mean_psnr']:.2f} | {_f(s.get('ours_images_per_s'))} | {_f(s.get('ours_psnr'), '.2f')} | "
                     f"{_f(s.get('ratio'), '.0f')}x |")
    return lines


def _tower(step: dict, res: dict) -> list[str]:
    if not step.get("rows"):
        return [f"Towers: {step['status']}."]
    lines = [f"Towers, batch {res['config']['tower_batch']}, bf16 autocast (forward under no_grad; training = "
             "forward + backward into the parameters that train: the GS tower's stem, resampler and head, "
             "the whole RGB tower):", "",
             "| tower | N | trainable params | forward images/s | training images/s | peak GiB |",
             "|---|---|---|---|---|---|"]
    for r in step["rows"]:
        n = "-" if r["n"] is None else r["n"]
        if "error" in r:
            lines.append(_error_row([r["tower"], n], r["error"], 6))
            continue
        lines.append(f"| {r['tower']} | {n} | {r['trainable_params'] / 1e6:.1f}M | {r['forward_images_per_s']:.0f} | "
                     f"{r['train_images_per_s']:.0f} | {_f(r.get('peak_gib'), '.2f')} |")
    return lines


def tables(res: dict) -> str:
    """The result tables (the part docs/gpu.md shows)."""
    st = res["steps"]
    parts = [_machine(res), "", *_status(res), ""]
    for name, fn in (("parity", lambda s: _parity(s)), ("kernels", _kernels), ("ttq", lambda s: _ttq(s, res)),
                     ("fit", lambda s: _fit(s, res)),
                     ("baseline", lambda s: _baseline(s, res)), ("tower", lambda s: _tower(s, res))):
        if name in st:
            parts += fn(st[name]) + [""]
    return "\n".join(parts).rstrip() + "\n"


def merge(results: list[dict]) -> dict:
    """One result from several runs of the same check (say a rerun of the steps that failed): each
    step from the last run that has it, the machine of the last run, every run listed in "runs"."""
    from .gpu_check import summarize
    from .gpu_steps import STEPS
    if not results:
        raise ValueError("nothing to merge")
    modes = {r["mode"] for r in results}
    if len(modes) > 1:
        raise ValueError(f"cannot merge runs of different modes {sorted(modes)}")
    steps, config = {}, {}
    for r in results:
        config.update(r["config"])
        for name, st in r["steps"].items():
            steps[name] = dict(st, run=r["started_utc"])
    order = [n for n in STEPS if n in steps] + [n for n in steps if n not in STEPS]
    out = dict(results[-1], config=config, steps={n: steps[n] for n in order},
               started_utc=results[0]["started_utc"], wall_s=round(sum(r["wall_s"] for r in results), 1),
               runs=[{"started_utc": r["started_utc"], "wall_s": r["wall_s"], "steps": list(r["steps"])}
                     for r in results])
    out["summary"] = summarize(out)
    return out


def _runs(res: dict) -> str:
    if len(res.get("runs", ())) < 2:
        return f"Run {res['started_utc']}, {res['wall_s']} s wall in all."
    each = "; ".join(f"{r['started_utc']} ({', '.join(r['steps'])}; {r['wall_s']} s)" for r in res["runs"])
    return f"{len(res['runs'])} runs, each step from the last run that has it: {each}."


def to_markdown(res: dict) -> str:
    title = "# GPU check" + (" (tiny: CPU, small images; checks the script, not the GPU)" if res["mode"] == "tiny" else "")
    return f"{title}\n\n{_runs(res)}\n\n" + tables(res)


def fill_docs(path: Path, res: dict) -> None:
    """Replace the text between BEGIN and END in `path` by tables(res) (atomic)."""
    text = path.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"{path}: no '{BEGIN}' ... '{END}' block to fill")
    new = text[: i + len(BEGIN)] + "\n\n" + tables(res) + "\n" + text[j:]
    write_text_atomic(path, new)
