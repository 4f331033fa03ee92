"""The `Splats` type: a batch of images, each a set of colored 2D Gaussians.

Coordinate convention (used everywhere in the project):
  * means are (x, y) in PIXEL units of the image the splats were fitted to;
    x grows to the right (columns), y grows downwards (rows);
  * the origin (0, 0) is the TOP-LEFT CORNER of the top-left pixel, so the
    centre of pixel (row i, column j) is at (j + 0.5, i + 0.5);
  * the covariance is Sigma = L L^T with the lower-triangular Cholesky factor
    L = [[l11, 0], [l21, l22]], stored as chol[..., :] = (l11, l21, l22), in
    pixels, with l11 > 0 and l22 > 0;
  * colors are linear RGB weights (no activation), nominally in [0, 1]; the
    rendered image is their accumulated, Gaussian-weighted sum.

Shapes: means [B, N, 2], chol [B, N, 3], colors [B, N, 3], counts [B] (int64).
Image b uses its first counts[b] Gaussians; the rest are padding and are
ignored by every renderer, encoder and writer.  `counts=None` means all N.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch

__all__ = ["Splats", "SplatsError"]


class SplatsError(ValueError):
    """Raised when splat tensors or files are malformed."""


@dataclass
class Splats:
    means: torch.Tensor  # [B, N, 2] pixels (x, y), origin at the top-left pixel corner
    chol: torch.Tensor  # [B, N, 3] (l11, l21, l22), pixels
    colors: torch.Tensor  # [B, N, 3] RGB
    height: int
    width: int
    counts: torch.Tensor | None = None  # [B] int64, valid Gaussians per image

    # ------------------------------------------------------------------ basics
    @property
    def batch_size(self) -> int:
        return int(self.means.shape[0])

    @property
    def max_gaussians(self) -> int:
        return int(self.means.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def num_gaussians(self) -> torch.Tensor:
        """[B] int64: valid Gaussians per image."""
        if self.counts is None:
            return torch.full((self.batch_size,), self.max_gaussians, dtype=torch.long, device=self.device)
        return self.counts.to(torch.long)

    def mask(self) -> torch.Tensor:
        """[B, N] bool: True for valid Gaussians, False for padding."""
        n = torch.arange(self.max_gaussians, device=self.device)
        return n[None, :] < self.num_gaussians().to(self.device)[:, None]

    def validate(self, name: str = "splats") -> "Splats":
        """Check shapes, dtypes, finiteness and positive Cholesky diagonals.

        Raises SplatsError naming `name` and the reason. Returns self.
        """
        for attr, last in (("means", 2), ("chol", 3), ("colors", 3)):
            t = getattr(self, attr)
            if not isinstance(t, torch.Tensor):
                raise SplatsError(f"{name}.{attr}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.shape[-1] != last:
                raise SplatsError(f"{name}.{attr}: expected shape [B, N, {last}], got {list(t.shape)}")
            if not t.dtype.is_floating_point:
                raise SplatsError(f"{name}.{attr}: expected a floating dtype, got {t.dtype}")
        if not (self.means.shape[:2] == self.chol.shape[:2] == self.colors.shape[:2]):
            raise SplatsError(
                f"{name}: means {list(self.means.shape)}, chol {list(self.chol.shape)} and colors "
                f"{list(self.colors.shape)} disagree on [B, N]"
            )
        if int(self.height) <= 0 or int(self.width) <= 0:
            raise SplatsError(f"{name}: image size must be positive, got {self.height}x{self.width}")
        if self.counts is not None:
            c = self.counts
            if c.dim() != 1 or c.shape[0] != self.batch_size:
                raise SplatsError(f"{name}.counts: expected shape [{self.batch_size}], got {list(c.shape)}")
            if c.dtype.is_floating_point:
                raise SplatsError(f"{name}.counts: expected an integer dtype, got {c.dtype}")
            if bool((c < 0).any()) or bool((c > self.max_gaussians).any()):
                raise SplatsError(f"{name}.counts: values must lie in [0, {self.max_gaussians}], got {c.tolist()}")
        m = self.mask()
        for attr in ("means", "chol", "colors"):
            t = getattr(self, attr).detach()
            bad = ~torch.isfinite(t).all(-1) & m
            if bool(bad.any()):
                b, i = (int(v) for v in bad.nonzero()[0])
                raise SplatsError(f"{name}.{attr}: non-finite value at image {b}, Gaussian {i}")
        diag = self.chol.detach()[..., [0, 2]]
        bad = (diag <= 0).any(-1) & m
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise SplatsError(
                f"{name}.chol: Cholesky diagonal must be positive, got l11={float(diag[b, i, 0]):g}, "
                f"l22={float(diag[b, i, 1]):g} at image {b}, Gaussian {i}"
            )
        return self

    # ----------------------------------------------------------- manipulation
    def to(self, *args, **kwargs) -> "Splats":
        return replace(
            self,
            means=self.means.to(*args, **kwargs),
            chol=self.chol.to(*args, **kwargs),
            colors=self.colors.to(*args, **kwargs),
            counts=None if self.counts is None else self.counts.to(device=self.means.to(*args, **kwargs).device),
        )

    def detach(self) -> "Splats":
        return replace(self, means=self.means.detach(), chol=self.chol.detach(), colors=self.colors.detach())

    def __getitem__(self, b: int | slice) -> "Splats":
        """Image b alone, trimmed to its valid Gaussians (batch of one); a slice: those images, as a batch with
        their counts (regression, new-user trial: splats[0:1] was a TypeError deep inside)."""
        if isinstance(b, slice):
            return self._images(range(*b.indices(self.batch_size)))
        try:
            if isinstance(b, bool):
                raise TypeError
            b = operator.index(b.reshape(()) if torch.is_tensor(b) and b.numel() == 1 else b)
        except (TypeError, RuntimeError):
            raise TypeError(f"Splats indices are an image number or a slice, got {type(b).__name__}") from None
        if not -self.batch_size <= b < self.batch_size:
            raise IndexError(f"image {b} of a batch of {self.batch_size}")
        b %= self.batch_size
        n = int(self.num_gaussians()[b])
        return Splats(
            self.means[b : b + 1, :n], self.chol[b : b + 1, :n], self.colors[b : b + 1, :n],
            self.height, self.width, None,
        )

    def _images(self, picked: range) -> "Splats":
        """The images `picked` (a slice's range) as a batch, padding and counts kept."""
        if len(picked) == 0:
            raise IndexError(f"the slice selects no image of a batch of {self.batch_size}")
        idx = list(picked)
        return Splats(self.means[idx], self.chol[idx], self.colors[idx], self.height, self.width,
                      None if self.counts is None else self.counts[idx])

    def __iter__(self) -> Iterator["Splats"]:
        for b in range(self.batch_size):
            yield self[b]

    def __len__(self) -> int:
        return self.batch_size

    def scaled(self, height: int, width: int) -> "Splats":
        """The same splats expressed for an image of size height x width.

        Scaling the image by S = diag(sx, sy) maps mu -> S mu and Sigma -> S Sigma S,
        i.e. L -> S L, which stays lower triangular with a positive diagonal.
        """
        sx = width / self.width
        sy = height / self.height
        if sx == 1.0 and sy == 1.0:
            return self
        scale_m = self.means.new_tensor([sx, sy])
        scale_c = self.chol.new_tensor([sx, sy, sy])
        return replace(self, means=self.means * scale_m, chol=self.chol * scale_c, height=height, width=width)

    def hflip(self, which: torch.Tensor | None = None) -> "Splats":
        """The splats of the image mirrored left-right (images `which` [B] bool only; all if None).

        Mirroring maps x -> width - x (the origin is the left edge of the image) and
        Sigma = [[a, b], [b, c]] -> [[a, -b], [-b, c]], i.e. l21 -> -l21 with l11, l22 kept.
        Rendering the result equals flipping the render along its last axis.
        """
        if which is None:
            which = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        which = torch.as_tensor(which, dtype=torch.bool, device=self.device).reshape(-1)
        if which.numel() != self.batch_size:
            raise SplatsError(f"Splats.hflip: `which` has {which.numel()} entries for a batch of {self.batch_size}")
        flipped = which[:, None]  # [B, 1]
        x = torch.where(flipped, self.width - self.means[..., 0], self.means[..., 0])
        l21 = torch.where(flipped, -self.chol[..., 1], self.chol[..., 1])
        return replace(self, means=torch.stack([x, self.means[..., 1]], -1),
                       chol=torch.stack([self.chol[..., 0], l21, self.chol[..., 2]], -1))

    @staticmethod
    def stack(items: Sequence["Splats"]) -> "Splats":
        """Pad a list of splats (same image size) to a batch with counts."""
        if not items:
            raise SplatsError("Splats.stack: got an empty list")
        h, w = items[0].height, items[0].width
        parts = []
        for k, s in enumerate(items):
            if (s.height, s.width) != (h, w):
                raise SplatsError(f"Splats.stack: item {k} is {s.height}x{s.width}, item 0 is {h}x{w}")
        first = items[0].means
        if all(s.counts is None and s.max_gaussians == first.shape[1] and s.means.device == first.device
               and s.means.dtype == s.chol.dtype == s.colors.dtype == first.dtype for s in items):
            # every image full and of one size: no trimming or padding, one concatenation per field
            # (the training loaders' common case; the same tensors as the general path below)
            cat = {k: torch.cat([getattr(s, k) for s in items]) for k in ("means", "chol", "colors")}
            counts = torch.full((cat["means"].shape[0],), first.shape[1], dtype=torch.long, device=first.device)
            return Splats(cat["means"], cat["chol"], cat["colors"], h, w, counts)
        for s in items:
            parts.extend(s[b] for b in range(s.batch_size))
        n_max = max(p.max_gaussians for p in parts)
        ref = parts[0].means
        out = {k: ref.new_zeros((len(parts), n_max, d)) for k, d in (("means", 2), ("chol", 3), ("colors", 3))}
        out["chol"][..., 0] = 1.0  # padding stays valid (positive diagonal) but is masked out
        out["chol"][..., 2] = 1.0
        counts = torch.zeros(len(parts), dtype=torch.long, device=ref.device)
        for b, p in enumerate(parts):
            n = p.max_gaussians
            out["means"][b, :n] = p.means[0]
            out["chol"][b, :n] = p.chol[0]
            out["colors"][b, :n] = p.colors[0]
            counts[b] = n
        return Splats(out["means"], out["chol"], out["colors"], h, w, counts)

    def pixel_bytes(self) -> int:
        """Bytes of the uint8 RGB image these splats stand for."""
        return 3 * int(self.height) * int(self.width)
