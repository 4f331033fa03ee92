"""Tight budgets: one `fast` fit of the bundled photos under --budget-ms, 5 times in one process (after a warm-up
fit), printing wall ms per image, mean PSNR and iterations of each. With NOCHECK=1 coarse to fine's first full-size
step is foreseen by the area ratio alone (FIRST_STEP_CHECK = 0), as before 2026-12-07. Run it from two trees to A/B:

    PYTHONPATH=src python benchmarks/budget_ab.py SIZE N BUDGET_MS BATCH
"""
import time, torch, sys
from gaussianvision.data.photos import bundled_photos
from gaussianvision.fit import FitConfig, fit_images
import os, gaussianvision.fit.coarse as FF
if os.environ.get("NOCHECK"): FF.FIRST_STEP_CHECK = 0
size, n, budget, b = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
x = torch.stack([t for _, t in bundled_photos(size)])[:b]
cfg = FitConfig.from_options({"preset": "fast", "budget_ms": budget})
fit_images(x[:1], n, config=cfg)
res = []
for rep in range(5):
    t = time.perf_counter(); r = fit_images(x, n, config=cfg); dt = 1000 * (time.perf_counter() - t) / len(x)
    m = r.metrics
    res.append((dt, sum(q['psnr'] for q in m)/len(m), m[0]['iterations'], 1000 * m[0]['seconds']))
print(f"{size}px N={n} B={b} budget {budget}: " + "; ".join(f"{a:.1f} ms {p:.2f} dB {i} it" for a, p, i, s in res))
