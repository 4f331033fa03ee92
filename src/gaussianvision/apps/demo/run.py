"""gsv demo: the whole pipeline on one CPU, with a report.

Generates the offline world, fits the bundled photos at several N, converts the world's train
shards to splats at the trained budget(s), trains the RGB teacher from scratch, runs stage 1 and
stage 2 per trained budget, evaluates zero-shot RGB vs GS on the four tasks at every evaluated
budget (an untrained one is read by the nearest trained encoder), and writes DIR/report/index.html and
DIR/results.json. Each step is cached in DIR and reused when its settings and inputs are unchanged
(--force redoes everything). See docs/demo.md.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from gaussianvision.apps.cli.command import check_out_folder, emit, parser, path_arg, run, whole, write_json

__all__ = ["main", "run_demo"]


def _cores() -> int:
    """The CPU cores this process may run on (its affinity where the system says it, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def _threads(n: int) -> int:
    """0 = auto: all cores, but one thread when the machine is already busy (torch's thread pool
    spins and thrashes against other jobs: 4x slower training measured at load 8 on 2 cores);
    1 to the cores: that many; else ValueError (regression: -1 meant auto and 1000 was taken)."""
    cores = _cores()
    if not 0 <= n <= cores:
        raise ValueError(f"threads must be from 0 (auto) to the {cores} CPU cores here, got {n}")
    if n > 0:
        return n
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return 1 if load > cores - 0.5 else cores


def _ok(*paths) -> bool:
    return all(Path(p).exists() for p in paths)


def _result_settings(step_settings: dict) -> dict:
    """A step's settings as its cache key: without `workers`, which changes the speed, not the bytes."""
    return {k: v for k, v in step_settings.items() if k != "workers"}


class _Demo:
    """One run of the demo: its settings, step cache and the results of each step so far."""

    def __init__(self, out: Path, mode: str, force: bool, threads: int, overrides: dict | None):
        import torch
        from gaussianvision.apps.demo import pipeline as S
        self.S, self.mode, self.out = S, mode, Path(out)
        self.s = s = S.settings_for(mode)
        for k, v in (overrides or {}).items():
            s[k].update(v)
        self.n_threads = _threads(threads)
        torch.set_num_threads(self.n_threads)
        S.register_bases()
        self.out.mkdir(parents=True, exist_ok=True)
        self.budgets = list(s["convert"]["budgets"])  # converted and trained
        self.eval_budgets = list(s["eval"].get("budgets") or self.budgets)  # evaluated (the encoder reads any N)
        self.steps = S.StepCache(self.out, force=force, total=4 + 3 * len(self.budgets) + len(self.eval_budgets))
        self.t_start, self.c_start = time.perf_counter(), S.cpu_time()
        self.seed = s["seed"]
        self.conv_s = {k: v for k, v in s["convert"].items() if k != "budgets"}
        self.training: dict = {}

    def data(self, force: bool, progress: bool) -> None:
        """The world, the bundled photos, the world converted at each budget."""
        S, s, out, steps = self.S, self.s, self.out, self.steps
        self.world, self.h_world = steps.run(
            "world", {"world": _result_settings(s["world"])}, lambda: S.step_world(out, s["world"], force),
            label="world (make_world)", check=lambda r: _ok(Path(r["out_dir"]) / "manifest.json"))
        self.photos, _ = steps.run(
            "photos", {"photos": s["photos"]}, lambda: S.step_photos(out, s["photos"], progress),
            label="fit the bundled photos",
            check=lambda r: all(_ok(Path(r["dir"]) / f"photos_n{x['n_gaussians']}.gsv") for x in r["rows"]))
        self.convert, self.h_convert = {}, {}
        for n in self.budgets:
            self.convert[n], self.h_convert[n] = steps.run(
                f"convert_n{n}", {"world": self.h_world, "n": n, "convert": _result_settings(self.conv_s)},
                lambda n=n: S.step_convert(out, self.world, n, self.conv_s, progress),
                label=f"convert the world to splats, N={n}", check=lambda r: _ok(Path(r["dir"]) / "summary.json"))

    def teacher(self, progress: bool) -> None:
        S, ts, seed = self.S, self.s["teacher"], self.seed
        teacher_dir = self.out / "teacher"
        need = ("image", "text", "negative") if ts.get("hard_negatives") else ("image", "text")
        self.training["teacher"], self.h_teacher = self.steps.run(
            "teacher", {"world": self.h_world, "teacher": ts, "seed": seed},
            lambda: S.step_train(teacher_dir, "rgb", S.load_samples(self.world["splits"]["train"]["dir"], need, 64),
                                 ts, base=ts["base"], seed=seed, progress=progress),
            label=f"train the RGB teacher ({ts['base']}, from scratch)",
            check=lambda r: _ok(teacher_dir / "open_clip_model.safetensors"))
        self.teacher_ckpt = str(teacher_dir / "open_clip_model.safetensors")

    def stages(self, progress: bool) -> None:
        """Stage 1 and stage 2 at each trained budget."""
        S, s, seed = self.S, self.s, self.seed
        self.h_s2 = {}
        for n in self.budgets:
            cache: dict = {}

            def samples(n=n, cache=cache):
                if "x" not in cache:
                    cache["x"] = S.load_samples(self.convert[n]["dir"], ("splats", "image", "text"))
                return cache["x"]
            d1, d2 = self.out / f"stage1_n{n}", self.out / f"stage2_n{n}"
            self.training[f"stage1_n{n}"], h1 = self.steps.run(
                f"stage1_n{n}", {"convert": self.h_convert[n], "teacher": self.h_teacher, "stage1": s["stage1"],
                                 "seed": seed},
                lambda d1=d1, samples=samples: S.step_train(d1, "1", samples(), s["stage1"], base=s["teacher"]["base"],
                                                            pretrained=self.teacher_ckpt,
                                                            model_config=s["stage1"]["config"], seed=seed,
                                                            progress=progress),
                label=f"stage 1 (align to the teacher), N={n}", check=lambda r, d1=d1: _ok(d1 / "gsclip.safetensors"))
            self.training[f"stage2_n{n}"], self.h_s2[n] = self.steps.run(
                f"stage2_n{n}", {"stage1": h1, "stage2": s["stage2"], "seed": seed},
                lambda d1=d1, d2=d2, samples=samples: S.step_train(d2, "2", samples(), s["stage2"], init_from=d1,
                                                                   seed=seed, progress=progress),
                label=f"stage 2 (CLIP loss on captions), N={n}", check=lambda r, d2=d2: _ok(d2 / "gsclip.safetensors"))

    def evaluate(self, progress: bool) -> None:
        """Zero-shot: the teacher, then GS at each evaluated budget (an untrained budget is read by the
        encoder of the nearest trained one)."""
        from gaussianvision.eval import SplatSettings
        S, ev, out, conv_s = self.S, self.s["eval"], self.out, self.conv_s
        ev_key = {"batch": ev["batch"]}  # which budgets are evaluated does not change any one evaluation
        self.rgb_eval, _ = self.steps.run(
            "eval_rgb", {"teacher": self.h_teacher, "world": self.h_world, "eval": ev_key},
            lambda: S.step_eval(f"rgb:{self.s['teacher']['base']}:{self.teacher_ckpt}", self.world, out / "eval" / "rgb",
                                ev["batch"], progress=progress),
            label="zero-shot eval, RGB teacher")
        self.gs_eval, self.reader = {}, {}
        for n in self.eval_budgets:
            self.reader[n] = r = min(self.budgets, key=lambda b: (abs(b - n), b))
            st = SplatSettings(n_gaussians=n, iters=conv_s["iters"], init=conv_s["init"], size=64, fit_batch=64,
                               fit_options=conv_s.get("fit", {}))
            self.gs_eval[n], _ = self.steps.run(
                f"eval_gs_n{n}", {"stage2": self.h_s2[r], "world": self.h_world, "eval": ev_key, "splats": st.key()},
                lambda n=n, st=st, r=r: S.step_eval(f"gs:{out / f'stage2_n{r}'}", self.world, out / "eval" / f"gs_n{n}",
                                                    ev["batch"], splats=st, progress=progress),
                label=f"zero-shot eval, GS N={n} (task images fitted on the fly, cached)")

    def _per_budget(self, tasks: dict) -> dict:
        rgb_mean, out = self.rgb_eval["mean_acc1"], {}
        for n in self.eval_budgets:
            payload, pixel = self.S.budget_bytes(n)
            g = self.gs_eval[n]
            out[str(n)] = {"n_gaussians": n, "payload_bytes": payload, "pixel_bytes": pixel,
                           "compression": pixel / payload, "trained_at": self.reader[n],
                           "psnr": self.convert[n]["psnr"] if n in self.convert else None,
                           "task_psnr": g.get("psnr"), "fit_iters": self.conv_s["iters"],
                           "fit_init": self.conv_s["init"], "gs_mean_top1": g["mean_acc1"],
                           "ratio": g["mean_acc1"] / rgb_mean if rgb_mean else None,
                           "per_task": {t: g["tasks"][t]["acc1"] for t in tasks}}
        return out

    def zeroshot(self) -> dict:
        """The zero-shot table: per task and budget, and the headline budget."""
        rgb, gs, tasks = self.rgb_eval, self.gs_eval, {}
        for t, info in self.world["tasks"].items():
            tasks[t] = {"rgb": rgb["tasks"][t]["acc1"], "gs": {str(n): gs[n]["tasks"][t]["acc1"] for n in self.eval_budgets},
                        "chance": info["chance"], "n_classes": info["n_classes"], "n_images": info["n"],
                        "rgb_balanced": rgb["tasks"][t]["mean_per_class_recall"],
                        "gs_balanced": {str(n): gs[n]["tasks"][t]["mean_per_class_recall"] for n in self.eval_budgets}}
        per_budget = self._per_budget(tasks)
        big = [b for b in per_budget if per_budget[b]["compression"] >= 10] or list(per_budget)
        main_b = max(big, key=lambda b: (per_budget[b]["gs_mean_top1"], per_budget[b]["compression"]))
        m = per_budget[main_b]
        return {"rgb_mean_top1": rgb["mean_acc1"], "gs_mean_top1": m["gs_mean_top1"], "ratio": m["ratio"],
                "compression": m["compression"], "main_budget": int(main_b),
                "main_budget_rule": "the budget with >= 10x compression (if any) whose GS mean top-1 is highest",
                "chance_mean": sum(v["chance"] for v in tasks.values()) / len(tasks),
                "target_met": bool(m["ratio"] is not None and m["ratio"] >= 0.9 and m["compression"] >= 10),
                "teacher_above_chance": {t: v["rgb"] - v["chance"] for t, v in tasks.items()},
                "tasks": tasks, "budgets": per_budget}

    def results(self) -> dict:
        w = self.world
        return {"mode": self.mode, "out": str(self.out), "threads": self.n_threads, "settings": self.s,
                "world": {k: w[k] for k in ("param_hash", "n_images", "splits", "tasks")},
                "photos": {"rows": self.photos["rows"], "names": self.photos["names"]},
                "convert": {str(n): self.convert[n] for n in self.budgets}, "training": self.training,
                "zeroshot": self.zeroshot()}

    def report(self, results: dict) -> None:
        """Figures, the HTML report and results.json (the report's own time included)."""
        from gaussianvision.apps.demo import report as R
        S, out, tr = self.S, self.out, self.training
        t0, c0 = time.perf_counter(), S.cpu_time()
        fig_dir = out / "report" / "figures"
        curves = [("teacher", tr["teacher"]["log"])] + [(f"stage 1 N={n}", tr[f"stage1_n{n}"]["log"]) for n in self.budgets]
        curves += [(f"stage 2 N={n}", tr[f"stage2_n{n}"]["log"]) for n in self.budgets]
        figs = {"photos_grid": R.photo_grid(self.photos, fig_dir), "ellipses": R.ellipse_figures(self.photos, fig_dir),
                "curves": R.curves_figure(curves, fig_dir), "zeroshot": R.zeroshot_figure(results["zeroshot"], fig_dir)}
        self.steps.timings["report"] = {"seconds": 0.0, "cpu_seconds": 0.0, "cached": False}
        results["timings"] = self.steps.timings
        results["total_seconds"] = time.perf_counter() - self.t_start
        results["total_cpu_seconds"] = S.cpu_time() - self.c_start
        page = R.write_report(out, results, figs)
        self.steps.timings["report"] = {"seconds": round(time.perf_counter() - t0, 2),
                                        "cpu_seconds": round(S.cpu_time() - c0, 2), "cached": False}
        results["total_seconds"] = round(time.perf_counter() - self.t_start, 2)
        results["total_cpu_seconds"] = round(S.cpu_time() - self.c_start, 2)
        results["report"] = str(page)
        results["figures"] = [str(p) for p in [figs["photos_grid"], *figs["ellipses"], figs["curves"], figs["zeroshot"]]]
        write_json(out / "results.json", results)


def run_demo(out: Path, mode: str = "full", force: bool = False, progress: bool = False, threads: int = 0,
             overrides: dict | None = None) -> dict:
    """The whole demo (docs/demo.md): data, teacher, stages 1 and 2, zero-shot, report; each step cached."""
    demo = _Demo(out, mode, force, threads, overrides)
    demo.data(force, progress)
    demo.teacher(progress)
    demo.stages(progress)
    demo.evaluate(progress)
    results = demo.results()
    demo.report(results)
    return results


def _human(r: dict) -> str:
    zs = r["zeroshot"]
    budgets = list(zs["budgets"])
    lines = ["task      chance  RGB    " + "  ".join(f"GS N={b:<4}" for b in budgets)]
    for t, v in zs["tasks"].items():
        lines.append(f"{t:<9} {v['chance']:.3f}   {v['rgb']:.3f}  " + "  ".join(f"{v['gs'][b]:.3f}    " for b in budgets))
    lines.append(f"{'mean':<9} {zs['chance_mean']:.3f}   {zs['rgb_mean_top1']:.3f}  "
                 + "  ".join(f"{zs['budgets'][b]['gs_mean_top1']:.3f}    " for b in budgets))
    lines.append(f"GS (N={zs['main_budget']}, {zs['compression']:.1f}x compression) / RGB = {zs['ratio']:.3f}"
                 f" ({'target met' if zs['target_met'] else 'below the 90% target'})")
    lines.append(f"report: {r['report']}\nresults: {Path(r['out']) / 'results.json'}\n"
                 f"total {r['total_seconds']:.1f} s wall, {r['total_cpu_seconds']:.1f} s CPU")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser("demo", "The whole pipeline on one CPU (world, photos, conversion, teacher, stages 1 and 2, "
                       "zero-shot RGB vs GS) with an HTML report.")
    p.add_argument("--out", type=path_arg, default=Path("out/demo"), help="folder for every step, the report and "
                   "results.json (made when missing)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smaller world and shorter training (<= 2 minutes)")
    size.add_argument("--tiny", action="store_true", help="the tests' size: tens of images and a few steps, seconds; "
                      "checks that the pipeline runs, its accuracies mean nothing")
    p.add_argument("--force", action="store_true", help="redo every step (ignore the cache in --out)")
    cores = _cores()
    p.add_argument("--threads", type=whole(0, cores), default=0,
                   help=f"torch threads, 0 to the CPU cores here ({cores}); 0 (default): all cores, or 1 when the "
                        "machine is already busy. The results are reproducible for one machine and thread count")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (each step's line is still printed)")
    args = p.parse_args(argv)

    def go(a):
        check_out_folder(a.out)  # a file of that name, or a folder that takes no files: one line, before any step
        mode = "tiny" if a.tiny else ("quick" if a.quick else "full")
        r = run_demo(a.out, mode=mode, force=a.force, progress=not a.no_progress and not a.json, threads=a.threads)
        emit(r, a.json, _human(r))
    return run("demo", go, args)
