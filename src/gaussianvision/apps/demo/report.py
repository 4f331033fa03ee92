"""Figures and the HTML report of `gsv demo` (matplotlib PNGs + report.Report)."""
from __future__ import annotations

import json
from pathlib import Path

from gaussianvision.atomic import write_atomic

__all__ = ["photo_grid", "ellipse_figures", "curves_figure", "zeroshot_figure", "write_report"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def photo_grid(photos: dict, fig_dir: Path) -> Path:
    """Rows: photos; columns: the original, then the render at each N (PSNR in the title)."""
    from PIL import Image
    import numpy as np
    plt = _plt()
    d = Path(photos["dir"])
    names, rows = photos["names"], photos["rows"]
    ncol = 1 + len(rows)
    fig, axes = plt.subplots(len(names), ncol, figsize=(1.55 * ncol, 1.55 * len(names) + 0.3), dpi=110,
                             squeeze=False)
    for i, name in enumerate(names):
        cells = [("original", d / f"{name}_original.png")]
        cells += [(f"N={r['n_gaussians']}: {r['psnr_per_photo'][name]:.1f} dB", d / f"{name}_n{r['n_gaussians']}.png")
                  for r in rows]
        for j, (title, p) in enumerate(cells):
            ax = axes[i][j]
            ax.imshow(np.asarray(Image.open(p).convert("RGB")))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=6.5)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout(pad=0.3)
    return _save(fig, fig_dir / "photos_grid.png")


def ellipse_figures(photos: dict, fig_dir: Path) -> list[Path]:
    """The first photo's Gaussians as ellipses beside its render (gsv show's figure), one per N."""
    from gaussianvision.data.images import load_image
    from gaussianvision.splats import load
    from gaussianvision.apps.cli.show import draw
    d = Path(photos["dir"])
    name = photos["names"][0]
    original = load_image(d / f"{name}_original.png", size=None)
    out = []
    for r in photos["rows"]:
        n = r["n_gaussians"]
        s = load(d / f"photos_n{n}.gsv")[0]
        p = fig_dir / f"ellipses_{name}_n{n}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        draw(s, original, p, title=f"{name}: {n} Gaussians, {r['size']}x{r['size']}, PSNR {r['psnr_per_photo'][name]:.1f} dB")
        out.append(p)
    return out


def _read_log(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def curves_figure(runs: list[tuple[str, str]], fig_dir: Path) -> Path:
    """runs: [(label, log.jsonl path)]: loss per step (and stage 1's cosine to the teacher)."""
    plt = _plt()
    groups = [("RGB teacher (CLIP loss)", [r for r in runs if r[0].startswith("teacher")]),
              ("stage 1 (1 - cos to the teacher)", [r for r in runs if r[0].startswith("stage 1")]),
              ("stage 2 (CLIP loss)", [r for r in runs if r[0].startswith("stage 2")])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0), dpi=100)
    for ax, (title, rs) in zip(axes, groups):
        for label, path in rs:
            log = _read_log(path)
            if log:
                ax.plot([r["step"] for r in log], [r["loss"] for r in log], label=label, lw=1.3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if rs:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir / "training_curves.png")


def zeroshot_figure(zs: dict, fig_dir: Path) -> Path:
    """Grouped bars per task: chance, RGB teacher, GS at each budget."""
    import numpy as np
    plt = _plt()
    tasks = list(zs["tasks"])
    budgets = [str(b) for b in zs["budgets"]]
    series = [("chance", [zs["tasks"][t]["chance"] for t in tasks], "#bbbbbb"),
              ("RGB teacher", [zs["tasks"][t]["rgb"] for t in tasks], "#333333")]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for i, b in enumerate(budgets):
        c = zs["budgets"][b]["compression"]
        series.append((f"GS N={b} ({c:.1f}x)", [zs["tasks"][t]["gs"][b] for t in tasks], palette[i % len(palette)]))
    x = np.arange(len(tasks) + 1)
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for i, (label, vals, color) in enumerate(series):
        vals = list(vals) + [sum(vals) / len(vals)]
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=label, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels(tasks + ["mean"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot top-1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
    fig.tight_layout()
    return _save(fig, fig_dir / "zeroshot.png")


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _intro(rep, results: dict) -> None:
    """What ran, the headline ratio, caveats."""
    zs = results["zeroshot"]
    main = str(zs["main_budget"])
    rep.text(f"Mode: {results['mode']}. World: {results['world']['splits']['train']['n']} captioned 64x64 training "
             f"scenes, {results['world']['splits']['test']['n']} test scenes, four zero-shot tasks of "
             f"{next(iter(results['world']['tasks'].values()))['n']} images each. Everything below was produced by "
             f"`gsv demo` on this machine's CPU; total {results['total_seconds']:.0f} s wall, "
             f"{results['total_cpu_seconds']:.0f} s CPU.")
    rep.text(f"Headline: the GS encoder at N={main} Gaussians ({zs['compression']:.1f}x fewer bytes than the pixels) "
             f"reaches {_pct(zs['gs_mean_top1'])} mean zero-shot top-1 vs {_pct(zs['rgb_mean_top1'])} for the RGB "
             f"teacher: {100 * zs['ratio']:.1f}% of the teacher (target: >= 90% at >= 10x; chance "
             f"{_pct(zs['chance_mean'])}).")

    weak = [t for t, v in zs["tasks"].items() if v["rgb"] < v["chance"] + 0.1]
    if weak:
        rep.text(f"Caveat: the RGB teacher is not well above chance on {', '.join(weak)} (within 10 points of "
                 "chance), so the GS/RGB ratio there measures agreement with a weak teacher; the tasks where the "
                 "teacher is strong are the meaningful comparison.", note=False)
    first = [v.get("first_cpu_seconds") if v["cached"] else v["cpu_seconds"] for v in results["timings"].values()]
    rep.text(f"Wall / CPU totals above are this run's (cached steps cost nothing); the steps' first runs took "
             f"{sum(x or 0 for x in first):.0f} s of CPU in all.", note=True)


def _zeroshot(rep, results: dict, figs: dict) -> None:
    """RGB teacher vs GS encoders per task and budget."""
    zs = results["zeroshot"]
    rep.heading("Zero-shot: RGB teacher vs GS encoders, per task and budget")
    budgets = list(zs["budgets"])
    rows = []
    for t, v in zs["tasks"].items():
        row = {"task": t, "classes": v["n_classes"], "chance": _pct(v["chance"]), "RGB teacher": _pct(v["rgb"])}
        for b in budgets:
            row[f"GS N={b}"] = _pct(v["gs"][b])
        for b in budgets:
            row[f"GS/RGB N={b}"] = "-" if not v["rgb"] else f"{v['gs'][b] / v['rgb']:.2f}"
        rows.append(row)
    mean = {"task": "mean", "classes": "", "chance": _pct(zs["chance_mean"]), "RGB teacher": _pct(zs["rgb_mean_top1"])}
    for b in budgets:
        mean[f"GS N={b}"] = _pct(zs["budgets"][b]["gs_mean_top1"])
    for b in budgets:
        mean[f"GS/RGB N={b}"] = f"{zs['budgets'][b]['ratio']:.2f}"
    rows.append(mean)
    rep.table(rows)
    rep.table([{"budget": f"N={b}", "payload bytes": v["payload_bytes"], "pixel bytes": v["pixel_bytes"],
                "compression": f"{v['compression']:.1f}x",
                "conversion PSNR (dB)": f"{v['psnr']:.2f}" if v.get("psnr") else "-",
                "task images PSNR (dB)": f"{v['task_psnr']:.2f}" if v.get("task_psnr") else "-",
                "encoder trained at": f"N={v['trained_at']}" if v.get("trained_at") else "-",
                "GS mean top-1": _pct(v["gs_mean_top1"]), "GS / RGB": f"{v['ratio']:.3f}"}
               for b, v in zs["budgets"].items()])
    rep.figure(figs["zeroshot"], "Zero-shot top-1 per task: chance, RGB teacher, GS encoder at each budget", width=760)
    rep.text("Chance levels: shape 5 classes, color 6, count 4, relation 4. Captions state a relation from "
             "the group first in palette order (red before blue), so the relation prompts' words alone decide "
             "the class (docs/world.md).", note=True)



def _photos(rep, results: dict, figs: dict) -> None:
    """The bundled photos fitted at several N."""
    rep.heading("Bundled photos fitted at several N")
    rep.table([{"N": r["n_gaussians"], "size": f"{r['size']}x{r['size']}", "iterations": r["iters"],
                "PSNR (dB)": f"{r['psnr']:.2f}", "SSIM": f"{r['ssim']:.3f}", "pixel bytes": r["pixel_bytes"],
                "splat payload bytes": r["payload_bytes"], "file bytes": r["file_bytes"],
                "compression": f"{r['compression']:.1f}x", "fit s/image": f"{r['seconds_per_image']:.2f}"}
               for r in results["photos"]["rows"]])
    rep.figure(figs["photos_grid"], "Originals (left) and renders at each N, PSNR per photo", width=760)
    for p in figs["ellipses"]:
        rep.figure(p, f"{Path(p).stem}: original, render, and every Gaussian as its 1-sigma ellipse", width=520)



def _pipeline(rep, results: dict, figs: dict) -> None:
    """Conversion, training, timings and settings."""
    rep.heading("The world converted to splats")
    rep.table([{"N": v["n_gaussians"], "images": v["converted"], "failed": v["failed"], "iterations": v["iters"],
                "init": v["init"], "PSNR (dB)": f"{v['psnr']:.2f}" if v.get("psnr") else "-",
                "pixel bytes": v["pixel_bytes"], "payload bytes": v["payload_bytes"],
                "compression": f"{v['compression']:.1f}x"} for v in results["convert"].values()])

    rep.heading("Training")
    rep.table([{"run": k, "steps": v["steps"], "samples": v["samples"], "first loss": v["first_loss"],
                "final loss": v["final_loss"], "trainable params": v["trainable_parameters"],
                "params": v["parameters"]} for k, v in results["training"].items()])
    rep.figure(figs["curves"], "Training curves (from each run's log.jsonl)", width=1000)

    rep.heading("Timings per step")
    rep.table([{"step": k, "wall s": v["seconds"], "CPU s": v["cpu_seconds"], "cached": "yes" if v["cached"] else "no",
                "first run wall s": v.get("first_seconds", v["seconds"]),
                "first run CPU s": v.get("first_cpu_seconds", v["cpu_seconds"])}
               for k, v in results["timings"].items()])
    rep.text("CPU seconds count every thread of the process; on a busy machine the wall time is inflated, the "
             "CPU time much less so.", note=True)
    rep.heading("Settings")
    rep.parts.append("<pre style='font-size:0.8em'>" + json.dumps(results["settings"], indent=1)
                     .replace("&", "&amp;").replace("<", "&lt;") + "</pre>")


def write_report(out: Path, results: dict, figs: dict) -> Path:
    from gaussianvision.apps.report import Report
    rep = Report(out / "report", "GaussianVision demo: the whole pipeline on one CPU")
    _intro(rep, results)
    _zeroshot(rep, results, figs)
    _photos(rep, results, figs)
    _pipeline(rep, results, figs)
    return rep.write()
