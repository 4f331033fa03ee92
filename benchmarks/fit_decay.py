"""Per-image step decay on a stall (FitConfig.decay_patience), in the same iterations: each preset
with and without it, on the bundled photos, the Kodak photos (when ../shared/data/kodak exists),
the made-up kinds of fit_kinds.py and 17 scikit-image photos no setting was chosen on. PSNR only
(iteration-matched: the decay costs no measurable time), so the machine's load does not matter.
Writes benchmarks/results/fit_decay.{json,md}; rows already in the JSON are kept (a rerun adds).

    PYTHONPATH=src python benchmarks/fit_decay.py [--ns 400 3136] [--presets fast balanced] [--patience 10]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gaussianvision.apps.bench.fit import KODAK_DIR, loadavg, machine_info
from gaussianvision.data.images import load_image
from gaussianvision.data.photos import PHOTO_NAMES, bundled_photos
from gaussianvision.fit import FitConfig, fit_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_kinds import images as made_up_kinds  # noqa: E402

FRESH = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "brick", "grass", "gravel", "moon",
         "camera", "coins", "page", "horse", "text", "clock", "logo", "shepp_logan_phantom", "cell")


def _skimage(name: str, side: int = 224) -> torch.Tensor:
    import skimage.data
    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = (255 * (a - a.min()) / max(1e-9, np.ptp(a))).astype(np.uint8)
    im = Image.fromarray(a).convert("RGB")
    w, h = im.size
    c = min(w, h)
    im = im.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c)).resize((side, side), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255


def image_sets() -> dict[str, torch.Tensor]:
    sets = {"bundled": torch.stack([t for _, t in bundled_photos(224, names=PHOTO_NAMES)])}
    kodak = sorted(Path(KODAK_DIR).glob("*.png"))
    if kodak:
        sets["kodak"] = torch.stack([load_image(f, size=224) for f in kodak])
    sets["kinds"] = made_up_kinds()
    sets["skimage (fresh)"] = torch.stack([_skimage(n) for n in FRESH])
    return sets


def markdown(res: dict) -> str:
    lines = ["# Step decay on a stall (`decay_patience`): the presets with and without it, same iterations", "",
             "Mean PSNR (dB) of each preset as it was and with `decay_patience` (each image's rates halve when it "
             "has gained < 0.01 dB in that many iterations); the difference's mean / min / max over the images. "
             "Iteration-matched, so the machine's load does not enter. "
             f"`PYTHONPATH=src python benchmarks/fit_decay.py`. {res.get('machine', '')}", "",
             "| N | preset | patience | set | images | without | with | mean diff | min | max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in res["rows"].items():
        n, preset, patience = key.split("|")
        if patience == "None":
            continue
        base = res["rows"][f"{n}|{preset}|None"]
        for name, with_ in row.items():
            if name not in base:
                continue
            a, b = np.array(base[name]), np.array(with_)
            d = b - a
            lines.append(f"| {n} | {preset} | {patience} | {name} | {len(a)} | {a.mean():.2f} | {b.mean():.2f} | "
                         f"{d.mean():+.2f} | {d.min():+.2f} | {d.max():+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[400, 3136])
    ap.add_argument("--presets", nargs="+", default=["fast", "balanced"])
    ap.add_argument("--patience", type=int, nargs="+", default=[10])
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    path = Path(a.out) / "fit_decay.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    res["machine"] = f"{machine_info()}, load {loadavg()}"
    sets = image_sets()
    for n in a.ns:
        for preset in a.presets:
            for patience in (None, *a.patience):
                key = f"{n}|{preset}|{patience}"
                row = res["rows"].setdefault(key, {})
                opts = {"preset": preset, **({"decay_patience": patience} if patience else {"decay_patience": None})}
                for name, x in sets.items():
                    if name not in row:
                        row[name] = [m["psnr"] for m in fit_images(x, n, config=FitConfig.from_options(opts)).metrics]
                        path.write_text(json.dumps(res))
                print(key, {k: round(float(np.mean(v)), 3) for k, v in row.items()}, flush=True)
    (Path(a.out) / "fit_decay.md").write_text(markdown(res))


if __name__ == "__main__":
    main()
