"""Robust image input: any Pillow-readable file in, an RGB float tensor out.

`load_image(src, size=224)` returns a [3, size, size] float32 tensor in [0, 1]:
EXIF orientation applied; grayscale, palette, RGBA/LA (composited on white), CMYK,
16-bit, 32-bit and float images converted to 8-bit-range RGB (by their bit depth, or
their own range where they have none: _gray_range); the shorter side resized to
`size` (bicubic, antialiased) and the centre cropped, as OpenCLIP's preprocessing does.
`size=None` keeps the original resolution.

Refused with ImageLoadError naming the input and the reason: missing, zero-byte,
non-image, truncated or corrupt files, decompression bombs (more than `max_pixels`
pixels; a JPEG is read at a smaller scale instead where one fits and keeps `size`), and
images smaller than `min_side` pixels on a side. The long side is cut to MAX_ASPECT times
the short side before the resize (bounded_aspect).
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from gaussianvision.splats.layouts import read_bounded

__all__ = ["ImageLoadError", "load_image", "load_images", "to_rgb", "bounded_aspect", "open_image", "image_formats",
           "to_pil", "save_png", "IMAGE_EXTS",
           "IMAGE_EXTENSIONS",
           "image_member", "DEFAULT_MAX_PIXELS", "MAX_SIZE", "MIN_SIDE", "at_least_min_side", "list_images", "find_images", "skipped_note", "empty_note"]

DEFAULT_MAX_PIXELS = 64_000_000  # about 8000 x 8000
MIN_SIDE = 8  # pixels a side an image needs (at_least_min_side): gsv fit, convert and eval refuse smaller ones
MAX_SIZE = math.isqrt(DEFAULT_MAX_PIXELS)  # the largest side load_image resizes to (8000)
# The image kinds the project reads, the one list: as tar member extensions, in the order a
# sample's image is looked for (image_member), and as file suffixes (folders, `gsv fit` inputs).
# jfif and jpe are JPEG files under the names some cameras, browsers and Windows save them with
# (regression: a folder of .jfif photos was "no image files").
# The later ones are other formats Pillow reads that hold photos or scans (regression, new-user trial: a folder's
# .avif, .jp2, .tga, .pnm and .pbm files were left out without a word); PostScript (.eps, .ps: read by running
# Ghostscript) and Pillow's stub formats are not among them, and only these formats are opened (image_formats).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "jfif", "jpe",
              "avif", "jp2", "j2k", "jpx", "jpf", "tga", "pnm", "pbm", "pfm", "qoi", "apng", "sgi", "pcx", "dib", "psd")
IMAGE_EXTENSIONS = {"." + e for e in IMAGE_EXTS}


class ImageLoadError(ValueError):
    """An input could not be turned into an RGB image; the message says which and why."""


_SLACK = 0.05  # a float image may stray this far outside 0..1 (a resample's ringing); it is clipped


def _gray_range(arr: np.ndarray, mode: str) -> tuple[float, float]:
    """The values that map to black and white in a 16-bit, 32-bit integer or float image (finite
    samples): its bit depth where it has one (I;16: 65535; 32-bit samples within 0..255 or 0..65535:
    8- or 16-bit data; floats within 0..1 give or take _SLACK, clipped, or within 0..255), else its own
    range. Regression: floats and 32-bit samples beyond 255 were all divided by 65535 (a float image
    of 0..1000 came out near black)."""
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    for top in ((1.0, 255.0) if mode == "F" else (255.0, 65535.0)):
        slack = _SLACK if top == 1.0 else 0.0
        if lo >= -slack and hi <= (1 + slack) * top:
            return 0.0, top
    return lo, (hi if hi > lo else lo + 1.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    key = img.info.get("transparency")  # a PNG's tRNS: the colour (or palette entries) that is transparent
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raw = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(raw)
        lo, hi = _gray_range(raw[finite], mode)
        arr = raw if finite.all() else np.where(finite, raw, np.where(raw == np.inf, hi, lo))  # NaN, -inf: black
        arr = np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if isinstance(key, int):  # a transparent grey level: white, as every transparent pixel
            arr[raw == key] = 255
        return Image.fromarray(arr, "L").convert("RGB")
    if key is not None and mode in ("P", "L", "RGB", "1"):  # regression: tRNS was honoured in palette images
        img = img.convert("RGBA")                          # only (an optimizer's RGB + tRNS logo came out black)
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


_OPEN_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS and the warnings filters are the process's: one opener at a time


@functools.lru_cache(maxsize=1)
def image_formats() -> tuple[str, ...]:
    """Pillow's names of the formats of IMAGE_EXTS (JPEG's opener also gives camera JPEGs with a second frame,
    MPO): the only formats opened. Pillow picks a decoder by the content, not the name: a PostScript file
    named .png was opened as EPS, which runs Ghostscript (review finding)."""
    ext = Image.registered_extensions()
    return tuple(sorted({ext[f".{e}"] for e in IMAGE_EXTS if f".{e}" in ext and ext[f".{e}"] in Image.OPEN}))


def open_image(fp, max_pixels: int | None = None) -> Image.Image:
    """Image.open(fp) limited to image_formats(), its header only; with max_pixels, over that many pixels is
    a DecompressionBombError (Pillow's check, set under a lock: a thread's limit never leaks into another's)."""
    if max_pixels is None:
        img = Image.open(fp, formats=image_formats())
    else:
        with _OPEN_LOCK:
            old = Image.MAX_IMAGE_PIXELS
            try:
                Image.MAX_IMAGE_PIXELS = max_pixels
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    img = Image.open(fp, formats=image_formats())
            finally:
                Image.MAX_IMAGE_PIXELS = old
        w, h = img.size
        if w * h > max_pixels:
            raise Image.DecompressionBombError(f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    return _gray_key_in_8_bits(img)


_GRAY_BITS = {"L;2": 2, "L;4": 4}  # PNG grey rawmodes Pillow widens to 8 bits keeping tRNS raw (1-bit: mode "1", its key already 0 / 255)


def _gray_key_in_8_bits(img: Image.Image) -> Image.Image:
    """A 2- or 4-bit grey PNG's transparent level (tRNS) in the 8-bit units of the pixels Pillow gives: Pillow
    widens the pixels (a 2-bit level 1 reads 85) but keeps the key in the file's units, so the transparent level
    stayed grey and another became white (review finding). Before load(): the tile still names the raw mode
    (tile[0][3]: a plain tuple in Pillow 10, a named one since)."""
    key = img.info.get("transparency")
    if img.format == "PNG" and img.mode == "L" and isinstance(key, int) and img.tile:
        raw = img.tile[0][3]
        bits = _GRAY_BITS.get(raw if isinstance(raw, str) else (raw[0] if raw else None))
        if bits is not None:
            img.info["transparency"] = key * 255 // ((1 << bits) - 1)
    return img


def _bomb_reason(e: Exception, max_pixels: int) -> str:
    """Pillow's refusal in our terms: its error past twice the limit names twice the limit (regression
    (new-user trial): a 20000 x 20000 PNG read 'exceeds limit of 128000000 pixels' under a 64 Mpixel limit)."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(m.group(1))} pixels > limit {max_pixels}" if m else str(e)


def _drafted(fp, max_pixels: int, size: int | None) -> Image.Image | None:
    """A baseline JPEG over `max_pixels` read at 1/2, 1/4 or 1/8 of its size (the decoder's own scaling, the
    least that fits), when its short side stays at least `size` (None: the image's own size is wanted: no);
    None for other files, progressive JPEGs (libjpeg keeps every coefficient of the whole image for them,
    whatever the scale: a 1 KB file claiming 60000 x 60000 took 10 GB; review finding) or when no scale
    fits. Regression (new-user trial): a 108 MP phone photo was refused, though a 224 px fit needs a 28th of
    its pixels."""
    from PIL import JpegImagePlugin
    if size is None:
        return None
    if hasattr(fp, "seek"):
        fp.seek(0)
    try:
        img = JpegImagePlugin.JpegImageFile(fp)  # the header, without Pillow's pixel check: checked here
    except SyntaxError:  # not a JPEG
        return None
    w, h = img.size
    r = next((r for r in (2, 4, 8) if -(-w // r) * -(-h // r) <= max_pixels), None)
    if img.info.get("progressive") or img.info.get("progression") or r is None or min(w, h) // r < size:
        img.close()
        return None
    img.draft("RGB", (w // r, h // r))  # Pillow's scale is min(w // asked_w, h // asked_h): r (review: ceil gave 1)
    if img.size[0] * img.size[1] > max_pixels:
        img.close()
        return None
    img.load()
    return img


MAX_STREAM_BYTES = 256 << 20  # an image read from a pipe or device is held in memory: at most this much


def _read_stream(path: Path, name: str) -> bytes:
    """The bytes of a pipe or device, at most MAX_STREAM_BYTES. Regression (new-user trial): `gsv fit
    <(cat a.png)` was refused as "empty file (zero bytes)", the size a pipe reports."""
    try:
        with open(path, "rb") as f:
            data = read_bounded(f, MAX_STREAM_BYTES + 1)  # in 1 MiB pieces: memory follows what comes
    except OSError as e:
        raise ImageLoadError(f"{name}: cannot read ({e.strerror or e})") from None
    if not data:
        raise ImageLoadError(f"{name}: empty (nothing came from it: not a regular file)")
    if len(data) > MAX_STREAM_BYTES:
        raise ImageLoadError(f"{name}: not a regular file, and more than {MAX_STREAM_BYTES >> 20} MiB came from it; "
                             "save the image to a file")
    return data


def _open(src, name: str, max_pixels: int, size: int | None = None) -> Image.Image:
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageLoadError(f"{name}: empty (zero bytes)")
        fp = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageLoadError(f"{name}: " + ("a broken link (its target does not exist)" if path.is_symlink()
                                                else "no such file")) from None
        except OSError as e:  # a link loop (regression: said "no such file"), a name too long for the file system
            raise ImageLoadError(f"{name}: cannot read ({e.strerror or e})") from None
        except ValueError:  # a NUL byte in the name (the Python API; argv cannot hold one)
            raise ImageLoadError(f"{name}: no such file (the name holds a NUL byte)") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageLoadError(f"{name}: is a directory, expected an image file")
        if not stat.S_ISREG(st.st_mode):  # a pipe (`gsv fit <(curl ...)`) or a device: read, within a bound
            fp = io.BytesIO(_read_stream(path, name))
        elif st.st_size == 0:
            raise ImageLoadError(f"{name}: empty file (zero bytes)")
        else:
            fp = path
    try:
        try:
            img = open_image(fp, max_pixels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            img = _drafted(fp, max_pixels, size)
            if img is None:
                raise ImageLoadError(f"{name}: decompression bomb refused ({_bomb_reason(e, max_pixels)})") from None
        img.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image Pillow can read") from None
    except PermissionError as e:  # regression: said "truncated or corrupt"
        raise ImageLoadError(f"{name}: cannot read ({e.strerror or e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(f"{name}: truncated or corrupt image ({e})") from None
    return img


MAX_ASPECT = 8  # bounded_aspect: the long side kept, at most, in units of the short side (panoramas are within)


def bounded_aspect(img: Image.Image, limit: int = MAX_ASPECT) -> Image.Image:
    """`img`, its long side centre-cropped to `limit` times its short side where longer: what a resize of
    the short side to S and a centre crop of S x S keep lies well inside, and the resize no longer makes
    a long side of S x aspect. Images within the limit are returned as they are (the same pixels as
    before). Regression (new-user trial): an 8 x 1,000,000 strip, 25 KB as a PNG, was resized to
    224 x 28,000,000 (about 19 GB) before its crop: a MemoryError ended the whole `gsv fit` / `convert`."""
    w, h = img.size
    short = min(w, h)
    if max(w, h) <= limit * short:
        return img
    cw, ch = (limit * h + (w - limit * h) % 2, h) if w > h else (w, limit * w + (h - limit * w) % 2)  # centred:
    left, top = (w - cw) // 2, (h - ch) // 2                                                          # even margins
    return img.crop((left, top, left + cw, top + ch))


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """A decoded image as the project sees it: EXIF orientation applied, then RGB (_to_rgb: any mode, 16-bit
    and float by their range, transparency on white). ImageLoadError naming `name` when it cannot convert."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the image
        pass
    try:
        return _to_rgb(img)
    except Exception as e:
        raise ImageLoadError(f"{name}: cannot convert mode {img.mode!r} to RGB ({e})") from None


def at_least_min_side(img: Image.Image, name: str = "image", min_side: int | None = None) -> Image.Image:
    """`img` as it is, or ImageLoadError where a side is under min_side (MIN_SIDE) pixels: too small to fit."""
    min_side = MIN_SIDE if min_side is None else min_side
    w, h = img.size
    if min(w, h) < min_side:
        raise ImageLoadError(f"{name}: too small ({w}x{h}; at least {min_side} pixels a side)")
    return img


def load_image(src: str | os.PathLike | bytes, size: int | None = 224, name: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> torch.Tensor:
    """Any image (a path, its bytes, or a binary file object) -> [3, H, W] float32 in [0, 1] (H = W = size unless
    size is None)."""
    if hasattr(src, "read"):  # regression (new-user trial): a BytesIO gave pathlib's TypeError
        name = name or str(getattr(src, "name", "<stream>"))
        src = src.read()
        if not isinstance(src, (bytes, bytearray)):
            raise ValueError(f"load_image: {name} is a text stream; open the file in binary mode ('rb')")
    if isinstance(src, (str, os.PathLike)) and not os.fspath(src):  # regression: said ": is a directory"
        raise ImageLoadError("load_image: the path is empty")
    name = name or (str(src) if not isinstance(src, (bytes, bytearray, memoryview)) else "<bytes>")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE):
        raise ValueError(f"load_image: size must be a whole number of pixels from 1 to {MAX_SIZE} or None, got {size!r}")
    img = at_least_min_side(to_rgb(_open(src, name, max_pixels, size), name), name, min_side)
    if size is not None:
        img = bounded_aspect(img)
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_images(srcs, size: int = 224, **kw) -> torch.Tensor:
    """Several images -> [B, 3, size, size]; raises on the first bad one."""
    return torch.stack([load_image(s, size=size, **kw) for s in srcs])


def image_member(members) -> str | None:
    """The extension of a tar sample's image member (the first of IMAGE_EXTS it holds), or None."""
    return next((e for e in IMAGE_EXTS if e in members), None)


def find_images(root: str | os.PathLike, skipped: list[Path] | None = None) -> list[Path]:
    """The image files (by extension) under a folder, at any depth, sorted by their path under it;
    symlinked folders are followed, each real folder once (a link back up the tree is no loop).
    Entries named like images that are not files (broken links, fifos) are left out, and added to
    `skipped` when given, for the caller to say. Regression: folders linked into a dataset folder were
    skipped without a word, and so were broken links."""
    root = Path(root)
    seen: set[tuple[int, int]] = set()
    found = []
    for folder, subs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            subs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            subs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        found += [Path(folder) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    files = [q for q in found if q.is_file()]  # not broken links, fifos, ...
    if skipped is not None and len(files) < len(found):
        kept = set(files)
        skipped.extend(sorted((q for q in found if q not in kept), key=lambda q: q.relative_to(root).as_posix()))
    return sorted(files, key=lambda q: q.relative_to(root).as_posix())


def list_images(inputs, skipped: list[Path] | None = None, empty: list | None = None) -> list[Path]:
    """Expand files and folders (recursively, sorted) to image paths by extension; what a folder holds
    named like an image but not a file goes to `skipped` (find_images), and a folder without images to
    `empty` (as given), for the caller to say.

    A named file is kept whatever its extension, so that bad inputs get reported."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        try:
            folder = p.is_dir()
        except OSError:  # e.g. a name too long for the file system: loading it reports why
            folder = False
        if folder:
            found = sorted(find_images(p, skipped))  # (the order gsv fit has always used)
            out.extend(found)
            if not found and empty is not None:
                empty.append(item)
        else:
            out.append(p)
    return out


def empty_note(empty: list) -> str:
    """One line naming the folders list_images found no image in."""
    from gaussianvision.data.shards import show
    return f"no images in folder{'s' if len(empty) > 1 else ''} {', '.join(show(str(x), None) for x in empty)}"


def skipped_note(skipped: list[Path], what: str = "an image") -> str | None:
    """One line saying what find_images (or a glob: `what` "an input") left out (None if nothing): how many,
    and the first."""
    from gaussianvision.data.shards import show
    if not skipped:
        return None
    n = len(skipped)
    return (f"skipped {n} entr{'y' if n == 1 else 'ies'} named like {what} but not a file (a broken link, a fifo; "
            f"e.g. {show(str(skipped[0]), None)})")


def to_pil(img: torch.Tensor) -> Image.Image:
    """[3, H, W] float (any range; clamped to [0, 1]) -> PIL RGB image."""
    arr = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def save_png(img: torch.Tensor, path: str | os.PathLike) -> None:
    from ..atomic import write_atomic
    pil = to_pil(img)
    write_atomic(path, lambda tmp: pil.save(tmp, format="PNG"))
