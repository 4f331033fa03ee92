"""Real photographs that ship inside installed packages (no network needed).

scikit-image: astronaut, chelsea, coffee, rocket, immunohistochemistry, motorcycle (left view);
scikit-learn: china, flower; matplotlib: grace_hopper. Each comes back centre-cropped and
resized to size x size as a [3, size, size] float tensor in [0, 1].
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..atomic import write_atomic
from .images import load_image

__all__ = ["bundled_photos", "save_bundled_photos", "PHOTO_NAMES"]

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower", "grace_hopper", "motorcycle")


def _array(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    if name == "motorcycle":
        from skimage import data
        return data.stereo_motorcycle()[0]
    from skimage import data
    return getattr(data, name)()


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png(name: str) -> bytes:
    """The bundled photo `name` as PNG bytes, at the size it ships."""
    try:
        return _png_bytes(_array(name))
    except ImportError as e:
        raise ImportError(f"bundled photos need scikit-image, scikit-learn and matplotlib "
                          f"(pip install 'gaussianvision[photos]'): {e}") from e


def bundled_photos(size: int | None = 224, names=PHOTO_NAMES) -> list[tuple[str, torch.Tensor]]:
    """[(name, [3, size, size] tensor)] for each bundled photo (size=None: original size)."""
    return [(n, load_image(_png(n), size=size, name=n)) for n in names]


def save_bundled_photos(folder, names=PHOTO_NAMES) -> list:
    """Write each bundled photo, as it ships (original size), to folder/NAME.png; returns the paths.
    A folder of real photos for the README's examples (gsv fit photos/ ...) without a download."""
    from pathlib import Path
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        data = _png(n)
        write_atomic(out / f"{n}.png", lambda tmp, data=data: tmp.write_bytes(data))
        paths.append(out / f"{n}.png")
    return paths
