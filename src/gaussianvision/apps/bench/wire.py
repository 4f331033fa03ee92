"""Benchmark: the edge's bytes. At equal bytes per image, the RGB teacher on JPEG / WebP images
compressed to that size against the GS encoder on splats of that size, on the demo's world
(zero-shot accuracy and PSNR) and on the bundled photos (PSNR).

Budgets are the float16 file sizes of N Gaussians (32-byte header + 16 B each). Every codec is
given the whole file as its budget (headers included, as in `gsv bench codec`):

  JPEG / WebP       per image, the highest quality whose file fits (codec.at_budget); an image
                    no quality fits is sent as nothing (a mid-grey image, 0 bytes) and counted
  splats float16    N Gaussians fitted with the demo's own settings (what the encoder was trained on)
  splats fast       the same N with the library's `fast` preset
  splats quantized  layout 2, the largest N whose file fits the budget (the demo's settings)
  splats progressive  one progressive file per image: a nested fit (fit/progressive.py's prefix
                    losses over the demo's settings) at the largest budget's N, cut to each
                    budget (its first N Gaussians in the nested order: the float16 prefix is
                    exactly the budget)

The world is evaluated through the demo's own zero-shot path (demo.pipeline.step_eval): the
teacher reads copies of the task shards whose images went through the codec; the encoder reads
splats from the evaluation's splat cache (fitted there; the quantized files are that cache
transcoded, which the cache reads without fitting; the progressive prefixes are the nested
fit's cache cut the same way). Each column is a function `(ctx, budget) -> row` in COLUMNS.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gaussianvision.apps.bench.codec import _psnr, at_budget, compress, run_codec_bench

__all__ = ["DemoRun", "WireError", "load_demo", "budgets", "run_wire_bench", "markdown", "verdict", "plot",
           "COLUMNS", "progressive_column", "float16_bytes", "quantized_n"]

BUDGET_N = (19, 38, 57, 76)
PIXEL_CODECS = ("JPEG", "WEBP")


class WireError(ValueError):
    """Bad input to the wire benchmark (a missing demo, bad budgets): one line for the user."""


def float16_bytes(n: int) -> int:
    from gaussianvision.splats.format import HEADER_SIZE
    return HEADER_SIZE + 16 * n


def quantized_n(budget: int) -> int:
    """The largest N whose quantized (layout 2) file fits in `budget` bytes (0 if none)."""
    from gaussianvision.splats.format import quantized_size
    n = 0
    while quantized_size(n + 1) <= budget:
        n += 1
    return n


def budgets(n_list) -> list[dict]:
    return [{"n": n, "bytes": float16_bytes(n), "n_quantized": quantized_n(float16_bytes(n))} for n in n_list]


@dataclass
class DemoRun:
    """What the bench reads from a finished `gsv demo` folder."""
    dir: Path
    rgb_spec: str
    gs_spec: str
    world: dict          # {"tasks": {name: {"dataset", "root", "chance", ...}}, "param_hash"}
    fit: dict            # the demo's conversion fit: iters, init, fit_options
    batch: int
    size: int = 64
    work: Path | None = None
    top_n: int | None = None  # the largest budget's N (the progressive file's; set by run_wire_bench)

    @property
    def run_dir(self) -> Path:
        """This demo's own folder in `work`: its world and fit settings name it, so a --work folder
        reused for another demo never mixes their caches (regression: the splat counts took the other
        demo's cached files, 288/288 instead of 240/240, and a cached nested fit of the other world was cut)."""
        return Path(self.work) / f"demo-{demo_key(self)}"


def demo_key(ctx: DemoRun) -> str:
    """A short hash of what the cached files depend on: the world (its param_hash, else its shards'
    names and sizes), the image size and the demo's fit settings."""
    world = ctx.world.get("param_hash") or sorted(
        (str(f), f.stat().st_size) for v in ctx.world["tasks"].values() for f in Path(v["root"]).rglob("*.tar"))
    key = json.dumps({"world": world, "size": ctx.size, "fit": ctx.fit}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def load_demo(path) -> DemoRun:
    d = Path(path)
    try:
        return _load_demo(d)
    except (OSError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"{d}: not a finished demo ({type(e).__name__}: {e}); run gsv demo first") from None


def _load_demo(d: Path) -> DemoRun:
    res = d / "results.json"
    if not res.is_file():
        raise WireError(f"{d}: no finished demo there (no results.json); run gsv demo first")
    r = json.loads(res.read_text())
    s = r["settings"]
    stage2 = sorted(d.glob("stage2_n*/gsclip.safetensors"))
    teacher = d / "teacher" / "open_clip_model.safetensors"
    if not stage2 or not teacher.is_file():
        raise WireError(f"{d}: the demo's models are missing (teacher/, stage2_n*/); run gsv demo first")
    tasks = {}
    for t, info in r["world"]["tasks"].items():
        root = info["root"] if Path(info["root"]).is_dir() else str(d / "world" / "tasks" / t)
        tasks[t] = {**info, "root": root}
    conv = s["convert"]
    return DemoRun(d, f"rgb:{s['teacher']['base']}:{teacher}", f"gs:{stage2[-1]}",
                   {"tasks": tasks, "param_hash": r["world"].get("param_hash")},
                   {"iters": conv["iters"], "init": conv["init"], "fit_options": dict(conv.get("fit", {}))},
                   int(s["eval"]["batch"]))


# ---------------------------------------------------------------- the world through a pixel codec

def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _through_codec(arr: np.ndarray, fmt: str, budget: int) -> tuple[np.ndarray, int, bool]:
    """(decoded image, bytes, fits): the best file within the budget, or nothing (grey, 0 bytes)."""
    best = at_budget(arr, fmt, budget)
    if best is None:
        return np.full_like(arr, 128), 0, False
    n, dec = compress(arr, fmt, best[2])
    return dec, n, True


def _compress_task(src: Path, dest: Path, fmt: str, budget: int) -> dict:
    """A copy of one wds task folder whose images went through the codec; per-image stats."""
    from gaussianvision.data.shards import ShardWriter, read_samples
    for f in src.rglob("*"):
        if f.is_file() and f.suffix != ".tar":
            (dest / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest / f.relative_to(src))
    sizes, psnrs, fits = [], [], 0
    for tar in sorted(src.rglob("*.tar")):
        with ShardWriter(dest / tar.relative_to(src)) as w:
            for x in read_samples(tar):
                arr = np.asarray(Image.open(io.BytesIO(x["png"])).convert("RGB"))
                dec, n, ok = _through_codec(arr, fmt, budget)
                sizes.append(n)
                fits += ok
                psnrs.append(_psnr(dec / 255.0, arr / 255.0))
                fields = {k: v for k, v in x.items() if not k.startswith("__")}
                w.write(x["__key__"], {**fields, "png": _png(dec)})
    return {"bytes": sizes, "psnr": psnrs, "fits": fits}


def _world_copy(ctx: DemoRun, fmt: str, budget: int) -> tuple[dict, dict]:
    """(a world dict whose tasks point at codec copies, pooled stats); reused from ctx.work."""
    root = ctx.run_dir / f"{fmt.lower()}_{budget}"
    key = {"world": ctx.world.get("param_hash"), "fmt": fmt, "budget": budget}
    marker = root / "stats.json"
    tasks = {t: {**v, "root": str(root / t)} for t, v in ctx.world["tasks"].items()}
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return {"tasks": tasks}, json.loads(marker.read_text())["stats"]
    if root.exists():
        shutil.rmtree(root)
    pooled = {"bytes": [], "psnr": [], "fits": 0}
    for t, v in ctx.world["tasks"].items():
        st = _compress_task(Path(v["root"]), root / t, fmt, budget)
        pooled = {k: pooled[k] + st[k] for k in pooled}
    marker.write_text(json.dumps({"key": key, "stats": pooled}))
    return {"tasks": tasks}, pooled


def _eval(spec: str, world: dict, ctx: DemoRun, name: str, splats=None) -> dict:
    from gaussianvision.apps.demo.pipeline import step_eval
    return step_eval(spec, world, ctx.run_dir / name / "eval", ctx.batch, splats=splats)


def _world_row(ev: dict, sizes: list, psnr: float, fits: int | None = None) -> dict:
    return {"acc": ev["mean_acc1"], "tasks": {t: v["acc1"] for t, v in ev["tasks"].items()}, "psnr": psnr,
            "bytes_mean": float(np.mean(sizes)), "bytes_max": int(np.max(sizes)), "images": len(sizes),
            "fits": len(sizes) if fits is None else fits}


def pixel_column(fmt: str):
    def column(ctx: DemoRun, b: dict) -> dict:
        world, st = _world_copy(ctx, fmt, b["bytes"])
        ev = _eval(ctx.rgb_spec, world, ctx, f"{fmt.lower()}_{b['bytes']}")
        return {"codec": fmt, "n_gaussians": None,
                "world": _world_row(ev, st["bytes"], float(np.mean(st["psnr"])), st["fits"])}
    return column


# ---------------------------------------------------------------- the world as splats

def _settings(ctx: DemoRun, n: int, preset: str | None = None):
    from gaussianvision.eval import SplatSettings
    if preset:  # the preset's iterations (the demo's init); its other settings come with it
        from gaussianvision.fit.presets import PRESETS
        return SplatSettings(n_gaussians=n, iters=PRESETS[preset]["iters"], init=ctx.fit["init"], size=ctx.size,
                             fit_batch=64, fit_options={"preset": preset})
    return SplatSettings(n_gaussians=n, iters=ctx.fit["iters"], init=ctx.fit["init"], size=ctx.size, fit_batch=64,
                         fit_options=ctx.fit["fit_options"])


def _cache_sizes(ctx: DemoRun, name: str) -> list[int]:
    return [p.stat().st_size for p in sorted((ctx.run_dir / name / "eval" / "splat_cache").rglob("*.gsv"))]


def _transcode(ctx: DemoRun, src: str, dest: str, encode) -> None:
    """Copy the splat cache of run `src` into run `dest`, each file re-encoded by encode(Splats)."""
    from gaussianvision.splats.format import decode
    a, b = ctx.run_dir / src / "eval" / "splat_cache", ctx.run_dir / dest / "eval" / "splat_cache"
    if b.exists():
        shutil.rmtree(b)
    for p in sorted(a.rglob("*.gsv")):
        (b / p.relative_to(a)).parent.mkdir(parents=True, exist_ok=True)
        (b / p.relative_to(a)).write_bytes(encode(decode(p.read_bytes())))


def splat_column(preset: str | None = None, label: str = "splats float16"):
    def column(ctx: DemoRun, b: dict) -> dict:
        name = f"gs_{preset or 'demo'}_n{b['n']}"
        ev = _eval(ctx.gs_spec, ctx.world, ctx, name, _settings(ctx, b["n"], preset))
        return {"codec": label, "n_gaussians": b["n"], "world": _world_row(ev, _cache_sizes(ctx, name), ev["psnr"])}
    return column


def quantized_column(ctx: DemoRun, b: dict) -> dict:
    from gaussianvision.splats.format import encode_quantized
    n = b["n_quantized"]
    st = _settings(ctx, n)
    _eval(ctx.gs_spec, ctx.world, ctx, f"gs_demo_n{n}", st)  # fits float16 into that run's cache
    name = f"gs_quantized_n{n}"
    _transcode(ctx, f"gs_demo_n{n}", name, encode_quantized)
    ev = _eval(ctx.gs_spec, ctx.world, ctx, name, st)  # reads the transcoded files, fits nothing
    return {"codec": "splats quantized", "n_gaussians": n, "world": _world_row(ev, _cache_sizes(ctx, name), ev["psnr"])}


def progressive_column(ctx: DemoRun, b: dict) -> dict:
    """Prefixes of one nested fit at ctx.top_n per image, cut to the budget's N."""
    from gaussianvision.fit.progressive import PREFIX_FRACTIONS, prefix_splats, progressive
    from gaussianvision.splats.format import encode
    top = ctx.top_n or b["n"]
    st = _settings(ctx, top)
    st.fit_options = {**st.fit_options, "prefix_fractions": list(PREFIX_FRACTIONS)}
    full = f"gs_nested_n{top}"
    if not _cache_sizes(ctx, full):
        _eval(ctx.gs_spec, ctx.world, ctx, full, st)  # fits the nested float16 files into that run's cache
    name = f"gs_progressive_n{top}_k{b['n']}"
    _transcode(ctx, full, name, lambda s: encode(prefix_splats(progressive(s, method="nested"), b["n"]),
                                                              progressive=True))
    ev = _eval(ctx.gs_spec, ctx.world, ctx, name, st)  # reads the cut files, fits nothing
    return {"codec": "splats progressive", "n_gaussians": b["n"],
            "world": _world_row(ev, _cache_sizes(ctx, name), ev["psnr"])}


COLUMNS = {"JPEG": pixel_column("JPEG"), "WEBP": pixel_column("WEBP"), "splats float16": splat_column(),
           "splats fast": splat_column("fast", "splats fast"), "splats quantized": quantized_column,
           "splats progressive": progressive_column}


# ---------------------------------------------------------------- the bundled photos (PSNR only)

def _photo_cells(bs: list[dict], size: int, iters: int, names, log) -> dict:
    """{(codec, budget): {"bytes", "psnr", "images"}} from `gsv bench codec`'s run at these N."""
    ns = sorted({b["n"] for b in bs} | {b["n_quantized"] for b in bs})
    summ = {line["n_gaussians"]: line for line in run_codec_bench(size, ns, iters, names, log=log)["summary"]}
    cells = {}
    for b in bs:
        at, atq = summ[b["n"]], summ[b["n_quantized"]]
        cells.update({("JPEG", b["bytes"]): at["JPEG at float16 bytes"],
                      ("WEBP", b["bytes"]): at["WEBP at float16 bytes"],
                      ("splats float16", b["bytes"]): at["splats float16"],
                      ("splats quantized", b["bytes"]): atq["splats quantized"]})
    return cells


def _reference(ctx: DemoRun) -> dict:
    """The teacher on the world's own (lossless) PNGs, and their mean size."""
    from gaussianvision.data.shards import read_samples
    sizes = [len(x["png"]) for v in ctx.world["tasks"].values() for tar in sorted(Path(v["root"]).rglob("*.tar"))
             for x in read_samples(tar)]
    ev = _eval(ctx.rgb_spec, ctx.world, ctx, "rgb_png")
    chance = float(np.mean([v["chance"] for v in ctx.world["tasks"].values()]))
    return {"codec": "PNG (lossless)", "chance": chance, "world": _world_row(ev, sizes, None)}


def run_wire_bench(ctx: DemoRun, n_list=BUDGET_N, columns=None, photos: bool = True, photo_names=None,
                   log=print) -> dict:
    """Every column at every budget; the photos' PSNR beside them; the teacher on lossless PNGs."""
    columns = COLUMNS if columns is None else columns
    bs = budgets(n_list)
    ctx.top_n = max(b["n"] for b in bs)
    if min(b["n_quantized"] for b in bs) < 1:
        raise WireError(f"budget {min(b['bytes'] for b in bs)} B holds no quantized Gaussian; use a larger N")
    rows = []
    for b in bs:
        for label, col in columns.items():
            row = {"budget": b["bytes"], "n": b["n"], **col(ctx, b)}
            rows.append(row)
            w = row["world"]
            log(f"wire: {b['bytes']} B, {label}: acc {w['acc']:.3f}, PSNR {w['psnr']:.2f} dB, "
                f"{w['bytes_mean']:.0f} B mean, fits {w['fits']}/{w['images']}")
    cells = _photo_cells(bs, ctx.size, ctx.fit["iters"], photo_names, log) if photos else {}
    for row in rows:
        row["photos"] = row.get("photos") or cells.get((row["codec"], row["budget"]))
    return {"demo": str(ctx.dir), "size": ctx.size, "fit": ctx.fit, "budgets": bs, "rows": rows,
            "reference": _reference(ctx), "columns": list(columns)}


# ---------------------------------------------------------------- the table, the reading, the plot

def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(res: dict) -> str:
    ref = res["reference"]
    photos = any(r.get("photos") for r in res["rows"])  # regression (trial): --no-photos' heading named them
    lines = [f"The demo's world ({ref['world']['images']} task images at {res['size']} px, 4 zero-shot tasks)"
             + (f" and the bundled photos at {res['size']} px" if photos else "")
             + ". Budget = the float16 file of N Gaussians; every codec's "
             "bytes are whole files. World acc = mean top-1 over the tasks (teacher on pixels, GS encoder on "
             "splats); fits = images some quality fits in the budget (the others are sent as nothing: grey).", "",
             f"Reference: the teacher on the world's lossless PNGs ({ref['world']['bytes_mean']:,.0f} B mean): "
             f"{ref['world']['acc']:.1%}; chance {ref['chance']:.1%}.", "",
             "| budget B (N) | codec | N | world acc | world PSNR dB | world bytes mean / max | fits |"
             + (" photos PSNR dB | photos bytes |" if photos else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if photos else "")]
    for r in res["rows"]:
        w, p = r["world"], r.get("photos") or {}
        lines.append(f"| {r['budget']:,} ({r['n']}) | {r['codec']} | {_f(r['n_gaussians'], 'd')} | {w['acc']:.1%} | "
                     f"{w['psnr']:.2f} | {w['bytes_mean']:,.0f} / {w['bytes_max']:,} | {w['fits']}/{w['images']} |"
                     + (f" {_f(p.get('psnr'), '.2f')} | {_f(p.get('bytes'), ',.0f')} |" if photos else ""))
    return "\n".join(lines) + "\n"


def _best(rows: list[dict], key) -> dict | None:
    ok = [r for r in rows if key(r) is not None]
    return max(ok, key=key) if ok else None


def _missing_side(rows: list[dict]) -> str | None:
    """What the rows of one budget lack for a comparison (no pixel-codec or no splats column), else None."""
    if not any(r["codec"] in PIXEL_CODECS for r in rows):
        return "no JPEG or WebP column was run"
    if not any(r["codec"].startswith("splats") for r in rows):
        return "no splats column was run"
    return None


def _figures(s: dict, p: dict) -> str:
    """The PSNRs of the two compared rows (each figure that row's own); the photos' when both have them."""
    text = f"; world PSNR {s['world']['psnr']:.1f} vs {p['world']['psnr']:.1f} dB"
    fs, fp = (s.get("photos") or {}).get("psnr"), (p.get("photos") or {}).get("psnr")
    return text + (f", photos {fs:.1f} vs {fp:.1f} dB" if fs is not None and fp is not None else "")


def _budget_line(b: int, rows: list[dict]) -> tuple[str, str | None]:
    """One sentence on budget b, and 'win' / 'lose' / 'tie' for accuracy (None: no comparison made)."""
    missing = _missing_side(rows)
    if missing:  # regression: a run without one side crashed here, or said splats win against nothing
        return f"{b:,} B: {missing}, so the comparison is not made.", None
    pix = [r for r in rows if r["codec"] in PIXEL_CODECS and r["world"]["fits"] > 0]
    s = _best([r for r in rows if r["codec"].startswith("splats")], lambda r: r["world"]["acc"])
    p = _best(pix, lambda r: r["world"]["acc"])
    if p is None:
        return f"{b:,} B: no JPEG or WebP file fits; splats ({s['codec']}) {s['world']['acc']:.1%}.", "win"
    n = s["world"]["images"]
    se = np.sqrt(2 * max(s["world"]["acc"] * (1 - s["world"]["acc"]), 1e-3) / n)
    diff = s["world"]["acc"] - p["world"]["acc"]
    call = "tie" if abs(diff) < 2 * se else ("win" if diff > 0 else "lose")
    text = (f"{b:,} B: splats {call} on accuracy, {s['codec']} {s['world']['acc']:.1%} vs {p['codec']} "
            f"{p['world']['acc']:.1%} ({100 * diff:+.1f} points, noise +/-{200 * se:.1f})") + _figures(s, p)
    short = [f"{r['codec']} fits {r['world']['fits']}/{r['world']['images']}" for r in rows
             if r["codec"] in PIXEL_CODECS and r["world"]["fits"] < r["world"]["images"]]
    return text + (f" ({', '.join(short)})" if short else "") + ".", call


_CALLS = (("win", "win"), ("lose", "lose"), ("tie", "tie (within two standard errors)"))


def _head(calls: dict) -> str:
    """'Splats win on accuracy at X, lose at Y, tie ... at Z.' with only the calls that were made."""
    parts = [f"{words} at {', '.join(calls[c])}" for c, words in _CALLS if calls.get(c)]
    if not parts:
        return "No accuracy comparison is made: it needs a JPEG or WebP column and a splats column."
    verb, _, rest = parts[0].partition(" ")
    return f"Splats {verb} on accuracy {rest}" + "".join(f", {x}" for x in parts[1:]) + "."


def verdict(res: dict) -> str:
    """Where splats win and where they lose, from the numbers."""
    calls, lines = {}, []
    for b in res["budgets"]:
        text, call = _budget_line(b["bytes"], [r for r in res["rows"] if r["budget"] == b["bytes"]])
        if call:
            calls.setdefault(call, []).append(f"{b['bytes']:,} B")
        lines.append(f"- {text}")
    ref = res["reference"]["world"]
    head = (f"{_head(calls)} The world's own lossless PNGs take {ref['bytes_mean']:,.0f} B on average, where the "
            f"teacher scores {ref['acc']:.1%}.")
    return head + "\n\n" + "\n".join(lines) + "\n"


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=80)
    panels = (("world acc (mean top-1)", lambda r: r["world"]["acc"], lambda r: r["budget"]),
              ("world PSNR (dB)", lambda r: r["world"]["psnr"], lambda r: r["budget"]),
              ("photos PSNR (dB)", lambda r: (r.get("photos") or {}).get("psnr"), lambda r: r["budget"]))
    for ax, (title, y, x) in zip(axes, panels):
        for codec in res["columns"]:
            pts = [(x(r), y(r)) for r in res["rows"] if r["codec"] == codec and y(r) is not None
                   and (r["world"]["fits"] > 0 or "photos" in title)]
            if pts:
                ax.plot(*zip(*pts), "o-" if codec in PIXEL_CODECS else "s--", ms=4, label=codec)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image (budget)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    ref = res["reference"]
    axes[0].axhline(ref["world"]["acc"], color="grey", lw=0.8, ls=":", label="teacher on PNG")
    axes[0].axhline(ref["chance"], color="k", lw=0.6, ls="-.", label="chance")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
