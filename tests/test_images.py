import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gaussianvision.data.images import ImageLoadError, load_image


def png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def test_resize_center_crop_and_range():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the centre square is white, the side bands black
    t = load_image(png(Image.fromarray(arr)), size=20)
    assert t.shape == (3, 20, 20) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert float(t[:, :, 2:18].mean()) > 0.98  # crop keeps the centre


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "1"])
def test_modes_become_rgb(mode):
    base = Image.new("RGB", (16, 16), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((16, 16), 65535, np.uint16))
    elif mode == "F":
        img = Image.fromarray(np.full((16, 16), 1.0, np.float32))
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "F", "I") else "PNG"
    t = load_image(png(img, fmt), size=16)
    assert t.shape == (3, 16, 16)
    if mode in ("I;16", "F"):
        assert float(t.min()) == pytest.approx(1.0)  # full-scale 16-bit / float -> white


@pytest.mark.parametrize("mode,values,want", [
    ("F", [0.0, 500.0, 1000.0], [0, 128, 255]),          # floats beyond 255: their own range (was near black)
    ("F", [-2.0, 0.0, 2.0], [0, 128, 255]),
    ("F", [0.0, 0.5, 1.0], [0, 128, 255]),                # floats in 0..1
    ("F", [0.0, 100.0, 255.0], [0, 100, 255]),            # 8-bit data as floats
    ("I", [0, 100, 255], [0, 100, 255]),                  # 8-bit data as 32-bit samples
    ("I", [0, 32768, 65535], [0, 128, 255]),              # 16-bit data as 32-bit samples
    ("I", [0, 500000, 1000000], [0, 128, 255]),           # beyond 16 bits: their own range
    ("F", [0.0, float("nan"), 1.0], [0, 0, 255]),         # NaN: black
    ("F", [300.0, float("nan"), 1000.0], [0, 0, 255]),    # the range of the finite samples
    ("F", [300.0, float("inf"), 1000.0], [0, 255, 255]),  # +inf: white
    ("F", [0.6, 0.6, -0.01], [153, 153, 0]),              # a resample's undershoot: clipped, not a new range
    ("F", [0.5, 1.04, 0.0], [128, 255, 0]),               # and its overshoot
])
def test_wide_gray_images_map_by_bit_depth_or_their_own_range(mode, values, want):
    arr = np.array([values] * 12, dtype=np.float32 if mode == "F" else np.int32)
    t = load_image(png(Image.fromarray(arr, mode), "TIFF"), size=None, min_side=1)
    got = (t[0, 0] * 255).round().to(torch.int64).tolist()
    assert got == want and torch.equal(t[0], t[1])


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    t = load_image(png(img), size=None)
    assert float(t.min()) == 1.0


def test_exif_orientation_applied():
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    t = load_image(png(img, "JPEG", exif=exif, quality=95), size=None)
    assert t.shape == (3, 20, 10)  # portrait after orientation
    assert float(t[:, :5].mean()) > 0.9  # white half now on top


@pytest.mark.parametrize("data,msg", [
    (b"", "empty"),
    (b"hello, not an image", "not an image"),
])
def test_bad_bytes(data, msg):
    with pytest.raises(ImageLoadError, match=msg):
        load_image(data, name="x.jpg")


def test_truncated_and_bomb_and_tiny(tmp_path):
    good = png(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(good[: len(good) // 2], name="cut.jpg")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(png(Image.new("L", (200, 200))), max_pixels=100 * 100)
    # past twice the limit Pillow's own error named twice the limit (regression (new-user trial): 128000000 for 64M)
    for side, pixels in ((300, 90000), (120, 14400)):
        with pytest.raises(ImageLoadError, match=rf"big\.png: decompression bomb refused \({pixels} pixels > limit 10000\)$"):
            load_image(png(Image.new("L", (side, side))), max_pixels=100 * 100, name="big.png")
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(png(Image.new("RGB", (3, 3))))
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="zero.png: empty"):
        load_image(tmp_path / "zero.png")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    # regression (trial 6): a link loop was "no such file"; a broken link says it is one
    (tmp_path / "loopA.png").symlink_to(tmp_path / "loopB.png")
    (tmp_path / "loopB.png").symlink_to(tmp_path / "loopA.png")
    with pytest.raises(ImageLoadError, match=r"loopA.png: cannot read \(Too many levels of symbolic links\)"):
        load_image(tmp_path / "loopA.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match="broken.png: a broken link"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ImageLoadError, match="NUL byte"):
        load_image(str(tmp_path / "a\0b.png"))
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageLoadError, match="d.png: is a directory"):
        load_image(tmp_path / "d.png")


def test_the_bundled_photos_saved_as_files_load_back_as_the_bundled_photos(tmp_path):
    """save_bundled_photos gives the README's photos/ folder: lossless PNGs of the photos as they ship."""
    import torch
    from gaussianvision.data import load_image
    from gaussianvision.data.photos import bundled_photos, save_bundled_photos
    names = ("astronaut", "china")
    paths = save_bundled_photos(tmp_path / "photos", names=names)
    assert [p.name for p in paths] == ["astronaut.png", "china.png"] and sorted(p.name for p in paths) == \
        sorted(q.name for q in (tmp_path / "photos").iterdir())
    for p, (_, want) in zip(paths, bundled_photos(size=64, names=names)):
        assert torch.equal(load_image(p, size=64), want)


def test_folders_linked_into_a_folder_are_searched_once_and_loops_end(tmp_path):
    """Regression: images in a symlinked folder were skipped without a word (gsv fit, gsv convert)."""
    from gaussianvision.data.images import find_images, list_images
    from gaussianvision.data.inputs import plan_units
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    for path in (root / "a.png", root / "sub" / "b.jpg", elsewhere / "c.png"):
        Image.new("RGB", (12, 12)).save(path)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # a link back up: no loop
    (root / "gone.png").symlink_to(tmp_path / "missing.png")  # a broken link: not an image file
    (root / "notes.txt").write_text("not an image")
    want = ["a.png", "linked/c.png", "sub/b.jpg"]
    assert [p.relative_to(root).as_posix() for p in find_images(root)] == want
    skipped = []  # regression: the broken link went unsaid; the caller is told of it
    assert [p.relative_to(root).as_posix() for p in find_images(root, skipped)] == want and skipped == [root / "gone.png"]
    assert sorted(p.relative_to(root).as_posix() for p in list_images([root])) == want
    units = plan_units(str(root), 10)
    assert [os.path.relpath(p, root) for p in units[0].paths] == want


def test_jpeg_files_named_jfif_or_jpe_are_images(tmp_path):
    """Regression: photos saved as .jfif (browsers, Windows) or .jpe were skipped: a folder of them was
    "no image files"; they are listed, and load as the same JPEG does."""
    import torch
    from gaussianvision.data import load_image
    from gaussianvision.data.images import list_images
    from gaussianvision.data.inputs import plan_units
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    for name in ("a.jfif", "b.JPE", "c.jpg"):
        img.save(tmp_path / name, format="JPEG")
    assert [p.name for p in list_images([tmp_path])] == ["a.jfif", "b.JPE", "c.jpg"]
    assert [os.path.basename(p) for p in plan_units(str(tmp_path), 10)[0].paths] == ["a.jfif", "b.JPE", "c.jpg"]
    assert torch.equal(load_image(tmp_path / "a.jfif", size=16), load_image(tmp_path / "c.jpg", size=16))


def test_a_thin_strip_is_never_resized_to_gigabytes(monkeypatch):
    """Regression (new-user trial): an 8 x 1,000,000 strip (a 25 KB PNG) was resized to 224 x 28,000,000 before
    its centre crop, a MemoryError that ended the whole run. Its long side is now cut to MAX_ASPECT times the
    short side first: the same 224 x 224 centre, from a resize of 1,792 x 224."""
    from gaussianvision.data.images import MAX_ASPECT, bounded_aspect
    sizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or resize(self, size, *a, **k))
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (8, 100_000, 3), dtype=np.uint8))
    t = load_image(png(strip), size=224)
    assert t.shape == (3, 224, 224) and sizes == [(224 * MAX_ASPECT, 224)]
    centre = strip.crop((50_000 - 4 * MAX_ASPECT, 0, 50_000 + 4 * MAX_ASPECT, 8))
    assert torch.equal(t, load_image(png(centre), size=224))
    photo = Image.new("RGB", (8 * MAX_ASPECT, 8))  # within the limit: the image itself, untouched
    assert bounded_aspect(photo) is photo
    tall = Image.fromarray(np.arange(8 * MAX_ASPECT + 3, dtype=np.uint8)[:, None].repeat(8, 1))
    cut = bounded_aspect(tall)  # an odd surplus keeps one more row: even margins, the crop centred
    assert cut.size == (8, 8 * MAX_ASPECT + 1) and np.asarray(cut)[0, 0] == 1 and np.asarray(cut)[-1, 0] == 8 * MAX_ASPECT + 1


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_a_transparent_colour_is_white_in_every_mode(mode):
    """Regression (new-user trial): a PNG's tRNS colour was honoured in palette images only, so an RGB, grey or
    16-bit PNG that an optimizer saved with a transparent colour in place of an alpha channel came out black."""
    arr = np.zeros((8, 16), np.uint16 if mode == "I;16" else np.uint8)
    arr[:, 8:] = 40000 if mode == "I;16" else 200
    img = Image.fromarray(np.stack([arr] * 3, -1)) if mode == "RGB" else Image.fromarray(arr)
    t = load_image(png(img, transparency=(0, 0, 0) if mode == "RGB" else 0), size=None)
    assert float(t[:, :, :8].min()) == 1.0  # the transparent half
    want = 40000 / 65535 if mode == "I;16" else 200 / 255
    assert abs(float(t[:, :, 8:].mean()) - want) < 0.003  # the rest as it was


def test_a_jpeg_over_the_pixel_limit_is_read_at_a_smaller_scale_when_a_size_is_asked(tmp_path):
    """Regression (new-user trial): a 108 MP phone photo was refused though a 224 px fit needs a 28th of its
    pixels. A JPEG over max_pixels is decoded at 1/2, 1/4 or 1/8 (the least that fits) when its short side stays
    at least `size`; at its own size (size=None), or a PNG, it is still refused."""
    from gaussianvision.fit.metrics import psnr
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (15, 20, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 600 x 800
    data = png(Image.fromarray(smooth), "JPEG", quality=95)
    t = load_image(data, size=64, max_pixels=100_000)  # 800 x 600 = 480,000: read at 1/4 (200 x 150)
    full = load_image(data, size=64)
    assert t.shape == (3, 64, 64) and float(psnr(t[None], full[None])) > 30
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(data, size=None, max_pixels=100_000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(data, size=200, max_pixels=100_000)  # 1/4 would leave 150 px: less than asked
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(png(Image.fromarray(smooth)), size=64, max_pixels=100_000)


def test_folders_list_the_other_photo_formats_pillow_reads(tmp_path):
    """Regression (new-user trial): a folder's .avif, .jp2, .tga, .pnm and .pbm files were left out without a word
    (fit reported 'fitted 1' of six; without the png, 'no images found'). Each loads as the PNG does (lossless
    ones exactly); PostScript stays out (Pillow reads it by running Ghostscript)."""
    import torch
    from PIL import features
    from gaussianvision.data import load_image
    from gaussianvision.data.images import list_images
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    img.save(tmp_path / "p.png")
    names = ["p.png", "q.tga", "r.pnm", "s.qoi"]
    for name in names[1:]:
        img.save(tmp_path / name)
    img.convert("1").save(tmp_path / "t.pbm")
    lossy = [n for n, ok in (("u.jp2", features.check_codec("jpg_2000")), ("v.avif", features.check("avif"))) if ok]
    for name in lossy:
        img.save(tmp_path / name, quality=95) if name.endswith("avif") else img.save(tmp_path / name)
    (tmp_path / "w.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    assert [p.name for p in list_images([tmp_path])] == sorted(names + ["t.pbm"] + lossy)
    ref = load_image(tmp_path / "p.png", size=16)
    for name in names[1:]:
        assert torch.equal(load_image(tmp_path / name, size=16), ref), name
    assert load_image(tmp_path / "t.pbm", size=16).shape == (3, 16, 16)


def test_load_image_takes_a_binary_file_and_names_an_empty_path():
    """Regression (new-user trial): a BytesIO gave pathlib's TypeError, '' said ': is a directory'."""
    import torch
    data = png(Image.new("RGB", (12, 12), (10, 20, 30)))
    assert torch.equal(load_image(io.BytesIO(data), size=8), load_image(data, size=8))
    with pytest.raises(ImageLoadError, match="^load_image: the path is empty$"):
        load_image("")
    with pytest.raises(ValueError, match="text stream; open the file in binary mode"):
        load_image(io.StringIO("x"))


def _fifo_fed(path, data: bytes):
    """A named pipe at `path` that a thread fills with `data`, then closes (as `<(cat a.png)` does)."""
    import threading
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as f:
                f.write(data)
        except BrokenPipeError:  # the reader stopped at its bound
            pass
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_an_image_from_a_pipe_is_read_within_a_bound(tmp_path, monkeypatch):
    """Regression (new-user trial): `gsv fit <(cat a.png)` was refused as "empty file (zero bytes)", the size
    a pipe reports. Now its bytes are read (at most MAX_STREAM_BYTES); nothing from it is "empty"."""
    import gaussianvision.data.images as images
    data = png(Image.new("RGB", (12, 12), (10, 20, 30)))
    _fifo_fed(tmp_path / "p", data)
    assert torch.equal(load_image(tmp_path / "p", size=8), load_image(data, size=8))
    _fifo_fed(tmp_path / "none", b"")
    with pytest.raises(ImageLoadError, match="none: empty \\(nothing came from it: not a regular file\\)$"):
        load_image(tmp_path / "none")
    monkeypatch.setattr(images, "MAX_STREAM_BYTES", 16)
    _fifo_fed(tmp_path / "big", data)
    with pytest.raises(ImageLoadError, match="big: not a regular file, and more than 0 MiB came from it"):
        load_image(tmp_path / "big")


def test_drafting_refuses_progressive_jpegs_takes_odd_sides_and_leaves_the_pixel_limit_alone():
    """Review findings: a progressive JPEG over the limit was decoded (libjpeg keeps every coefficient of the
    whole image whatever the scale: a 1 KB file claiming 60000 x 60000 took 10 GB); a JPEG with an odd side was
    refused (Pillow's scale for ceil(w / 2) is 1); loads in threads left Image.MAX_IMAGE_PIXELS at None."""
    import threading
    import torch
    rng = np.random.default_rng(2)
    smooth = Image.fromarray(np.kron(rng.integers(0, 256, (15, 20, 3)), np.ones((40, 40, 1))).astype(np.uint8))
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(png(smooth, "JPEG", progressive=True), size=64, max_pixels=100_000)
    odd = smooth.resize((801, 601))
    assert load_image(png(odd, "JPEG", quality=95), size=64, max_pixels=100_000).shape == (3, 64, 64)
    before = Image.MAX_IMAGE_PIXELS
    data, errors = png(odd, "JPEG", quality=90), []

    def loads():
        try:
            for k in range(4):
                load_image(data, size=64, max_pixels=100_000 if k % 2 else 10_000_000)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=loads) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and Image.MAX_IMAGE_PIXELS == before


def test_postscript_named_like_an_image_is_never_opened():
    """Review finding: Pillow picks a decoder by content, so a PostScript file named .png was opened as EPS,
    which runs Ghostscript. Only the formats of IMAGE_EXTS are opened."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageLoadError, match="x.png: not an image Pillow can read"):
        load_image(eps, name="x.png")


def test_transparency_of_low_bit_grey_pngs_is_read_in_the_pixels_units():
    # Pillow widens 1-, 2- and 4-bit grey pixels to 8 bits but keeps the tRNS key in the file's units: a 2-bit
    # file's transparent level 1 (read as 85) stayed grey, and an 8-bit-looking level 1 (none) was "transparent"
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def grey_png(bits, key, row):  # one row of 4 pixels, grey, no interlace, the key in tRNS
        head = struct.pack(">IIBBBBB", 4, 1, bits, 0, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"tRNS", struct.pack(">H", key))
                + chunk(b"IDAT", zlib.compress(b"\x00" + row)) + chunk(b"IEND", b""))

    def levels(data):
        return (load_image(data, size=None, min_side=1)[0, 0] * 255).round().tolist()

    assert levels(grey_png(2, 1, bytes([0b00011011]))) == [0, 255, 170, 255]  # levels 0..3; 1 transparent
    assert levels(grey_png(4, 5, bytes([0x05, 0xAF]))) == [0, 255, 170, 255]  # levels 0, 5, 10, 15; 5 transparent
    assert levels(grey_png(1, 0, bytes([0b01010000]))) == [255, 255, 255, 255]  # 0 transparent, 1 white
    from gaussianvision.data.images import open_image
    one_bit = open_image(io.BytesIO(grey_png(1, 1, bytes([0b01010000]))))
    assert one_bit.mode == "1" and one_bit.info["transparency"] == 255  # Pillow's own 0 / 255: not scaled again
    assert levels(grey_png(8, 85, bytes([0, 85, 170, 255]))) == [0, 255, 170, 255]  # 8 bits: as before
