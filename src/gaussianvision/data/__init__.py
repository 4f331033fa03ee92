"""Data: robust image loading, bundled photos, shards in and out, splat datasets."""
from .images import ImageLoadError, load_image, load_images

__all__ = ["ImageLoadError", "load_image", "load_images"]
