"""Triton kernels of the GPU rasterizer (imported lazily by gpu_triton; needs triton).

The kernels run on a grid (tile, image): one launch covers the whole batch. Program
(t, b) owns a TILE_H x TILE_W block of pixels of image b and walks the slice
ids[offsets[b*T + t] : offsets[b*T + t + 1]] of the tile-sorted Gaussian list built by
gpu_triton._bin (only Gaussians whose 3-sigma box meets the tile), BLOCK_N at a time.
The forward holds [BLOCK_N, TILE_H*TILE_W] pairs (pixels the fast axis, Gaussians the reduced
one, summed inside each thread). The backward (splat_bwd_kernel) walks the tile's pixels in
chunks of CHUNK for each block of Gaussians; splat_bwd_tile_kernel is the earlier backward,
kept as gpu_triton.BWD_KERNEL = "tile" until a GPU has timed the two side by side.

The math is the reference's (reference.py), term by term, so that the hard cut
q <= CUTOFF_Q is decided the same way: divisions use div_rn (IEEE rounding) because
the GPU's default fast division could flip pixels that sit right on the cut.

Kept free of helper @jit functions: the kernels are also wrapped by the interpreter
on demand (gpu_triton._kernel), which only needs the kernel function itself.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def splat_fwd_kernel(
    means_ptr, chol_ptr, colors_ptr,  # [B*N*2], [B*N*3], [B*N*3] float32, contiguous
    ids_ptr, offsets_ptr,  # [P] int64 flat Gaussian ids sorted by (image, tile); [B*T + 1] int64
    out_ptr,  # [B, 3, H, W] float32
    H, W, NTX, T,
    CUTOFF_Q: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr,
):
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pix = tl.arange(0, TILE_H * TILE_W)
    col = (t % NTX) * TILE_W + pix % TILE_W
    row = (t // NTX) * TILE_H + pix // TILE_W
    inside = (col < W) & (row < H)
    px = col.to(tl.float32) + 0.5
    py = row.to(tl.float32) + 0.5

    start = tl.load(offsets_ptr + b * T + t)
    end = tl.load(offsets_ptr + b * T + t + 1)
    acc_r = tl.zeros([TILE_H * TILE_W], dtype=tl.float32)
    acc_g = tl.zeros([TILE_H * TILE_W], dtype=tl.float32)
    acc_b = tl.zeros([TILE_H * TILE_W], dtype=tl.float32)
    for i in range(start, end, BLOCK_N):
        k = i + tl.arange(0, BLOCK_N)
        km = k < end
        g = tl.load(ids_ptr + k, mask=km, other=0)
        mx = tl.load(means_ptr + g * 2, mask=km, other=0.0)
        my = tl.load(means_ptr + g * 2 + 1, mask=km, other=0.0)
        l11 = tl.load(chol_ptr + g * 3, mask=km, other=1.0)
        l21 = tl.load(chol_ptr + g * 3 + 1, mask=km, other=0.0)
        l22 = tl.load(chol_ptr + g * 3 + 2, mask=km, other=1.0)
        cr = tl.load(colors_ptr + g * 3, mask=km, other=0.0)
        cg = tl.load(colors_ptr + g * 3 + 1, mask=km, other=0.0)
        cb = tl.load(colors_ptr + g * 3 + 2, mask=km, other=0.0)

        dx = px[None, :] - mx[:, None]
        dy = py[None, :] - my[:, None]
        y1 = tl.div_rn(dx, l11[:, None])
        y2 = tl.div_rn(dy - l21[:, None] * y1, l22[:, None])
        q = y1 * y1 + y2 * y2
        w = tl.where((q <= CUTOFF_Q) & km[:, None], tl.exp(-0.5 * q), 0.0)
        acc_r += tl.sum(w * cr[:, None], axis=0)
        acc_g += tl.sum(w * cg[:, None], axis=0)
        acc_b += tl.sum(w * cb[:, None], axis=0)

    hw = H * W
    base = out_ptr + b * 3 * hw + row * W + col
    tl.store(base, acc_r, mask=inside)
    tl.store(base + hw, acc_g, mask=inside)
    tl.store(base + 2 * hw, acc_b, mask=inside)


@triton.jit
def splat_bwd_tile_kernel(
    means_ptr, chol_ptr, colors_ptr,
    ids_ptr, offsets_ptr,
    gout_ptr,  # [B, 3, H, W] float32 upstream gradient, contiguous
    gmeans_ptr, gchol_ptr, gcolors_ptr,  # zero-initialised, same layout as the inputs
    H, W, NTX, T,
    CUTOFF_Q: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr,
):
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pix = tl.arange(0, TILE_H * TILE_W)
    col = (t % NTX) * TILE_W + pix % TILE_W
    row = (t // NTX) * TILE_H + pix // TILE_W
    inside = (col < W) & (row < H)
    px = col.to(tl.float32) + 0.5
    py = row.to(tl.float32) + 0.5

    hw = H * W
    gbase = gout_ptr + b * 3 * hw + row * W + col
    # pixels outside the image read a zero gradient, so they contribute nothing below
    gr = tl.load(gbase, mask=inside, other=0.0)
    gg = tl.load(gbase + hw, mask=inside, other=0.0)
    gb = tl.load(gbase + 2 * hw, mask=inside, other=0.0)

    start = tl.load(offsets_ptr + b * T + t)
    end = tl.load(offsets_ptr + b * T + t + 1)
    for i in range(start, end, BLOCK_N):
        k = i + tl.arange(0, BLOCK_N)
        km = k < end
        g = tl.load(ids_ptr + k, mask=km, other=0)
        mx = tl.load(means_ptr + g * 2, mask=km, other=0.0)
        my = tl.load(means_ptr + g * 2 + 1, mask=km, other=0.0)
        l11 = tl.load(chol_ptr + g * 3, mask=km, other=1.0)
        l21 = tl.load(chol_ptr + g * 3 + 1, mask=km, other=0.0)
        l22 = tl.load(chol_ptr + g * 3 + 2, mask=km, other=1.0)
        cr = tl.load(colors_ptr + g * 3, mask=km, other=0.0)
        cg = tl.load(colors_ptr + g * 3 + 1, mask=km, other=0.0)
        cb = tl.load(colors_ptr + g * 3 + 2, mask=km, other=0.0)

        dx = px[None, :] - mx[:, None]
        dy = py[None, :] - my[:, None]
        y1 = tl.div_rn(dx, l11[:, None])
        y2 = tl.div_rn(dy - l21[:, None] * y1, l22[:, None])
        q = y1 * y1 + y2 * y2
        w = tl.where((q <= CUTOFF_Q) & km[:, None], tl.exp(-0.5 * q), 0.0)

        tl.atomic_add(gcolors_ptr + g * 3, tl.sum(w * gr[None, :], axis=1), mask=km)
        tl.atomic_add(gcolors_ptr + g * 3 + 1, tl.sum(w * gg[None, :], axis=1), mask=km)
        tl.atomic_add(gcolors_ptr + g * 3 + 2, tl.sum(w * gb[None, :], axis=1), mask=km)

        # dL/dq per pair; w already carries the cut, so culled pairs give exactly 0
        dq = -0.5 * w * (cr[:, None] * gr[None, :] + cg[:, None] * gg[None, :] + cb[:, None] * gb[None, :])
        dqy1 = dq * y1
        dqy2 = dq * y2
        s1 = tl.sum(dqy1, axis=1)
        s2 = tl.sum(dqy2, axis=1)
        s11 = tl.sum(dqy1 * y1, axis=1)
        s12 = tl.sum(dqy1 * y2, axis=1)
        s22 = tl.sum(dqy2 * y2, axis=1)
        # chain rule through y1 = dx/l11, y2 = (dy - l21*y1)/l22, q = y1^2 + y2^2, applied
        # after the pixel sums because the per-Gaussian factors do not depend on the pixel
        r = l21 / l22
        a11 = -2.0 / l11
        a22 = -2.0 / l22
        tl.atomic_add(gmeans_ptr + g * 2, a11 * (s1 - r * s2), mask=km)
        tl.atomic_add(gmeans_ptr + g * 2 + 1, a22 * s2, mask=km)
        tl.atomic_add(gchol_ptr + g * 3, a11 * (s11 - r * s12), mask=km)
        tl.atomic_add(gchol_ptr + g * 3 + 1, a22 * s12, mask=km)
        tl.atomic_add(gchol_ptr + g * 3 + 2, a22 * s22, mask=km)


@triton.jit
def splat_bwd_kernel(
    means_ptr, chol_ptr, colors_ptr,
    ids_ptr, offsets_ptr,
    gout_ptr,  # [B, 3, H, W] float32 upstream gradient, contiguous
    gmeans_ptr, gchol_ptr, gcolors_ptr,  # zero-initialised, same layout as the inputs
    H, W, NTX, T,
    CUTOFF_Q: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    # The backward by pixel chunks: for each block of BLOCK_N Gaussians the tile's pixels are
    # visited CHUNK at a time ([BLOCK_N, CHUNK] pairs, CHUNK = one warp's width), and the eight
    # per-Gaussian sums are accumulated element-wise in registers; they are reduced over pixels
    # once per block, inside each warp (the warps split the Gaussians, not the pixels), and added
    # with relaxed atomics (only atomicity is needed: no ordering, so no memory fences).
    # splat_bwd_tile_kernel instead reduces across the whole tile (all warps, shared memory,
    # barriers) for every block: the same sums, about 1.6x the instructions per pair.
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    col0 = (t % NTX) * TILE_W
    row0 = (t // NTX) * TILE_H
    gbase = gout_ptr + b * 3 * hw
    start = tl.load(offsets_ptr + b * T + t)
    end = tl.load(offsets_ptr + b * T + t + 1)
    for i in range(start, end, BLOCK_N):
        k = i + tl.arange(0, BLOCK_N)
        km = k < end
        g = tl.load(ids_ptr + k, mask=km, other=0)
        mx = tl.load(means_ptr + g * 2, mask=km, other=0.0)
        my = tl.load(means_ptr + g * 2 + 1, mask=km, other=0.0)
        l11 = tl.load(chol_ptr + g * 3, mask=km, other=1.0)
        l21 = tl.load(chol_ptr + g * 3 + 1, mask=km, other=0.0)
        l22 = tl.load(chol_ptr + g * 3 + 2, mask=km, other=1.0)
        cr = tl.load(colors_ptr + g * 3, mask=km, other=0.0)
        cg = tl.load(colors_ptr + g * 3 + 1, mask=km, other=0.0)
        cb = tl.load(colors_ptr + g * 3 + 2, mask=km, other=0.0)
        acc_r = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc_g = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc11 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc12 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        acc22 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        for c in range(0, TILE_H * TILE_W, CHUNK):
            pix = c + tl.arange(0, CHUNK)
            col = col0 + pix % TILE_W
            row = row0 + pix // TILE_W
            inside = (col < W) & (row < H)
            # pixels outside the image read a zero gradient, so they contribute nothing below
            gp = gbase + row * W + col
            gr = tl.load(gp, mask=inside, other=0.0)
            gg = tl.load(gp + hw, mask=inside, other=0.0)
            gb = tl.load(gp + 2 * hw, mask=inside, other=0.0)
            dx = (col.to(tl.float32) + 0.5)[None, :] - mx[:, None]
            dy = (row.to(tl.float32) + 0.5)[None, :] - my[:, None]
            y1 = tl.div_rn(dx, l11[:, None])
            y2 = tl.div_rn(dy - l21[:, None] * y1, l22[:, None])
            q = y1 * y1 + y2 * y2
            w = tl.where((q <= CUTOFF_Q) & km[:, None], tl.exp(-0.5 * q), 0.0)
            acc_r += w * gr[None, :]
            acc_g += w * gg[None, :]
            acc_b += w * gb[None, :]
            # dL/dq per pair; w already carries the cut, so culled pairs give exactly 0
            dq = -0.5 * w * (cr[:, None] * gr[None, :] + cg[:, None] * gg[None, :] + cb[:, None] * gb[None, :])
            dqy1 = dq * y1
            dqy2 = dq * y2
            acc1 += dqy1
            acc2 += dqy2
            acc11 += dqy1 * y1
            acc12 += dqy1 * y2
            acc22 += dqy2 * y2
        tl.atomic_add(gcolors_ptr + g * 3, tl.sum(acc_r, axis=1), mask=km, sem="relaxed")
        tl.atomic_add(gcolors_ptr + g * 3 + 1, tl.sum(acc_g, axis=1), mask=km, sem="relaxed")
        tl.atomic_add(gcolors_ptr + g * 3 + 2, tl.sum(acc_b, axis=1), mask=km, sem="relaxed")
        s1 = tl.sum(acc1, axis=1)
        s2 = tl.sum(acc2, axis=1)
        s11 = tl.sum(acc11, axis=1)
        s12 = tl.sum(acc12, axis=1)
        s22 = tl.sum(acc22, axis=1)
        # the chain rule of splat_bwd_tile_kernel, after the pixel sums
        r = l21 / l22
        a11 = -2.0 / l11
        a22 = -2.0 / l22
        tl.atomic_add(gmeans_ptr + g * 2, a11 * (s1 - r * s2), mask=km, sem="relaxed")
        tl.atomic_add(gmeans_ptr + g * 2 + 1, a22 * s2, mask=km, sem="relaxed")
        tl.atomic_add(gchol_ptr + g * 3, a11 * (s11 - r * s12), mask=km, sem="relaxed")
        tl.atomic_add(gchol_ptr + g * 3 + 1, a22 * s12, mask=km, sem="relaxed")
        tl.atomic_add(gchol_ptr + g * 3 + 2, a22 * s22, mask=km, sem="relaxed")
