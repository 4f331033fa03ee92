"""Train the learned initializer end to end through the renderer, reproducibly, on shipped photos.

    python -m gaussianvision.apps.initnet [--out src/gaussianvision/fit/weights/learned_init.npz]
                                          [--steps 1500] [--batch 8] [--crop 112] [--seed 0]

Data: random square crops (random scale) of the colour photos that ship inside scikit-image,
scikit-learn and matplotlib, plus a few grey textures of scikit-image (as grey RGB); the Kodak
photos are never used. Each step draws N so that the mean spacing is 4-14 pixels, makes the
`content` init, lets the network shift and shape its Gaussians, sets the least-squares colors for
that geometry (fit/colors.py, held fixed) and takes the squared error of the render: at the best
colors the error's gradient with respect to the geometry needs no derivative of the solve (the
colors' own gradient is zero there). AdamW, cosine schedule; deterministic for a seed and thread
count. About 8 minutes on 2 idle cores at the defaults (the shipped weights, 1,500 steps: +4.2 dB
at the init on training crops, with least-squares colors; 300 steps gave +1.9 dB).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from gaussianvision.data.photos import _array as photo_array
from gaussianvision.fit.colors import solve_colors
from gaussianvision.fit.init import init_content, match_colors
from gaussianvision.fit.learned_init import WEIGHTS_PATH, InitNet, save_init_net, shape_gaussians
from gaussianvision.fit.metrics import psnr
from gaussianvision.raster import render
from gaussianvision.splats.types import Splats

COLOR = ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
         "retina", "rocket", "motorcycle", "china", "flower", "grace_hopper")
GREY = ("camera", "brick", "grass", "gravel", "coins", "moon")


def _array(name: str) -> np.ndarray:
    if name in GREY or name in ("colorwheel", "hubble_deep_field", "retina"):
        from skimage import data
        a = getattr(data, name)()
        return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    return photo_array(name)  # the bundled photos' own reader (data/photos.py)


def training_images() -> list[torch.Tensor]:
    """[3, H, W] float tensors in [0, 1] of every training photo, at their own size."""
    out = []
    for name in COLOR + GREY:
        a = np.ascontiguousarray(_array(name)).astype(np.float32)
        a = a / (255.0 if a.max() > 1.5 else 1.0)
        out.append(torch.from_numpy(a).permute(2, 0, 1).contiguous())
    return out


def random_crops(photos: list[torch.Tensor], b: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """[b, 3, crop, crop]: a random photo, scaled by 0.25-1 (never below the crop), random window."""
    out = []
    for _ in range(b):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        h, w = img.shape[-2:]
        lo = crop / min(h, w)
        scale = lo + (max(lo, 1.0) - lo) * float(torch.rand(1, generator=gen)) ** 2
        if scale < 1.0:
            size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
            img = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0]
        h, w = img.shape[-2:]
        y = int(torch.randint(h - crop + 1, (1,), generator=gen))
        x = int(torch.randint(w - crop + 1, (1,), generator=gen))
        out.append(img[:, y:y + crop, x:x + crop])
    return torch.stack(out).clamp(0, 1)


def init_loss(net: InitNet, images: torch.Tensor, n: int, gen: torch.Generator, cg_iters: int = 8):
    """(loss, PSNR of content init, PSNR of the learned init), both with least-squares colors."""
    h, w = images.shape[-2:]
    with torch.no_grad():
        s0 = init_content(images, n, generator=gen)
    sigma = s0.chol[..., 0]
    means, chol = shape_gaussians(net(images, s0.means, sigma), s0.means, sigma, h, w)
    spacing = math.sqrt(h * w / n)

    def best_colors(m, c):
        s = match_colors(Splats(m.detach(), c.detach(), torch.zeros_like(s0.colors), h, w), images,
                         blur_sigma=0.15 * spacing)
        return solve_colors(s, images, cg_iters)

    pred = render(Splats(means, chol, best_colors(means, chol), h, w))
    loss = ((pred - images) ** 2).mean()
    with torch.no_grad():
        base = render(Splats(s0.means, s0.chol, best_colors(s0.means, s0.chol), h, w))
    return loss, float(psnr(base, images).mean()), float(psnr(pred.detach(), images).mean())


def train(steps: int, batch: int, crop: int, seed: int, lr: float = 3e-3, log_every: int = 50) -> tuple[InitNet, list]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    photos = training_images()
    net = InitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    log, t0, acc = [], time.time(), []
    for step in range(steps):
        images = random_crops(photos, batch, crop, gen)
        spacing = 4.0 + 10.0 * float(torch.rand(1, generator=gen))
        n = max(16, round(crop * crop / spacing ** 2))
        loss, p0, p1 = init_loss(net, images, n, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        acc.append(p1 - p0)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"step": step + 1, "gain_db": round(float(np.mean(acc)), 3), "seconds": round(time.time() - t0, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
            acc = []
    return net, log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gaussianvision.apps.initnet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(WEIGHTS_PATH))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.crop < 32:
        ap.error("--steps and --batch must be >= 1 and --crop >= 32")
    net, log = train(a.steps, a.batch, a.crop, a.seed, a.lr)
    save_init_net(net, a.out)
    print(json.dumps({"out": a.out, "parameters": sum(p.numel() for p in net.parameters()), "log": log[-1]}))
    return 0
