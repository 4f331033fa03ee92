"""numba kernel of SSIM on CPU (fit/metrics.py: ssim's fast path; its reference twin is ssim's torch code).

Per image plane, one pass: the five Gaussian blurs SSIM needs (x, y, x^2, y^2, x y) along each row
into a ring of the last K such rows; as each row completes a window, the five blurs down its
columns, that output row turned into SSIM and summed at once. The torch code makes each blur and each of a dozen elementwise products as a pass
over the whole batch; at the end of a 40-photo fit at N=400 those passes took about 7% of the fit.
Imported lazily through raster.cpu_numba.numba_module.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_fast = dict(cache=True, nogil=True, error_model="numpy", fastmath={"nsz"})  # no reassoc, contract or arcp: SSIM of an image with itself is exactly 1, as in the reference


@njit(**_fast)
def ssim_planes(x, y, g, clamp, item0, item1, out, rows, col):
    """out[p] = mean SSIM of planes p in [item0, item1) of x, y [P, H, W] (T); g [K] taps (T), the
    valid region only (H - K + 1 by W - K + 1), constants of a data range of 1. clamp: x clamped to
    [0, 1] as it is read. rows [5, K, W - K + 1] and col [5, W - K + 1] (T): scratch, one per caller;
    rows is a ring of the last K row-blurred rows (input row i in slot i % K), so the scratch stays in
    the cache whatever the image's height (a whole-plane scratch of a 24 Mpixel photo was 480 MB a thread)."""
    k_taps = g.shape[0]
    h, w = x.shape[1], x.shape[2]
    wo, ho = w - k_taps + 1, h - k_taps + 1
    t = x.dtype.type  # constants in the planes' dtype (a Python float would make float32 sums float64)
    zero, one, two = t(0.0), t(1.0), t(2.0)
    c1, c2 = t(0.01 ** 2), t(0.03 ** 2)
    for p in range(item0, item1):
        total = 0.0
        for i in range(h):
            r = i % k_taps
            for m in range(5):
                for j in range(wo):
                    rows[m, r, j] = zero
            for k in range(k_taps):
                gk = g[k]
                for j in range(wo):
                    a = x[p, i, j + k]
                    if clamp:
                        a = min(max(a, zero), one)
                    b = y[p, i, j + k]
                    rows[0, r, j] += gk * a
                    rows[1, r, j] += gk * b
                    rows[2, r, j] += gk * (a * a)
                    rows[3, r, j] += gk * (b * b)
                    rows[4, r, j] += gk * (a * b)
            o = i - k_taps + 1  # the output row whose window ends at input row i
            if o < 0:
                continue
            for m in range(5):
                for j in range(wo):
                    col[m, j] = zero
            for k in range(k_taps):
                gk = g[k]
                rk = (o + k) % k_taps
                for m in range(5):
                    for j in range(wo):
                        col[m, j] += gk * rows[m, rk, j]
            acc = zero
            for j in range(wo):
                mx, my = col[0, j], col[1, j]
                sxx = col[2, j] - mx * mx
                syy = col[3, j] - my * my
                sxy = col[4, j] - mx * my
                acc += ((two * mx * my + c1) * (two * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
            total += np.float64(acc)
        out[p] = total / (ho * wo)
